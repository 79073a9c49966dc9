"""Two small projects written in plain Lightning style, without ltu_lightning: what a user
brings. A multi-class tabular task (scikit-learn's ``make_classification``, an MLP) and an
image task (scikit-learn's 8x8 digits, a depthwise-separable conv net the package does not
ship). Each has a ``LightningDataModule`` with train/val/test and a plain classifier module.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits, make_classification
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class MLP(nn.Module):
    def __init__(self, features: int, classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SeparableNet(nn.Module):
    """Depthwise-separable convolutions with a dropout head (not a backbone of the package)."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, 2 * width, 1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.1),
            nn.Linear(8 * width, classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ArrayData(L.LightningDataModule):
    """Train/val/test of in-memory arrays (a fixed seeded shuffle)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, val: int, test: int, batch_size: int = 32):
        super().__init__()
        order = np.random.default_rng(0).permutation(len(y))
        parts = np.split(order, [test, test + val])
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        self.test_set, self.val_set, self.train_set = (TensorDataset(xt[p], yt[p]) for p in parts)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 256)


def tabular_project(n: int = 700) -> tuple[ArrayData, nn.Module]:
    x, y = make_classification(
        n_samples=n, n_features=12, n_informative=8, n_classes=3, class_sep=1.2, random_state=0
    )
    return ArrayData(x, y, val=n // 4, test=n // 5), MLP(12, 3)


def image_project(n: int = 900) -> tuple[ArrayData, nn.Module]:
    x, y = load_digits(return_X_y=True)
    x = (x[:n] / 16.0).reshape(-1, 1, 8, 8)
    return ArrayData(x, y[:n], val=n // 4, test=n // 5), SeparableNet()


def train(data: L.LightningDataModule, net: nn.Module, epochs: int, seed: int = 0) -> nn.Module:
    """The user's usual training: ``net`` fits the training set (the forget set included)."""
    L.seed_everything(seed)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Classifier(net), data)
    return net
