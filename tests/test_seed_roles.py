"""Pre-registered seed roles and the paired statistics in the benchmark's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltu_lightning.benchmark.report import aggregate, comparisons, write_reports
from ltu_lightning.benchmark.runner import Benchmark, MethodSpec, StageResult, resolve_seeds
from ltu_lightning.cli import main
from ltu_lightning.errors import LTUError

REPO = Path(__file__).resolve().parents[1]
FMNIST5K = str(REPO / "configs" / "benchmark" / "fmnist5k.yaml")
TUNING, REPORT = [0, 1, 2], [100, 101, 102]


def _refused(capsys, tmp_path: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--config", FMNIST5K, "--out", str(tmp_path / "b"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert not (tmp_path / "b").exists()  # refused before --out is touched
    return err[0]


def test_the_cli_refuses_a_table_on_tuning_seeds_in_one_line(capsys, tmp_path: Path) -> None:
    line = _refused(capsys, tmp_path, "--seeds", "[1, 100]")
    assert "seeds [1] are tuning seeds" in line
    assert "--on_tuning_seeds true" in line


def test_the_cli_refuses_more_seeds_than_report_seeds(capsys, tmp_path: Path) -> None:
    assert "--seeds 11 asks for more than the 10 report seeds" in _refused(
        capsys, tmp_path, "--seeds", "11"
    )


def test_seed_resolution() -> None:
    assert resolve_seeds(None, TUNING, REPORT) == REPORT
    assert resolve_seeds(2, TUNING, REPORT) == [100, 101]
    assert resolve_seeds([7, 100], TUNING, REPORT) == [7, 100]
    assert resolve_seeds(3, [], []) == [0, 1, 2]  # a config without seed roles
    assert resolve_seeds([0, 1], TUNING, REPORT, on_tuning_seeds=True) == [0, 1]
    with pytest.raises(LTUError, match="share \\[1\\]; make them disjoint"):
        resolve_seeds(None, [0, 1], [1, 2])
    with pytest.raises(LTUError, match="are tuning seeds"):
        resolve_seeds([2], TUNING, REPORT)
    with pytest.raises(LTUError, match="runs nothing"):
        resolve_seeds(0, TUNING, REPORT)


def _metrics(ua: float) -> dict[str, float]:
    return {
        "UA": ua, "RA": 99.0, "TA": 90.0, "MIA": 10.0, "MIA_entropy": 10.0, "loss_auc": 0.5,
        "correct_gap_z": 0.0, "detect_threshold": 0.55, "failed": 0.0,
    }  # fmt: skip


def _bench(seeds: list[int]) -> Benchmark:
    methods = [MethodSpec("ft:full", "ft.yaml"), MethodSpec("ltu:partial+holdout", "ltu.yaml")]
    return Benchmark(
        "toy", "o.yaml", "r.yaml", methods, seeds, Path("out"), {}, None, TUNING, REPORT
    )


def _results(seeds: list[int], ltu_ua: list[float], ft_ua: list[float]) -> dict:
    """Retrain has UA 90, so a row's Avg.Gap is |UA − 90| / 4 (the other metrics are equal)."""
    return {
        s: {
            "original": StageResult(_metrics(100.0), 10.0),
            "retrain": StageResult(_metrics(90.0), 10.0),
            "ltu:partial+holdout": StageResult(_metrics(lu), 1.0),
            "ft:full": StageResult(_metrics(fu), 1.0),
        }
        for s, lu, fu in zip(seeds, ltu_ua, ft_ua, strict=True)
    }


