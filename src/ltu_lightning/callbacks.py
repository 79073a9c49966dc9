"""Callbacks that report a run to its loggers: the resolved config, the selected epoch's
metrics, and (on request, from YAML) W&B gradient histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from ltu_lightning.tracking import save_file_with_run, update_wandb_summary, wandb_loggers


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes config.yaml as usual and hands the same resolved config (``model``, ``data``,
    ``trainer``, ...) to every logger's ``log_hyperparams``: the W&B run config, CSV's
    hparams.yaml, TensorBoard's hparams then say exactly what ran. A W&B run also keeps the
    config.yaml file itself (``files/cli/config.yaml``; wandb's own ``files/config.yaml`` is
    the run config), so ``ltu fit --config`` of the downloaded file repeats the run."""

    saved: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # on every process: ``trainer.log_dir`` broadcasts, save_config runs on rank 0 only
        if self.save_to_log_dir and wandb_loggers(trainer.loggers):
            self.saved = Path(trainer.log_dir) / self.config_filename
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
        if self.saved is not None:
            for logger in wandb_loggers(trainer.loggers):
                save_file_with_run(logger.experiment, self.saved, "cli")


class SelectionSummary(L.Callback):
    """Puts the validation metrics of the epoch the stage keeps into the W&B run summary as
    ``selected/<metric>`` (plus ``selected/epoch``): the best epoch by the module's ``monitor``
    (what ``best.ckpt`` holds), or the last one when it has none (``stop_rule: budget``). Runs
    are then compared by the model each one delivers, not by their last epoch."""

    def __init__(self) -> None:
        self.selected: dict[str, float] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.selected = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        monitor = getattr(pl_module, "monitor", None)
        score, best = metrics.get(monitor), self.selected.get(monitor)
        minimize = getattr(pl_module, "monitor_mode", "min") == "min"
        if score is None or best is None or (score < best if minimize else score > best):
            self.selected = {**metrics, "epoch": trainer.current_epoch}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.selected:
            update_wandb_summary(
                trainer.loggers, {f"selected/{k}": v for k, v in self.selected.items()}
            )


class WandbWatch(L.Callback):
    """``wandb.watch`` the module's backbone during fit (``--trainer.callbacks+ WandbWatch``).

    The histograms come from hooks on the parameters: they show each gradient autograd computes
    for them. ``LTUModule`` computes its gradients with ``torch.autograd.grad`` and writes the
    harmonized update into ``.grad`` itself, so for LTU they show the remember and forget
    gradients at the current weights (``log_freq`` counts several of them per step), not the
    update applied.
    """

    def __init__(
        self,
        log: Literal["gradients", "parameters", "all"] | None = "gradients",
        log_freq: int = 100,
        log_graph: bool = False,
    ) -> None:
        # not ``self.log``: Lightning sets each callback's ``log`` to the module's ``log``
        self.watch_kwargs = dict(log=log, log_freq=log_freq, log_graph=log_graph)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer.loggers)
        if not loggers:
            rank_zero_warn(
                "WandbWatch does nothing: the trainer has no WandbLogger "
                "(add --config configs/logger/wandb.yaml)"
            )
        for logger in loggers:
            logger.watch(getattr(pl_module, "backbone", pl_module), **self.watch_kwargs)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in wandb_loggers(trainer.loggers):
            logger.experiment.unwatch(getattr(pl_module, "backbone", pl_module))
