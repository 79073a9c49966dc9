"""Unlearning on tabular data: your MLP, your arrays, LTU next to fine-tuning and Retrain.

    python examples/tabular_own_project.py

The user's own code (above the "unlearning" line) trains an MLP on a 3-class tabular task from
scikit-learn, with plain ``TensorDataset``s. The deletion request: 10% of the training rows,
given as a boolean mask. ``UnlearningDataModule.from_split`` builds the unlearning roles from
the datasets (the user's validation rows are the holdout the original never trained on), and
the rows reach the model as they are: no image shape is assumed anywhere.

The script prints the protocol's metrics (UA, RA, TA, MIA, loss-AUC) of the original model,
of a model retrained without the forgotten rows (the gold standard), and of LTU and
fine-tuning, with each one's Avg.Gap to Retrain.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from ltu_lightning import FineTune, LTUModule, UnlearningDataModule, evaluate_unlearning


# ------------------------------------------------------------------ the user's own project
class MLP(nn.Module):
    def __init__(self, features: int = 16, classes: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 3e-3) -> None:
        super().__init__()
        self.net = net
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


def datasets(n: int = 1500, seed: int = 0) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Train, validation and test rows of a 3-class task (a fixed seeded shuffle)."""
    x, y = make_classification(
        n_samples=n, n_features=16, n_informative=10, n_classes=3, class_sep=1.0, random_state=seed
    )
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    parts = np.split(np.random.default_rng(seed).permutation(n), [n // 5, n // 5 + n // 5])
    test, val, train = (TensorDataset(xt[p], yt[p]) for p in parts)
    return train, val, test


def fit(net: nn.Module, rows: TensorDataset, epochs: int = 60) -> nn.Module:
    """The user's usual training."""
    L.seed_everything(0)
    loader = torch.utils.data.DataLoader(rows, batch_size=32, shuffle=True)
    _trainer(epochs).fit(Classifier(net), loader)
    return net


def _trainer(epochs: int, **kwargs: Any) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


# ------------------------------------------------------------------------------ unlearning
def unlearn(method: type, original: nn.Module, data: UnlearningDataModule, epochs: int = 10):
    """``method`` (LTU or a baseline) on a copy of ``original``; at the end of ``fit`` the copy
    holds the kept weights (the epoch the validation criterion chose, or the start)."""
    L.seed_everything(0)
    net = copy.deepcopy(original)
    method_module = method(net)
    _trainer(epochs, default_root_dir=f"runs/tabular/{method.__name__}").fit(method_module, data)
    return net


def main() -> None:
    torch.set_num_threads(1)
    train, val, test = datasets()
    forget = np.random.default_rng(0).random(len(train)) < 0.1  # the deletion request
    original = fit(MLP(), train)
    # partial+holdout: LTU's auditors read the auditor half of the holdout, and FineTune gets
    # the same images as extra retain data, so both read the same rows
    data = UnlearningDataModule.from_split(
        train, test, forget=forget, holdout=val, access="partial+holdout",
        manifest_path="runs/tabular/split_manifest.json",
    )  # fmt: skip
    kept = torch.tensor(~forget)
    retrain = fit(MLP(), TensorDataset(*(t[kept] for t in train.tensors)))
    rows = {"original": original, "retrain": retrain}
    rows |= {m.__name__: unlearn(m, original, data) for m in (LTUModule, FineTune)}
    metrics = {name: evaluate_unlearning(net, data) for name, net in rows.items()}
    keys = ("UA", "RA", "TA", "MIA", "loss_auc")
    print(f"{'':<10}" + "".join(f"{k:>9}" for k in keys) + f"{'Avg.Gap':>9}")
    for name, m in metrics.items():
        gap = np.mean([abs(m[k] - metrics["retrain"][k]) for k in ("UA", "RA", "TA", "MIA")])
        print(f"{name:<10}" + "".join(f"{m[k]:>9.3f}" for k in keys) + f"{gap:>9.2f}")


if __name__ == "__main__":
    main()
