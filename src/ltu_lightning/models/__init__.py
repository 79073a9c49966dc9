"""Backbones: plain ``nn.Module`` classifiers mapping a batch of images to logits."""

from ltu_lightning.models.backbones import MLP, CifarResNet18, SmallCNN

__all__ = ["MLP", "CifarResNet18", "SmallCNN"]
