"""The LightningModules under ``Trainer(strategy="ddp")``: 2 gloo processes on the CPU.

The two workers are started the way torchrun starts them (rank environment variables, so
Lightning's launcher starts nothing) once per module, and each fits every case of ``CASES``
with a per-rank batch of ``PER_RANK``; the parent compares their saved module states with each
other and with one process fitting the global batch of ``2 * PER_RANK`` in the same order.

The order: with ``shuffle=True`` Lightning gives each rank a ``DistributedSampler`` whose
epoch permutation is the same on all ranks, and rank ``r`` takes its positions ``r, r + 2, …``;
so the two ranks' step-``k`` batches together hold positions ``2kb … 2kb + 2b − 1``, and each
rank's first half (LTU's support) holds its share of the global batch's first half. One process
reading that permutation with batch ``2b`` (``OneProcessOrder``) sees the same global batches.
Steps stay below the shorter stream's end, where the sampler would pad.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    XLAStrategy,
)
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ltu_lightning.data import UnlearningDataModule
from ltu_lightning.errors import LTUError
from ltu_lightning.modules import ClassifierModule, LTUModule
from ltu_lightning.modules.baselines import LUR, SCRUB, SalUn
from ltu_lightning.modules.strategy import SUPPORTED, check_strategy
from ltu_lightning.networks import MLP
from spawned import run_spawned

WORLD = 2
PER_RANK = 8
STEPS = 4
SEED = 0
TIMEOUT_S = 180


def _bn_mlp() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
    )


def _mlp() -> nn.Module:
    torch.manual_seed(SEED)
    return MLP(hidden=[32])


#: case -> (module factory, what the data module trains on)
CASES: dict[str, tuple[Callable[[], L.LightningModule], str]] = {
    # auditors fitted on each rank, BatchNorm frozen (bn_mode eval, the default)
    "ltu_mi": (lambda: LTUModule(_bn_mlp(), auditor_epochs=30), "unlearn"),
    # differentiable all-reduce in the inner step; neg_ce conflicts with the remember gradient;
    # holdout batches drawn in the inner and the outer losses. (At inner_lr 0.5 the holdout term
    # made these 4 steps diverge, the weights moved ~10, and float rounding grew to ~3e-3.)
    "ltu_second_order": (
        lambda: LTUModule(
            _bn_mlp(), forget_loss="neg_ce", meta_order=2, inner_steps=2, inner_lr=0.2
        ),
        "unlearn",
    ),
    # random labels: each rank keeps its share of one draw for the global batch
    "ltu_random_label": (lambda: LTUModule(_bn_mlp(), forget_loss="random_label"), "unlearn"),
    # holdout distillation: each rank keeps its share of one draw of holdout inputs
    "ltu_holdout_kd": (
        lambda: LTUModule(_bn_mlp(), auditor_epochs=30, holdout_distill_weight=1.0),
        "unlearn",
    ),
    "classifier": (lambda: ClassifierModule(_mlp()), "train"),
    "salun": (lambda: SalUn(_mlp()), "unlearn"),  # mask from each rank's full forget set
    "scrub": (lambda: SCRUB(_mlp()), "unlearn"),  # manual optimization, two backwards a step
    # the virtual step's gradient averaged across ranks, the outer one by Lightning's DDP
    "lur": (lambda: LUR(_mlp()), "unlearn"),
    # a differentiable all-reduce inside the graph that DDP's backward runs through
    "lur_second_order": (
        lambda: LUR(_mlp(), meta_order=2, inner_objective="retain", inner_lr=0.1),
        "unlearn",
    ),
}
LTU_CASES = ("ltu_mi", "ltu_second_order")


class OneProcessOrder(UnlearningDataModule):
    """Training batches in the order ``DistributedSampler(shuffle=True)`` gives one replica:
    the global order that the ranks of a DDP run share."""

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        def one_replica(loader: DataLoader) -> DataLoader:
            sampler = DistributedSampler(loader.dataset, num_replicas=1, rank=0, seed=SEED)
            return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)

        loaders = super().train_dataloader()
        if isinstance(loaders, CombinedLoader):
            return CombinedLoader(
                {k: one_replica(v) for k, v in loaders.iterables.items()}, mode="max_size_cycle"
            )
        return one_replica(loaders)


class SaveState(L.Callback):
    """Writes ``rank<r>.pt``: the module's state at the end of fit and each step's conflict flag."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.conflicts: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if "train/conflict" in trainer.callback_metrics:
            self.conflicts.append(trainer.callback_metrics["train/conflict"].item())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        result = {"state": state, "conflicts": self.conflicts}
        torch.save(result, self.out_dir / f"rank{trainer.global_rank}.pt")


