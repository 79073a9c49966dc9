"""LightningModules: the classifier (original/retrain), LTU and the unlearning baselines.

Importing them here also registers their short class names (``class_path: FineTune``) with
the ``ltu`` CLI.
"""

from ltu_lightning.modules.base import BaseModule
from ltu_lightning.modules.baselines import (
    LUR,
    SCRUB,
    BadTeacher,
    BaselineModule,
    FineTune,
    GradientAscent,
    L1Sparse,
    NegGradPlus,
    RandomLabel,
    SalUn,
)
from ltu_lightning.modules.classifier import ClassifierModule
from ltu_lightning.modules.ltu import LTUModule
from ltu_lightning.modules.unlearning import UnlearningModule

__all__ = [
    "LUR",
    "SCRUB",
    "BadTeacher",
    "BaseModule",
    "BaselineModule",
    "ClassifierModule",
    "FineTune",
    "GradientAscent",
    "L1Sparse",
    "LTUModule",
    "NegGradPlus",
    "RandomLabel",
    "SalUn",
    "UnlearningModule",
]
