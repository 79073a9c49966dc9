"""LightningModules: the classifier (original/retrain), LTU and the unlearning baselines."""

from ltu_lightning.modules.base import BaseModule
from ltu_lightning.modules.classifier import ClassifierModule

__all__ = ["BaseModule", "ClassifierModule"]
