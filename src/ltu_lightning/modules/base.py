"""What every LightningModule of the project shares: an injected backbone, injected optimizer
and scheduler factories, the split recorded in checkpoints, and a checkpoint callback per stage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.modules.checkpoints import (
    SPLIT_KEY,
    check_resume,
    local_ckpt_path,
    use_atomic_checkpoints,
)
from ltu_lightning.networks import Backbone
from ltu_lightning.optim.subnormals import float_tensors, zero_subnormals_
from ltu_lightning.utils.checks import check_range


def monitored_best_score(trainer: L.Trainer, monitor: str | None = None) -> float | None:
    """Best score of the trainer's first checkpoint callback that monitors ``monitor`` (any
    monitored metric when None); None before it has scored anything."""
    for cb in trainer.checkpoint_callbacks:
        watched = getattr(cb, "monitor", None)
        if watched and (monitor is None or watched == monitor) and cb.best_model_score is not None:
            return float(cb.best_model_score)
    return None


def _users_own(cb: L.Callback) -> bool:
    """A ``ModelCheckpoint`` the user configured (Lightning's default one has no monitor,
    folder, file name or ``save_last``)."""
    return isinstance(cb, ModelCheckpoint) and bool(
        cb.monitor or cb.dirpath or cb.filename or cb.save_last
    )


class RunFolderGuard(L.Callback):
    """Keeps a ``fit`` from destroying earlier results (an original model's checkpoints too).

    At fit start (after a resumed checkpoint is loaded, before any step), it refuses a
    ``trainer.default_root_dir`` that holds the original checkpoint, and a ``checkpoints/``
    folder that already holds checkpoints, unless this fit resumes from one of them
    (``--ckpt_path <dir>/checkpoints/last.ckpt``) or ``overwrite`` is set.
    Every ``BaseModule`` (pretraining, retraining, unlearning) adds one unless the trainer
    already has one.
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(
            trainer.default_root_dir, getattr(pl_module, "original_ckpt", None), trainer.ckpt_path
        )

    @classmethod
    def before_fit(
        cls, trainer: L.Trainer, module: L.LightningModule, ckpt_path: str | None
    ) -> None:
        """The same check before ``trainer.fit`` starts, so that a refused run leaves nothing
        behind (not even its loggers' folders), with the trainer's guard if it has one."""
        guard = next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)
        if guard is None and isinstance(module, BaseModule) and trainer.checkpoint_callback:
            guard = cls()  # the one ``BaseModule.configure_callbacks`` will add
        if guard is not None:
            path = local_ckpt_path(ckpt_path, trainer.default_root_dir)
            guard.check(trainer.default_root_dir, getattr(module, "original_ckpt", None), path)

    def check(
        self, root_dir: str, original: str | None, ckpt_path: str | os.PathLike | None
    ) -> None:
        root = Path(root_dir).resolve()
        folder = root / "checkpoints"
        if original is not None and Path(original).resolve().parent in (root, folder):
            raise LTUError(
                f"trainer.default_root_dir {root_dir!r} holds the original checkpoint "
                f"{original!r}, which unlearning must never overwrite; pass another --trainer.default_root_dir"
            )
        earlier = sorted(p.name for p in folder.glob("*.ckpt"))
        resumed = ckpt_path is not None and Path(ckpt_path).resolve().parent == folder
        if earlier and not (resumed or self.overwrite):
            # not a resume: a fit that writes here would replace these files
            raise LTUError(
                f"{folder} already holds {', '.join(earlier)} from an earlier run; resume it with "
                f"--ckpt_path {folder / 'last.ckpt'}, write elsewhere with --trainer.default_root_dir, "
                "or replace it with --trainer.callbacks+=RunFolderGuard --trainer.callbacks.overwrite true"
            )


