"""Build the embedded ``fmnist5k`` benchmark from the official Fashion-MNIST files.

fmnist5k is a fixed, class-balanced 5,000-image subset: 400 images per class from the official
training split (the unlearning *pool*: train + holdout) and 100 per class from the official test
split. It ships inside the package so that ``make demo`` and the tests need no download.

Source files (any of):
- Debian: ``apt-get install dataset-fashion-mnist`` → /usr/share/datasets/fashion-mnist/*.gz
- torchvision: ``FashionMNIST(root, download=True)`` → ROOT/FashionMNIST/raw/*.gz

Usage: python scripts/build_fmnist5k.py [--src DIR] [--out src/ltu_lightning/data/assets]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

SEED = 20240710  # arXiv 2407.10494, the LTU paper
PER_CLASS_TRAIN = 400
PER_CLASS_TEST = 100


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path("src/ltu_lightning/data/assets"))
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    arrays = {}
    for split, per_class, prefix in (
        ("train", PER_CLASS_TRAIN, "train"),
        ("test", PER_CLASS_TEST, "t10k"),
    ):
        images = read_idx(args.src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(args.src / f"{prefix}-labels-idx1-ubyte.gz")
        idx = balanced_subset(labels, per_class, rng)
        arrays[f"x_{split}"] = images[idx]
        arrays[f"y_{split}"] = labels[idx].astype(np.int64)
        arrays[f"source_index_{split}"] = idx.astype(np.int64)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "fmnist5k.npz"
    np.savez_compressed(target, **arrays)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    meta = {
        "name": "fmnist5k",
        "source": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), https://github.com/zalandoresearch/fashion-mnist",
        "license": "MIT (Copyright (c) 2017 Zalando SE)",
        "seed": SEED,
        "per_class": {"train": PER_CLASS_TRAIN, "test": PER_CLASS_TEST},
        "sha256": digest,
    }
    (args.out / "fmnist5k.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes) sha256={digest}")


if __name__ == "__main__":
    main()
