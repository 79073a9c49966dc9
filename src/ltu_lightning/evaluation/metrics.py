"""Unlearning metrics of the evaluation protocol (docs/protocol.md, "Metrics").

Plain functions: tensors or numpy arrays in, Python floats / dicts out, so the same code serves
the Lightning modules, the benchmark runner and notebooks. Accuracy comes from torchmetrics and
the attacks from scikit-learn; nothing here re-implements them.

Conventions: accuracies, UA/RA/TA and MIA-efficacy are percentages (0..100); AUCs are
fractions (0..1, 0.5 = indistinguishable). Bad input raises :class:`LTUError` with a one-line
message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from torchmetrics.functional.classification import multiclass_accuracy

from ltu_lightning.errors import LTUError

__all__ = [
    "DEFAULT_MAX_TRAIN",
    "FEATURES",
    "METRIC_KEYS",
    "accuracy",
    "avg_gap",
    "loss_auc",
    "loss_auc_attack",
    "mia_efficacy",
    "per_sample_outputs",
    "relative_time_efficiency",
    "selection_criterion",
    "summarize",
    "svc_mia_efficacy",
    "unlearning_metrics",
]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

#: Per-sample features the SVC attack can use (keys of :func:`per_sample_outputs`).
FEATURES = ("confidence", "entropy")
#: The metrics that enter Avg.Gap, in the protocol's order.
METRIC_KEYS = ("UA", "RA", "TA", "MIA")
#: Per-class cap on the SVC attack's training set: an RBF SVC is quadratic in its training size;
#: 10,000 keeps SalUn's CIFAR-10 setting (10k test non-members) exact and bounds the cost above it.
DEFAULT_MAX_TRAIN = 10_000
_LOG_EPS = 1e-8


# --------------------------------------------------------------------------- input helpers


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise LTUError(f"{name} must be a tensor or array, got {type(x).__name__}") from exc


def _to_1d(x: Any, name: str) -> np.ndarray:
    """A non-empty, finite, 1-D float64 array (what the attacks and summaries need)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LTUError(f"{name} must be numeric, got {type(x).__name__}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise LTUError(f"{name} must be 1-D (one value per sample), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise LTUError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise LTUError(f"{name} contains NaN or inf values")
    return arr


def _check_targets(targets: torch.Tensor, n: int, num_classes: int | None, name: str) -> None:
    if targets.ndim != 1:
        raise LTUError(f"{name} must be 1-D class labels, got shape {tuple(targets.shape)}")
    if targets.numel() != n:
        raise LTUError(f"{name} has {targets.numel()} samples but the predictions have {n}")
    if n == 0:
        raise LTUError(f"{name} is empty")
    if targets.is_floating_point() and not torch.equal(targets, targets.round()):
        raise LTUError(f"{name} must hold integer class labels")
    if int(targets.min()) < 0:
        raise LTUError(f"{name} has a negative class label")
    if num_classes is not None and int(targets.max()) >= num_classes:
        raise LTUError(
            f"{name} has label {int(targets.max())} but the logits have only {num_classes} classes"
        )


def _get(out: Mapping[str, Any], key: str, name: str) -> Any:
    if key not in out:
        raise LTUError(f"{name} has no {key!r} entry (expected the dict of per_sample_outputs)")
    return out[key]


# --------------------------------------------------------------------------- accuracy


def accuracy(logits_or_preds: ArrayLike, targets: ArrayLike) -> float:
    """Top-1 accuracy in percent (torchmetrics multiclass, micro average).

    Accepts logits/probabilities ``[N, C]`` (argmax is taken) or predicted labels ``[N]``, so
    callers need not care which one they kept.
    """
    preds = _to_tensor(logits_or_preds, "logits_or_preds")
    tgt = _to_tensor(targets, "targets")
    if preds.ndim == 2:
        num_classes = int(preds.shape[1])
        _check_targets(tgt, int(preds.shape[0]), num_classes, "targets")
        preds = preds.float()
    elif preds.ndim == 1:
        _check_targets(tgt, int(preds.numel()), None, "targets")
        _check_targets(preds, int(preds.numel()), None, "logits_or_preds")
        preds = preds.long()
        num_classes = int(max(int(preds.max()), int(tgt.max()))) + 1
    else:
        raise LTUError(
            f"logits_or_preds must be logits [N, C] or labels [N], got shape {tuple(preds.shape)}"
        )
    num_classes = max(num_classes, 2)  # torchmetrics rejects a single class
    acc = multiclass_accuracy(
        preds, tgt.long(), num_classes=num_classes, average="micro", validate_args=False
    )
    return float(acc) * 100.0


def per_sample_outputs(logits: ArrayLike, targets: ArrayLike) -> dict[str, np.ndarray]:
    """Per-sample ``loss`` (CE), ``confidence`` (p of the true label), ``entropy``, ``correct``.

    These are the inputs of every metric below (accuracy, both attacks), so a model is run over
    each split once and the evaluation works from these arrays. Computed in float64 so that the
    confidences of an overfit model are not all rounded to exactly 1.0.
    """
    lg = _to_tensor(logits, "logits")
    tgt = _to_tensor(targets, "targets")
    if lg.ndim != 2:
        raise LTUError(f"logits must have shape [N, C], got {tuple(lg.shape)}")
    _check_targets(tgt, int(lg.shape[0]), int(lg.shape[1]), "targets")
    lg = lg.double()
    tgt = tgt.long()
    log_p = F.log_softmax(lg, dim=1)
    p = log_p.exp()
    loss = F.nll_loss(log_p, tgt, reduction="none")
    confidence = p.gather(1, tgt[:, None])[:, 0]
    entropy = -(p * log_p).sum(dim=1)  # p -> 0 makes p*log_p -> 0: log_softmax stays finite
    correct = lg.argmax(dim=1) == tgt
    return {
        "loss": loss.numpy(),
        "confidence": confidence.numpy(),
        "entropy": entropy.clamp_min(0.0).numpy(),
        "correct": correct.numpy(),
    }


def _acc_from_out(out: Mapping[str, Any], name: str) -> float:
    correct = np.asarray(_get(out, "correct", name), dtype=bool).reshape(-1)
    if correct.size == 0:
        raise LTUError(f"{name} is empty")
    return float(correct.mean()) * 100.0


# --------------------------------------------------------------------------- attacks


def _balanced(
    a: np.ndarray, b: np.ndarray, rng: np.random.Generator, cap: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample both classes to the same size (the smaller one's, capped), without replacement."""
    n = min(a.size, b.size)
    if cap is not None:
        n = min(n, cap)
    if a.size > n:
        a = a[rng.choice(a.size, size=n, replace=False)]
    if b.size > n:
        b = b[rng.choice(b.size, size=n, replace=False)]
    return a, b


def svc_mia_efficacy(
    member_feat: ArrayLike,
    nonmember_feat: ArrayLike,
    target_feat: ArrayLike,
    seed: int = 0,
    max_train: int | None = DEFAULT_MAX_TRAIN,
) -> float:
    """SalUn's MIA-efficacy: percent of ``target_feat`` an RBF SVC calls *non-member*.

    The SVC (C=3, gamma="auto") is fitted on a balanced, seeded sample of members (label 1,
    a sample of D_r) and non-members (label 0, the test set) of one per-sample feature. Higher
    means the target set (D_f) looks less like training data, i.e. more forgotten.
    ``max_train`` caps the per-class training size (None: no cap) because SVC fitting is
    quadratic in it.
    """
    if max_train is not None and max_train < 1:
        raise LTUError(f"max_train must be >= 1 or None, got {max_train}")
    members = _to_1d(member_feat, "member_feat")
    nonmembers = _to_1d(nonmember_feat, "nonmember_feat")
    target = _to_1d(target_feat, "target_feat")
    rng = np.random.default_rng(seed)
    members, nonmembers = _balanced(members, nonmembers, rng, max_train)
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.ones(members.size), np.zeros(nonmembers.size)])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    pred = clf.predict(target[:, None])
    return float(np.mean(pred == 0)) * 100.0


def mia_efficacy(
    remaining_out: Mapping[str, Any],
    test_out: Mapping[str, Any],
    forget_out: Mapping[str, Any],
    feature: str = "confidence",
    seed: int = 0,
    max_train: int | None = DEFAULT_MAX_TRAIN,
) -> float:
    """:func:`svc_mia_efficacy` on the dicts of :func:`per_sample_outputs`.

    Members are D_r, non-members the test set, the target D_f (docs/protocol.md, "Metrics").
    """
    if feature not in FEATURES:
        raise LTUError(f"unknown MIA feature {feature!r}; choose one of {', '.join(FEATURES)}")
    return svc_mia_efficacy(
        _get(remaining_out, feature, "remaining_out"),
        _get(test_out, feature, "test_out"),
        _get(forget_out, feature, "forget_out"),
        seed=seed,
        max_train=max_train,
    )


def loss_auc_attack(
    forget_loss: ArrayLike, test_loss: ArrayLike, folds: int = 5, seed: int = 0
) -> float:
    """Cross-validated ROC AUC of a logistic-regression attack on log per-sample losses.

    The second, independent attack of the protocol (Deep Unlearn / NeurIPS challenge style):
    D_f is label 1, the test set label 0, both subsampled (seeded) to the same size; the AUC
    is the mean over stratified k folds. 0.5 = indistinguishable (retrain-like); a 1-D
    logistic regression is monotone, so values may dip slightly below 0.5 by chance.

    Degenerate inputs do not crash: folds are reduced to the per-class sample count (min 2);
    with a single sample per class no cross-validation is possible and NaN is returned;
    identical losses give 0.5.
    """
    if folds < 2:
        raise LTUError(f"folds must be >= 2, got {folds}")
    f_loss = _to_1d(forget_loss, "forget_loss")
    t_loss = _to_1d(test_loss, "test_loss")
    if np.any(f_loss < -1e-6) or np.any(t_loss < -1e-6):
        raise LTUError("losses must be non-negative (per-sample cross-entropy)")
    rng = np.random.default_rng(seed)
    f_loss, t_loss = _balanced(f_loss, t_loss, rng, None)
    n = f_loss.size
    if n < 2:
        return float("nan")
    x = np.log(np.clip(np.concatenate([f_loss, t_loss]), 0.0, None) + _LOG_EPS)[:, None]
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    if np.ptp(x) == 0.0:
        return 0.5
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    scores = cross_val_score(model, x, y, cv=cv, scoring="roc_auc", error_score="raise")
    return float(np.mean(scores))


def loss_auc(a_loss: ArrayLike, b_loss: ArrayLike) -> float:
    """ROC AUC (0..1) of "a is the member" scored by lower per-sample loss; no training.

    Cheap and deterministic, so it is what :func:`selection_criterion` uses (D_f vs the
    validation half of the holdout) while choosing hyperparameters.
    """
    a = _to_1d(a_loss, "a_loss")
    b = _to_1d(b_loss, "b_loss")
    y = np.concatenate([np.ones(a.size), np.zeros(b.size)])
    return float(roc_auc_score(y, -np.concatenate([a, b])))


# --------------------------------------------------------------------------- aggregates


def unlearning_metrics(
    forget_out: Mapping[str, Any],
    remaining_out: Mapping[str, Any],
    test_out: Mapping[str, Any],
    seed: int = 0,
    max_train: int | None = DEFAULT_MAX_TRAIN,
) -> dict[str, float]:
    """All protocol metrics of one model from its :func:`per_sample_outputs` on D_f, D_r, test.

    Keys: ``UA`` = 100 − Acc(D_f), ``RA``, ``TA``, ``MIA`` (SVC efficacy, confidence),
    ``MIA_entropy`` (percent) and ``loss_auc`` (the CV attack's AUC of D_f vs test, 0..1).
    """
    return {
        "UA": 100.0 - _acc_from_out(forget_out, "forget_out"),
        "RA": _acc_from_out(remaining_out, "remaining_out"),
        "TA": _acc_from_out(test_out, "test_out"),
        "MIA": mia_efficacy(remaining_out, test_out, forget_out, "confidence", seed, max_train),
        "MIA_entropy": mia_efficacy(
            remaining_out, test_out, forget_out, "entropy", seed, max_train
        ),
        "loss_auc": loss_auc_attack(
            _get(forget_out, "loss", "forget_out"), _get(test_out, "loss", "test_out"), seed=seed
        ),
    }


def avg_gap(
    metrics: Mapping[str, float],
    retrain_metrics: Mapping[str, float],
    keys: Sequence[str] = METRIC_KEYS,
) -> float:
    """Avg.Gap: mean of |metric − Retrain's metric| over ``keys`` (lower is better)."""
    if len(keys) == 0:
        raise LTUError("avg_gap needs at least one metric key")
    gaps = []
    for k in keys:
        if k not in metrics:
            raise LTUError(f"metrics has no {k!r} entry")
        if k not in retrain_metrics:
            raise LTUError(f"retrain_metrics has no {k!r} entry")
        gaps.append(abs(float(metrics[k]) - float(retrain_metrics[k])))
    return float(np.mean(gaps))


def selection_criterion(
    forget_acc: float,
    val_acc: float,
    original_val_acc: float,
    forget_val_loss_auc: float,
    forget_target: float | None = None,
) -> float:
    """The honest hyperparameter-selection score of docs/protocol.md (lower is better).

    Uses only what a real unlearner has (D_f, the validation half of the holdout, the original
    model) — never the test split or the retrained model. Mean of three terms, all in
    percentage points:

    - ``|Acc(D_f) − Acc(val)|``: forgotten data should look like unseen data, no more, no less;
    - ``2·max(0, original_val_acc − val_acc)``: twice the utility lost on validation data;
    - ``100·|AUC − 0.5|``: the loss-AUC of D_f vs val (:func:`loss_auc`) should be chance.

    Accuracies are percentages (0..100), the AUC a fraction (0..1). ``forget_target``
    replaces Acc(val) in the first term where unseen data is not the target: in class-wise
    forgetting a retrained model scores 0 on the forgotten classes.
    """
    vals = {
        "forget_acc": forget_acc,
        "val_acc": val_acc,
        "original_val_acc": original_val_acc,
        "forget_val_loss_auc": forget_val_loss_auc,
    }
    for name, v in vals.items():
        if not math.isfinite(float(v)):
            raise LTUError(f"{name} must be a finite number, got {v}")
    if not 0.0 <= forget_val_loss_auc <= 1.0:
        raise LTUError(
            f"forget_val_loss_auc must be a fraction in [0, 1], got {forget_val_loss_auc}"
        )
    terms = (
        abs(forget_acc - (val_acc if forget_target is None else forget_target)),
        2.0 * max(0.0, original_val_acc - val_acc),
        100.0 * abs(forget_val_loss_auc - 0.5),
    )
    return float(sum(terms) / len(terms))


def relative_time_efficiency(retrain_time_s: float, unlearn_time_s: float) -> float:
    """RTE = retrain time / unlearning time (higher is better; both from the same run).

    Zero-safe: an unlearning time of 0 gives ``inf`` (``nan`` if the retrain time is 0 too).
    """
    for name, v in (("retrain_time_s", retrain_time_s), ("unlearn_time_s", unlearn_time_s)):
        if not math.isfinite(float(v)) or v < 0:
            raise LTUError(f"{name} must be a finite, non-negative number of seconds, got {v}")
    if unlearn_time_s == 0:
        return float("nan") if retrain_time_s == 0 else float("inf")
    return float(retrain_time_s) / float(unlearn_time_s)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) over seeds, as reported ("mean ± std").

    The sample std estimates the spread between seeds; with a single value it is 0.0.
    NaN values propagate (a NaN seed is visible, not silently dropped).
    """
    arr = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise LTUError("summarize needs at least one value")
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(np.mean(arr)), "std": std}
