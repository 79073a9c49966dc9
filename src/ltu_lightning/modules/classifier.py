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
from ltu_lightning.networks import Backbone


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
        backbone: Backbone,
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
        self.train_acc.update(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_accuracy("train/acc", self.train_acc, prog_bar=True)

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc.update(logits, y)
        loss = F.cross_entropy(logits, y)
        self.log("val/loss", loss, add_dataloader_idx=False, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val/acc", self.val_acc, prog_bar=True)

    def test_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        self.test_acc[dataloader_idx].update(self(x), y)

    def on_test_epoch_end(self) -> None:
        roles = getattr(self.datamodule, "test_roles", ("test", "forget", "remaining"))
        for role, metric in zip(roles, self.test_acc, strict=False):
            self._log_accuracy(f"test/acc_{role}", metric)

    def _log_accuracy(self, name: str, metric: MulticlassAccuracy, prog_bar: bool = False) -> None:
        """Log an epoch's accuracy in percent, as every other accuracy of the project. The
        metric's ``compute`` gathers all processes, so ``sync_dist`` averages equal values."""
        if metric.update_called:
            self.log(name, 100.0 * metric.compute(), prog_bar=prog_bar, sync_dist=True)
        metric.reset()
