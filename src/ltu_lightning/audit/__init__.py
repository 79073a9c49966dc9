"""Membership-inference auditors and forgetting losses (LTU's forgetting feedback)."""

from ltu_lightning.audit.auditors import (
    DEFAULT_FEATURE_SETS,
    AuditorEnsemble,
    MembershipAuditor,
)
from ltu_lightning.audit.features import FEATURES, LOG_FEATURES, per_sample_features
from ltu_lightning.audit.forget_losses import (
    FORGET_LOSSES,
    ForgetLoss,
    MIHingeLoss,
    MILoss,
    NegCELoss,
    RandomLabelLoss,
    UniformKLLoss,
    make_forget_loss,
)

__all__ = [
    "DEFAULT_FEATURE_SETS",
    "FEATURES",
    "FORGET_LOSSES",
    "LOG_FEATURES",
    "AuditorEnsemble",
    "ForgetLoss",
    "MIHingeLoss",
    "MILoss",
    "MembershipAuditor",
    "NegCELoss",
    "RandomLabelLoss",
    "UniformKLLoss",
    "make_forget_loss",
    "per_sample_features",
]
