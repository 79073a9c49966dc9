"""``UnlearningModule``: what LTU and every baseline share.

- the original model is loaded from ``original_ckpt`` (a ``ClassifierModule`` checkpoint, read
  with ``weights_only=True``), refusing one trained on another split or with another backbone;
- data access goes through the data module's roles (``train_on="unlearn"`` batches are dicts
  ``{"forget": (x, y), "retain": (x, y)}``);
- after each epoch the honest selection criterion of PROTOCOL.md is computed on the forget set
  and the *validation half* of the holdout (never the test split, never a retrained model) and
  logged as ``val/criterion``; the stage's ``ModelCheckpoint`` keeps the best epoch
  (``stop_rule="criterion"``), or only the last one (``"budget"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.metrics import loss_auc, selection_criterion
from ltu_lightning.modules.base import BaseModule
from ltu_lightning.modules.checkpoints import load_backbone_weights

STOP_RULES = ("criterion", "budget")
Batch = tuple[torch.Tensor, torch.Tensor]


class UnlearningModule(BaseModule):
    """Base of the unlearning methods (LTU and the baselines).

    Args:
        backbone: the architecture of the original model (same settings as when it was trained).
        original_ckpt: checkpoint of the original model (``ltu fit`` of ``ClassifierModule``).
            None starts from the backbone's current weights (for users who load weights
            themselves).
        optimizer: optimizer factory for the backbone's parameters.
        lr_scheduler: optional scheduler factory, stepped each epoch.
        stop_rule: ``criterion`` keeps the epoch with the lowest honest criterion on the
            validation holdout; ``budget`` keeps the last epoch (``max_epochs`` passes).
    """

    monitor = "val/criterion"
    monitor_mode = "min"

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler)
        if stop_rule not in self.stop_rules:
            raise LTUError(
                f"stop_rule={stop_rule!r} is unknown; choose one of {', '.join(self.stop_rules)}"
            )
        self.original_ckpt = original_ckpt
        self.stop_rule = stop_rule
        if stop_rule != "criterion":
            self.monitor = None  # the stage's checkpoint keeps the last pass
        self.register_buffer("original_val_acc", torch.tensor(float("nan")))
        self._val_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    stop_rules: tuple[str, ...] = STOP_RULES

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if stage == "fit" and dm is not None and getattr(dm, "train_on", "unlearn") != "unlearn":
            raise LTUError(
                f"{type(self).__name__} needs the unlearning batches: set --data.train_on unlearn "
                f"(got {dm.train_on!r})"
            )
        if self.original_ckpt is not None and not getattr(self, "_original_loaded", False):
            load_backbone_weights(self.backbone, self.original_ckpt, self.split_id)
            self._original_loaded = True
        super().setup(stage)

    def on_fit_start(self) -> None:
        if torch.isnan(self.original_val_acc):  # not restored from a resumed checkpoint
            self.original_val_acc.fill_(self._accuracy_on("holdout_val"))

    @torch.no_grad()
    def role_logits(self, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of the current backbone (eval mode) on one data role."""
        was_training = self.backbone.training
        self.backbone.eval()
        logits, targets = [], []
        try:
            for x, y in self.datamodule.role_dataloader(role):
                logits.append(self.backbone(x.to(self.device)).float())
                targets.append(y.to(self.device))
        finally:
            self.backbone.train(was_training)
        return torch.cat(logits), torch.cat(targets)

    def _accuracy_on(self, role: str) -> float:
        logits, y = self.role_logits(role)
        return 100.0 * (logits.argmax(-1) == y).float().mean().item()

    # ------------------------------------------------------------- training
    @staticmethod
    def split_support_query(batch: Batch) -> tuple[Batch, Batch]:
        """Two disjoint halves of a shuffled batch (support, query); a 1-sample batch serves both."""
        x, y = batch
        if len(y) < 2:
            return (x, y), (x, y)
        half = len(y) // 2
        return (x[:half], y[:half]), (x[half:], y[half:])

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    # ----------------------------------------------------------- validation
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self._val_outputs.setdefault(dataloader_idx, []).append((self(x).float(), y))

    def on_validation_epoch_end(self) -> None:
        roles = list(getattr(self.datamodule, "val_roles", ["forget", "holdout_val"]))
        outputs = {}
        for idx, role in enumerate(roles):
            parts = self._val_outputs.get(idx)
            if not parts:
                continue
            logits = torch.cat([p[0] for p in parts])
            targets = torch.cat([p[1] for p in parts])
            if self.trainer.world_size > 1:
                logits = self.all_gather(logits).flatten(0, 1)
                targets = self.all_gather(targets).flatten(0, 1)
            outputs[role] = (logits, targets)
        self._val_outputs.clear()
        if "forget" not in outputs or "holdout_val" not in outputs:
            return
        self.log_validation(outputs)

    def log_validation(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Log forget/val accuracy, the loss-AUC of D_f vs val, and the selection criterion."""
        (f_logits, f_y), (v_logits, v_y) = outputs["forget"], outputs["holdout_val"]
        forget_acc = 100.0 * (f_logits.argmax(-1) == f_y).float().mean().item()
        val_acc = 100.0 * (v_logits.argmax(-1) == v_y).float().mean().item()
        f_loss = F.cross_entropy(f_logits, f_y, reduction="none").cpu().numpy()
        v_loss = F.cross_entropy(v_logits, v_y, reduction="none").cpu().numpy()
        auc = loss_auc(f_loss, v_loss)
        original = self.original_val_acc.item()
        if original != original:  # nan: validate() outside fit
            original = val_acc
        criterion = selection_criterion(forget_acc, val_acc, original, auc)
        self.log_dict({"val/forget_acc": forget_acc, "val/val_acc": val_acc, "val/loss_auc": auc})
        self.log("val/criterion", criterion, prog_bar=True)

    # ------------------------------------------------------------------ test
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        roles = getattr(self.datamodule, "test_roles", ("test", "forget", "remaining"))
        acc = 100.0 * (self(x).argmax(-1) == y).float().mean()
        self.log(
            f"test/acc_{roles[dataloader_idx]}",
            acc,
            on_epoch=True,
            add_dataloader_idx=False,
            batch_size=len(y),
        )
