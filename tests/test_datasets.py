"""Datasets by name (torchvision formats written small by fake_datasets, and the embedded ones)
and the behaviours of UnlearningDataModule: manifest reuse/refusal, unlearn batches, access."""

from __future__ import annotations

import json
import shutil
import socket
import types
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import ltu_lightning.data.datamodule as datamodule_module
import ltu_lightning.data.datasets as datasets_module
from fake_datasets import (
    write_cifar10,
    write_cifar100,
    write_imagefolder,
    write_mnist,
    write_svhn,
)
from ltu_lightning.data import DATASETS, UnlearningDataModule, load_dataset
from ltu_lightning.data.datasets import STATS
from ltu_lightning.data.transforms import build_transforms, is_deterministic
from ltu_lightning.errors import LTUError

TORCHVISION = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")
ON_DISK = TORCHVISION + ("imagefolder",)
#: name -> (pool size, test size, num_classes, image shape [C, H, W]) of the fake data below
EXPECTED = {
    "cifar10": (120, 40, 10, (3, 32, 32)),
    "cifar100": (200, 100, 100, (3, 32, 32)),
    "svhn": (120, 40, 10, (3, 32, 32)),
    "mnist": (120, 40, 10, (1, 28, 28)),
    "fashion_mnist": (120, 40, 10, (1, 28, 28)),
    "imagefolder": (60, 15, 3, (3, 32, 32)),
}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """All on-disk datasets under one root (imagefolder under ROOT/images), and what was written."""
    root = tmp_path_factory.mktemp("data")
    written = {
        "cifar10": write_cifar10(root),
        "cifar100": write_cifar100(root),
        "svhn": write_svhn(root),
        "mnist": write_mnist(root, "MNIST"),
        "fashion_mnist": write_mnist(root, "FashionMNIST"),
        "imagefolder": write_imagefolder(root / "images"),
    }
    return root, written


def root_of(name: str, root: Path) -> str:
    return str(root / "images") if name == "imagefolder" else str(root)


def as_hwc(name: str, x: np.ndarray, i: int) -> np.ndarray:
    """Image ``i`` of the written array, as the H×W(×C) array torchvision's PIL image holds."""
    if name in ("cifar10", "cifar100"):
        return x[i].reshape(3, 32, 32).transpose(1, 2, 0)
    if name == "svhn":
        return x[:, :, :, i]
    return x[i]


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Any DNS lookup or connection fails (and is recorded): proves nothing reached for the net."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access is disabled in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


# ---------------------------------------------------------------------------- on-disk datasets
@pytest.mark.parametrize("name", ON_DISK)
def test_load_dataset_reads_what_was_written(name, fake_root, skip_md5):
    root, written = fake_root
    bundle = load_dataset(name, root=root_of(name, root))
    n_pool, n_test, num_classes, (channels, h, w) = EXPECTED[name]
    assert bundle.name == name
    assert (len(bundle.pool), len(bundle.test)) == (n_pool, n_test)
    assert bundle.num_classes == num_classes
    # labels as written (SVHN's stored 10 is digit 0: the fake writer returns the digits)
    np.testing.assert_array_equal(bundle.pool_targets, written[name]["train"])
    np.testing.assert_array_equal(bundle.test_targets, written[name]["test"])
    if name == "svhn":
        assert 0 in bundle.pool_targets and bundle.pool_targets.max() == 9
    # images as written, pixel for pixel, with their labels: the array datasets held in memory
    # as uint8 [C, H, W] tensors, image folders as the PIL images they are read as
    for split, ds in (("train", bundle.pool), ("test", bundle.test)):
        for i in (0, len(ds) - 1):
            image, target = ds[i]
            assert target == written[name][split][i]
            if name == "imagefolder":
                assert image.size == (w, h)
                pixels = np.asarray(image)
            else:
                assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
                assert tuple(image.shape) == (channels, h, w)
                pixels = image.permute(1, 2, 0).numpy().squeeze(-1 if channels == 1 else ())
            np.testing.assert_array_equal(pixels, as_hwc(name, written[name][f"x_{split}"], i))
    assert len(bundle.fingerprint) == 16


