"""GA: gradient ascent on the forget set."""

from __future__ import annotations

import torch.nn.functional as F

from ltu_lightning.modules.baselines.base import BaselineModule, Losses
from ltu_lightning.modules.unlearning import Batch


class GradientAscent(BaselineModule):
    """GA: gradient ascent on the forget batches (minimizes −CE(D_f); retain batches unused).

    Unbounded: the stop rule (``val/criterion``) and a small learning rate keep it in check.
    The retain batches are loaded (and counted in ``images_read``) but not used, whatever the
    access: under ``partial+holdout`` the holdout half changes nothing.

    Args: those of :class:`BaselineModule`.
    """

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        x, y = forget
        ce = F.cross_entropy(self(x), y)
        return {"loss": -ce, "forget_ce": ce}
