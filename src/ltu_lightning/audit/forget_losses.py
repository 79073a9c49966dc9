"""Forgetting losses ``L_f``: one signature, ``loss(logits, targets) -> scalar``.

Minimizing any of them on forget samples makes the model forget them; they differ in *what*
"forgotten" means. ``mi`` (LTU's default) asks that the samples look like non-members to the
frozen membership auditors, which is what a retrained model shows; the other three are the
classic alternatives, better suited to class-wise forgetting where a retrained model does not
recognise the class at all. None of them has a natural end point: the stop rule decides when
to stop (see docs/method.md, "Stop rule").

They are plain callables, not ``nn.Module``: the auditors belong to the LightningModule that
owns them (and its checkpoint), not to the loss.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ltu_lightning.audit.auditors import AuditorEnsemble
from ltu_lightning.errors import LTUError
from ltu_lightning.utils.generators import OwnGenerator

#: The names of the forgetting losses (the ``forget_loss`` switch)
ForgetLossName = Literal["mi", "mi_match", "mi_hinge", "neg_ce", "random_label", "uniform_kl"]
FORGET_LOSSES: tuple[str, ...] = get_args(ForgetLossName)


class MILoss:
    """``mean_k BCE(M_k(features), 0)``: push forget samples to look like non-members.

    Computed as ``softplus(member_logit)`` (= BCE with target 0), which is exact where the
    auditor is very sure. Gradients flow into ``logits`` only (the auditors are frozen).
    """

    name = "mi"

    def __init__(self, ensemble: AuditorEnsemble) -> None:
        if not isinstance(ensemble, AuditorEnsemble):
            raise LTUError(
                f"the 'mi' forget loss needs an AuditorEnsemble, got {type(ensemble).__name__}"
            )
        self.ensemble = ensemble

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.softplus(self.ensemble.member_logits(logits, targets)).mean()


class MIHingeLoss(MILoss):
    """``mean_k mean_i max(0, BCE(M_k, 0) - BCE_k*)``: forget down to the non-member level only.

    ``BCE_k*`` is the loss at auditor k's median member-logit on the non-members it was fitted
    on (``AuditorEnsemble.nonmember_level``). Above that level the gradient is the ``mi``
    loss's; a forget sample that already looks like typical unseen data gets none, so the
    samples are not pushed past retrain-like into "never seen anything like it".
    """

    name = "mi_hinge"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        member = self.ensemble.member_logits(logits, targets)
        level = self.ensemble.nonmember_level.to(member.dtype).unsqueeze(1)
        return F.relu(F.softplus(member) - F.softplus(level)).mean()


class MIMatchLoss(MILoss):
    """Move the forget samples' membership scores to the non-member level, from either side.

    ``mean_k huber(mean_i M_k(x_i) − μ_k)`` with ``μ_k`` auditor k's mean member-logit on the
    non-members it was fitted on (``AuditorEnsemble.nonmember_mean``): the batch's mean score
    is matched to unseen data's. Under-forgetting (D_f scored more member-like than unseen
    data) and over-forgetting (scored *less* member-like, which a retrained model never shows)
    cost the same, and a batch already at the level is left alone (zero loss and gradient),
    so a start with nothing to forget is barely moved. The Huber loss (δ = 1) keeps the
    gradient bounded, like ``mi``'s, far from the level.
    """

    name = "mi_match"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        member = self.ensemble.member_logits(logits, targets)
        level = self.ensemble.nonmember_mean.to(member.dtype)
        gap = member.mean(dim=1) - level
        return F.huber_loss(gap, torch.zeros_like(gap), delta=1.0)


class NegCELoss:
    """``-CE(logits, targets)``: gradient ascent on the forget samples.

    Unbounded below (it rewards ever more confident mistakes), so it relies on the stop rule.
    """

    name = "neg_ce"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return -F.cross_entropy(logits.float(), targets)


class RandomLabelLoss(OwnGenerator):
    """``CE(logits, r)`` with ``r`` a random label different from the true one.

    ``r = (y + U{1..C-1}) mod C``, uniform over the wrong classes and never ``y``. A fresh
    ``r`` is drawn on every call from the loss's own CPU generator (seeded by ``seed``), so the
    model is pushed away from ``y`` without being taught a fixed wrong mapping, and the global
    RNG stream (data order, augmentations) is left untouched.

    Under data parallelism (an initialized process group of W ranks) every rank draws the
    labels of the whole global batch of ``W × local`` samples from the same generator state and
    keeps its share, positions ``rank, rank + W, …``: the interleaving in which
    ``DistributedSampler`` deals a permutation to the ranks. The ranks then relabel exactly as
    one process would relabel the global batch, and their generators stay in step.
    """

    name = "random_label"

    def __init__(self, num_classes: int | None, seed: int = 0) -> None:
        self.num_classes: int | None = None
        if num_classes is not None:
            self.set_num_classes(num_classes)
        self.generator = torch.Generator().manual_seed(seed)

    def set_num_classes(self, num_classes: int) -> None:
        """Set C (the unlearning modules infer it from the network's output width)."""
        if not isinstance(num_classes, int) or num_classes < 2:
            raise LTUError(f"random_label needs num_classes >= 2, got {num_classes!r}")
        self.num_classes = num_classes

    def sample_labels(self, targets: Tensor) -> Tensor:
        """Draw one wrong label per target (advances the generator)."""
        if self.num_classes is None:
            raise LTUError("random_label does not know num_classes yet: pass num_classes")
        shift = self.randint_share(1, self.num_classes, tuple(targets.shape))
        return (targets.cpu().long() + shift).remainder(self.num_classes).to(targets.device)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), self.sample_labels(targets))


class UniformKLLoss:
    """``KL(uniform || softmax(logits))``, averaged over samples: make predictions uniform.

    Zero exactly at uniform predictions. Its logit gradient is ``(p - 1/C) / N``, bounded,
    so unlike ``neg_ce`` it saturates instead of running away.
    """

    name = "uniform_kl"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        c = log_p.shape[1]
        return (-math.log(c) - log_p.mean(dim=1)).mean()


ForgetLoss = MILoss | MIMatchLoss | MIHingeLoss | NegCELoss | RandomLabelLoss | UniformKLLoss


def make_forget_loss(
    name: str,
    num_classes: int | None,
    auditors: AuditorEnsemble | None = None,
    seed: int = 0,
) -> ForgetLoss:
    """Build the forgetting loss named by the ``forget_loss`` switch.

    ``auditors`` is required for the ``mi`` losses (fitted before the first call); ``seed``
    feeds ``random_label``'s generator (``num_classes`` may be None there and set later).
    """
    if name not in FORGET_LOSSES:
        raise LTUError(f"unknown forget_loss {name!r}: choose from {', '.join(FORGET_LOSSES)}")
    if name in ("mi", "mi_match", "mi_hinge"):
        if auditors is None:
            raise LTUError(
                f"forget_loss {name!r} needs membership auditors: pass auditors=AuditorEnsemble(...)"
            )
        return {"mi": MILoss, "mi_match": MIMatchLoss, "mi_hinge": MIHingeLoss}[name](auditors)
    if name == "neg_ce":
        return NegCELoss()
    if name == "random_label":
        return RandomLabelLoss(num_classes, seed=seed)
    return UniformKLLoss()