@pytest.mark.parametrize("name", TORCHVISION)
@pytest.mark.parametrize("train", [False, True])
def test_in_memory_items_transform_like_torchvision_pil_items(name, train, fake_root, skip_md5):
    """Indexing the arrays gives what torchvision's own PIL items give after the same transform
    (augmentations drawing the same numbers), and the dataset's fingerprint is unchanged."""
    import torchvision.datasets as tvd

    root, _ = fake_root
    bundle = load_dataset(name, root=root_of(name, root))
    if name == "svhn":
        reference = tvd.SVHN(str(root), split="train")
    else:
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST}
        reference = cls.get(name, tvd.FashionMNIST)(str(root), train=True)
    transform = build_transforms(name, train=train, augment=True)
    for i in range(0, len(reference), 9):
        torch.manual_seed(i)
        expected = transform(reference[i][0])
        torch.manual_seed(i)
        torch.testing.assert_close(transform(bundle.pool[i][0]), expected, rtol=0, atol=0)
    sample = ",".join(
        str(reference[int(i)][0].size) for i in np.linspace(0, len(reference) - 1, 4).astype(int)
    )
    expected_print = datasets_module._fingerprint(
        name, bundle.pool_targets, bundle.test_targets, sample
    )
    assert bundle.fingerprint == expected_print


@pytest.mark.parametrize("name", ON_DISK)
def test_datamodule_batches_are_normalized_images(name, fake_root, skip_md5):
    root, written = fake_root
    dm = UnlearningDataModule(dataset=name, root=root_of(name, root), holdout=0.2, batch_size=8)
    dm.setup("fit")
    assert dm.num_classes == EXPECTED[name][2]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, *EXPECTED[name][3])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.isfinite(x).all()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[name])
    # normalized: pixels in [0, 1] mapped by (p - mean) / std (padding of random crops is 0)
    assert (x >= (0 - mean) / std - 1e-5).all() and (x <= (1 - mean) / std + 1e-5).all()
    assert x.min() < 0 < x.max()
    # the evaluation transform is exactly that normalization of the written pixels
    image, target = dm.role_dataset("test")[0]
    hwc = as_hwc(name, written[name]["x_test"], 0)
    chw = torch.from_numpy(hwc.reshape(*hwc.shape[:2], -1).transpose(2, 0, 1).copy())
    expected = (chw.float() / 255 - mean[0]) / std[0]
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)
    assert target == written[name]["test"][0]


@pytest.mark.parametrize("name", TORCHVISION)
def test_missing_dataset_says_download_without_network(name, tmp_path, no_network):
    with pytest.raises(LTUError) as err:
        load_dataset(name, root=str(tmp_path), download=False)
    message = str(err.value)
    assert "download" in message and "\n" not in message
    assert name in message and str(tmp_path) in message
    assert no_network == []


def test_missing_dataset_fails_in_datamodule_setup_too(tmp_path, no_network):
    dm = UnlearningDataModule(dataset="cifar10", root=str(tmp_path), holdout=0.2)
    with pytest.raises(LTUError, match="download"):
        dm.setup("fit")
    assert no_network == []


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_failed_download_is_one_line_error(name, tmp_path, no_network):
    """download=True with no network: a one-line LTUError, not urllib's traceback."""
    with pytest.raises(LTUError) as err:
        load_dataset(name, root=str(tmp_path), download=True)
    message = str(err.value)
    assert "download" in message and "\n" not in message
    assert no_network, "the download was expected to try (and be refused) the network"


def test_md5_is_checked_without_the_skip(fake_root):
    """Without skip_md5, torchvision rejects the fake CIFAR files (their md5 is not the real one)."""
    root, _ = fake_root
    with pytest.raises(LTUError, match="corrupted"):
        load_dataset("cifar10", root=str(root))


def test_missing_imagefolder_explains_layout(tmp_path):
    with pytest.raises(LTUError, match=r"ROOT/train/<class>/"):
        load_dataset("imagefolder", root=str(tmp_path))


def test_imagefolder_class_mismatch(tmp_path):
    write_imagefolder(tmp_path, n_train_per_class=2, n_test_per_class=1)
    shutil.rmtree(tmp_path / "test" / "fox")
    with pytest.raises(LTUError, match="different class folders"):
        load_dataset("imagefolder", root=str(tmp_path))


def test_unknown_dataset_lists_choices():
    with pytest.raises(LTUError) as err:
        load_dataset("nope")
    message = str(err.value)
    assert "'nope'" in message
    assert all(name in message for name in DATASETS)


