"""``UnlearningDataModule``: one dataset, one saved split, a dataloader per role."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, Subset

from ltu_lightning.data.adapters import Forget, forget_arguments, loader_dataset, user_bundle
from ltu_lightning.data.datasets import DatasetBundle, load_dataset
from ltu_lightning.data.splits import (
    ROLES,
    RUN_LEVEL_KEYS,
    SplitManifest,
    SplitSpec,
    make_split,
    read_index_file,
    retain_subset_of,
)
from ltu_lightning.data.transforms import build_transforms, is_deterministic
from ltu_lightning.errors import LTUError

#: What a ``fit`` trains on: the original model (``train``), the retrain gold standard
#: (``remaining``), or an unlearning run (``unlearn``: forget batches + retain batches).
TRAIN_ON = ("train", "remaining", "retain_subset", "unlearn")
#: Which retain data an unlearning run reads (docs/protocol.md, "Data roles"): the retain subset
#: D̂_r (``partial``), D̂_r and the auditor half of the holdout (``partial+holdout``), or the whole
#: remaining set D_r (``full``).
ACCESS = ("partial", "partial+holdout", "full")
#: What each access mode is, in the words of the error for an unknown one
ACCESS_MEANING = {
    "partial": "the retain subset",
    "partial+holdout": "the retain subset and the auditor half of the holdout",
    "full": "the remaining set",
}
MANIFEST_NAME = "split_manifest.json"


class EpochShuffleSampler(RandomSampler):
    """A shuffle that is a function of ``(seeds, epoch, pass)`` only, never of the global RNG.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees the
    same order in its next epochs as an uninterrupted run, whatever consumed the global RNG
    before (a resume skips work that draws from it). ``pass`` counts re-iterations within an
    epoch (``CombinedLoader`` cycles the shorter stream), so each cycle is a new order. Under
    DDP, Lightning swaps any ``RandomSampler`` for its ``DistributedSampler``, which is seeded
    by the global seed and the epoch in the same way.
    """

    def __init__(self, data_source: Sized, seeds: Sequence[int]) -> None:
        super().__init__(data_source)
        self.seeds = tuple(seeds)
        self.epoch = 0
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.passes = 0

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([*self.seeds, self.epoch, self.passes])
        self.passes += 1
        return iter(rng.permutation(len(self.data_source)).tolist())


class UnlearningDataModule(L.LightningDataModule):
    """Datasets by name (or the user's own, see :meth:`from_split` and :meth:`wrap`), the data
    roles of docs/protocol.md, and their dataloaders.

    Args:
        dataset: ``fmnist5k`` (embedded default), ``mnist5k``, ``digits``, ``cifar10``, ``cifar100``,
            ``svhn``, ``mnist``, ``fashion_mnist`` or ``imagefolder``.
        root: folder of torchvision datasets (or of ``train/`` and ``test/`` for ``imagefolder``).
        download: let torchvision download a missing dataset (never done silently).
        holdout: size of the holdout D_h carved from the pool before pretraining: a count (≥ 1)
            or a fraction (< 1). Halved into the auditor half and the validation half.
        forget_fraction: random fraction of the training set to forget (ignored when
            ``forget_classes`` or ``forget_index_file`` is given).
        forget_classes: forget every training sample of these classes (class-wise forgetting).
        forget_index_file: forget these pool indices (``.json`` list, ``.npy`` or text).
        retain_fraction: ρ, the fraction of the remaining set the partial-access unlearner may use.
        seed: seed of the split.
        manifest_path: where the split manifest is read from (if it exists) or written to.
            Default: ``<trainer.default_root_dir>/split_manifest.json``.
        train_on: what ``fit`` trains on (see ``TRAIN_ON``).
        train_index_file: for ``train_on="train"``: the pool indices this fit trains on
            (``.json`` list, ``.npy`` or text) instead of the split's ``train`` role. The split,
            its manifest and every other role stay the seed's; the membership audit's shadow
            models train on halves of the pool this way (``benchmark/shadows.py``).
        access: for ``train_on="unlearn"``, the retain data (see ``ACCESS``): the retain
            subset D̂_r (``partial``); D̂_r and the auditor half of the holdout
            (``partial+holdout``: a method that reads that half through parts of its own, such
            as LTU's auditors, declares ``reads_holdout = True`` and keeps D̂_r as its retain
            batches; any other gets the half as extra labelled retain data); or the whole
            remaining set D_r (``full``).
        batch_size: training batch size (per stream for ``unlearn``).
        eval_batch_size: batch size of evaluation loaders.
        num_workers: DataLoader workers.
        augment: override the dataset's default augmentation (on for CIFAR/SVHN/imagefolder).
        image_size: resize images (``imagefolder``); None keeps the native size.
        pool_size: use a seeded, class-stratified subset of the dataset's training split as the
            pool every role is drawn from: a count (≥ 8) or a fraction (< 1); None uses the
            whole split. Studies of how cost grows with the training set use it
            (``scripts/bench_cost_growth.py``).
    """

    def __init__(
        self,
        dataset: str = "fmnist5k",
        root: str = "data",
        download: bool = False,
        holdout: float = 1000,
        forget_fraction: float | None = 0.1,
        forget_classes: list[int] | None = None,
        forget_index_file: str | None = None,
        retain_fraction: float = 0.1,
        seed: int = 0,
        manifest_path: str | None = None,
        train_on: str = "train",
        train_index_file: str | None = None,
        access: str = "partial",
        batch_size: int = 64,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        augment: bool | None = None,
        image_size: int | None = None,
        pool_size: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_on not in TRAIN_ON:
            raise LTUError(f"train_on={train_on!r} is unknown; choose one of {', '.join(TRAIN_ON)}")
        if access not in ACCESS:
            choices = ", ".join(f"{a!r} ({ACCESS_MEANING[a]})" for a in ACCESS)
            raise LTUError(f"access={access!r} is unknown; choose {choices}")
        if train_index_file is not None and train_on != "train":
            raise LTUError(
                f"train_index_file replaces the training set of train_on='train', but "
                f"train_on={train_on!r}; drop train_index_file or set train_on: train"
            )
        if forget_classes is not None and forget_index_file is not None:
            raise LTUError("give either forget_classes or forget_index_file, not both")
        if batch_size < 1 or eval_batch_size < 1:
            raise LTUError("batch_size and eval_batch_size must be positive integers")
        self.dataset_name = dataset
        self.train_on = train_on
        self.access = access
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.bundle: DatasetBundle | None = None
        self.manifest: SplitManifest | None = None
        # set by from_split/wrap: the user's datasets, their fixed holdout and forget indices
        self._user_bundle: DatasetBundle | None = None
        self._holdout_indices: np.ndarray | None = None
        self._forget_indices: tuple[int, ...] | None = None
        #: pool indices of ``train_index_file`` (read at set-up), None: the split's ``train``
        self._train_indices: np.ndarray | None = None
        #: the roles whose datasets were built so far (``ltu benchmark`` counts the images read)
        self.roles_read: set[str] = set()

    # ------------------------------------------------------------- adapters
    @classmethod
    def from_split(
        cls,
        train: Dataset,
        test: Dataset,
        forget: Forget,
        holdout: Dataset | float = 0.2,
        num_classes: int | None = None,
        name: str = "custom",
        **kwargs: Any,
    ) -> UnlearningDataModule:
        """The unlearning roles of a user's own datasets of ``(x, y)`` items (any tensors:
        tabular rows, sequences, images), with the same split manifest, seeds and refusals as
        the named datasets. Items reach the model unchanged (no transform is added).

        Args:
            train: the training set the original model was (or will be) trained on.
            test: the test set (reported as TA, never used to choose anything).
            forget: what to forget: training-set indices, a boolean mask over ``train``, a
                class id (``int``: every training sample of that class) or a fraction (``float``,
                drawn with ``seed``).
            holdout: data the original model never trained on (a dataset, e.g. the user's
                validation set), or a count/fraction of ``train`` to set aside (then the
                original must be trained through this data module, ``train_on="train"``,
                which leaves the holdout out). Halved into the auditors' non-members and the
                validation half that selects the kept epoch.
            num_classes: number of classes (default: the largest label + 1).
            name: the dataset's name in the manifest and checkpoints.
            kwargs: the other arguments of :class:`UnlearningDataModule` (``seed``,
                ``retain_fraction``, ``train_on`` (default ``"unlearn"``), ``access``,
                ``batch_size``, ``manifest_path``, ...).
        """
        given = isinstance(holdout, Dataset)
        bundle, holdout_idx = user_bundle(
            name, train, test, holdout if given else None, num_classes
        )
        kwargs.setdefault("train_on", "unlearn")
        args = forget_arguments(forget, len(train))  # type: ignore[arg-type]
        indices = args.pop("forget_indices", None)
        size = len(holdout_idx) if holdout_idx is not None else holdout
        dm = cls(dataset=name, holdout=size, **args, **kwargs)  # type: ignore[arg-type]
        dm._user_bundle = bundle
        dm._holdout_indices = holdout_idx
        dm._forget_indices = indices
        return dm

    @classmethod
    def wrap(
        cls,
        datamodule: L.LightningDataModule,
        forget: Forget,
        holdout: Dataset | float | None = None,
        **kwargs: Any,
    ) -> UnlearningDataModule:
        """The unlearning roles of a user's existing ``LightningDataModule``: its
        ``train_dataloader()``'s dataset is the training set, its ``test_dataloader()``'s the
        test set, and by default its ``val_dataloader()``'s the holdout (data the original
        model never trained on). ``forget``, ``holdout`` and ``kwargs`` are those of
        :meth:`from_split`. Items come as the user's datasets return them (a training set with
        random augmentation keeps it in evaluation too: give ``from_split`` plain datasets then).
        """
        if not isinstance(datamodule, L.LightningDataModule):
            raise LTUError(
                f"wrap() takes a LightningDataModule, got {type(datamodule).__name__}; "
                "for datasets use UnlearningDataModule.from_split(train, test, forget=...)"
            )
        datamodule.prepare_data()
        datamodule.setup("fit")
        train = loader_dataset(datamodule, "train_dataloader")
        if holdout is None:
            holdout = loader_dataset(datamodule, "val_dataloader")
        datamodule.setup("test")
        test = loader_dataset(datamodule, "test_dataloader")
        owner = type(datamodule).__name__
        for role, data, hook in (
            ("training set", train, "train_dataloader"),
            ("test set", test, "test_dataloader"),
            ("holdout", holdout, "val_dataloader"),
        ):
            if data is None:
                raise LTUError(
                    f"{owner} has no {hook}() for the {role}; implement it, or pass "
                    + (
                        "holdout=<dataset the original never trained on>"
                        if role == "holdout"
                        else "the datasets to UnlearningDataModule.from_split(train, test, forget=...)"
                    )
                )
        return cls.from_split(train, test, forget, holdout, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ split
    @property
    def spec(self) -> SplitSpec:
        hp = self.hparams
        indices = read_index_file(hp.forget_index_file) if hp.forget_index_file else None
        indices = self._forget_indices if self._forget_indices is not None else indices
        classes = (
            tuple(int(c) for c in hp.forget_classes) if hp.forget_classes is not None else None
        )
        fraction = hp.forget_fraction if classes is None and indices is None else None
        return SplitSpec(
            holdout=hp.holdout,
            forget_fraction=fraction,
            forget_classes=classes,
            retain_fraction=hp.retain_fraction,
            seed=hp.seed,
            forget_indices=indices,
            pool_size=hp.pool_size,
        )

    def resolve_manifest_path(self) -> Path | None:
        if self.hparams.manifest_path:
            return Path(self.hparams.manifest_path)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return Path(trainer.default_root_dir) / MANIFEST_NAME
        return None

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        self.bundle = self._user_bundle or load_dataset(
            self.dataset_name, self.hparams.root, self.hparams.download
        )
        spec = self.spec
        path = self.resolve_manifest_path()
        if path is not None and path.exists():
            manifest = SplitManifest.load(path)
            self._check_compatible(manifest, spec, path)
            manifest.check(path, pool_size=len(self.bundle.pool_targets))
        else:
            roles = make_split(
                self.bundle.pool_targets, self.bundle.num_classes, spec, self._holdout_indices
            )
            manifest = SplitManifest(
                self.dataset_name, self.bundle.fingerprint, spec.describe(), roles
            )
            if path is not None and self._is_global_zero():
                manifest.save(path)
        if self.hparams.train_index_file is not None:
            self._train_indices = self._read_train_indices(len(self.bundle.pool_targets))
        self.manifest = manifest

    def _read_train_indices(self, pool_size: int) -> np.ndarray:
        path = self.hparams.train_index_file
        idx = np.asarray(read_index_file(path, "train index file"), dtype=np.int64)
        if idx.size == 0:
            raise LTUError(f"train index file {path!r} is empty; list the pool indices to train on")
        out = idx[(idx < 0) | (idx >= pool_size)]
        if out.size:
            raise LTUError(
                f"train index file {path!r} has indices {out[:5].tolist()} out of range for a pool "
                f"of {pool_size} samples (valid: 0..{pool_size - 1}); list pool indices"
            )
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise LTUError(
                f"train index file {path!r} lists {uniq[counts > 1][:5].tolist()} more than "
                "once; list each pool index once"
            )
        return uniq

    def _is_global_zero(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is None or trainer.is_global_zero

    def _check_compatible(self, manifest: SplitManifest, spec: SplitSpec, path: Path) -> None:
        assert self.bundle is not None
        if manifest.dataset != self.dataset_name or manifest.fingerprint != self.bundle.fingerprint:
            raise LTUError(
                f"split manifest {str(path)!r} belongs to dataset {manifest.dataset!r} "
                f"(fingerprint {manifest.fingerprint}), not to {self.dataset_name!r} ({self.bundle.fingerprint}); "
                "use that dataset or another --data.manifest_path"
            )
        wanted = spec.describe()
        diff = {
            k: (manifest.spec.get(k), v)
            for k, v in wanted.items()
            if k not in RUN_LEVEL_KEYS and manifest.spec.get(k) != v
        }
        if diff:
            shown = ", ".join(
                f"{k}: manifest {a!r} vs this run {b!r}" for k, (a, b) in diff.items()
            )
            raise LTUError(
                f"split manifest {str(path)!r} was made with a different split ({shown}); "
                "use the same data arguments as the stage that wrote it, or another --data.manifest_path"
            )

    @property
    def num_classes(self) -> int:
        self._require_setup()
        return self.bundle.num_classes  # type: ignore[union-attr]

    @property
    def manifest_id(self) -> str:
        self._require_setup()
        return self.manifest.manifest_id  # type: ignore[union-attr]

    def _require_setup(self) -> None:
        if self.manifest is None:  # used outside a Trainer (e.g. evaluate_unlearning)
            self.setup()

    # -------------------------------------------------------------- datasets
    def role_dataset(self, role: str, train: bool = False) -> Dataset:
        """The dataset of one role (``test`` or one of ``ROLES``), with train or eval transforms."""
        self._require_setup()
        assert self.bundle is not None and self.manifest is not None
        if role not in ROLES and role != "test":
            raise LTUError(f"unknown role {role!r}; choose 'test' or one of {', '.join(ROLES)}")
        self.roles_read.add(role)
        if self._user_bundle is not None:  # the user's items, unchanged
            if role == "test":
                return self.bundle.test
            return Subset(self.bundle.pool, self.role_indices(role).tolist())
        transform = build_transforms(
            self.dataset_name, train, self.hparams.augment, self.hparams.image_size
        )
        cache = is_deterministic(transform)
        if role == "test":
            return self.bundle.with_transform(self.bundle.test, transform, cache)
        if role not in ROLES:
            raise LTUError(f"unknown role {role!r}; choose 'test' or one of {', '.join(ROLES)}")
        base = self.bundle.with_transform(self.bundle.pool, transform, cache)
        return Subset(base, self.role_indices(role).tolist())

    def role_targets(self, role: str) -> Any:
        self._require_setup()
        assert self.bundle is not None and self.manifest is not None
        if role == "test":
            return self.bundle.test_targets
        return self.bundle.pool_targets[self.role_indices(role)]

    def role_indices(self, role: str) -> np.ndarray:
        """Pool indices of a role; ``retain_subset`` follows this run's ``retain_fraction`` (ρ),
        ``train`` this run's ``train_index_file`` when it has one."""
        self._require_setup()
        assert self.manifest is not None
        if role == "train" and self._train_indices is not None:
            return self._train_indices
        if role == "retain_subset":
            return retain_subset_of(
                self.manifest.roles["retain_order"], self.hparams.retain_fraction
            )
        return self.manifest.roles[role]

    def role_dataloader(
        self, role: str, train: bool = False, shuffle: bool = False, batch_size: int | None = None
    ) -> DataLoader:
        """A loader of one role; ``shuffle`` orders it by the split seed, the run's global
        seed (``seed_everything``) and the epoch, so that a resumed run replays the order."""
        size = batch_size or (self.batch_size if train else self.eval_batch_size)
        return self._loader(self.role_dataset(role, train), size, shuffle)

    def _loader(self, dataset: Dataset, size: int, shuffle: bool) -> DataLoader:
        seeds = (self.hparams.seed, int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return DataLoader(
            dataset,
            batch_size=size,
            sampler=EpochShuffleSampler(dataset, seeds) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def retain_role(self) -> str:
        """D̂_r (``retain_subset``) under partial access, with or without the holdout; D_r
        (``remaining``) under full access."""
        return "remaining" if self.access == "full" else "retain_subset"

    def retain_roles(self, holdout_as_retain: bool = True) -> tuple[str, ...]:
        """The roles of the retain batches: :attr:`retain_role`, and under
        ``access="partial+holdout"`` the auditor half of the holdout too, unless the method
        reads that half itself (``holdout_as_retain=False``)."""
        if self.access == "partial+holdout" and holdout_as_retain:
            return (self.retain_role, "holdout_audit")
        return (self.retain_role,)

    def holdout_as_retain(self) -> bool:
        """Whether the method being fit takes the auditor half of the holdout as retain data:
        every method but one whose ``reads_holdout`` is true (LTU reads it for its auditors
        and its holdout distillation, and keeps D̂_r as its retain batches)."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return not getattr(module, "reads_holdout", False)

    def retain_dataloader(self, holdout_as_retain: bool = True) -> DataLoader:
        """The retain stream of the unlearning batches (training transforms, shuffled)."""
        roles = self.retain_roles(holdout_as_retain)
        if len(roles) == 1:
            return self.role_dataloader(roles[0], train=True, shuffle=True)
        parts = [self.role_dataset(role, train=True) for role in roles]
        return self._loader(ConcatDataset(parts), self.batch_size, shuffle=True)

    # ----------------------------------------------------------- dataloaders
    @property
    def val_roles(self) -> list[str]:
        return ["forget", "holdout_val"] if self.train_on == "unlearn" else ["holdout_val"]

    test_roles = ("test", "forget", "remaining")

    def train_dataloader(self) -> Any:
        if self.train_on != "unlearn":
            return self.role_dataloader(self.train_on, train=True, shuffle=True)
        # One epoch runs over the longer stream, cycling the shorter: with partial access that
        # is about one pass over D_f, with full access one pass over D_r, with the holdout as
        # retain data one pass over whichever of D_f and D̂_r + holdout half is longer.
        return CombinedLoader(
            {
                "forget": self.role_dataloader("forget", train=True, shuffle=True),
                "retain": self.retain_dataloader(self.holdout_as_retain()),
            },
            mode="max_size_cycle",
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self.role_dataloader(role) for role in self.val_roles]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.role_dataloader(role) for role in self.test_roles]

    def predict_dataloader(self) -> DataLoader:
        return self.role_dataloader("test")
