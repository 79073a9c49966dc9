"""The set-up check of a backbone against the data runs where the weights are.

Lightning calls ``setup`` before its strategy moves the module to the accelerator, while
``LightningModule.device`` may already name the target device; the check's dry forward must use
the device of the weights (on a GPU the other choice failed every fit with a device mismatch).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ltu_lightning.modules import ClassifierModule
from ltu_lightning.networks import SmallCNN


def test_backbone_check_uses_the_weights_device(monkeypatch) -> None:
    module = ClassifierModule(SmallCNN(num_classes=10, in_channels=1, image_size=28))
    images = torch.rand(4, 1, 28, 28)
    data = SimpleNamespace(
        role_dataset=lambda role: [(images[i], 0) for i in range(4)],
        dataset_name="fake",
        num_classes=10,
    )
    monkeypatch.setattr(type(module), "datamodule", property(lambda self: data))
    module._device = torch.device("meta")  # the target device, not yet the weights'
    module.check_backbone_fits_data()  # a forward on the meta device would raise
