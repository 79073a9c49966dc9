"""scripts/bench_cost_growth.py --dry-run: the cost-growth study's every step at tiny size, on
small files in the official Fashion-MNIST format (the real study needs the 60,000 images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_datasets import write_mnist

REPO = Path(__file__).resolve().parents[1]


def test_cost_growth_dry_run_times_each_stage_at_each_pool_and_forget_size(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", folder="FashionMNIST", n_train=400, n_test=100)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_cost_growth.py"), "--dry-run"]
    cmd += ["--root", str(tmp_path / "data"), "--out", str(out), "--holdout", "40"]
    cmd += ["--sizes", "200", "400", "--forget", "0.1", "0.3", "--forget_pool", "200"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "cost_growth.json").read_text())
    # (200, 10 %) is shared by both axes: three points, each a benchmark of its own
    assert [(r["pool"], r["forget_fraction"]) for r in rows] == [(200, 0.1), (400, 0.1), (200, 0.3)]
    assert [r["D"] for r in rows] == [160, 360, 160]  # the pool minus the 40-image holdout
    assert rows[2]["D_f"] == 48 and rows[0]["D_f"] == 16
    for r in rows:
        assert set(r["time_s"]) == {"original", "retrain", "ltu:partial+holdout", "ft:full"}
        assert all(t > 0 for t in r["time_s"].values())
    assert "| 360 | 36 | 324 |" in (out / "cost_growth.md").read_text()
    assert (out / "cost_growth.png").stat().st_size > 0
    # --reuse reads the measured points instead of running them again
    again = subprocess.run([*cmd, "--reuse"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reusing") == 3
    assert json.loads((out / "cost_growth.json").read_text()) == rows
