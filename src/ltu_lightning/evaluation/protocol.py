"""The evaluation protocol applied to a model and a split: PROTOCOL.md's metrics in one call."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ltu_lightning.evaluation.metrics import per_sample_outputs, unlearning_metrics


@torch.no_grad()
def role_outputs(
    model: nn.Module, datamodule: Any, role: str, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray]:
    """Per-sample loss/confidence/entropy/correct of ``model`` (eval mode) on one data role."""
    was_training = model.training
    model.eval()
    # a model trained with ``--trainer.precision bf16-true``/``64-true`` keeps that dtype
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    logits, targets = [], []
    try:
        for x, y in datamodule.role_dataloader(role):
            x = x.to(device, dtype) if x.is_floating_point() else x.to(device)
            logits.append(model(x).float().cpu())
            targets.append(y)
    finally:
        model.train(was_training)
    out = per_sample_outputs(torch.cat(logits), torch.cat(targets))
    out["targets"] = torch.cat(targets).numpy()
    return out


def detection_threshold(n_forget: int, n_test: int) -> float:
    """AUC above which D_f is distinguishable from test data at about 2 standard errors.

    Hanley & McNeil's standard error of an AUC of 0.5 for ``n_forget`` positives and ``n_test``
    negatives: sqrt((n_f + n_t + 1) / (12 n_f n_t)).
    """
    n = min(n_forget, n_test)  # the attack balances both sides by subsampling
    return 0.5 + 2.0 * math.sqrt((2 * n + 1) / (12.0 * n * n))


def evaluate_unlearning(
    model: nn.Module, datamodule: Any, seed: int = 0, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """UA, RA, TA, MIA (confidence and entropy SVC), loss-AUC attack, plus class-wise accuracies.

    Percentages except ``loss_auc`` (0..1). For class-wise forgetting, ``TA_remaining_classes``
    and ``TA_forgotten_classes`` split the test accuracy; ``detectable`` is 1.0 when the
    loss-AUC attack separates D_f from test data beyond ~2 standard errors of chance, or D_f is
    classified better than test data beyond 2 standard errors (``correct_gap_z``).
    """
    forget = role_outputs(model, datamodule, "forget", device)
    remaining = role_outputs(model, datamodule, "remaining", device)
    test = role_outputs(model, datamodule, "test", device)
    metrics = unlearning_metrics(forget, remaining, test, seed=seed)
    classes = getattr(datamodule, "hparams", {}).get("forget_classes")
    if classes:
        forgotten = np.isin(test["targets"], classes)
        metrics["TA_remaining_classes"] = 100.0 * float(test["correct"][~forgotten].mean())
        metrics["TA_forgotten_classes"] = 100.0 * float(test["correct"][forgotten].mean())
    threshold = detection_threshold(len(forget["loss"]), len(test["loss"]))
    metrics["detect_threshold"] = threshold
    metrics["correct_gap_z"] = correct_gap_z(forget["correct"], test["correct"])
    metrics["detectable"] = float(metrics["loss_auc"] > threshold or metrics["correct_gap_z"] > 2.0)
    return metrics


def correct_gap_z(forget_correct: np.ndarray, test_correct: np.ndarray) -> float:
    """z-score of "D_f is classified better than test data" (two-proportion test).

    The simplest membership attack guesses *member* when a sample is classified correctly
    (Yeom et al. 2018); its advantage is Acc(D_f) − Acc(test). A z above 2 means the forget
    set is still recognisably better fit than unseen data.
    """
    n_f, n_t = len(forget_correct), len(test_correct)
    p_f, p_t = float(np.mean(forget_correct)), float(np.mean(test_correct))
    pooled = (p_f * n_f + p_t * n_t) / (n_f + n_t)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_f + 1 / n_t))
    return (p_f - p_t) / se


def verdict(metrics: dict[str, float], reference: dict[str, float] | None = None) -> str:
    """One sentence a user can act on: is the forget set still detectable by the attacks?"""
    auc, thr = metrics["loss_auc"], metrics["detect_threshold"]
    base = (
        f"loss-AUC of forget vs test = {auc:.3f} (chance 0.5, detectable above {thr:.3f}); "
        f"accuracy gap forget - test = {100 - metrics['UA'] - metrics['TA']:+.1f} points "
        f"(z = {metrics['correct_gap_z']:.1f}, detectable above 2); "
        f"MIA-efficacy = {metrics['MIA']:.1f}%, UA = {metrics['UA']:.1f}%"
    )
    if reference is not None:
        base += f"; retrain reference: loss-AUC {reference['loss_auc']:.3f}, MIA {reference['MIA']:.1f}%"
    if metrics["detectable"]:
        return f"NOT FORGOTTEN: the forget set is still detectable by a membership attack ({base})."
    return f"FORGOTTEN: the membership attacks cannot tell the forget set from unseen test data ({base})."
