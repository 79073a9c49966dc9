"""FT: fine-tuning on the remaining data."""

from __future__ import annotations

import torch.nn.functional as F

from ltu_lightning.modules.baselines.base import BaselineModule, Losses
from ltu_lightning.modules.unlearning import Batch


class FineTune(BaselineModule):
    """FT: fine-tune on the retain batches with cross-entropy (forgetting by catastrophic drift).

    Under ``access: partial+holdout`` the auditor half of the holdout is retain data like D̂_r:
    cross-entropy on its labels.

    Args: those of :class:`BaselineModule`.
    """

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        x, y = retain
        ce = F.cross_entropy(self(x), y)
        return {"loss": ce, "retain_ce": ce}
