"""Tiny datasets written in the real on-disk formats torchvision reads (no network, seconds).

Each ``write_*`` function writes under ``root`` exactly the files torchvision's loader opens and
returns the labels it wrote as ``{"train": np.ndarray, "test": np.ndarray}`` (after any label
mapping the loader applies, e.g. SVHN's ``10 -> 0``), so tests can compare what was loaded.
Labels cycle through the classes (``i % num_classes``), so every class appears
``n // num_classes`` times or more; pixels are seeded random uint8.

torchvision verifies the md5 of the CIFAR and SVHN files against the official archives, which
these small files cannot match: use :func:`skip_md5` (or the ``skip_md5`` fixture of
``conftest.py``) to replace those checks by "the file exists". MNIST and ImageFolder have no md5.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = [
    "skip_md5",
    "write_cifar10",
    "write_cifar100",
    "write_imagefolder",
    "write_mnist",
    "write_svhn",
]


def _labels(n: int, num_classes: int, offset: int = 0) -> np.ndarray:
    return ((np.arange(n) + offset) % num_classes).astype(np.int64)


def _pixels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


# --------------------------------------------------------------------------------------- CIFAR
def write_cifar10(root: str | os.PathLike, n_train: int = 120, n_test: int = 40) -> dict:
    """``ROOT/cifar-10-batches-py/``: data_batch_1..5, test_batch and batches.meta pickles.

    Each batch is ``{"data": uint8 [N, 3072] (R, G, B planes of 32x32), "labels": list[int]}``;
    the ``n_train`` training images are spread over the five batches in order.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    y_train, y_test = _labels(n_train, 10), _labels(n_test, 10, offset=3)
    x_train, x_test = _pixels((n_train, 3072), 0), _pixels((n_test, 3072), 1)
    for b, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _pickle(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": y_train[idx].tolist(),
                "data": x_train[idx],
                "filenames": [f"train_{i}.png" for i in idx],
            },
        )
    _pickle(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": y_test.tolist(),
            "data": x_test,
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _pickle(
        folder / "batches.meta",
        {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072},
    )
    return {"train": y_train, "test": y_test, "x_train": x_train, "x_test": x_test}


def write_cifar100(root: str | os.PathLike, n_train: int = 200, n_test: int = 100) -> dict:
    """``ROOT/cifar-100-python/``: train, test and meta pickles, 100 fine / 20 coarse classes.

    With the default ``n_train=200`` every fine class appears exactly twice in train (the
    minimum for a stratified holdout); keep ``n_train`` a multiple of 100 for balanced classes.
    Pass ``n_train >= 100`` and ``n_test >= 100`` so that every class exists in each split.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    y_train, y_test = _labels(n_train, 100), _labels(n_test, 100, offset=7)
    x_train, x_test = _pixels((n_train, 3072), 2), _pixels((n_test, 3072), 3)
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        _pickle(
            folder / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(len(y))],
                "batch_label": f"{split} batch",
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": x,
            },
        )
    _pickle(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{c:02d}" for c in range(100)],
            "coarse_label_names": [f"coarse_{c:02d}" for c in range(20)],
        },
    )
    return {"train": y_train, "test": y_test, "x_train": x_train, "x_test": x_test}


# ---------------------------------------------------------------------------------------- SVHN
def write_svhn(root: str | os.PathLike, n_train: int = 120, n_test: int = 40) -> dict:
    """``ROOT/train_32x32.mat`` and ``ROOT/test_32x32.mat`` (MATLAB v5, ``scipy.io.savemat``).

    ``X`` is uint8 ``[32, 32, 3, N]`` and ``y`` is ``[N, 1]`` with digits 1..9 as themselves and
    digit 0 stored as ``10`` (the SVHN convention, undone by torchvision). The returned labels
    are the digits (0..9), i.e. what torchvision yields.
    """
    from scipy.io import savemat

    Path(root).mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 4), ("test", n_test, 5)):
        digits = _labels(n, 10, offset=seed)
        stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        x = _pixels((32, 32, 3, n), seed)
        savemat(str(Path(root) / f"{split}_32x32.mat"), {"X": x, "y": stored})
        out[split] = digits
        out[f"x_{split}"] = x
    return out


# --------------------------------------------------------------------------------------- MNIST
def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX ("SN3 Pascal Vincent") file of uint8: magic 0x0000 08 <ndim>, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(
    root: str | os.PathLike, folder: str = "MNIST", n_train: int = 120, n_test: int = 40
) -> dict:
    """``ROOT/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (uncompressed IDX).

    ``folder`` is the torchvision class name: ``"MNIST"`` or ``"FashionMNIST"``.
    """
    if folder not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"folder must be 'MNIST' or 'FashionMNIST', not {folder!r}")
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n, seed in (("train", "train", n_train, 6), ("test", "t10k", n_test, 7)):
        y = _labels(n, 10, offset=seed)
        x = _pixels((n, 28, 28), seed)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[split] = y
        out[f"x_{split}"] = x
    return out


# --------------------------------------------------------------------------------- ImageFolder
def write_imagefolder(
    root: str | os.PathLike,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    n_train_per_class: int = 20,
    n_test_per_class: int = 5,
    size: int = 32,
) -> dict:
    """``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (RGB PNGs, ``size``²).

    Labels follow ImageFolder's convention: class folders sorted by name get 0, 1, ...; files
    are listed in sorted order, so the returned labels are in the order ImageFolder reads them.
    """
    from PIL import Image

    out = {}
    for split, per_class, seed in (("train", n_train_per_class, 8), ("test", n_test_per_class, 9)):
        labels = []
        pixels = _pixels((len(classes) * per_class, size, size, 3), seed)
        for c, name in enumerate(sorted(classes)):
            d = Path(root) / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(pixels[c * per_class + i], mode="RGB").save(d / f"{i:04d}.png")
                labels.append(c)
        out[split] = np.asarray(labels, dtype=np.int64)
        out[f"x_{split}"] = pixels
    return out


# ------------------------------------------------------------------------------------ md5 skip
def skip_md5(monkeypatch) -> contextlib.AbstractContextManager:
    """Replace torchvision's md5 checks of CIFAR-10/100 and SVHN by "the file exists".

    Only the integrity checks are patched (``CIFAR10._check_integrity`` (inherited by CIFAR100),
    ``SVHN._check_integrity``, and the ``check_integrity`` CIFAR's ``_load_meta`` calls on the
    meta file); the files are still opened and parsed by torchvision's own code, and a missing
    file is still reported as missing. The patches are applied on call and live as long as
    ``monkeypatch`` does (undone at the end of the test); the returned object is a no-op context
    manager, so ``with skip_md5(monkeypatch): ...`` reads naturally too.
    """
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10, SVHN

    def cifar_files_exist(self) -> bool:
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, filename))
            for filename, _ in self.train_list + self.test_list
        )

    def svhn_file_exists(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))

    monkeypatch.setattr(CIFAR10, "_check_integrity", cifar_files_exist)
    monkeypatch.setattr(SVHN, "_check_integrity", svhn_file_exists)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return contextlib.nullcontext()
