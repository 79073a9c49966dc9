"""Evaluation: the protocol's unlearning metrics (UA/RA/TA, MIA attacks, Avg.Gap, RTE)."""

from ltu_lightning.evaluation.metrics import (
    DEFAULT_MAX_TRAIN,
    FEATURES,
    METRIC_KEYS,
    accuracy,
    avg_gap,
    loss_auc,
    loss_auc_attack,
    mia_efficacy,
    per_sample_outputs,
    relative_time_efficiency,
    selection_criterion,
    summarize,
    svc_mia_efficacy,
    unlearning_metrics,
)

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
