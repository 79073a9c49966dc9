"""l1-sparse: fine-tuning with a decaying L1 penalty on the weights."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ltu_lightning.errors import LTUError
from ltu_lightning.modules.baselines.base import Losses
from ltu_lightning.modules.baselines.ft import FineTune
from ltu_lightning.modules.unlearning import Batch
from ltu_lightning.utils.checks import check_range


class L1Sparse(FineTune):
    """l1-sparse (Jia et al. 2023): FT with ``α_t·‖θ‖₁``, α_t decaying linearly to 0.

    ``α_t = alpha·(1 − t/T)`` with t the optimizer step and T the run's total steps
    (``trainer.estimated_stepping_batches``, so ``max_epochs`` or ``max_steps`` must be finite).
    ‖θ‖₁ sums the absolute values of every backbone parameter (weights and biases), as in the
    authors' code. Under ``access: partial+holdout`` the auditor half of the holdout is retain
    data like D̂_r (cross-entropy on its labels, as in FT).

    Args:
        alpha: the initial sparsity weight α_0 (>= 0). Default 5e-4.
        kwargs: those of :class:`BaselineModule`.
    """

    def __init__(self, *args: Any, alpha: float = 5e-4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_range("alpha", alpha, 0.0)
        self.alpha = alpha

    def current_alpha(self) -> float:
        """α_t at the current optimizer step (0 once the run's total steps are done)."""
        total = float(self.trainer.estimated_stepping_batches)
        if not math.isfinite(total) or total <= 0:
            raise LTUError(
                "L1Sparse decays its alpha over the run's total steps: set trainer.max_epochs "
                "or trainer.max_steps"
            )
        return self.alpha * max(0.0, 1.0 - self.global_step / total)

    def l1_norm(self) -> Tensor:
        return sum(p.abs().sum() for p in self.backbone.parameters())  # type: ignore[return-value]

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        out = super().losses(forget, retain)
        alpha_t = self.current_alpha()
        l1 = self.l1_norm()
        return {**out, "loss": out["loss"] + alpha_t * l1, "l1_norm": l1, "l1_alpha": alpha_t}