def _fit(
    module: L.LightningModule,
    train_on: str,
    tmp: Path,
    out_dir: Path,
    devices: int = 1,
    batch_size: int = 2 * PER_RANK,
    data_class: type[UnlearningDataModule] = OneProcessOrder,
) -> None:
    """Fit ``STEPS`` steps; ``SaveState`` writes each rank's result to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ):  # seed_everything's PL_GLOBAL_SEED stays in here
        L.seed_everything(SEED, verbose=False)
        data = data_class(
            "digits",
            holdout=0.2,
            train_on=train_on,
            # LTU's auditors read the holdout's auditor half; the baselines keep D̂_r alone
            access="partial+holdout" if getattr(module, "reads_holdout", False) else "partial",
            batch_size=batch_size,
            manifest_path=str(tmp / "split_manifest.json"),
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_epochs=1,
            limit_train_batches=STEPS,
            limit_val_batches=1,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
            callbacks=[SaveState(out_dir)],
        )
        trainer.fit(module, data)


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    root = Path(tmp)
    for name, (make, train_on) in CASES.items():
        _fit(make(), train_on, root, root / name, WORLD, PER_RANK, UnlearningDataModule)
    # last: the refusal must come before any collective, on every rank
    try:
        refused = LTUModule(_bn_mlp(), bn_mode="train")
        _fit(refused, "unlearn", root, root / "bn_train", WORLD, PER_RANK, UnlearningDataModule)
    except LTUError as err:
        (root / f"bn_train_error{rank}.txt").write_text(str(err))


#: one torch thread per test module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ddp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp_lightning")
    UnlearningDataModule(
        "digits", holdout=0.2, manifest_path=str(tmp / "split_manifest.json")
    ).setup()
    run_spawned(
        _worker, lambda: (find_free_network_port(), str(tmp)), WORLD, TIMEOUT_S, tmp / "logs"
    )
    return tmp


def _ranks(ddp_dir: Path, name: str) -> list[dict]:
    return [torch.load(ddp_dir / name / f"rank{r}.pt") for r in range(WORLD)]


def _max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_end_with_identical_modules(ddp_dir: Path, name: str) -> None:
    rank0, rank1 = (r["state"] for r in _ranks(ddp_dir, name))
    for key in rank0:  # parameters, BatchNorm buffers, auditors, masks, teacher
        assert torch.equal(rank0[key], rank1[key]), key


@pytest.mark.parametrize("name", list(CASES))
def test_ranks_match_one_process_on_the_global_batch(
    ddp_dir: Path, tmp_path: Path, name: str
) -> None:
    make, train_on = CASES[name]
    start = {k: v.detach().clone() for k, v in make().state_dict().items()}
    ddp = _ranks(ddp_dir, name)[0]
    _fit(make(), train_on, ddp_dir, tmp_path)
    single = torch.load(tmp_path / "rank0.pt")
    assert _max_diff(ddp["state"], single["state"]) < 1e-5
    assert ddp["conflicts"] == single["conflicts"]
    backbone = [k for k in start if k.startswith("backbone.") and start[k].is_floating_point()]
    moved = max((ddp["state"][k] - start[k]).abs().max().item() for k in backbone)
    assert moved > 1e-3  # the steps moved the model far beyond the tolerance


def test_one_shard_alone_ends_elsewhere(ddp_dir: Path, tmp_path: Path) -> None:
    """The equality above has power: the rank's own batch of PER_RANK is a different run."""
    make, train_on = CASES["ltu_mi"]
    _fit(make(), train_on, ddp_dir, tmp_path, batch_size=PER_RANK)
    shard = torch.load(tmp_path / "rank0.pt")
    assert _max_diff(_ranks(ddp_dir, "ltu_mi")[0]["state"], shard["state"]) > 1e-3


