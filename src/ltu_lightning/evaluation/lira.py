"""Per-example membership scores in the style of LiRA (Carlini et al., "Membership Inference
Attacks From First Principles", IEEE S&P 2022), and the figures a membership audit reports.

Pure functions of numbers (numpy, scipy, scikit-learn): the shadow models that produce the
scores are trained by ``ltu_lightning.benchmark.shadows``; docs/protocol.md ("Per-example
membership audit") says what the audit measures and what it costs.

The pieces, in the order the audit uses them:

1. :func:`logit_confidence`: φ(x) = log(p_y / (1 − p_y)), the logit-scaled confidence of the
   true label, computed from the logits as z_y − logsumexp_{j≠y} z_j (exact, no clipping of p).
2. :func:`fit_shadow_gaussians`: per example, a Gaussian of φ over the shadow models that
   trained on it (IN) and one over those that did not (OUT).
3. :func:`online_scores` (the log likelihood ratio IN vs OUT) and :func:`offline_scores` (a
   one-sided test against OUT only): one score per example of the audited model, higher =
   more member-like.
4. :func:`membership_figures`: ROC AUC, TPR at a low FPR and the count of members scored
   above the 1 %-FPR threshold, members against a non-member reference set.

Conventions: AUCs are fractions (0..1, 0.5 = chance), TPRs percentages (0..100) as in the LiRA
paper's tables, counts are counts. Bad input raises :class:`LTUError` in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from ltu_lightning.errors import LTUError

__all__ = [
    "GLOBAL_VARIANCE_BELOW",
    "MIN_STD",
    "ShadowGaussians",
    "fit_shadow_gaussians",
    "logit_confidence",
    "membership_figures",
    "offline_scores",
    "online_scores",
    "tpr_at_fpr",
]

Variance = Literal["auto", "global", "per_example"]
#: ``variance="auto"`` fits one variance per side for all examples below this many shadow
#: models (LiRA's advice: per-example variances need many shadows, 64 in the paper's Fig. 8)
GLOBAL_VARIANCE_BELOW = 64
#: floor of every fitted standard deviation (φ units): float32 logits resolve φ to ~1e-5, and a
#: zero variance would make one example's likelihood ratio infinite
MIN_STD = 1e-3


def logit_confidence(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """φ = log(p_y / (1 − p_y)) per example, from logits ``[N, C]`` and labels ``[N]``.

    With p = softmax(z): log p_y = z_y − lse(z) and log(1 − p_y) = lse_{j≠y}(z_j) − lse(z), so
    φ = z_y − logsumexp_{j≠y} z_j, in float64. This stays finite and exact where p_y rounds to
    1 in floating point (an overfit model's training samples), where computing log(1 − p_y)
    from p would give −inf.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    if z.ndim != 2 or z.shape[1] < 2:
        raise LTUError(f"logits must have shape [N, C] with C ≥ 2, got {tuple(z.shape)}")
    if y.shape != (z.shape[0],):
        raise LTUError(f"targets must have shape ({z.shape[0]},), got {tuple(y.shape)}")
    if not np.all(np.isfinite(z)):
        raise LTUError("logits contain NaN or inf values")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1] or not np.all(y == np.round(y))):
        raise LTUError(f"targets must be class labels in 0..{z.shape[1] - 1}")
    y = y.astype(np.int64)
    rows = np.arange(z.shape[0])
    others = z.copy()
    others[rows, y] = -np.inf
    return z[rows, y] - logsumexp(others, axis=1)


@dataclass(frozen=True)
class ShadowGaussians:
    """Per-example Gaussians of the shadow models' φ: mean and std (shape ``[n]``) of the
    shadows that trained on each example (``in``) and of those that did not (``out``);
    ``variance``: how the stds were fitted (``global`` or ``per_example``)."""

    mean_in: np.ndarray
    std_in: np.ndarray
    mean_out: np.ndarray
    std_out: np.ndarray
    variance: str


