"""RL: forget samples relabelled at random, trained on together with the retain data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ltu_lightning.audit.forget_losses import RandomLabelLoss
from ltu_lightning.modules.baselines.base import BaselineModule, Losses
from ltu_lightning.modules.unlearning import Batch


class RandomLabel(BaselineModule):
    """RL: forget samples get a random wrong label; CE on them and on the retain batch together.

    The wrong label ``(y + U{1..C−1}) mod C`` is redrawn at every step by
    :class:`~ltu_lightning.audit.forget_losses.RandomLabelLoss` (its own seeded generator, so the
    global RNG stream is untouched). The relabelled forget batch and the retain batch go through
    the backbone as one batch and the CE is averaged over their union, as when the two sets are
    concatenated into one training set (SalUn's RL). Under ``access: partial+holdout`` the
    auditor half of the holdout is retain data like D̂_r (true labels, in the CE of the union).

    Args:
        generator_seed: seed of the random labels (named apart from the data module's ``seed``).
        kwargs: those of :class:`BaselineModule`.
    """

    def __init__(self, *args: Any, generator_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.random_labels = RandomLabelLoss(self.num_classes, seed=generator_seed)

    def relabel(self, targets: Tensor) -> Tensor:
        """One random wrong label per forget target."""
        return self.random_labels.sample_labels(targets)

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        (xf, yf), (xr, yr) = forget, retain
        logits = self(torch.cat([xf, xr]))
        targets = torch.cat([self.relabel(yf), yr])
        per_sample = F.cross_entropy(logits, targets, reduction="none")
        n = len(yf)
        return {
            "loss": per_sample.mean(),
            "forget_random_ce": per_sample[:n].mean(),
            "retain_ce": per_sample[n:].mean(),
        }
