"""Backbones: plain ``nn.Module`` classifiers mapping a batch of images to logits."""

from ltu_lightning.networks.backbones import MLP, CifarResNet18, SmallCNN

__all__ = ["MLP", "CifarResNet18", "SmallCNN"]
