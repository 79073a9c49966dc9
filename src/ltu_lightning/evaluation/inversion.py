"""Unlearning inversion: what the difference between the original and an unlearned model says
about the labels of the forget set D_f (Hu et al., "Learn What You Want to Unlearn: Unlearning
Inversion Attacks", IEEE S&P 2024).

An attacker who can query (or read) the model before and after unlearning compares the two; the
classes whose outputs drop are those D_f was made of. Two label-inference attacks, each scoring
every class (higher = more likely in D_f):

- **white-box** (:func:`white_box_scores`): the attacker reads the final linear layer (the
  classifier head) of both models. Class c's score is the drop of its head output at the
  original model's mean head input on the probe inputs, ``-(ΔW_c · h̄ + Δb_c)``, centred over
  classes (a shift of every logit changes no prediction).
- **black-box** (:func:`black_box_scores`): the attacker only sees softmax outputs. Class c's
  score is the drop of its mean probability on the probe inputs, original minus unlearned.

Probe inputs are data neither model trained on (the benchmark uses the test split). Scores are
turned into the columns of :func:`inversion_metrics`; docs/protocol.md ("Inversion audit") says
what each column means and what chance is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from torch import nn

from ltu_lightning.errors import LTUError


@dataclass
class ProbeOutputs:
    """A model's outputs on the probe inputs: ``logits`` [N, C] and ``features`` [N, D], the
    input of its classifier head (float64, on the CPU)."""

    logits: torch.Tensor
    features: torch.Tensor


def classifier_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` of ``model`` with ``num_classes`` outputs
    (:func:`probe_outputs` checks that its output is the model's)."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    heads = [m for m in heads if m.out_features == num_classes]
    if not heads:
        raise LTUError(
            f"{type(model).__name__} has no nn.Linear with {num_classes} outputs; the white-box "
            "inversion audit reads the final linear layer (the classifier head) of the network"
        )
    return heads[-1]


@torch.no_grad()
def probe_outputs(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | Iterable[torch.Tensor],
    num_classes: int,
    device: torch.device | str = "cpu",
) -> ProbeOutputs:
    """Logits and head inputs of ``model`` (eval mode) on ``batches`` (``x`` or ``(x, y)``).

    Refuses a network whose head (:func:`classifier_head`) does not produce its output."""
    head = classifier_head(model, num_classes)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    was_training = model.training
    model.eval()
    logits, features = [], []
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
            captured.clear()
            out = model(x)
            if len(captured) != 1 or not torch.allclose(head(captured[0]), out):
                raise LTUError(
                    f"the last nn.Linear with {num_classes} outputs of {type(model).__name__} "
                    "is not its output layer; the white-box inversion audit needs a network "
                    "that ends in its classifier head"
                )
            logits.append(out.double().cpu())
            features.append(captured[0].flatten(1).double().cpu())
    finally:
        hook.remove()
        model.train(was_training)
    if not logits:
        raise LTUError("the inversion audit got no probe inputs; give it a non-empty loader")
    return ProbeOutputs(torch.cat(logits), torch.cat(features))


def _centred(values: torch.Tensor) -> np.ndarray:
    return (values - values.mean()).numpy()


@torch.no_grad()
def white_box_scores(
    original_head: nn.Linear, unlearned_head: nn.Linear, features: torch.Tensor
) -> np.ndarray:
    """Per-class drop of the head's output at the mean probe feature ``h̄`` (``features``: the
    original model's head inputs on the probes): ``-(ΔW_c · h̄ + Δb_c)``, centred over classes.

    The head alone is read: ``ΔW`` and ``Δb`` are unlearned minus original weights; a head
    without bias has ``Δb = 0``."""
    w_o, w_u = original_head.weight.double().cpu(), unlearned_head.weight.double().cpu()
    if w_o.shape != w_u.shape or w_o.shape[1] != features.shape[1]:
        raise LTUError(
            f"classifier heads of shapes {tuple(w_o.shape)} and {tuple(w_u.shape)} on features of "
            f"width {features.shape[1]}: compare two models of the same architecture"
        )
    drop = -(w_u - w_o) @ features.double().mean(0)
    if original_head.bias is not None and unlearned_head.bias is not None:
        drop -= unlearned_head.bias.double().cpu() - original_head.bias.double().cpu()
    return _centred(drop)


def black_box_scores(original_logits: torch.Tensor, unlearned_logits: torch.Tensor) -> np.ndarray:
    """Per-class drop of the mean softmax probability on the probes, original minus unlearned
    (the scores sum to 0)."""
    p_o = torch.softmax(original_logits.double(), dim=1).mean(0)
    p_u = torch.softmax(unlearned_logits.double(), dim=1).mean(0)
    return (p_o - p_u).numpy()


def inferred_histogram(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    """The attacker's estimate of D_f's label distribution: the positive part of the scores,
    normalized to sum 1 (uniform when no score is positive: the attack learned nothing)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    return s / s.sum() if s.sum() > 0 else np.full(s.size, 1.0 / s.size)


