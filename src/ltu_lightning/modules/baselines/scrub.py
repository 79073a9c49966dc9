"""SCRUB: a student moving away from the original on the forget set and staying close to it
on the retain data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ltu_lightning.modules.baselines.base import BaselineModule
from ltu_lightning.modules.unlearning import Batch, distill_kl
from ltu_lightning.utils.checks import check_range


class SCRUB(BaselineModule):
    """SCRUB (Kurmanji et al., NeurIPS 2023): the student moves away from the teacher on D_f
    and stays close to it (and to the labels) on the retain data.

    The teacher is a frozen copy of the original model (eval mode, no gradients, not in the
    optimizer). With ``KL_T(s, t) = T²·KL(softmax(t/T) ‖ softmax(s/T))`` (batch mean):

    - max-step on a forget batch: minimize ``−KL_T(student, teacher)``;
    - min-step on a retain batch: minimize ``α·KL_T(student, teacher) + γ·CE(student, y)``.

    The original code runs, per epoch, a whole pass of max-steps over D_f (only in the first
    ``msteps`` epochs) then a whole pass of min-steps over the retain set. Here each training
    step receives one forget and one retain batch, so an epoch *alternates* them: in the first
    ``max_steps`` epochs every step does one max-step then one min-step (two optimizer steps,
    manual optimization); afterwards only min-steps. Gradient clipping is not applied.
    Alternating also matters for models without BatchNorm/dropout: the student starts equal to
    the teacher, where the KL has zero gradient, so a pass of max-steps *before* any min-step
    would not move it (the original code relies on train-mode BatchNorm making them differ).
    Under ``access: partial+holdout`` the auditor half of the holdout is retain data of the
    min-steps: extra distillation data (KL to the teacher) with its labels in the CE term.

    Args:
        temperature: T of the distillation KL (> 0; default 4).
        alpha: α, weight of the KL on retain batches (default 0.001).
        gamma: γ, weight of the CE on retain batches (default 0.99).
        max_steps: number of leading epochs that include max-steps (SCRUB's ``msteps``).
        kwargs: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        *args: Any,
        temperature: float = 4.0,
        alpha: float = 0.001,
        gamma: float = 0.99,
        max_steps: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_range("temperature", temperature, 0.0, low_open=True)
        check_range("alpha", alpha, 0.0)
        check_range("gamma", gamma, 0.0)
        check_range("max_steps", max_steps, 0, integer=True)
        self.temperature = temperature
        self.alpha = alpha
        self.gamma = gamma
        self.max_steps = max_steps
        self.automatic_optimization = False
        self.add_teacher()

    def distill_kl(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return distill_kl(student_logits, teacher_logits, self.temperature)

    def _update(self, loss: Tensor) -> None:
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> None:
        (xf, _), (xr, yr) = batch["forget"], batch["retain"]
        if self.current_epoch < self.max_steps:
            with torch.no_grad():
                teacher_f = self.teacher(xf)
            forget_kl = self.distill_kl(self(xf), teacher_f)
            self.log_train({"forget_kl": forget_kl}, batch_size=len(xf))
            self._update(-forget_kl)
        with torch.no_grad():
            teacher_r = self.teacher(xr)
        logits = self(xr)
        retain_kl = self.distill_kl(logits, teacher_r)
        retain_ce = F.cross_entropy(logits, yr)
        loss = self.alpha * retain_kl + self.gamma * retain_ce
        self.log_train(
            {"loss": loss, "retain_kl": retain_kl, "retain_ce": retain_ce}, batch_size=len(yr)
        )
        self._update(loss)
