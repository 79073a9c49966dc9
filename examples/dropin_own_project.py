"""Unlearning in your own Lightning project: your model, your data module, LTU.

    python examples/dropin_own_project.py

Everything above the "unlearning" line is the user's own code, written without ltu_lightning:
a tiny conv net (``DigitsNet``), a plain LightningModule that trains it (``Classifier``) and a
plain LightningDataModule (``DigitsData``: train/val/test of scikit-learn's 8x8 digits). The
unlearning request: forget every training image of digit 3.

``UnlearningDataModule.wrap(DigitsData(), forget=3)`` builds the unlearning roles from it: the
forget set, the retained data (and the small retain subset the unlearner may see), and the
user's validation set as the holdout the original never trained on (half for the membership
auditors, half to choose the kept epoch). Two ways to unlearn follow:

(a) ``unlearn_with_ltu``: ``ltu_lightning.LTUModule`` wraps the trained net unchanged; at the
    end of ``fit`` the net holds the kept weights (never scored worse than the start).
(b) ``unlearn_with_harmonizer``: the user's own unlearning LightningModule calls
    ``ltu_lightning.MetaHarmonizer`` from its ``training_step`` (manual optimization): two loss
    closures, support and query halves of each batch, one harmonized LTU step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ltu_lightning import LTUModule, MetaHarmonizer, UnlearningDataModule, evaluate_unlearning

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
    """scikit-learn's digits: a seeded shuffle into test (20%), val (``val`` images) and train."""

    def __init__(self, val: int = 300, batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
        y = torch.tensor(labels)
        order = np.random.default_rng(seed).permutation(len(labels))
        test, val_idx, train = np.split(order, [len(labels) // 5, len(labels) // 5 + val])
        self.train_set, self.val_set, self.test_set = (
            TensorDataset(x[i], y[i]) for i in (train, val_idx, test)
        )
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, 512)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, 512)


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
    data: L.LightningDataModule, epochs: int = 20, root: str | Path = "runs/dropin"
) -> nn.Module:
    """The user's usual training: the original model, which has seen the forget set."""
    L.seed_everything(0)
    model = Classifier(DigitsNet())
    _trainer(epochs, Path(root) / "original", enable_checkpointing=False).fit(model, data)
    return model.net


# ------------------------------------------------------------------------------ unlearning
def unlearning_data(data: L.LightningDataModule, forget: int = 3) -> UnlearningDataModule:
    """The unlearning roles of the user's data module: forget every training image of class
    ``forget``; the user's validation set is the holdout; the unlearner may see 20% of the rest
    and the auditor half of the holdout (``access="partial+holdout"``: LTU's membership
    auditors take their non-members from it; a method without auditors, such as the
    harmonizer below, gets it as extra retain data)."""
    return UnlearningDataModule.wrap(
        data, forget=forget, retain_fraction=0.2, batch_size=32, access="partial+holdout"
    )


def _sgd_2e3(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=2e-3, momentum=0.9)


def unlearn_with_ltu(
    original: nn.Module,
    data: UnlearningDataModule,
    epochs: int = 10,
    root: str | Path = "runs/dropin",
    **ltu_args: Any,
) -> nn.Module:
    """(a) ``LTUModule`` on the user's net and data; returns the unlearned copy of ``original``.

    The forgotten classes must disappear (a retrained model never saw them), so the
    ``random_label`` forgetting loss replaces LTU's default membership loss, which targets
    random forgetting. LTU's default outer lr was tuned for that membership loss; with
    random labels a class goes out fast and a smaller step keeps the other classes (the
    class-wise table of docs/benchmarks.md), so this example passes its own optimizer. The
    number of classes is read from the net's output. At the end of ``fit`` the net holds the
    epoch the honest criterion kept (also saved as ``<root>/ltu/checkpoints/best.ckpt``,
    which ``ltu_lightning.load_unlearned_weights`` reads back in a later session).
    """
    L.seed_everything(0)
    net = copy.deepcopy(original)
    ltu_args.setdefault("optimizer", _sgd_2e3)
    module = LTUModule(net, forget_loss="random_label", **ltu_args)
    _trainer(epochs, Path(root) / "ltu").fit(module, data)
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
    original: nn.Module,
    data: UnlearningDataModule,
    epochs: int = 5,
    root: str | Path = "runs/dropin",
) -> nn.Module:
    """(b) Run ``HarmonizedUnlearner`` for a fixed budget; returns the unlearned copy."""
    L.seed_everything(0)
    module = HarmonizedUnlearner(copy.deepcopy(original))
    _trainer(epochs, Path(root) / "harmonizer", enable_checkpointing=False).fit(module, data)
    return module.net


# ------------------------------------------------------------------------------ reporting
def accuracies(model: nn.Module, data: UnlearningDataModule) -> dict[str, float]:
    """Forget-set and test accuracy (percent), the latter split by forgotten/remaining class."""
    metrics = evaluate_unlearning(model, data)
    return {
        "forget": 100.0 - metrics["UA"],
        "test (remaining classes)": metrics["TA_remaining_classes"],
        "test (forgotten classes)": metrics["TA_forgotten_classes"],
    }


def main() -> None:
    torch.set_num_threads(1)  # a tiny net: one thread is as fast, and immune to busy CPUs
    users_data = DigitsData()
    original = train_original(users_data)
    data = unlearning_data(users_data)
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