# ---------------------------------------------------------------------------- embedded datasets
@pytest.mark.parametrize(
    ("name", "n_pool", "n_test", "side"),
    [("fmnist5k", 4000, 1000, 28), ("mnist5k", 4000, 1000, 28), ("digits", 1437, 360, 8)],
)
def test_embedded_datasets(name, n_pool, n_test, side):
    bundle = load_dataset(name)
    assert (len(bundle.pool), len(bundle.test), bundle.num_classes) == (n_pool, n_test, 10)
    assert len(bundle.pool_targets) == n_pool and len(bundle.test_targets) == n_test
    image, target = bundle.pool[0]
    assert image.shape == (1, side, side) and image.dtype == torch.uint8
    assert target == bundle.pool_targets[0]
    if name != "digits":  # fmnist5k and mnist5k are balanced: 400 / 100 per class
        assert (np.bincount(bundle.pool_targets) == n_pool // 10).all()
        assert (np.bincount(bundle.test_targets) == n_test // 10).all()
    else:
        assert set(np.unique(bundle.pool_targets)) == set(range(10))
    if name != "mnist5k":  # fixed: loading twice gives the same dataset (mnist5k: ~5 s a load)
        assert load_dataset(name).fingerprint == bundle.fingerprint


@pytest.mark.parametrize("name", ["svhn", "mnist", "mnist5k", "digits"])
def test_digits_are_never_mirrored(name):
    steps = build_transforms(name, train=True, augment=True).transforms
    assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in steps)


def test_default_augmentation():
    cifar = [type(s) for s in build_transforms("cifar10", train=True).transforms]
    assert v2.RandomCrop in cifar and v2.RandomHorizontalFlip in cifar
    svhn = [type(s) for s in build_transforms("svhn", train=True).transforms]
    assert v2.RandomCrop in svhn and v2.RandomHorizontalFlip not in svhn
    for name in ("fmnist5k", "mnist5k", "digits"):  # trained without augmentation
        steps = [type(s) for s in build_transforms(name, train=True).transforms]
        assert v2.RandomCrop not in steps and v2.RandomHorizontalFlip not in steps
    evaluation = [type(s) for s in build_transforms("cifar10", train=False).transforms]
    assert v2.RandomCrop not in evaluation and v2.RandomHorizontalFlip not in evaluation


def _asset_copy(tmp_path: Path) -> Path:
    """A copy of the package's data/assets folder; returns the folder standing for the package."""
    assets = resources.files("ltu_lightning.data") / "assets"
    target = tmp_path / "pkg" / "assets"
    target.mkdir(parents=True)
    for name in ("fmnist5k.json", "fmnist5k.npz"):
        (target / name).write_bytes((assets / name).read_bytes())
    return target.parent


def _use_assets_from(monkeypatch, package_dir: Path) -> None:
    fake = types.SimpleNamespace(files=lambda package: package_dir)
    monkeypatch.setattr(datasets_module, "resources", fake)


def test_fmnist5k_checksum_rejects_a_corrupted_copy(tmp_path, monkeypatch):
    package_dir = _asset_copy(tmp_path)
    _use_assets_from(monkeypatch, package_dir)
    # the intact copy loads (so the copy really is what load_fmnist5k reads) ...
    assert len(load_dataset("fmnist5k").pool) == 4000
    # ... and one flipped byte is refused
    npz = package_dir / "assets" / "fmnist5k.npz"
    raw = bytearray(npz.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))
    with pytest.raises(LTUError, match="corrupt") as err:
        load_dataset("fmnist5k")
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- datamodule behaviour
def fmnist_dm(manifest_path: Path | None = None, **kw) -> UnlearningDataModule:
    args = {"dataset": "fmnist5k", "batch_size": 8, **kw}
    if manifest_path is not None:
        args["manifest_path"] = str(manifest_path)
    return UnlearningDataModule(**args)


