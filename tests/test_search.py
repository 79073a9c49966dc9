"""``ltu tune --search``: Optuna studies per method, resumable, chosen values for the benchmark."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from ltu_lightning.benchmark.cli import _load_and_select, build_parser, load_tune_benchmark
from ltu_lightning.benchmark.search import read_space
from ltu_lightning.errors import LTUError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
LR = "model.init_args.optimizer.init_args.lr"
METHODS = ("ft:partial", "ga:partial")


def _benchmark(tmp_path: Path) -> Path:
    digits = CONFIGS / "unlearn" / "datasets" / "digits.yaml"
    bench = {
        "name": "tiny",
        "original": str(CONFIGS / "pretrain" / "digits.yaml"),
        "retrain": str(CONFIGS / "retrain" / "digits.yaml"),
        "tuning_seeds": [0],
        "report_seeds": [100],
        "methods": [
            {"key": key, "config": [str(CONFIGS / "unlearn" / f"{key.split(':')[0]}_fmnist5k.yaml"), str(digits)],
             "overrides": {"trainer.max_epochs": 1}}
            for key in METHODS
        ],
        "overrides": {"trainer.max_epochs": 1},
    }  # fmt: skip
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    return path


@pytest.mark.timeout(900)
def test_two_methods_two_trials_resumed_and_read_by_the_benchmark(in_tmp, run_ltu) -> None:
    bench = _benchmark(in_tmp)
    spaces = in_tmp / "spaces"
    spaces.mkdir()
    for key in METHODS:
        space = {LR: {"low": 0.001, "high": 0.05, "log": True}}
        (spaces / f"{key.replace(':', '_')}.yaml").write_text(yaml.safe_dump(space))
    out = in_tmp / "search"
    tune = ["tune", "--benchmark", bench, "--search", spaces, "--out", out]
    run_ltu([*tune, "--trials", "2"])
    trials = {
        key: sorted(p.name for p in (out / "seed_0" / key.replace(":", "_")).iterdir())
        for key in METHODS
    }
    assert trials == {key: ["trial_0", "trial_1"] for key in METHODS}
    chosen = yaml.safe_load((out / "chosen.yaml").read_text())
    assert set(chosen) == set(METHODS)
    assert all(0.001 <= chosen[key][LR] <= 0.05 for key in METHODS)
    md = (out / "search.md").read_text()
    assert md.count("| 0 | {") == 2 and md.count("| 1 | {") == 2 and "| 2 | {" not in md
    # resumed: the studies continue from their SQLite storage, up to 3 trials each
    run_ltu([*tune, "--trials", "3"])
    for key in METHODS:
        folder = out / "seed_0" / key.replace(":", "_")
        assert sorted(p.name for p in folder.iterdir()) == ["trial_0", "trial_1", "trial_2"]
    assert (out / "search.md").read_text().count("| 2 | {") == 2
    # a run with --only continues one study; the report still lists the other method's
    run_ltu([*tune, "--trials", "4", "--only", METHODS[0]])
    assert set(yaml.safe_load((out / "chosen.yaml").read_text())) == set(METHODS)
    md = (out / "search.md").read_text()
    assert md.count("| 3 | {") == 1 and md.count("| 2 | {") == 2
    # a continued study does not draw the points it already tried again
    storage = f"sqlite:///{out / 'search.db'}"
    for key in METHODS:
        lrs = [t.params[LR] for t in optuna.load_study(study_name=f"tiny/{key}", storage=storage).trials]  # fmt: skip
        assert len(set(lrs)) == len(lrs), (key, lrs)
    # the benchmark applies the chosen values after each method's own overrides
    chosen = yaml.safe_load((out / "chosen.yaml").read_text())
    cfg = build_parser().parse_args(["--config", str(bench), "--tuned", str(out / "chosen.yaml")])
    loaded = {m.key: m.overrides for m in _load_and_select(cfg).methods}
    for key in METHODS:
        assert loaded[key][LR] == chosen[key][LR]
        assert loaded[key]["trainer.max_epochs"] == 1


def test_tune_layers_a_variant_on_its_benchmark(tmp_path: Path) -> None:
    """``ltu tune --benchmark base.yaml variant.yaml`` searches the variant: its name (the
    studies' prefix), its overrides for every stage and its pinned rows, on the base's rows."""
    base = _benchmark(tmp_path)
    variant = tmp_path / "variant.yaml"
    variant.write_text(
        yaml.safe_dump(
            {
                "name": "tiny_classwise",
                "overrides": {"data.init_args.forget_classes": [0], "trainer.max_epochs": 2},
                "method_overrides": {"ga:partial": {"model.init_args.stop_rule": "last"}},
            }
        )
    )
    one = load_tune_benchmark(str(base))
    assert one.name == "tiny" and one.overrides == {"trainer.max_epochs": 1}
    bench = load_tune_benchmark([str(base), str(variant)])
    assert bench.name == "tiny_classwise" and bench.tuning_seeds == [0]
    assert bench.overrides == {"data.init_args.forget_classes": [0], "trainer.max_epochs": 2}
    rows = {m.key: m.overrides for m in bench.methods}
    assert list(rows) == list(METHODS)
    assert rows["ga:partial"]["model.init_args.stop_rule"] == "last"
    assert "model.init_args.stop_rule" not in rows["ft:partial"]
    with pytest.raises(LTUError, match="--benchmark .*missing.yaml' does not exist"):
        load_tune_benchmark([str(base), str(tmp_path / "missing.yaml")])


def test_a_search_space_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "ft_partial.yaml"
    path.write_text(yaml.safe_dump({LR: {"low": 0.1, "high": 0.01}}))
    with pytest.raises(LTUError, match="must be \\{low: a, high: b"):
        read_space(path)
    path.write_text(
        yaml.safe_dump({LR: {"choices": [0.1, 0.2]}, "trainer.max_epochs": {"low": 1, "high": 3}})
    )
    assert set(read_space(path)) == {LR, "trainer.max_epochs"}


SPACES = sorted((Path(__file__).resolve().parents[1] / "experiments" / "search").glob("*/*.yaml"))


@pytest.mark.parametrize("bench_name", sorted({p.parent.name for p in SPACES}))
def test_every_search_space_names_a_row_and_keys_its_stage_accepts(
    bench_name, tmp_path, monkeypatch
) -> None:
    """Each ``experiments/search/<benchmark>/<row>.yaml`` names a row of that benchmark config,
    and the row's stage, composed with the space's lower bounds, resolves each key to them."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the benchmark configs name their stage configs from the repo root
    cfg = build_parser().parse_args(
        [
            "--config",
            str(repo / "configs" / "benchmark" / f"{bench_name}.yaml"),
            # out of the repo's runs/: a finished benchmark there must not fail the check
            "--out",
            str(tmp_path / "out"),
        ]
    )
    bench = _load_and_select(cfg)
    rows = {m.folder: m.key for m in bench.methods}
    for path in (p for p in SPACES if p.parent.name == bench_name):
        assert path.stem in rows, f"{path} names no row of {bench_name}: {sorted(rows)}"
        space = read_space(path)
        point = {k: d["choices"][0] if "choices" in d else d["low"] for k, d in space.items()}
        stage = bench.stage(rows[path.stem], 0, root=tmp_path / path.stem, extra=point)
        resolved = stage.build().config
        for key, value in point.items():
            assert resolved[key] == pytest.approx(value), (path.name, key)
