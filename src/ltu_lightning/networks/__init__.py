"""Backbones: plain ``nn.Module`` classifiers mapping a batch of images to logits."""

from ltu_lightning.networks.backbones import (
    MLP,
    AnyModule,
    Backbone,
    CifarResNet18,
    Network,
    SmallCNN,
)

__all__ = ["MLP", "AnyModule", "Backbone", "CifarResNet18", "Network", "SmallCNN"]
