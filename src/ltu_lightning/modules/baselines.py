"""The unlearning baselines of PROTOCOL.md as LightningModules on the shared ``UnlearningModule``.

Every baseline starts from the original checkpoint, trains on the unlearning batches
``{"forget": (x, y), "retain": (x, y)}`` (``retain`` comes from the retain subset D̂_r under
``access: partial`` and from the whole remaining set D_r under ``access: full``), logs its
training losses under ``train/`` and is selected by the same honest ``val/criterion`` as LTU.

=================  ====================================================================
``FineTune``       FT: CE on retain batches.
``GradientAscent`` GA: −CE on forget batches (retain batches are not used).
``RandomLabel``    RL: forget samples relabelled with a random *wrong* class, CE on the
                   union of the relabelled forget batch and the retain batch.
``NegGradPlus``    NegGrad+: α·CE(retain) − (1−α)·CE(forget), jointly.
``L1Sparse``       l1-sparse: FT + α_t·‖θ‖₁, α_t decaying linearly to 0 over the run.
``SalUn``          SalUn: saliency mask (top ``sparsity`` fraction of |∇θ CE(D_f)|,
                   computed once at fit start), then RL updating only masked weights.
``SCRUB``          SCRUB: student/teacher distillation with max-steps on D_f (first
                   ``max_steps`` epochs) and min-steps on the retain data (manual optimization).
=================  ====================================================================
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from ltu_lightning.audit.forget_losses import RandomLabelLoss
from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.modules.unlearning import Batch, UnlearningModule, distill_kl

__all__ = [
    "SCRUB",
    "BaselineModule",
    "FineTune",
    "GradientAscent",
    "L1Sparse",
    "NegGradPlus",
    "RandomLabel",
    "SalUn",
]

_IGNORE = ["backbone", "optimizer", "lr_scheduler"]
#: What a baseline's step returns: named losses; ``"loss"`` is minimized, all are logged.
Losses = dict[str, Tensor | float]


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _check_range(name: str, value: float, low: float, high: float = math.inf) -> None:
    if not (low <= value <= high):
        shown = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise LTUError(f"{name}={value!r} must be {shown}")


class BaselineModule(UnlearningModule):
    """What the baselines share: ``num_classes``, one step = one loss dict, logged under ``train/``.

    Subclasses implement :meth:`losses`, returning named scalar tensors whose ``"loss"`` entry is
    minimized (automatic optimization); the others are logged for inspection.

    Args:
        backbone: architecture of the original model.
        original_ckpt: the original model's checkpoint (``ClassifierModule``).
        num_classes: number of classes.
        optimizer: optimizer factory. Default SGD(lr=0.01, momentum=0.9).
        lr_scheduler: optional scheduler factory, stepped each epoch.
        stop_rule: ``criterion`` (keep the best ``val/criterion`` epoch) or ``budget``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
    ) -> None:
        super().__init__(backbone, original_ckpt, optimizer, lr_scheduler, stop_rule)
        # One call for all baselines: Lightning collects the arguments of every __init__ of
        # the class hierarchy on the call stack (e.g. SalUn's sparsity and RandomLabel's seed).
        self.save_hyperparameters(ignore=_IGNORE)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise LTUError(f"num_classes={num_classes!r} must be an integer >= 2")
        self.num_classes = num_classes

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm_classes = getattr(self.datamodule, "num_classes", None)
        if isinstance(dm_classes, int) and dm_classes != self.num_classes:
            raise LTUError(
                f"{type(self).__name__} has num_classes={self.num_classes} but the data has "
                f"{dm_classes}; set --model.init_args.num_classes {dm_classes}"
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


class FineTune(BaselineModule):
    """FT: fine-tune on the retain batches with cross-entropy (forgetting by catastrophic drift).

    Args: those of :class:`BaselineModule`.
    """

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        x, y = retain
        ce = F.cross_entropy(self(x), y)
        return {"loss": ce, "retain_ce": ce}


class GradientAscent(BaselineModule):
    """GA: gradient ascent on the forget batches (minimizes −CE(D_f); retain batches unused).

    Unbounded: the stop rule (``val/criterion``) and a small learning rate keep it in check.

    Args: those of :class:`BaselineModule`.
    """

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        x, y = forget
        ce = F.cross_entropy(self(x), y)
        return {"loss": -ce, "forget_ce": ce}


class NegGradPlus(BaselineModule):
    """NegGrad+ (Kurmanji et al. 2023; Deep Unlearn): ``α·CE(retain) − (1−α)·CE(forget)``.

    One joint step on both batches. PROTOCOL.md writes it ``CE(retain) − β·CE(D_f)``; that is
    the same objective scaled by α, with ``β = (1−α)/α`` (α = 0.99 ↔ β ≈ 0.0101).

    Args:
        alpha: α in [0, 1], the weight of the retain CE (1 = FT, 0 = GA). Default 0.99.
        others: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
        alpha: float = 0.99,
    ) -> None:
        super().__init__(backbone, original_ckpt, num_classes, optimizer, lr_scheduler, stop_rule)
        _check_range("alpha", alpha, 0.0, 1.0)
        self.alpha = alpha

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        (xf, yf), (xr, yr) = forget, retain
        logits = self(torch.cat([xf, xr]))
        forget_ce = F.cross_entropy(logits[: len(yf)], yf)
        retain_ce = F.cross_entropy(logits[len(yf) :], yr)
        loss = self.alpha * retain_ce - (1.0 - self.alpha) * forget_ce
        return {"loss": loss, "retain_ce": retain_ce, "forget_ce": forget_ce}


class L1Sparse(FineTune):
    """l1-sparse (Jia et al. 2023): FT with ``α_t·‖θ‖₁``, α_t decaying linearly to 0.

    ``α_t = alpha·(1 − t/T)`` with t the optimizer step and T the run's total steps
    (``trainer.estimated_stepping_batches``, so ``max_epochs`` or ``max_steps`` must be finite).
    ‖θ‖₁ sums the absolute values of every backbone parameter (weights and biases), as in the
    authors' code.

    Args:
        alpha: the initial sparsity weight α_0 (>= 0). Default 5e-4.
        others: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
        alpha: float = 5e-4,
    ) -> None:
        super().__init__(backbone, original_ckpt, num_classes, optimizer, lr_scheduler, stop_rule)
        _check_range("alpha", alpha, 0.0)
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


