"""Post-hoc audits of a benchmark's stored models: ``ltu audit`` and ``ltu benchmark --audits``
on a tiny class-wise digits benchmark (2 methods, 1 seed, 1-2 epochs), and their one-line
errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ltu_lightning.benchmark.audits import AUDITS, audit_names
from ltu_lightning.cli import main
from ltu_lightning.errors import LTUError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = str(CONFIGS / "unlearn" / "datasets" / "digits.yaml")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A benchmark run without audits: forget class 3 of digits; FT and GA for one epoch."""
    root = tmp_path_factory.mktemp("audits")
    config = {
        "name": "tiny",
        "original": str(CONFIGS / "pretrain" / "digits.yaml"),
        "retrain": str(CONFIGS / "retrain" / "digits.yaml"),
        "seeds": [0],
        "out": str(root / "out"),
        "overrides": {
            "trainer.max_epochs": 2,
            "data.init_args.forget_classes": [3],
            "data.init_args.forget_fraction": None,
        },
        "methods": [
            {"key": f"{m}:partial", "config": [str(CONFIGS / "unlearn" / f"{m}_fmnist5k.yaml"), DIGITS],
             "overrides": {"trainer.max_epochs": 1}}
            for m in ("ft", "ga")
        ],
    }  # fmt: skip
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["benchmark", "--config", str(path)])
    assert "## Audit" not in (root / "out" / "results.md").read_text()  # none by default
    return path


def _one_line(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_ltu_audit_adds_the_audit_columns_to_the_report(bench: Path, capsys) -> None:
    out = bench.parent / "out"
    main(["audit", "--config", str(bench), "--audits", "inversion"])
    summary = json.loads((out / "results.json").read_text())
    assert summary["audits"]["inversion"]["time_s"]["mean"] > 0
    assert set(summary["audits"]["inversion"]["per_seed_time_s"]) == {"0"}
    rows = {k: e.get("audits", {}).get("inversion") for k, e in summary["methods"].items()}
    assert rows["original"] is None  # compared with itself it has nothing to give away
    for key in ("retrain", "ft:partial", "ga:partial"):
        assert set(rows[key]["per_seed"]["0"]) == {
            "inv_wb_tv", "inv_bb_tv", "inv_prior_tv",
            "inv_wb_hit", "inv_wb_rank", "inv_bb_hit", "inv_bb_rank",
        }  # fmt: skip
        assert rows[key]["inv_bb_hit"]["mean"] == rows[key]["per_seed"]["0"]["inv_bb_hit"]
    # Retrain never saw class 3: both attacks name it first
    assert rows["retrain"]["inv_bb_hit"]["mean"] == rows["retrain"]["inv_wb_hit"]["mean"] == 1.0
    md = (out / "results.md").read_text()
    section = md[md.index("## Audit `inversion`") :]
    assert "| method | access | inv_wb_tv |" in section and "| retrain | - |" in section
    assert "| ft | partial |" in section and "| original |" not in section
    assert "Wall time of the audit:" in section
    # stored with the stage's metrics and in the seed's audit folder
    stored = json.loads((out / "seed_0" / "retrain" / "metrics.json").read_text())
    assert stored["audits"]["inversion"]["columns"]["inv_bb_hit"] == 1.0
    assert (out / "seed_0" / "audits" / "inversion.json").is_file()

    # a missing checkpoint: one line naming the stage and the command that trains it
    checkpoints = out / "seed_0" / "ft_partial" / "checkpoints"
    shutil.move(checkpoints, out / "moved")
    try:
        line = _one_line(capsys, ["audit", "--config", str(bench), "--audits", "inversion"])
    finally:
        shutil.move(out / "moved", checkpoints)
    assert "seed 0 has no stored stage 'ft:partial'" in line
    assert f"run `ltu benchmark --config {bench} --seeds [0] --out {out}` first" in line
    line = _one_line(capsys, ["audit", "--config", str(bench), "--audits", "inversion", "--seeds", "[4]"])  # fmt: skip
    assert "seed 4 has no stored stage 'original'" in line


def test_ltu_benchmark_audits_each_seed_after_its_stages(bench: Path, capsys) -> None:
    out = bench.parent / "out"
    args = ["--overwrite", "--only", "ga:partial", "--audits", "inversion"]
    main(["benchmark", "--config", str(bench), *args])
    printed = capsys.readouterr().out
    assert "retrain: reusing" in printed  # the reference stages are not refitted
    assert "[seed 0] audit inversion: done in" in printed
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["audits"]) == {"inversion"}
    assert summary["methods"]["ga:partial"]["audits"]["inversion"]["inv_bb_rank"]["mean"] >= 1
    assert "## Audit `inversion`" in (out / "results.md").read_text()


def test_an_unknown_audit_is_one_line_naming_the_known_ones(tmp_path: Path, capsys) -> None:
    config = str(CONFIGS / "benchmark" / "digits.yaml")
    for command in ("audit", "benchmark"):
        args = [command, "--config", config, "--out", str(tmp_path / "b"), "--audits", "liraa,x"]
        line = _one_line(capsys, args)
        assert (
            line == f"error: --audits names unknown audits ['liraa', 'x']; known: {sorted(AUDITS)}"
        )
    assert not (tmp_path / "b").exists()
    assert audit_names("inversion, inversion") == ["inversion"]
    with pytest.raises(LTUError, match="known: \\['inversion', 'lira'"):
        audit_names(["nope"])


def test_ltu_audit_lira_trains_shadows_once_and_scores_every_model(bench: Path, capsys) -> None:
    out = bench.parent / "out"
    args = ["audit", "--config", str(bench), "--audits", "lira", "--lira_shadows", "2"]
    main(args)
    summary = json.loads((out / "results.json").read_text())
    rows = {k: e["audits"]["lira"] for k, e in summary["methods"].items()}
    assert set(rows) == {"original", "retrain", "ft:partial", "ga:partial"}
    for columns in rows.values():
        assert 0.0 <= columns["lira_auc"]["mean"] <= 1.0
        assert 0.0 <= columns["lira_tpr@1%"]["mean"] <= 100.0
    shadows = sorted(p.name for p in (out / "seed_0" / "audits" / "shadows").iterdir())
    assert shadows == ["0", "1"]
    ckpt = out / "seed_0" / "audits" / "shadows" / "0" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime
    main(args)  # the second audit reuses the cached shadows
    assert ckpt.stat().st_mtime == mtime
    assert "## Audit `lira`" in (out / "results.md").read_text()
    line = _one_line(capsys, [*args[:-1], "3"])
    assert line.startswith("error: --lira_shadows 3: ") and "even number" in line


def test_audit_columns_are_listed_once_over_several_seeds(tmp_path: Path) -> None:
    from ltu_lightning.benchmark.report import aggregate_audits
    from ltu_lightning.benchmark.runner import Benchmark, StageResult

    bench = Benchmark("b", "o.yaml", "r.yaml", [], [0, 1, 2], tmp_path)
    block = {"inversion": {"columns": {"inv_a": 1.0, "inv_b": 2.0}, "time_s": 0.5}}
    results = {s: {"retrain": StageResult({}, 1.0, audits=block)} for s in bench.seeds}
    methods: dict = {"retrain": {}}
    audits = aggregate_audits(bench, results, methods)
    assert audits["inversion"]["columns"] == ["inv_a", "inv_b"]
    assert methods["retrain"]["audits"]["inversion"]["inv_b"]["mean"] == 2.0
