"""Unlearning in your own Lightning project: your model, your data module, LTU.

    python examples/dropin_own_project.py

Everything above the "unlearning" line is the user's own code, written without ltu_lightning:
a tiny conv net (``DigitsNet``), a plain LightningModule that trains it (``Classifier``) and a
LightningDataModule (``DigitsData``) built from scikit-learn's 8x8 digits, which decides itself
what to forget (every training image of some classes) and which retained images the unlearner
may see. Two ways to unlearn follow:

(a) ``unlearn_with_ltu``: ``ltu_lightning.LTUModule`` wraps the trained net unchanged. It needs
    the data module to follow ``ltu_lightning.UnlearningData``:

    - ``train_on = "unlearn"`` while unlearning;
    - ``train_dataloader()`` yields ``{"forget": (x, y), "retain": (x, y)}`` batches;
    - ``val_dataloader()`` returns one loader per name in ``val_roles = ("forget", "holdout_val")``;
    - ``role_dataloader(role)`` serves ``retain_subset`` and ``holdout_audit`` (the membership
      auditors' members and non-members), ``holdout_val`` (the honest stopping criterion), and
      ``forget``, ``remaining``, ``test`` for ``ltu_lightning.evaluate_unlearning``;
    - ``hparams.forget_classes`` names the forgotten classes (class-wise forgetting).

(b) ``unlearn_with_harmonizer``: the user's own unlearning LightningModule calls
    ``ltu_lightning.MetaHarmonizer`` from its ``training_step`` (manual optimization): two loss
    closures, support and query halves of each batch, one harmonized LTU step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ltu_lightning import LTUModule, MetaHarmonizer, evaluate_unlearning
from ltu_lightning.modules.checkpoints import load_backbone_weights

Batch = tuple[Tensor, Tensor]


# ------------------------------------------------------------------ the user's own project
class DigitsNet(nn.Module):
    """A tiny conv net for 1x8x8 images (any ``nn.Module`` mapping a batch to logits works)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 4 * 4, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Classifier(L.LightningModule):
    """Plain supervised training of the original model."""

    def __init__(self, net: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


class DigitsData(L.LightningDataModule):
    """scikit-learn's digits, split by this project's own rules into unlearning roles.

    A seeded shuffle gives ``test`` (20%), a ``holdout`` the original model never trains on
    (halved into ``holdout_audit`` and ``holdout_val``) and ``train``. ``forget`` is every
    training image of ``forget_classes``; ``remaining`` the rest of ``train``;
    ``retain_subset`` the first ``retain_fraction`` of ``remaining``, the only retained
    images the unlearner may touch. ``train_on`` is ``"train"`` to train the original model
    and ``"unlearn"`` for unlearning.
    """

    val_roles = ("forget", "holdout_val")
    test_roles = ("test", "forget", "remaining")

    def __init__(
        self,
        forget_classes: Sequence[int] = (3,),
        holdout: int = 300,
        retain_fraction: float = 0.2,
        batch_size: int = 32,
        train_on: str = "train",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["train_on"])  # hparams.forget_classes: class-wise
        self.train_on = train_on
        images, labels = load_digits(return_X_y=True)
        self.x = torch.tensor(images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
        self.y = torch.tensor(labels)
        order = np.random.default_rng(seed).permutation(len(labels))
        n_test = len(labels) // 5
        test, held, train = np.split(order, [n_test, n_test + holdout])
        forgotten = np.isin(labels[train], list(forget_classes))
        remaining = train[~forgotten]
        self.roles = {
            "test": test,
            "holdout_audit": held[: holdout // 2],
            "holdout_val": held[holdout // 2 :],
            "train": train,
            "forget": train[forgotten],
            "remaining": remaining,
            "retain_subset": remaining[: int(retain_fraction * len(remaining))],
        }

    def role_dataloader(self, role: str, shuffle: bool = False) -> DataLoader:
        index = torch.as_tensor(self.roles[role])
        size = self.hparams.batch_size if shuffle else 512
        # drop_last: every training batch splits into two non-empty halves
        dataset = TensorDataset(self.x[index], self.y[index])
        return DataLoader(dataset, size, shuffle=shuffle, drop_last=shuffle)

    def train_dataloader(self) -> Any:
        if self.train_on == "train":
            return self.role_dataloader("train", shuffle=True)
        # Lightning cycles the shorter loader of a dict, so an epoch covers the longer stream.
        return {
            "forget": self.role_dataloader("forget", shuffle=True),
            "retain": self.role_dataloader("retain_subset", shuffle=True),
        }

    def val_dataloader(self) -> list[DataLoader]:
        return [self.role_dataloader(role) for role in self.val_roles]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.role_dataloader(role) for role in self.test_roles]


def _trainer(epochs: int, root: str | Path, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        accelerator="cpu",  # a net this small gains nothing from a GPU
        logger=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def train_original(
    data: DigitsData, epochs: int = 20, root: str | Path = "runs/dropin"
) -> nn.Module:
    """The user's usual training: the original model, which has seen the forget set."""
    L.seed_everything(0)
    model = Classifier(DigitsNet())
    _trainer(epochs, Path(root) / "original", enable_checkpointing=False).fit(model, data)
    return model.net


# ------------------------------------------------------------------------------ unlearning
def _sgd_2e3(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=2e-3, momentum=0.9)


def unlearn_with_ltu(
    original: nn.Module,
    data: DigitsData,
    epochs: int = 10,
    root: str | Path = "runs/dropin",
    **ltu_args: Any,
) -> nn.Module:
    """(a) ``LTUModule`` on the user's net and data; returns the unlearned copy of ``original``.

    The forgotten classes must disappear (a retrained model never saw them), so the
    ``random_label`` forgetting loss replaces LTU's default membership loss, which targets
    random forgetting. LTU's default outer lr (8e-3) was tuned for that membership loss; with
    random labels a class goes out fast and a smaller step keeps the other classes (the
    class-wise table of docs/benchmarks.md), so this example passes its own optimizer. With
    checkpointing on (the default), the honest criterion keeps the best epoch in
    ``<root>/ltu/checkpoints/best.ckpt``; its weights are loaded back.
    """
    L.seed_everything(0)
    net = copy.deepcopy(original)
    ltu_args.setdefault("optimizer", _sgd_2e3)
    module = LTUModule(net, num_classes=10, forget_loss="random_label", **ltu_args)
    trainer = _trainer(epochs, Path(root) / "ltu")
    trainer.fit(module, data)
    load_backbone_weights(net, trainer.checkpoint_callback.best_model_path, manifest_id=None)
    return net


def forget_margin(logits: Tensor, targets: Tensor, margin: float = 1.0) -> Tensor:
    """The user's own forgetting loss: the true class's logit should fall ``margin`` below the
    best other class. Zero once that holds, so it stops pushing by itself (unlike -CE)."""
    true = logits.gather(1, targets[:, None]).squeeze(1)
    best_other = logits.scatter(1, targets[:, None], float("-inf")).amax(dim=1)
    return F.relu(true - best_other + margin).mean()


class HarmonizedUnlearner(L.LightningModule):
    """(b) The user's own unlearning method: one ``MetaHarmonizer`` step per batch.

    Remembering is cross-entropy on the retain batch, forgetting ``forget_margin`` on the
    forget batch; the harmonizer meta-tunes on the support halves, meta-tests on the query
    halves, harmonizes the two gradients and steps the optimizer.
    """

    def __init__(self, net: nn.Module, lr: float = 3e-3, inner_lr: float = 0.1) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.inner_lr = inner_lr
        self.automatic_optimization = False  # the harmonizer writes .grad and steps itself

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)

    def on_fit_start(self) -> None:
        self.harmonizer = MetaHarmonizer(self.net, self.optimizers(), inner_lr=self.inner_lr)

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> None:
        # ``forward`` is the net at the weights being evaluated (θ, or the fast weights θ').
        def remember(forward: Any, b: Batch) -> Tensor:
            return F.cross_entropy(forward(b[0]), b[1])

        def forget(forward: Any, b: Batch) -> Tensor:
            return forget_margin(forward(b[0]), b[1])

        (xr, yr), (xf, yf) = batch["retain"], batch["forget"]
        hr, hf = len(yr) // 2, len(yf) // 2  # batches of >= 2 samples: disjoint halves
        stats = self.harmonizer.step(
            remember,
            forget,
            (xr[:hr], yr[:hr]),
            (xr[hr:], yr[hr:]),
            (xf[:hf], yf[:hf]),
            (xf[hf:], yf[hf:]),
        )
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=len(yf))


def unlearn_with_harmonizer(
    original: nn.Module, data: DigitsData, epochs: int = 5, root: str | Path = "runs/dropin"
) -> nn.Module:
    """(b) Run ``HarmonizedUnlearner`` for a fixed budget; returns the unlearned copy."""
    L.seed_everything(0)
    module = HarmonizedUnlearner(copy.deepcopy(original))
    _trainer(epochs, Path(root) / "harmonizer", enable_checkpointing=False).fit(module, data)
    return module.net


# ------------------------------------------------------------------------------ reporting
def accuracies(model: nn.Module, data: DigitsData) -> dict[str, float]:
    """Forget-set and test accuracy (percent), the latter split by forgotten/remaining class."""
    metrics = evaluate_unlearning(model, data)
    return {
        "forget": 100.0 - metrics["UA"],
        "test (remaining classes)": metrics["TA_remaining_classes"],
        "test (forgotten classes)": metrics["TA_forgotten_classes"],
    }


def main() -> None:
    torch.set_num_threads(1)  # a tiny net: one thread is as fast, and immune to busy CPUs
    original = train_original(DigitsData(train_on="train"))
    data = DigitsData(train_on="unlearn")
    rows = {
        "original": accuracies(original, data),
        "LTUModule": accuracies(unlearn_with_ltu(original, data), data),
        "MetaHarmonizer": accuracies(unlearn_with_harmonizer(original, data), data),
    }
    columns = list(rows["original"])
    print(f"{'accuracy %':<16}" + "".join(f"{c:>26}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<16}" + "".join(f"{row[c]:>26.1f}" for c in columns))


if __name__ == "__main__":
    main()