def _side(
    scores: np.ndarray, mask: np.ndarray, per_example: bool, side: str
) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(axis=0)
    if (count == 0).any():
        raise LTUError(
            f"{int((count == 0).sum())} of {count.size} examples have no shadow model {side} "
            f"of their training set; train more shadow models (each example must be {side} for at least one)"
        )
    values = np.where(mask, scores, 0.0)
    mean = values.sum(axis=0) / count
    resid = np.where(mask, scores - mean, 0.0)
    sq = (resid**2).sum(axis=0)
    df = int(count.sum() - count.size)
    if df >= 1:
        # pooled within-example variance: each example's scores around its own mean
        global_std = float(np.sqrt(sq.sum() / df))
    else:
        # one score per example (e.g. 2 shadow models): only the spread of all of them is left
        flat = scores[mask]
        if flat.size < 2:
            raise LTUError(
                f"one shadow score {side} of training cannot give a variance; train more shadow models"
            )
        global_std = float(np.std(flat, ddof=1))
    std = np.full(count.size, global_std)
    if per_example:
        several = count >= 2
        std[several] = np.sqrt(sq[several] / (count[several] - 1))
    return mean, np.maximum(std, MIN_STD)


def fit_shadow_gaussians(
    shadow_scores: np.ndarray, in_mask: np.ndarray, variance: Variance = "auto"
) -> ShadowGaussians:
    """Fit the IN and OUT Gaussians of every example from its shadow models' φ.

    Args:
        shadow_scores: φ of each shadow model (rows) on each audited example (columns), ``[S, n]``.
        in_mask: ``[S, n]`` booleans, True where that shadow model trained on that example.
        variance: ``per_example``: each example's own sample std (ddof 1) per side, where it
            has at least 2 shadow scores on that side (else the global one); ``global``: one std
            per side for all examples, the pooled within-example std (each example's scores
            around its own mean; with only one score per example and side, the std of all of
            them); ``auto``: ``global`` below :data:`GLOBAL_VARIANCE_BELOW` shadow models, as
            LiRA advises for few shadows. Every std is at least :data:`MIN_STD`.

    The means are always per example. (LiRA's reference code takes the global variance as the
    std of all IN scores together, between-example spread included; the pooled within-example
    std used here is the variance the per-example Gaussians actually have.)
    """
    scores = np.asarray(shadow_scores, dtype=np.float64)
    mask = np.asarray(in_mask)
    if scores.ndim != 2:
        raise LTUError(
            f"shadow_scores must be [shadows, examples], got shape {tuple(scores.shape)}"
        )
    if mask.shape != scores.shape or mask.dtype != np.bool_:
        raise LTUError(
            f"in_mask must be booleans of the shape of shadow_scores {tuple(scores.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if not np.all(np.isfinite(scores)):
        raise LTUError("shadow_scores contain NaN or inf values")
    if variance not in ("auto", "global", "per_example"):
        raise LTUError(f"variance={variance!r} is unknown; choose auto, global or per_example")
    if variance == "auto":
        variance = "global" if scores.shape[0] < GLOBAL_VARIANCE_BELOW else "per_example"
    per_example = variance == "per_example"
    mean_in, std_in = _side(scores, mask, per_example, "in")
    mean_out, std_out = _side(scores, ~mask, per_example, "out")
    return ShadowGaussians(mean_in, std_in, mean_out, std_out, variance)


def _target(scores: np.ndarray, fit: ShadowGaussians) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != fit.mean_out.shape:
        raise LTUError(
            f"the audited model's scores have shape {tuple(s.shape)} but the shadow fit covers "
            f"{fit.mean_out.size} examples; score the same examples in the same order"
        )
    if not np.all(np.isfinite(s)):
        raise LTUError("the audited model's scores contain NaN or inf values")
    return s


def online_scores(target_scores: np.ndarray, fit: ShadowGaussians) -> np.ndarray:
    """LiRA's online test: log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²) per example.

    Positive: the audited model's φ on the example is more likely under the models that trained
    on it than under those that did not. Higher = more member-like."""
    s = _target(target_scores, fit)
    return norm.logpdf(s, fit.mean_in, fit.std_in) - norm.logpdf(s, fit.mean_out, fit.std_out)


def offline_scores(target_scores: np.ndarray, fit: ShadowGaussians) -> np.ndarray:
    """LiRA's offline test (OUT models only): −log of the one-sided p-value
    Pr[Z ≥ φ], Z ~ N(μ_out, σ_out²), per example, i.e. how far above the never-trained-on
    models' confidence the audited model's is. Higher = more member-like; 0.69 (= log 2) is
    the OUT mean itself."""
    s = _target(target_scores, fit)
    return -norm.logsf(s, fit.mean_out, fit.std_out)


def _scores_1d(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise LTUError(
            f"{name} must be a non-empty 1-D array of scores, got shape {tuple(a.shape)}"
        )
    if not np.all(np.isfinite(a)):
        raise LTUError(f"{name} contains NaN or inf values")
    return a


def _roc(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    return roc_curve(y, np.concatenate([members, nonmembers]), drop_intermediate=False)


def _at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> int:
    """Index of the ROC point with the highest TPR among those with FPR ≤ ``alpha``."""
    if not 0.0 <= alpha < 1.0:
        raise LTUError(f"an FPR of {alpha} is outside [0, 1); use e.g. 0.01 for 1 %")
    ok = np.flatnonzero(fpr <= alpha + 1e-12)  # roc_curve's first point is FPR 0
    return int(ok[np.argmax(tpr[ok])])


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """TPR (percent) at FPR ≤ ``fpr`` of the rule "member if score ≥ t", from
    ``sklearn.metrics.roc_curve``: the highest TPR among the ROC's points with FPR ≤ ``fpr``.

    The ROC of n non-members moves in FPR steps of 1/n, so an ``fpr`` below 1/n (0.1 % with
    fewer than 1,000 non-members) is reported as the TPR at zero false positives: the percentage
    of members scored above every non-member. That is a conservative figure (the strictest
    threshold the data can resolve), as in LiRA's reference code.
    """
    members = _scores_1d(member_scores, "member_scores")
    nonmembers = _scores_1d(nonmember_scores, "nonmember_scores")
    fprs, tprs, _ = _roc(members, nonmembers)
    return 100.0 * float(tprs[_at_fpr(fprs, tprs, fpr)])


def membership_figures(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    fprs: tuple[float, ...] = (0.01, 0.001),
    like_fpr: float = 0.01,
) -> dict[str, float]:
    """The audit's figures for one scored model: "members" (the audit's D_f) against a
    non-member reference set, higher score = more member-like.

    Keys: ``auc`` (ROC AUC, 0..1; 0.5 = the members look like non-members), ``tpr@<f>%`` for
    each FPR in ``fprs`` (percent, :func:`tpr_at_fpr`; ``tpr@1%`` and ``tpr@0.1%`` by default)
    and ``member_like``: how many members score at or above the threshold that flags at most
    ``like_fpr`` of the non-members (the ROC point of :func:`tpr_at_fpr`; so it is
    ``tpr@1%`` × the number of members, as a count). ``fpr_resolution``: 1 / the number of
    non-members, the smallest FPR the figures resolve.
    """
    members = _scores_1d(member_scores, "member_scores")
    nonmembers = _scores_1d(nonmember_scores, "nonmember_scores")
    fpr, tpr, thresholds = _roc(members, nonmembers)
    y = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    out = {"auc": float(roc_auc_score(y, np.concatenate([members, nonmembers])))}
    for alpha in fprs:
        out[f"tpr@{100 * alpha:g}%"] = 100.0 * float(tpr[_at_fpr(fpr, tpr, alpha)])
    threshold = thresholds[_at_fpr(fpr, tpr, like_fpr)]
    out["member_like"] = float(np.sum(members >= threshold))
    out["fpr_resolution"] = 1.0 / nonmembers.size
    return out
