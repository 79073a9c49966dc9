"""experiments/paired_rows.py: two rows of benchmark outputs split over processes, paired by seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from unittest import mock

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "paired_rows.py"


def results(path: Path, seeds: dict[int, tuple[float, float, float]]) -> Path:
    """A results.json whose rows a, b and retrain hold (a's gap, b's gap, b's time) per seed."""
    rows: dict[str, dict] = {"a": {}, "b": {}, "retrain": {}}
    for seed, (gap_a, gap_b, time_b) in seeds.items():
        rows["a"][str(seed)] = {"avg_gap": gap_a, "time_s": 100.0}
        rows["b"][str(seed)] = {"avg_gap": gap_b, "time_s": time_b}
        rows["retrain"][str(seed)] = {"avg_gap": 0.0, "time_s": 200.0}
    methods = {key: {"per_seed": per_seed} for key, per_seed in rows.items()}
    path.write_text(json.dumps({"methods": methods}))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``main()`` of the script with ``args`` as its command line: (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("paired_rows", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = 0
    with mock.patch.object(sys, "argv", ["paired_rows.py", *map(str, args)]):
        try:
            module.main()
        except SystemExit as stop:
            code, message = 1, str(stop.code)
            print(message, file=sys.stderr)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_merges_seeds_across_files_and_pairs_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = results(tmp_path / "a.json", {0: (0.5, 1.5, 20.0), 1: (0.3, 1.2, 10.0)})
    second = results(tmp_path / "b.json", {2: (0.4, 1.0, 30.0)})
    args = (first, second, "--a", "a", "--b", "b", "--columns", "avg_gap", "--ratio-to", "retrain")
    code, out, err = run(capsys, *args)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| avg_gap"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:4] == ["0.40", "1.23", "+0.83"]
    assert cells[6] == "0/3"
    assert "0: 0.50 / 1.50, 1: 0.30 / 1.20, 2: 0.40 / 1.00" in out
    assert "b: time_s / retrain time_s per seed 0.100, 0.050, 0.150; mean 0.100" in out


def test_a_missing_row_or_a_repeated_seed_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = results(tmp_path / "a.json", {0: (0.5, 1.5, 20.0)})
    code, _, err = run(capsys, first, "--a", "missing", "--b", "b")
    assert code != 0 and "has no row 'missing'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, first, first, "--a", "a", "--b", "b")
    assert code != 0 and "seed 0 of 'a' is in more than one" in err
