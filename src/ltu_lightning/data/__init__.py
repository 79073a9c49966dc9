"""Data: datasets by name, the deterministic unlearning split, and the DataModule."""

from ltu_lightning.data.datamodule import TRAIN_ON, UnlearningDataModule
from ltu_lightning.data.datasets import DATASETS, DatasetBundle, load_dataset
from ltu_lightning.data.splits import ROLES, SplitManifest, SplitSpec, make_split

__all__ = [
    "DATASETS",
    "ROLES",
    "TRAIN_ON",
    "DatasetBundle",
    "SplitManifest",
    "SplitSpec",
    "UnlearningDataModule",
    "load_dataset",
    "make_split",
]
