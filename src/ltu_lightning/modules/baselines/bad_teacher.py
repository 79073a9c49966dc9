"""Bad Teaching: distil a competent teacher on the retain data and an incompetent one on D_f."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ltu_lightning.modules.baselines.base import BaselineModule, Losses
from ltu_lightning.modules.unlearning import Batch, distill_kl
from ltu_lightning.utils.checks import check_range


def randomly_initialised(backbone: nn.Module, seed: int) -> nn.Module:
    """A frozen copy of ``backbone`` with freshly initialised weights (every submodule's
    ``reset_parameters``, drawn from ``seed`` without touching the global RNG stream)."""
    net = copy.deepcopy(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in net.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return net.requires_grad_(False).eval()


class BadTeacher(BaselineModule):
    """Bad Teaching (Chundawat et al., AAAI 2023): the student starts as the original model and
    is distilled from two teachers on one batch made of a forget and a retain batch.

    - the competent teacher is the frozen original (``self.teacher``): its outputs are the
      targets of the retain samples;
    - the incompetent teacher is a frozen, randomly initialised copy of the backbone
      (``self.incompetent``, seeded by ``generator_seed``, saved in checkpoints): its outputs
      are the targets of the forget samples.

    The loss is ``T²·KL(target ‖ student)`` at temperature T, averaged over the samples of the
    joint batch, so D_f drifts towards what a model that never learnt anything predicts while
    the retain data keeps the original's outputs. Under ``access: partial+holdout`` the auditor
    half of the holdout is retain data: extra distillation data for the competent teacher
    (its labels are not used).

    Args:
        temperature: T of the distillation KL (> 0; default 1, the paper's).
        generator_seed: seed of the incompetent teacher's weights.
        kwargs: those of :class:`BaselineModule`.
    """

    def __init__(
        self, *args: Any, temperature: float = 1.0, generator_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        check_range("temperature", temperature, 0.0, low_open=True)
        self.temperature = temperature
        self.add_teacher()
        self.incompetent = randomly_initialised(self.backbone, generator_seed)

    def train(self, mode: bool = True) -> BadTeacher:
        super().train(mode)
        self.incompetent.eval()
        return self

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        (xf, _), (xr, _) = forget, retain
        assert self.teacher is not None
        with torch.no_grad():
            bad, good = self.incompetent(xf), self.teacher(xr)
        logits = self(torch.cat([xf, xr]))
        n, t = len(xf), self.temperature
        forget_kl = distill_kl(logits[:n], bad, t)
        retain_kl = distill_kl(logits[n:], good, t)
        loss = (n * forget_kl + len(xr) * retain_kl) / (n + len(xr))
        return {"loss": loss, "forget_kl": forget_kl, "retain_kl": retain_kl}
