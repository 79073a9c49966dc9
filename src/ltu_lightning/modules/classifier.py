"""``ClassifierModule``: supervised training of the original model and of the retrain gold standard.

The same module serves both stages; the data module's ``train_on`` (``train`` or ``remaining``)
says which. Validation runs on the validation half of the holdout, never on the test split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ltu_lightning.modules.base import BaseModule


class ClassifierModule(BaseModule):
    """Cross-entropy training of an injected backbone.

    Args:
        backbone: any ``nn.Module`` mapping images to logits.
        num_classes: number of classes (for the accuracy metrics).
        optimizer: optimizer factory (LightningCLI ``OptimizerCallable``), e.g. SGD with momentum.
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: cross-entropy label smoothing (0 keeps the model overfitting, as real
            models do, so that membership stays detectable).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = nn.ModuleList(
            MulticlassAccuracy(num_classes, average="micro") for _ in range(3)
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), add_dataloader_idx=False)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, add_dataloader_idx=False)

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        roles = getattr(self.datamodule, "test_roles", ("test", "forget", "remaining"))
        metric = self.test_acc[dataloader_idx]
        metric(self(x), y)
        self.log(
            f"test/acc_{roles[dataloader_idx]}", metric, on_epoch=True, add_dataloader_idx=False
        )
