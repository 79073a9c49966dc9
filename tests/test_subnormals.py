"""ZeroSubnormals: subnormal weights and optimizer state become zero, nothing else changes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ltu_lightning.errors import LTUError
from ltu_lightning.modules import ClassifierModule
from ltu_lightning.modules.base import ZeroSubnormals
from ltu_lightning.networks import MLP
from ltu_lightning.optim.subnormals import zero_subnormals_

TINY = torch.finfo(torch.float32).tiny


def _subnormal_count(tensors) -> int:
    return sum(int(((t.abs() < TINY) & (t != 0)).sum()) for t in tensors)


def test_zero_subnormals_sets_only_subnormal_entries_to_zero() -> None:
    t = torch.tensor([1e-39, -3e-40, 0.0, 2e-38, -1.0, 5e-45])
    normal = t.clone()
    assert _subnormal_count([t]) == 3
    assert zero_subnormals_([t]) == 3
    assert t.tolist() == [0.0, 0.0, 0.0, normal[3].item(), -1.0, 0.0]


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)


def _module(subnormal_rows: bool) -> ClassifierModule:
    torch.manual_seed(0)
    module = ClassifierModule(
        MLP(num_classes=10, in_features=8, hidden=(16,)),
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=5e-4),
    )
    if subnormal_rows:
        with torch.no_grad():  # two hidden units whose weights decayed below float32's normals
            first = next(p for p in module.parameters() if p.dim() == 2)
            first[:2] = 1e-39
    return module


def _fit(module: L.LightningModule, tmp_path, **kwargs) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )
    trainer.fit(module, _loader())
    return trainer


def test_every_module_fits_without_subnormal_weights_or_optimizer_state(tmp_path) -> None:
    module = _module(subnormal_rows=True)
    assert _subnormal_count(module.parameters()) > 0
    trainer = _fit(module, tmp_path)
    (callback,) = [cb for cb in trainer.callbacks if isinstance(cb, ZeroSubnormals)]
    assert callback.zeroed >= 16  # the two rows at train start, at least
    assert _subnormal_count(module.parameters()) == 0
    state = [v for s in trainer.optimizers[0].state.values() for v in s.values() if v.dim() > 0]
    assert state and _subnormal_count(state) == 0


def test_a_fit_without_subnormals_is_unchanged_by_it(tmp_path) -> None:
    with_it, without = _module(subnormal_rows=False), _module(subnormal_rows=False)
    L.seed_everything(0)
    _fit(with_it, tmp_path / "with")
    # a trainer-level instance that never fires stands in for "no callback": the module's own
    # is added only where the trainer has none
    L.seed_everything(0)
    _fit(without, tmp_path / "without", callbacks=[ZeroSubnormals(every_n_train_steps=10**9)])
    for a, b in zip(with_it.parameters(), without.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_users_own_instance_is_kept_not_doubled(tmp_path) -> None:
    own = ZeroSubnormals(every_n_train_steps=3)
    trainer = _fit(_module(subnormal_rows=True), tmp_path, callbacks=[own])
    assert [cb for cb in trainer.callbacks if isinstance(cb, ZeroSubnormals)] == [own]
    assert own.zeroed > 0


def test_testing_a_stored_model_zeroes_its_subnormal_weights(tmp_path) -> None:
    module = _module(subnormal_rows=True)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.test(module, _loader())
    assert _subnormal_count(module.parameters()) == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_a_bad_interval_is_refused_in_one_line(bad) -> None:
    with pytest.raises(LTUError, match=r"every_n_train_steps must be an integer >= 1; got"):
        ZeroSubnormals(every_n_train_steps=bad)


def test_the_subnormal_benchmark_script_prints_its_table(tmp_path, capsys, monkeypatch) -> None:
    """scripts/bench_subnormals.py (the numbers of docs/benchmarks.md, "Speed") runs."""
    import runpy
    import sys
    from pathlib import Path

    from ltu_lightning.networks import SmallCNN

    net = SmallCNN(num_classes=10, in_channels=1, image_size=28)
    with torch.no_grad():
        net.classifier[-1].weight[:3] = 1e-39
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_subnormals.py"
    monkeypatch.setattr(
        sys, "argv", [str(script), "--ckpt", str(ckpt), "--batch", "2", "--calls", "1"]
    )
    runpy.run_path(str(script), run_name="__main__")
    rows = [
        line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")
    ]
    assert [(r[0], r[1]) for r in rows[1:]] == [
        ("| as stored", str(3 * net.classifier[-1].in_features)),
        ("| subnormals zeroed", "0"),
    ]
