"""Bring your own data: the unlearning roles built from plain datasets or a user's
``LightningDataModule`` (see ``UnlearningDataModule.from_split`` and ``.wrap``).

Nothing here assumes images: any dataset whose items are ``(x, y)`` with ``y`` an integer class
id works (tabular rows, sequences, images), and its items reach the model unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ltu_lightning.data.datasets import DatasetBundle
from ltu_lightning.errors import LTUError

#: ``forget=`` accepts indices of the training set, a boolean mask over it, a class id or a fraction
Forget = Sequence[int] | np.ndarray | torch.Tensor | int | float


def dataset_targets(dataset: Dataset, name: str) -> np.ndarray:
    """The integer labels of a dataset of ``(x, y)`` items: ``.targets``, a ``TensorDataset``'s
    second tensor, or one pass over the items."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise LTUError(
            f"{name} must be a map-style dataset of (x, y) items (with __len__ and __getitem__), "
            f"got {type(dataset).__name__}"
        )
    tensors = getattr(dataset, "tensors", None)
    raw = getattr(dataset, "targets", None)
    if raw is None and isinstance(tensors, tuple) and len(tensors) == 2:
        raw = tensors[1]
    if raw is None:
        items = [dataset[i] for i in range(len(dataset))]
        if items and not (isinstance(items[0], tuple | list) and len(items[0]) == 2):
            raise LTUError(f"{name} must yield (x, y) pairs, got {type(items[0]).__name__} items")
        raw = [item[1] for item in items]
    y = np.asarray(raw.cpu() if isinstance(raw, torch.Tensor) else raw)
    if y.ndim != 1 or len(y) != len(dataset):
        raise LTUError(f"{name} labels must be one class id per item, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise LTUError(
            f"{name} labels must be integer class ids >= 0 (got dtype {y.dtype}); "
            "unlearning here is for classification"
        )
    return y.astype(np.int64)


def forget_arguments(forget: Forget, n_train: int) -> dict[str, Any]:
    """``forget=`` as split arguments: a class id, a fraction, or training-set indices (a
    boolean mask over the training set is turned into its indices)."""
    if isinstance(forget, bool):
        raise LTUError(
            "forget must be indices, a boolean mask, a class id or a fraction, not a bool"
        )
    if isinstance(forget, int | np.integer):
        return {"forget_classes": [int(forget)], "forget_fraction": None}
    if isinstance(forget, float):
        return {"forget_fraction": forget}
    values = np.asarray(forget.cpu() if isinstance(forget, torch.Tensor) else forget)
    if values.dtype == bool:
        if values.shape != (n_train,):
            raise LTUError(
                f"a boolean forget mask needs one entry per training sample ({n_train}), "
                f"got shape {values.shape}"
            )
        values = np.flatnonzero(values)
    elif values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise LTUError(
            "forget must be training-set indices (a list of ints), a boolean mask, a class id "
            f"(int) or a fraction (float); got {type(forget).__name__} of dtype {values.dtype}"
        )
    return {"forget_indices": tuple(int(i) for i in values), "forget_fraction": None}


def user_bundle(
    name: str, train: Dataset, test: Dataset, holdout: Dataset | None, num_classes: int | None
) -> tuple[DatasetBundle, np.ndarray | None]:
    """A :class:`DatasetBundle` of a user's datasets: the pool is ``train`` (followed by
    ``holdout`` when one is given, whose pool indices are returned as well)."""
    y_train = dataset_targets(train, "train")
    y_test = dataset_targets(test, "test")
    pool: Dataset = train
    pool_y = y_train
    holdout_idx = None
    if holdout is not None:
        y_hold = dataset_targets(holdout, "holdout")
        pool = ConcatDataset([train, holdout])
        pool_y = np.concatenate([y_train, y_hold])
        holdout_idx = len(y_train) + np.arange(len(y_hold))
    seen = int(max(pool_y.max(initial=0), y_test.max(initial=0))) + 1
    if num_classes is None:
        num_classes = seen
    elif num_classes < seen:
        raise LTUError(f"num_classes={num_classes} but the labels go up to {seen - 1}")
    h = hashlib.sha256(name.encode())
    for part in (pool_y, y_test):
        h.update(np.ascontiguousarray(part).tobytes())
    bundle = DatasetBundle(name, pool, test, pool_y, y_test, num_classes, h.hexdigest()[:16])
    return bundle, holdout_idx


def loader_dataset(dm: L.LightningDataModule, hook: str) -> Dataset | None:
    """The dataset behind ``dm.<hook>()`` (the first loader of a list); None when the data
    module does not define that loader."""
    try:
        loader = getattr(dm, hook)()
    except MisconfigurationException:  # Lightning's default hook: "must be implemented"
        return None
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    if isinstance(loader, dict):
        loader = next(iter(loader.values()), None)
    if loader is None:
        return None
    if not isinstance(loader, DataLoader):
        raise LTUError(
            f"{type(dm).__name__}.{hook}() returned {type(loader).__name__}, not a DataLoader; "
            "pass the datasets to UnlearningDataModule.from_split(train, test, forget=...) instead"
        )
    return loader.dataset
