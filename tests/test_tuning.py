"""``ltu tune``'s choice: the mean validation criterion over seeds, failures never chosen.

The fits are replaced by a table of scores (the real fits are covered by the benchmark tests),
so these tests check the bookkeeping: which point wins, what the report says, what a failure does.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ltu_lightning.benchmark import tuning
from ltu_lightning.benchmark.runner import Benchmark, MethodSpec
from ltu_lightning.errors import LTUError
from ltu_lightning.runner import FitResult, Stage

LR = "--model.init_args.optimizer.init_args.lr"
#: (lr, seed) -> best val criterion. lr 0.1 wins on seed 0 by luck; lr 0.2 is best on average.
SCORES = {
    (0.1, 0): 1.0, (0.1, 1): 5.0, (0.1, 2): 6.0,
    (0.2, 0): 2.0, (0.2, 1): 2.5, (0.2, 2): 3.0,
    (0.4, 0): 0.5, (0.4, 1): None, (0.4, 2): 0.5,
}  # fmt: skip


@pytest.fixture
def fake_fits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple]:
    calls: list[tuple] = []

    def fake_run_stage(stage: Stage) -> None:
        (stage.root / "checkpoints").mkdir(parents=True)
        (stage.root / "metrics.json").write_text('{"metrics": {}, "time_s": 1.0}')
        stage.manifest.write_text("{}")
        calls.append(("original", stage.seed))

    def fake_fit(stage: Stage) -> FitResult:
        lr = float(stage.overrides[-1][LR.removeprefix("--")])
        manifest, seed = stage.manifest, stage.seed
        assert stage.original_ckpt == manifest.parent / "original" / "checkpoints" / "last.ckpt"
        calls.append((lr, seed))
        return FitResult(None, 2.0, SCORES[(lr, seed)], stage.root / "checkpoints" / "best.ckpt")

    monkeypatch.setattr(tuning, "run_stage", fake_run_stage)
    monkeypatch.setattr(Stage, "fit", fake_fit)
    monkeypatch.setattr(tuning, "cached_stage", lambda root: None)
    return calls


def _bench(tmp_path: Path) -> Benchmark:
    return Benchmark(
        name="toy",
        original="orig.yaml",
        retrain="retrain.yaml",
        methods=[MethodSpec("ft:partial", "ft.yaml"), MethodSpec("ga:partial", "ga.yaml")],
        seeds=[0],
        out=tmp_path,
    )


def test_the_mean_over_seeds_chooses_not_one_lucky_seed(fake_fits, tmp_path: Path) -> None:
    grids = {"ft:partial": {LR: [0.1, 0.2, 0.4]}}
    report = tuning.tune(_bench(tmp_path), grids, [0, 1, 2], tmp_path, progress=lambda s: None)
    entry = report["methods"]["ft:partial"]
    assert entry["chosen"]["point"] == {LR: 0.2}
    assert entry["chosen"]["criterion"] == pytest.approx(2.5)
    assert entry["chosen"]["criterion_std"] == pytest.approx(0.5)
    assert entry["points"][0]["criterion"] == pytest.approx(4.0)
    # a point that failed on one seed is never chosen, however good elsewhere
    assert math.isinf(entry["points"][2]["criterion"])
    # one original per seed, then every point on every seed; ga:partial has no grid: not run
    assert fake_fits[:3] == [("original", 0), ("original", 1), ("original", 2)]
    assert sorted(fake_fits[3:]) == sorted(SCORES)
    # one seed alone would have picked the lucky point
    alone = tuning.tune(_bench(tmp_path), grids, 0, tmp_path / "one", progress=lambda s: None)
    assert alone["methods"]["ft:partial"]["chosen"]["point"] == {LR: 0.4}


def test_report_and_markdown_name_seeds_scores_and_failures(fake_fits, tmp_path: Path) -> None:
    grids = {"ft:partial": {LR: [0.2, 0.4]}}
    report = tuning.tune(_bench(tmp_path), grids, [0, 1, 2], tmp_path, progress=lambda s: None)
    assert report["seeds"] == [0, 1, 2]
    assert (tmp_path / "tuning.json").exists()
    text = tuning.tuning_markdown(report)
    assert "seeds 0, 1, 2" in text
    assert "2.500 ± 0.500" in text
    assert "failed on a seed" in text


def test_unknown_method_and_no_seed_are_refused(fake_fits, tmp_path: Path) -> None:
    with pytest.raises(LTUError, match="unknown methods"):
        tuning.tune(_bench(tmp_path), {"nope:full": {LR: [1]}}, [0], tmp_path)
    with pytest.raises(LTUError, match="at least one seed"):
        tuning.tune(_bench(tmp_path), {"ft:partial": {LR: [1]}}, [], tmp_path)