def test_manifest_written_then_reused(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "split_manifest.json"
    first = fmnist_dm(path)
    first.setup("fit")
    saved = json.loads(path.read_text())
    assert saved["dataset"] == "fmnist5k"
    assert saved["manifest_id"] == first.manifest_id
    assert saved["sizes"]["holdout_audit"] + saved["sizes"]["holdout_val"] == 1000
    assert saved["sizes"]["train"] == 3000 and saved["sizes"]["forget"] == 300

    # the same arguments read the manifest back instead of splitting again
    def no_split(*args, **kwargs):
        raise AssertionError("make_split called although the manifest exists")

    monkeypatch.setattr(datamodule_module, "make_split", no_split)
    before = path.read_bytes()
    second = fmnist_dm(path)
    second.setup("fit")
    assert second.manifest_id == first.manifest_id
    for role, idx in first.manifest.roles.items():
        np.testing.assert_array_equal(second.manifest.roles[role], idx)
    assert path.read_bytes() == before


@pytest.mark.parametrize(("key", "value"), [("seed", 1), ("forget_fraction", 0.2)])
def test_manifest_refuses_a_different_split(tmp_path, key, value):
    path = tmp_path / "split_manifest.json"
    fmnist_dm(path).setup("fit")
    before = path.read_bytes()
    with pytest.raises(LTUError) as err:
        fmnist_dm(path, **{key: value}).setup("fit")
    message = str(err.value)
    assert key in message and str(path) in message and "\n" not in message
    assert path.read_bytes() == before  # never overwritten


def test_manifest_of_another_dataset_is_refused(tmp_path):
    path = tmp_path / "split_manifest.json"
    fmnist_dm(path).setup("fit")
    with pytest.raises(LTUError, match="belongs to dataset 'fmnist5k'"):
        UnlearningDataModule(dataset="digits", holdout=0.2, manifest_path=str(path)).setup()


@pytest.mark.parametrize(
    ("access", "retain_role"), [("partial", "retain_subset"), ("full", "remaining")]
)
def test_unlearn_batches_forget_and_retain(access, retain_role):
    dm = fmnist_dm(train_on="unlearn", access=access)
    dm.setup("fit")
    assert dm.retain_role == retain_role
    assert dm.val_roles == ["forget", "holdout_val"]
    loader = dm.train_dataloader()
    retain_ds = loader.iterables["retain"].dataset
    assert len(retain_ds) == len(dm.manifest.roles[retain_role])
    assert list(retain_ds.indices) == dm.manifest.roles[retain_role].tolist()
    assert len(loader.iterables["forget"].dataset) == len(dm.manifest.roles["forget"]) == 300
    batch, _, _ = next(iter(loader))
    assert set(batch) == {"forget", "retain"}
    for x, y in batch.values():
        assert x.shape == (8, 1, 28, 28) and y.shape == (8,)
    # the forget stream really is the forget set (its labels are forget labels)
    forget_labels = set(dm.role_targets("forget").tolist())
    assert set(batch["forget"][1].tolist()) <= forget_labels


def test_partial_holdout_retain_batches_are_the_retain_subset_and_the_auditor_half():
    dm = fmnist_dm(train_on="unlearn", access="partial+holdout")
    dm.setup("fit")
    roles = dm.manifest.roles
    retain = dm.train_dataloader().iterables["retain"]
    parts = [list(d.indices) for d in retain.dataset.datasets]
    assert parts == [roles["retain_subset"].tolist(), roles["holdout_audit"].tolist()]
    assert len(retain.dataset) == 270 + 500  # fmnist5k: ρ·|D_r| and half the 1,000 holdout
    seen = set(retain.sampler)
    assert seen == set(range(770))  # one shuffle over both parts
    # a method that reads the holdout half itself (LTU) keeps D̂_r as its retain batches
    assert (
        list(dm.retain_dataloader(holdout_as_retain=False).dataset.indices)
        == roles["retain_subset"].tolist()
    )


@pytest.mark.parametrize("train_on", ["train", "remaining", "retain_subset"])
def test_train_on_role(train_on):
    dm = fmnist_dm(train_on=train_on)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader.dataset) == len(dm.manifest.roles[train_on])
    x, _ = next(iter(loader))
    assert x.shape == (8, 1, 28, 28)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"train_on": "forget"}, "train_on='forget'"),
        ({"access": "some"}, r"access='some' is unknown; choose 'partial' .*'partial\+holdout'"),
    ],
)
def test_bad_train_on_or_access(kwargs, pattern):
    with pytest.raises(LTUError, match=pattern):
        fmnist_dm(**kwargs)


def test_deterministic_views_of_in_memory_data_are_cached_and_equal(tmp_path):
    data = UnlearningDataModule("digits", holdout=0.2, manifest_path=str(tmp_path / "m.json"))
    data.setup()
    test = data.role_dataset("test")
    first = test[3]
    assert test[3] is first  # kept, not recomputed
    fresh = data.bundle.with_transform(data.bundle.test, build_transforms("digits", False))
    assert torch.equal(fresh[3][0], first[0]) and fresh[3][1] == first[1]
    assert fresh[3] is not fresh[3]  # no cache unless asked for


def test_random_transforms_are_never_cached(fake_root, skip_md5, tmp_path):
    assert is_deterministic(build_transforms("cifar10", train=False))
    assert not is_deterministic(build_transforms("cifar10", train=True))
    assert is_deterministic(build_transforms("fmnist5k", train=True))  # no augmentation
    data = UnlearningDataModule(
        "cifar10", root=str(fake_root[0]), holdout=0.2, manifest_path=str(tmp_path / "m.json")
    )
    data.setup()
    train = data.role_dataset("train", train=True)
    assert train[0] is not train[0]
