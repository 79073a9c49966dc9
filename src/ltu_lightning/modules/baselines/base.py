"""``BaselineModule``: what the baselines share on top of ``UnlearningModule``."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from ltu_lightning.errors import LTUError, NonFiniteStepError, how_to_set
from ltu_lightning.modules.unlearning import Batch, StopRule, UnlearningModule
from ltu_lightning.networks import Backbone
from ltu_lightning.utils.checks import check_range

#: What a baseline's step returns: named losses; ``"loss"`` is minimized, all are logged.
Losses = dict[str, Tensor | float]


def sgd_momentum(params: Any) -> torch.optim.Optimizer:
    """The baselines' default optimizer: SGD(lr=0.01, momentum=0.9)."""
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


class BaselineModule(UnlearningModule):
    """What the baselines share: ``num_classes``, one step = one loss dict, logged under ``train/``.

    Subclasses implement :meth:`losses`, returning named scalar tensors whose ``"loss"`` entry is
    minimized (automatic optimization); the others are logged for inspection. A subclass's
    constructor names only its own arguments and hands the rest on with ``**kwargs``.

    Args:
        backbone: architecture of the original model.
        original_ckpt: the original model's checkpoint (``ClassifierModule``).
        num_classes: number of classes (None: the network's output width, one dry forward).
        optimizer: optimizer factory. Default SGD(lr=0.01, momentum=0.9).
        lr_scheduler: optional scheduler factory, stepped each epoch.
        stop_rule: ``criterion`` (keep the best ``val/criterion`` epoch) or ``budget``.
    """

    def __init__(
        self,
        backbone: Backbone,
        original_ckpt: str | None = None,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = sgd_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: StopRule = "criterion",
    ) -> None:
        super().__init__(backbone, original_ckpt, optimizer, lr_scheduler, stop_rule)
        # One call for all baselines: Lightning collects the arguments of every __init__ of
        # the class hierarchy on the call stack (e.g. SalUn's sparsity and RandomLabel's seed).
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        if num_classes is not None:
            check_range("num_classes", num_classes, 2, integer=True)
        self.num_classes = num_classes

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm_classes = getattr(self.datamodule, "num_classes", None)
        if isinstance(dm_classes, int) and dm_classes != self.num_classes:
            raise LTUError(
                f"{type(self).__name__} has num_classes={self.num_classes} but the data has "
                f"{dm_classes}; set "
                + how_to_set(
                    f"num_classes={dm_classes}", f"--model.init_args.num_classes {dm_classes}"
                )
            )

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> Tensor:
        losses = self.losses(batch["forget"], batch["retain"])
        self.log_train(losses, batch_size=len(batch["forget"][1]))
        loss = losses["loss"]
        assert isinstance(loss, Tensor)
        return loss

    def log_train(self, values: Losses, batch_size: int) -> None:
        for key, value in values.items():
            if isinstance(value, Tensor) and not torch.isfinite(value).all():
                raise NonFiniteStepError(
                    f"{type(self).__name__} step {self.global_step} produced a non-finite {key}; "
                    "lower the learning rate"
                )
        self.log_dict(
            {f"train/{k}": v.detach() if isinstance(v, Tensor) else v for k, v in values.items()},
            batch_size=batch_size,
        )