class ZeroSubnormals(L.Callback):
    """Sets subnormal weights and optimizer-state entries to zero on CPU
    (``ltu_lightning.optim.subnormals``: weights decayed below float32's smallest normal make a
    CPU step many times slower): when training, validation outside a fit, testing or prediction
    starts (after a checkpoint is restored) and after every ``every_n_train_steps`` optimizer
    steps. One pass costs about a fifth of a SmallCNN step of 64 images on one CPU thread; a
    weight spends far more than ten steps decaying through the subnormal range, so the default
    leaves few of them at any time. Every module of this package adds one unless the trainer
    already has one; add one to your own ``Trainer(callbacks=[...])`` for your own modules.
    GPUs handle subnormals at full speed, so tensors on other devices are left alone."""

    def __init__(self, every_n_train_steps: int = 10) -> None:
        check_range("every_n_train_steps", every_n_train_steps, 1, integer=True)
        self.every_n_train_steps = every_n_train_steps
        #: subnormal entries set to zero so far in this process
        self.zeroed = 0

    def _zero(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimizers = trainer.optimizers if trainer.state.fn == "fit" else []
        self.zeroed += zero_subnormals_(float_tensors(pl_module, optimizers))

    # after the checkpoint's weights (and, when fitting, the optimizer state) are restored
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._zero(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":  # during a fit the steps keep the weights clean
            self._zero(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._zero(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._zero(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        if trainer.global_step % self.every_n_train_steps == 0:
            self._zero(trainer, pl_module)


class BaseModule(L.LightningModule):
    #: metric the stage's ModelCheckpoint keeps the best of, and its direction
    monitor: str | None = "val/acc"
    monitor_mode: str = "max"

    def __init__(
        self,
        backbone: Backbone,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    # ---------------------------------------------------------------- set-up
    @property
    def datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    @property
    def split_id(self) -> str | None:
        dm = self.datamodule
        return (
            getattr(dm, "manifest_id", None)
            if dm is not None and getattr(dm, "manifest", None)
            else None
        )

    def setup(self, stage: str) -> None:
        self.check_backbone_fits_data()

    def check_backbone_fits_data(self) -> None:
        """Fail at set-up, not after an epoch, when the backbone's classes differ from the data's."""
        dm = self.datamodule
        if dm is None or not hasattr(dm, "role_dataset"):
            return
        x, _ = dm.role_dataset("test")[0]
        try:
            out = self.dry_forward(x.unsqueeze(0))
        except RuntimeError as err:
            raise LTUError(
                f"backbone {type(self.backbone).__name__} cannot take {dm.dataset_name} images of shape "
                f"{tuple(x.shape)} ({str(err).splitlines()[0]}); set its in_channels/image_size to the data's"
            ) from err
        if out.shape[-1] != dm.num_classes:
            raise LTUError(
                f"backbone outputs {out.shape[-1]} classes but {dm.dataset_name} has {dm.num_classes}; "
                f"set --model.backbone.init_args.num_classes {dm.num_classes}"
            )

    def dry_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for the batch ``x`` in eval mode, without gradients, run where
        the weights are now (and in their floating dtype): set-up runs before the strategy moves
        the module to its device and before any precision conversion, while ``self.device``
        may already name the target device."""
        param = next(self.backbone.parameters(), None)
        if param is None:
            x = x.to(self.device)
        else:
            x = x.to(param.device, param.dtype) if x.is_floating_point() else x.to(param.device)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                return self.backbone(x)
        finally:
            self.backbone.train(was_training)

    # ------------------------------------------------------------ optimizers
    def configure_optimizers(self) -> Any:
        try:
            optimizer = self.optimizer_factory(self.backbone.parameters())
        except ValueError as err:  # torch.optim checks its arguments (lr < 0, betas, ...)
            raise LTUError(
                f"the optimizer refused its arguments ({err}); fix --model.init_args.optimizer.init_args"
            ) from err
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    # ----------------------------------------------------------- checkpoints
    def configure_callbacks(self) -> list[L.Callback]:
        """``ZeroSubnormals`` (subnormal weights slow a CPU step tenfold), unless the trainer has
        one; with checkpointing on, ``<default_root_dir>/checkpoints/``: ``last.ckpt`` every
        epoch, ``best.ckpt`` by the stage's monitor. Two checkpoint callbacks, because Lightning
        ≥ 2.6 writes ``save_last`` only in epochs where the monitored checkpoint improved; added
        only where the trainer has no ``ModelCheckpoint`` of the user's own (Lightning would
        replace the user's by ours)."""
        if self._trainer is None:
            return []
        callbacks = self._checkpoint_callbacks() if self.trainer.checkpoint_callback else []
        if not any(isinstance(cb, ZeroSubnormals) for cb in self.trainer.callbacks):
            callbacks.append(ZeroSubnormals())
        return callbacks

    def _checkpoint_callbacks(self) -> list[L.Callback]:
        use_atomic_checkpoints(self.trainer)
        if any(_users_own(cb) for cb in self.trainer.checkpoint_callbacks):
            return []
        dirpath = Path(self.trainer.default_root_dir) / "checkpoints"
        common = dict(dirpath=dirpath, enable_version_counter=False, auto_insert_metric_name=False)
        callbacks: list[L.Callback] = [ModelCheckpoint(filename="last", save_top_k=1, **common)]
        if not any(isinstance(cb, RunFolderGuard) for cb in self.trainer.callbacks):
            callbacks.append(RunFolderGuard())
        if self.monitor is not None:
            best = ModelCheckpoint(
                filename="best", monitor=self.monitor, mode=self.monitor_mode, **common
            )
            best.is_stage_best = True  # type: ignore[attr-defined]
            callbacks.insert(0, best)
        return callbacks

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_resume(self, checkpoint)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse a step on non-finite gradients: the weights, and the last checkpoint, stay good."""
        if str(self.trainer.precision).startswith("16"):
            return  # fp16 loss scaling skips such steps by design
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        norms = [torch.linalg.vector_norm(g) for g in grads if g is not None]
        if norms and not torch.isfinite(torch.stack(norms)).all():
            raise NonFiniteStepError(
                f"{type(self).__name__} step {self.global_step} produced non-finite gradients and was "
                "stopped before updating the weights (the last checkpoint is intact); lower the learning rate"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        dm = self.datamodule
        checkpoint[SPLIT_KEY] = {
            "manifest_id": self.split_id,
            "dataset": getattr(dm, "dataset_name", None),
            "num_classes": getattr(dm, "num_classes", None) if self.split_id else None,
            "backbone": type(self.backbone).__name__,
        }
