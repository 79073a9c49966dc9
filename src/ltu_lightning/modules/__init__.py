"""LightningModules: the classifier (original/retrain), LTU and the unlearning baselines."""

from ltu_lightning.modules.base import BaseModule
from ltu_lightning.modules.classifier import ClassifierModule
from ltu_lightning.modules.ltu import LTUModule
from ltu_lightning.modules.unlearning import UnlearningModule

__all__ = ["BaseModule", "ClassifierModule", "LTUModule", "UnlearningModule"]
