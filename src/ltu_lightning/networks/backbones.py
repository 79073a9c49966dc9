"""Plain ``nn.Module`` backbones (no Lightning): any other ``nn.Module`` works by ``class_path``."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn
from torchvision.models import resnet18


class Network(nn.Module, metaclass=ABCMeta):
    """Base of the project's networks. A backbone needs no base class; a subclass of this one
    is also found by its short name in a config (``class_path: SmallCNN``)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images."""


class AnyModule(Protocol):
    """Any ``torch.nn.Module``, given in a config by its full class path
    (``class_path: torchvision.models.ResNet``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


#: The type of a module's ``backbone``: any ``nn.Module`` mapping a batch of images to logits.
#: Typed so that ``--model.help`` lists the project's networks, not every ``nn.Module`` known.
Backbone = Network | AnyModule


class CifarResNet18(Network):
    """ResNet-18 for 32×32 inputs: torchvision's, with a 3×3 stride-1 first conv and no max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        net = resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(Network):
    """Two conv blocks and two linear layers: the fmnist5k/mnist5k model (overfits a 3k pool)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        image_size: int = 28,
        hidden: int = 128,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(in_channels, width), *block(width, 2 * width))
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Activations after each convolution go channels-last: PyTorch's CPU max-pool is faster
        # on that layout (SmallCNN on one core: inference ~1.5x, a training step ~1.2x;
        # scripts/bench_smallcnn_layout.py, docs/benchmarks.md). Same values up to float
        # rounding, same state_dict keys, and the parameters keep their default layout
        # (functional calls, DDP and FSDP see plain contiguous tensors).
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                x = x.contiguous(memory_format=torch.channels_last)
        return self.classifier(x)


class MLP(Network):
    """A multilayer perceptron on flattened inputs (the ``digits`` model)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_features: int = 64,
        hidden: tuple[int, ...] | list[int] = (256, 256),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