class RandomLabel(BaselineModule):
    """RL: forget samples get a random wrong label; CE on them and on the retain batch together.

    The wrong label ``(y + U{1..C−1}) mod C`` is redrawn at every step by
    :class:`~ltu_lightning.audit.forget_losses.RandomLabelLoss` (its own seeded generator, so the
    global RNG stream is untouched). The relabelled forget batch and the retain batch go through
    the backbone as one batch and the CE is averaged over their union, as when the two sets are
    concatenated into one training set (SalUn's RL).

    Args:
        generator_seed: seed of the random labels (named apart from the data module's ``seed``).
        others: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
        generator_seed: int = 0,
    ) -> None:
        super().__init__(backbone, original_ckpt, num_classes, optimizer, lr_scheduler, stop_rule)
        self.random_labels = RandomLabelLoss(num_classes, seed=generator_seed)

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


class SalUn(RandomLabel):
    """SalUn (Fan et al., ICLR 2024): RL restricted to the salient weights.

    At fit start (once; restored, not recomputed, when resuming) the gradient of the forget
    cross-entropy is accumulated over the whole forget set with the original model in eval mode;
    the weights whose |gradient| is among the top ``sparsity`` fraction of all backbone
    parameters (one global ranking, weights and biases) form the mask. Training is then RL with
    the gradients of the unmasked entries zeroed after every backward (so momentum and gradient
    clipping see the masked gradient), and the unmasked entries are reset to their original
    values after every optimizer step, so that weight decay cannot move them either: unmasked
    weights stay exactly those of the original model.

    Args:
        sparsity: fraction of the weights that are updated (SalUn's threshold; default 0.5).
        generator_seed: seed of the random labels (named apart from the data module's ``seed``).
        others: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
        generator_seed: int = 0,
        sparsity: float = 0.5,
    ) -> None:
        super().__init__(
            backbone, original_ckpt, num_classes, optimizer, lr_scheduler, stop_rule, generator_seed
        )
        if not 0.0 < sparsity <= 1.0:
            raise LTUError(
                f"sparsity={sparsity!r} must be in (0, 1]: the fraction of weights updated"
            )
        self.sparsity = sparsity
        # Masks are buffers (saved in checkpoints, so a resumed run keeps its mask).
        self.saliency = nn.Module()
        for name, p in backbone.named_parameters():
            self.saliency.register_buffer(self._key(name), torch.ones_like(p, dtype=torch.bool))
        self.register_buffer("mask_ready", torch.tensor(False))
        self._anchor: dict[str, Tensor] = {}
        self._density = float("nan")

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def masks(self) -> dict[str, Tensor]:
        """Parameter name → boolean mask (True = updated)."""
        return {
            name: getattr(self.saliency, self._key(name))
            for name, _ in self.backbone.named_parameters()
        }

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not bool(self.mask_ready):
            self.compute_mask()
        self._density = self.mask_density()
        # Unmasked entries never change: their current values are the original ones.
        self._anchor = {name: p.detach().clone() for name, p in self.backbone.named_parameters()}

    def forget_gradients(self) -> dict[str, Tensor]:
        """Σ over forget batches of ∇θ CE (batch mean), original model in eval mode."""
        params = dict(self.backbone.named_parameters())
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            for x, y in self.datamodule.role_dataloader("forget"):
                x, y = self.model_input(x), y.to(self.device)
                with torch.enable_grad():
                    loss = F.cross_entropy(self.backbone(x).float(), y)
                    batch_grads = torch.autograd.grad(
                        loss, list(params.values()), allow_unused=True
                    )
                for name, g in zip(params, batch_grads, strict=True):
                    if g is not None:
                        grads[name] += g
        finally:
            self.backbone.train(was_training)
        return grads

    @torch.no_grad()
    def compute_mask(self) -> None:
        grads = self.forget_gradients()
        scores = torch.cat([g.abs().flatten() for g in grads.values()])
        k = max(1, round(self.sparsity * scores.numel()))
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        chosen[torch.topk(scores, k, sorted=False).indices] = True
        masks, start = self.masks(), 0
        for name, g in grads.items():
            masks[name].copy_(chosen[start : start + g.numel()].view_as(g))
            start += g.numel()
        self.mask_ready.fill_(True)

    def mask_density(self) -> float:
        """Fraction of the backbone's weights the mask lets change."""
        masks = list(self.masks().values())
        return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        return {**super().losses(forget, retain), "mask_density": self._density}

    def on_after_backward(self) -> None:
        masks = self.masks()
        for name, p in self.backbone.named_parameters():
            if p.grad is not None:
                p.grad.mul_(masks[name])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        masks = self.masks()
        with torch.no_grad():
            for name, p in self.backbone.named_parameters():
                anchor = self._anchor.get(name)
                if anchor is not None:
                    p.copy_(torch.where(masks[name], p, anchor))


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

    Args:
        temperature: T of the distillation KL (PROTOCOL: 4).
        alpha: α, weight of the KL on retain batches (PROTOCOL: 0.001).
        gamma: γ, weight of the CE on retain batches (PROTOCOL: 0.99).
        max_steps: number of leading epochs that include max-steps (SCRUB's ``msteps``).
        others: those of :class:`BaselineModule`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        original_ckpt: str | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: str = "criterion",
        temperature: float = 4.0,
        alpha: float = 0.001,
        gamma: float = 0.99,
        max_steps: int = 2,
    ) -> None:
        super().__init__(backbone, original_ckpt, num_classes, optimizer, lr_scheduler, stop_rule)
        if not temperature > 0:
            raise LTUError(f"temperature={temperature!r} must be > 0")
        _check_range("alpha", alpha, 0.0)
        _check_range("gamma", gamma, 0.0)
        if not isinstance(max_steps, int) or max_steps < 0:
            raise LTUError(
                f"max_steps={max_steps!r} must be an integer >= 0 (epochs with max-steps)"
            )
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
