"""scripts/gpu_check.sh --dry-run: the GPU check's every step on the CPU at tiny size.

The real check needs a GPU and the full Fashion-MNIST; its dry run walks the same path (step-cost
tables, the Fashion-MNIST ResNet-18 benchmark through ``ltu benchmark``) so that the script a
maintainer runs on a lent GPU is known to work before the GPU time is spent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_datasets import write_mnist

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", folder="FashionMNIST", n_train=400, n_test=100)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "FASHION_MNIST_ROOT": str(tmp_path / "data"),
        "OUT": str(out),
        "RUNS": str(tmp_path / "runs"),
        "WANDB_MODE": "offline",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check: all checks passed" in proc.stdout
    steps = json.loads((out / "resnet18.json").read_text())
    assert {row["step"] for row in steps} == {"finetune", "ltu_order1"}
    assert all(row["ms_median"] > 0 for row in steps)
    results = json.loads((out / "quality_32-true" / "results.json").read_text())
    rows = json.dumps(results)
    for key in ("original", "retrain", "ltu:partial+holdout", "ft:full"):
        assert key in rows, key
    summary = (out / "summary.md").read_text()
    assert "## Full Fashion-MNIST, ResNet-18, 32-true" in summary
    assert "| ltu | partial+holdout |" in summary


def test_gpu_check_refuses_unknown_argument(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--fast"],
        env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check.sh: unknown argument '--fast'; use no argument or --dry-run"
    ]