def test_a_table_on_tuning_seeds_is_labelled_so(tmp_path: Path) -> None:
    bench = _bench([0, 100])
    assert bench.seed_role == "tuning" and _bench(REPORT).seed_role == "report"
    summary = aggregate(bench, _results([0, 100], [91.0, 92.0], [94.0, 98.0]))
    write_reports(summary, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seed_role"] == "tuning" and saved["tuning_seeds"] == TUNING
    assert "**Tuning table, not a report**" in (tmp_path / "results.md").read_text()
    write_reports(aggregate(_bench(REPORT), _results(REPORT, [91.0] * 3, [94.0] * 3)), tmp_path)
    assert "Tuning table" not in (tmp_path / "results.md").read_text()


def test_comparisons_pair_ltu_with_every_row_but_retrain(tmp_path: Path) -> None:
    # LTU's Avg.Gap per seed: 0.25, 0.5, 0.75; FT full's: 1, 2, 3 -> differences -0.75, -1.5,
    # -2.25; the original's 2.5 each -> -2.25, -2, -1.75.
    summary = aggregate(_bench(REPORT), _results(REPORT, [91.0, 92.0, 93.0], [94.0, 98.0, 102.0]))
    rows = {c["other"]: c for c in summary["comparisons"]}
    assert set(rows) == {"original", "ft:full"}
    assert {c["method"] for c in rows.values()} == {"ltu:partial+holdout"}
    assert rows["ft:full"]["differences"] == pytest.approx([-0.75, -1.5, -2.25])
    assert rows["ft:full"]["mean"] == pytest.approx(-1.5)
    assert rows["ft:full"]["p_wilcoxon"] == pytest.approx(2 / 8)  # exact, n = 3, one sign
    # every resample mean is negative, but three seeds cannot reach p < 0.05: not resolved
    assert rows["ft:full"]["ci_high"] < 0 and rows["ft:full"]["resolved"] is False
    write_reports(summary, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["comparisons"] == json.loads(
        json.dumps(summary["comparisons"])
    )
    md = (tmp_path / "results.md").read_text()
    assert "## `ltu:partial+holdout` against every other row (Avg.Gap)" in md
    assert "| ft:full | full | -1.50 | [-2.25, -0.75] | 0.25 | 3/3 | no |" in md


def test_a_mixed_difference_is_not_resolved_and_one_seed_is_na(tmp_path: Path) -> None:
    mixed = aggregate(_bench(REPORT), _results(REPORT, [91.0, 96.0, 92.0], [94.0, 90.0, 93.0]))
    (ft,) = [c for c in mixed["comparisons"] if c["other"] == "ft:full"]
    assert ft["ci_low"] < 0 < ft["ci_high"] and ft["resolved"] is False
    one = aggregate(_bench([100]), _results([100], [91.0], [98.0]))
    (ft,) = [c for c in one["comparisons"] if c["other"] == "ft:full"]
    assert ft["resolved"] is None
    write_reports(one, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| ft:full | full | -1.75 | n/a | n/a | 1/1 | n/a |" in md


def test_no_ltu_row_means_no_comparisons() -> None:
    assert comparisons({"ft:full": {"per_seed": {}}, "retrain": {"per_seed": {}}}) == []


def _rows(seeds: list[int], rows: dict[str, list[float]]) -> dict:
    """Results of rows whose UA per seed is given (Retrain's UA is 90: Avg.Gap |UA − 90| / 4)."""
    return {
        s: {
            "original": StageResult(_metrics(100.0), 10.0),
            "retrain": StageResult(_metrics(90.0), 10.0),
            **{key: StageResult(_metrics(ua[i]), 1.0) for key, ua in rows.items()},
        }
        for i, s in enumerate(seeds)
    }


def test_every_ltu_row_is_compared_same_access_first_and_the_table_groups_by_access(
    tmp_path: Path,
) -> None:
    keys = ["ft:partial", "ltu:partial+holdout", "ft:full", "ltu_no_meta:partial+holdout",
            "ft:partial+holdout", "ltu:full"]  # fmt: skip
    bench = Benchmark(
        "toy", "o.yaml", "r.yaml", [MethodSpec(k, "x.yaml") for k in keys], REPORT, Path("out"),
        {}, None, TUNING, REPORT,
    )  # fmt: skip
    ua = {k: [91.0 + i, 92.0 + i, 93.0 + i] for i, k in enumerate(keys)}
    results = _rows(REPORT, ua)
    for per_seed in results.values():  # LTU full reads the holdout half beyond FT full
        for key, result in per_seed.items():
            read = {"ltu:full": 1500.0, "ft:full": 1000.0}.get(key, 570.0)
            result.metrics["images_read"] = read
    summary = aggregate(bench, results)
    pairs = [(c["method"], c["other"], c["same_access"]) for c in summary["comparisons"]]
    # each row whose method is ltu (not the ablation ltu_no_meta), same access first; the two
    # LTU rows are compared once
    assert pairs == [
        ("ltu:partial+holdout", "ltu_no_meta:partial+holdout", True),
        ("ltu:partial+holdout", "ft:partial+holdout", True),
        ("ltu:partial+holdout", "original", None),
        ("ltu:partial+holdout", "ft:partial", False),
        ("ltu:partial+holdout", "ft:full", False),
        ("ltu:partial+holdout", "ltu:full", False),
        ("ltu:full", "ft:full", True),
        ("ltu:full", "original", None),
        ("ltu:full", "ft:partial", False),
        ("ltu:full", "ltu_no_meta:partial+holdout", False),
        ("ltu:full", "ft:partial+holdout", False),
    ]
    write_reports(summary, tmp_path)
    md = (tmp_path / "results.md").read_text()
    for key in ("ltu:partial+holdout", "ltu:full"):
        assert f"## `{key}` against every other row (Avg.Gap)" in md
    assert "| ft:partial+holdout | **partial+holdout** (same) |" in md
    assert "| ft:full | full (same access, other images) |" in md
    assert "| ft:partial | partial |" in md
    # the main table: references, then one block per access in order of first appearance
    table = md.split("| method | access |")[1].split("\n\n")[0]
    order = [line.split(" | ")[:2] for line in table.splitlines()[2:]]
    assert order == [
        ["| original", "-"], ["| retrain", "-"], ["| ft", "partial"],
        ["| ltu", "partial+holdout"], ["| ltu_no_meta", "partial+holdout"],
        ["| ft", "partial+holdout"], ["| ft", "full"], ["| ltu", "full"],
    ]  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["methods"]) == ["original", "retrain", *keys]  # results.json: config order
