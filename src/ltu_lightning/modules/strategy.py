"""Which Lightning strategies a module that writes its own gradients is correct under.

LTU evaluates the model functionally (``torch.func.functional_call``) over its *full*
parameters, averages g_r and g_f across ranks itself and writes the harmonized gradient into
``.grad`` before a plain ``optimizer.step()``. That needs every rank to hold the whole model and
a plain torch optimizer: a single device or DDP. Strategies that shard the parameters (FSDP,
ModelParallel) or run their own backward and optimizer step (DeepSpeed, XLA) break this
contract, so they are refused at fit start, before any auditor is fitted or step taken.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    XLAStrategy,
)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ltu_lightning.errors import LTUError

SUPPORTED = (
    "a single device, ddp, ddp_spawn, ddp_fork, ddp_notebook or "
    "ddp_find_unused_parameters_true/false"
)

_SHARDS = "it shards the parameters, and the functional meta-step needs the whole model per rank"
_OWNS_STEP = "it runs its own backward and optimizer step, which would discard the harmonized .grad"
# DeepSpeedStrategy and XLAStrategy subclass DDPStrategy, so they are named before the check.
_REFUSED: tuple[tuple[type, str], ...] = (
    (FSDPStrategy, _SHARDS),
    (ModelParallelStrategy, _SHARDS),
    (DeepSpeedStrategy, _OWNS_STEP),
    (XLAStrategy, _OWNS_STEP),
    (SingleDeviceXLAStrategy, _OWNS_STEP),
)


def check_strategy(
    trainer: L.Trainer, module_name: str, batch_stats_model: nn.Module | None = None
) -> None:
    """Raise a one-line ``LTUError`` unless ``trainer``'s strategy keeps ``module_name`` correct.

    Args:
        trainer: the trainer about to fit.
        module_name: named in the error.
        batch_stats_model: the model, when the module's step normalizes with batch statistics
            (LTU's ``bn_mode="train"``). Under more than one process its ``BatchNorm`` layers
            would normalize each rank's shard alone, so the update is not the one-process update
            on the global batch and the ranks' running statistics drift apart; refused unless
            the layers are ``SyncBatchNorm``.
    """
    strategy = trainer.strategy
    name = type(strategy).__name__
    reason = next((why for cls, why in _REFUSED if isinstance(strategy, cls)), None)
    if reason is None and not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        reason = "it was not verified with LTU's multi-process rule"
    if reason is not None:
        raise LTUError(f"{module_name} cannot run under {name} ({reason}); use {SUPPORTED}")
    if batch_stats_model is None or trainer.world_size < 2:
        return
    local = [
        type(m).__name__
        for m in batch_stats_model.modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
    ]
    if local:
        raise LTUError(
            f"{module_name} with bn_mode='train' under {trainer.world_size} processes would "
            f"normalize each rank's shard with its own {local[0]} statistics (not the one-process "
            "update; the ranks' running statistics drift apart); use --model.init_args.bn_mode eval "
            "or --trainer.sync_batchnorm true (GPUs)"
        )