def label_histogram(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Relative frequency of each class among ``labels``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if counts.size != num_classes or counts.sum() == 0:
        raise LTUError(f"labels must be a non-empty list of classes 0..{num_classes - 1}")
    return counts / counts.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance ``½ Σ |p_c − q_c|`` (0 = equal, 1 = disjoint supports)."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def class_ranks(scores: np.ndarray, classes: Sequence[int]) -> tuple[float, float]:
    """``(hit, rank)`` of the forgotten ``classes`` under ``scores``: the fraction of them among
    the ``k = len(classes)`` top-scored classes, and their mean rank (1 = top scored; ties share
    the average rank). Chance: ``k / C`` and ``(C + 1) / 2``."""
    k = len(classes)
    ranks = rankdata(-np.asarray(scores, dtype=np.float64), method="average")
    top = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
    hit = len(top & {int(c) for c in classes}) / k
    return hit, float(np.mean([ranks[int(c)] for c in classes]))


def excess_correlation(scores: np.ndarray, forget_labels: np.ndarray, prior: np.ndarray) -> float:
    """Spearman correlation between the class scores and D_f's count excess over what a random
    draw of its size from the training labels gives, ``n_c − |D_f| · π_c``: how well the attack
    ranks the classes D_f has more of than expected (0 = chance; NaN when either is constant)."""
    counts = np.bincount(forget_labels, minlength=prior.size)
    excess = counts - counts.sum() * prior
    if np.ptp(scores) == 0 or np.ptp(excess) == 0:
        return float("nan")
    return float(spearmanr(scores, excess).statistic)


def inversion_metrics(
    original: ProbeOutputs,
    unlearned: ProbeOutputs,
    original_head: nn.Linear,
    unlearned_head: nn.Linear,
    forget_labels: Sequence[int] | np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    forget_classes: Sequence[int] = (),
) -> dict[str, float]:
    """The inversion audit's columns for one unlearned model against the original.

    - ``inv_wb_tv``, ``inv_bb_tv``: total variation between the white-/black-box inferred
      label histogram (:func:`inferred_histogram`) and D_f's true one (lower = better attack).
    - ``inv_prior_tv``: the same for the training-label prior, what an attacker without the
      models guesses; an attack beats chance when its TV is below this.
    - class-wise forgetting (``forget_classes``): ``inv_wb_hit``/``inv_bb_hit`` and
      ``inv_wb_rank``/``inv_bb_rank`` of :func:`class_ranks` (chance ``k/C``, ``(C+1)/2``);
    - random forgetting: ``inv_wb_rho``/``inv_bb_rho`` of :func:`excess_correlation`
      (chance 0).
    """
    num_classes = original.logits.shape[1]
    forget = np.asarray(forget_labels, dtype=np.int64)
    truth = label_histogram(forget, num_classes)
    prior = label_histogram(train_labels, num_classes)
    scores = {
        "wb": white_box_scores(original_head, unlearned_head, original.features),
        "bb": black_box_scores(original.logits, unlearned.logits),
    }
    out = {f"inv_{k}_tv": total_variation(inferred_histogram(s), truth) for k, s in scores.items()}
    out["inv_prior_tv"] = total_variation(prior, truth)
    for kind, s in scores.items():
        if forget_classes:
            out[f"inv_{kind}_hit"], out[f"inv_{kind}_rank"] = class_ranks(s, forget_classes)
        else:
            out[f"inv_{kind}_rho"] = excess_correlation(s, forget, prior)
    return out
