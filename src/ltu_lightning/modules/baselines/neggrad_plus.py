"""NegGrad+: descent on the retain data and ascent on the forget set, jointly."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ltu_lightning.modules.baselines.base import BaselineModule, Losses
from ltu_lightning.modules.unlearning import Batch
from ltu_lightning.utils.checks import check_range


class NegGradPlus(BaselineModule):
    """NegGrad+ (Kurmanji et al. 2023; Deep Unlearn): ``α·CE(retain) − (1−α)·CE(forget)``.

    One joint step on both batches. The same objective is often written
    ``CE(retain) − β·CE(D_f)``: it is this one scaled by α, with ``β = (1−α)/α``
    (α = 0.99 ↔ β ≈ 0.0101). Under ``access: partial+holdout`` the auditor half of the holdout
    is retain data like D̂_r: it enters ``CE(retain)`` with its labels.

    Args:
        alpha: α in [0, 1], the weight of the retain CE (1 = FT, 0 = GA). Default 0.99.
        kwargs: those of :class:`BaselineModule`.
    """

    def __init__(self, *args: Any, alpha: float = 0.99, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_range("alpha", alpha, 0.0, 1.0)
        self.alpha = alpha

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        (xf, yf), (xr, yr) = forget, retain
        logits = self(torch.cat([xf, xr]))
        forget_ce = F.cross_entropy(logits[: len(yf)], yf)
        retain_ce = F.cross_entropy(logits[len(yf) :], yr)
        loss = self.alpha * retain_ce - (1.0 - self.alpha) * forget_ce
        return {"loss": loss, "retain_ce": retain_ce, "forget_ce": forget_ce}
