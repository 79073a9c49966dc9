"""The evaluation protocol applied to a model and a split: the metrics of docs/protocol.md in one
call, for a module in memory or a checkpoint on disk."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ltu_lightning.evaluation.metrics import loss_auc, per_sample_outputs, unlearning_metrics
from ltu_lightning.modules.checkpoints import load_backbone_weights


def role_outputs(
    model: nn.Module, datamodule: Any, role: str, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray]:
    """Per-sample loss/confidence/entropy/correct of ``model`` (eval mode) on one data role."""
    logits, targets = role_logits(model, datamodule, role, device)
    out = per_sample_outputs(logits, targets)
    out["targets"] = targets.numpy()
    return out


@torch.no_grad()
def role_logits(
    model: nn.Module, datamodule: Any, role: str, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of ``model`` (eval mode) on one data role, in the order
    of ``datamodule.role_dataloader(role)``."""
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
    return torch.cat(logits), torch.cat(targets)


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
    and ``TA_forgotten_classes`` split the test accuracy. ``detectable`` is 1.0 when D_f still
    looks *more* familiar than test data, ``over_forgotten`` 1.0 when it looks *less* familiar,
    each beyond ~2 standard errors of chance (see :func:`forgetting_verdict`).
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
    metrics.update(detection_metrics(forget, test))
    verdict_ = forgetting_verdict(metrics)
    metrics["detectable"] = float(verdict_ == STILL_DETECTABLE)
    metrics["over_forgotten"] = float(verdict_ == OVER_FORGOTTEN)
    return metrics


FORGOTTEN, STILL_DETECTABLE, OVER_FORGOTTEN = "forgotten", "still detectable", "over-forgotten"
#: the three answers of :func:`forgetting_verdict`
VERDICTS = (FORGOTTEN, STILL_DETECTABLE, OVER_FORGOTTEN)


def forgetting_verdict(metrics: dict[str, float]) -> str:
    """Is D_f told apart from unseen test data, and on which side? Two-sided, at ~2 standard
    errors of chance (``detect_threshold`` for an AUC, 2 for ``correct_gap_z``):

    - ``still detectable``: D_f looks more familiar: the untrained ``loss_auc_raw`` above the
      threshold, the trained ``loss_auc`` attack above it with D_f on the familiar side, or D_f
      classified better by more than 2 standard errors. The model still remembers it.
    - ``over-forgotten``: D_f looks *less* familiar than unseen data (the same tests on the other
      side: ``loss_auc_raw`` below ``1 - threshold``, the attack above the threshold with D_f on
      the unfamiliar side, or classified worse by more than 2 standard errors). A model that never
      saw D_f (Retrain) does not show this, so it gives D_f away too.
    - ``forgotten``: neither; the attacks cannot tell D_f from test data.

    Metrics without ``loss_auc_raw`` (written before it existed) read ``loss_auc`` both ways.
    """
    attack, z = metrics["loss_auc"], metrics["correct_gap_z"]
    raw = metrics.get("loss_auc_raw", attack)
    margin = metrics["detect_threshold"] - 0.5
    attack_finds = attack > 0.5 + margin
    if raw > 0.5 + margin or z > 2.0 or (attack_finds and raw >= 0.5):
        return STILL_DETECTABLE
    if raw < 0.5 - margin or z < -2.0 or attack_finds:
        return OVER_FORGOTTEN
    return FORGOTTEN


def detection_metrics(
    forget: dict[str, np.ndarray], test: dict[str, np.ndarray]
) -> dict[str, float]:
    """What :func:`forgetting_verdict` needs besides ``loss_auc``, from the per-sample outputs
    on D_f and test data: ``detect_threshold`` (chance plus ~2 standard errors of an AUC),
    ``correct_gap_z`` and ``loss_auc_raw``, the untrained AUC of "lower loss = D_f" (above 0.5
    D_f looks more familiar than test data, below 0.5 less: the trained ``loss_auc`` attack
    learns the direction, so only this one says which side D_f is on)."""
    return {
        "detect_threshold": detection_threshold(len(forget["loss"]), len(test["loss"])),
        "correct_gap_z": correct_gap_z(forget["correct"], test["correct"]),
        "loss_auc_raw": loss_auc(forget["loss"], test["loss"]),
    }


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
    """One sentence a user can act on: ``verdict: <forgotten|still detectable|over-forgotten>``,
    the reason, and the numbers behind it (:func:`forgetting_verdict`)."""
    auc, thr = metrics["loss_auc"], metrics["detect_threshold"]
    raw = metrics.get("loss_auc_raw", auc)
    base = (
        f"loss-AUC of forget vs test = {auc:.3f} (trained attack; chance 0.5, detectable above "
        f"{thr:.3f}); untrained loss-AUC = {raw:.3f} (above 0.5 the forget set looks more "
        f"familiar: detectable above {thr:.3f}, over-forgotten below {1.0 - thr:.3f}); "
        f"accuracy gap forget - test = {100 - metrics['UA'] - metrics['TA']:+.1f} points "
        f"(z = {metrics['correct_gap_z']:.1f}, detectable above 2, over-forgotten below -2); "
        f"MIA-efficacy = {metrics['MIA']:.1f}%, UA = {metrics['UA']:.1f}%"
    )
    if reference is not None:
        base += f"; retrain reference: loss-AUC {reference['loss_auc']:.3f}, MIA {reference['MIA']:.1f}%"
    reason = {
        STILL_DETECTABLE: "a membership attack still finds the forget set more familiar than "
        "unseen test data",
        OVER_FORGOTTEN: "the forget set looks less familiar than unseen test data, which a "
        "model that never saw it does not show (and which itself gives it away)",
        FORGOTTEN: "the membership attacks cannot tell the forget set from unseen test data",
    }
    kind = forgetting_verdict(metrics)
    return f"verdict: {kind}: {reason[kind]} ({base})."


def evaluate_checkpoint(
    model: nn.Module, datamodule: Any, ckpt_path: str | None, seed: int = 0
) -> dict[str, float]:
    """Load ``ckpt_path`` into ``model.backbone`` (its split checked against the datamodule's
    manifest) and evaluate it; without a checkpoint, the model's current weights."""
    datamodule.setup("test")
    backbone = getattr(model, "backbone", model)
    if ckpt_path:
        load_backbone_weights(backbone, ckpt_path, datamodule.manifest_id)
    return evaluate_unlearning(backbone, datamodule, seed=seed)