@pytest.mark.parametrize("name", LTU_CASES)
def test_frozen_batch_norm_statistics_stay_the_original_ones(ddp_dir: Path, name: str) -> None:
    start = CASES[name][0]().state_dict()
    for rank in _ranks(ddp_dir, name):
        stats = {k: v for k, v in rank["state"].items() if "running_" in k}
        # the backbone's; a frozen teacher (LTU's kd remember loss) holds its own copy
        assert len([k for k in stats if k.startswith("backbone.")]) == 2
        for key, value in stats.items():
            assert torch.equal(value, start[key]), key


def test_second_order_case_had_conflicts(ddp_dir: Path) -> None:
    """Projection (the non-linear part the ranks must agree on) was active."""
    conflicts = _ranks(ddp_dir, "ltu_second_order")[0]["conflicts"]
    assert len(conflicts) == STEPS and sum(conflicts) >= 1


def test_bn_mode_train_refused_on_every_rank_before_training(ddp_dir: Path) -> None:
    for rank in range(WORLD):
        message = (ddp_dir / f"bn_train_error{rank}.txt").read_text()
        assert "bn_mode='train' under 2 processes" in message and "sync_batchnorm" in message
    assert not (ddp_dir / "bn_train" / "rank0.pt").exists()


# ------------------------------------------------------------ strategy checks (no processes)
class UserStrategy:
    """A strategy of the user's own, not derived from the single-device or DDP strategies."""


def _class_name(obj: object) -> str:
    return type(obj).__name__


def _trainer(strategy: object, world_size: int = 1) -> SimpleNamespace:
    return SimpleNamespace(strategy=strategy, world_size=world_size)


@pytest.mark.parametrize(
    "strategy",
    [
        FSDPStrategy(),
        ModelParallelStrategy(),
        # need deepspeed / torch_xla to construct; the check only looks at the class
        object.__new__(DeepSpeedStrategy),
        object.__new__(XLAStrategy),
        UserStrategy(),
    ],
    ids=_class_name,
)
def test_sharding_and_step_owning_strategies_are_refused(strategy: object) -> None:
    with pytest.raises(LTUError) as err:
        check_strategy(_trainer(strategy, 2), "LTUModule")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"LTUModule cannot run under {type(strategy).__name__} (")
    assert message.endswith(SUPPORTED)


@pytest.mark.parametrize("strategy", [SingleDeviceStrategy(), DDPStrategy()], ids=_class_name)
def test_single_device_and_ddp_pass(strategy: object) -> None:
    check_strategy(_trainer(strategy, 2), "LTUModule", _mlp())


def test_batch_statistics_need_sync_batchnorm_under_several_processes() -> None:
    with pytest.raises(LTUError, match="own BatchNorm1d statistics"):
        check_strategy(_trainer(DDPStrategy(), 2), "LTUModule", _bn_mlp())
    check_strategy(_trainer(DDPStrategy(), 1), "LTUModule", _bn_mlp())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(_bn_mlp())
    check_strategy(_trainer(DDPStrategy(), 2), "LTUModule", synced)


def test_ltu_refuses_fsdp_before_fitting_its_auditors() -> None:
    module = LTUModule(_bn_mlp())
    module.trainer = _trainer(FSDPStrategy(), 2)  # Lightning builds FSDP only on CUDA
    with pytest.raises(LTUError, match="FSDPStrategy"):
        module.on_fit_start()
    assert not module.auditors.is_fitted
