"""Per-dataset normalization and augmentation (torchvision transforms v2)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ltu_lightning.data.datasets import STATS

# Datasets whose standard recipe augments (random crop + flip); the small grey-scale sets are
# trained without augmentation so the original model overfits as real models do.
AUGMENTED_BY_DEFAULT = ("cifar10", "cifar100", "svhn", "imagefolder")
# Datasets of digits: never mirrored, even when augmentation is requested (a flipped 2 is no 2).
DIGITS = ("svhn", "mnist", "mnist5k", "digits")


def is_deterministic(transform: v2.Compose) -> bool:
    """True when no step of ``transform`` draws random numbers (its output can be cached)."""
    return not any(type(step).__name__.startswith("Random") for step in transform.transforms)


def build_transforms(
    dataset: str, train: bool, augment: bool | None = None, image_size: int | None = None
) -> v2.Compose:
    mean, std = STATS[dataset]
    augment = dataset in AUGMENTED_BY_DEFAULT if augment is None else augment
    steps: list = [v2.ToImage()]
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if train and augment:
        size = image_size or (32 if dataset in ("cifar10", "cifar100", "svhn") else None)
        if size is not None:
            steps.append(v2.RandomCrop(size, padding=size // 8))
        if dataset not in DIGITS:  # digits are not mirror-symmetric
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if dataset == "imagefolder":
        steps.insert(1, v2.RGB())
    return v2.Compose(steps)
