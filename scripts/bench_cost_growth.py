"""How the cost of unlearning grows: LTU, FT (full access) and Retrain wall time against the
training-set size and against the forget-set size, one ``ltu benchmark`` call per point.

Each point runs ``configs/benchmark/fashion_mnist.yaml`` (every setting as shipped) on one report
seed with ``data.pool_size`` (a seeded class-stratified subset of the 60,000 training images)
and ``data.forget_fraction`` overridden, and only the rows named by ``--only``. The size axis
uses ``--sizes`` at 10 % forgetting, the forget axis ``--forget`` fractions on a pool of
``--forget_pool`` images. Times are the stages' own ``time_s`` (fit and evaluation, the same as
results.json). Outputs under ``--out``: one benchmark folder per point, ``cost_growth.json``,
``cost_growth.md`` (the table) and ``cost_growth.png`` (the plot).

Needs the full Fashion-MNIST under ``data/FashionMNIST/raw/`` (README, "Benchmarks"); about
42 minutes of one CPU core with the defaults (the 60,000-image point alone about 16).

    python scripts/bench_cost_growth.py
    python scripts/bench_cost_growth.py --sizes 15000 60000 --forget 0.1 0.3
    python scripts/bench_cost_growth.py --dry-run --root DIR   # tiny, on small files (the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ltu_lightning.benchmark.runner import MethodSpec

REPO = Path(__file__).resolve().parents[1]
REFERENCES = ("original", "retrain")
TINY = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "data.init_args.batch_size": 8,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/benchmark/fashion_mnist.yaml")
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10000, 15000, 30000, 60000],
        help="pool sizes of the size axis (the holdout is cut from each; 60000: all)",
    )
    p.add_argument("--forget", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--forget_pool", type=int, default=15000, help="pool size of the forget axis")
    p.add_argument("--seed", type=int, default=100, help="a report seed of the config")
    p.add_argument("--only", default="ltu:partial+holdout,ft:full")
    p.add_argument("--holdout", type=float, default=None, help="override the config's holdout")
    p.add_argument("--root", default=None, help="the data root (default: the config's)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "cost_growth")
    p.add_argument("--dry-run", action="store_true", help="tiny stages (1 epoch, 2 batches)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="read the times of points already measured under --out (every stage's metrics "
        "present, the same pool and forget fraction) instead of running them again",
    )
    args = p.parse_args(argv)
    bad = [f for f in args.forget if not 0 < f < 1]
    if bad:
        p.error(f"--forget {bad} are outside (0, 1); give fractions such as 0.1")
    if min(args.sizes + [args.forget_pool]) < 8:
        p.error("--sizes and --forget_pool are pool sizes of at least 8 images")
    return args


def points(args: argparse.Namespace) -> list[tuple[int, float]]:
    """(pool size, forget fraction) of every point: the size axis at 10 %, then the forget axis."""
    out = [(n, 0.1) for n in args.sizes]
    out += [(args.forget_pool, f) for f in args.forget if (args.forget_pool, f) not in out]
    return out


def run_point(args: argparse.Namespace, pool: int, forget: float) -> dict[str, Any]:
    folder = args.out.resolve() / f"pool_{pool}_forget_{forget:g}"
    overrides: dict[str, Any] = {
        "data.init_args.pool_size": pool,
        "data.init_args.forget_fraction": forget,
    }
    if args.holdout is not None:
        overrides["data.init_args.holdout"] = args.holdout
    if args.root is not None:
        overrides["data.init_args.root"] = str(Path(args.root).resolve())
    if args.dry_run:
        overrides |= TINY
    seed_dir = folder / f"seed_{args.seed}"
    stages = {
        key: seed_dir / MethodSpec(key, []).folder for key in [*REFERENCES, *args.only.split(",")]
    }
    if args.reuse and _measured(seed_dir, stages.values(), pool, forget):
        print(f"[cost_growth] pool {pool}, forget {forget:g}: reusing {folder}", flush=True)
    else:
        print(f"[cost_growth] pool {pool}, forget {forget:g}: {folder}", flush=True)
        cmd = [sys.executable, "-m", "ltu_lightning", "benchmark", "--config", args.config]
        cmd += ["--only", args.only, "--seeds", f"[{args.seed}]", "--out", str(folder)]
        cmd += ["--overrides", json.dumps(overrides), "--overwrite", "true"]
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"bench_cost_growth: the benchmark of pool {pool} failed ({cmd})")
    sizes = json.loads((seed_dir / "split_manifest.json").read_text())["sizes"]
    times = {
        key: float(json.loads((root / "metrics.json").read_text())["time_s"])
        for key, root in stages.items()
    }
    return {
        "pool": pool,
        "forget_fraction": forget,
        "D": sizes["train"],
        "D_f": sizes["forget"],
        "D_r": sizes["remaining"],
        "retain_subset": sizes["retain_subset"],
        "time_s": times,
    }


def _measured(seed_dir: Path, stages: Iterable[Path], pool: int, forget: float) -> bool:
    """Whether ``seed_dir`` holds a split with this pool and forget set, and every stage folder
    in ``stages`` its metrics."""
    manifest = seed_dir / "split_manifest.json"
    if not manifest.exists():
        return False
    spec = json.loads(manifest.read_text())["spec"]
    if spec.get("pool_size") != pool or spec.get("forget_fraction") != forget:
        return False
    return all((root / "metrics.json").exists() for root in stages)


def table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    head = ["|D|", "|D_f|", "|D_r|", "original s", "retrain s", *(f"{m} s" for m in methods)]
    head += [f"{m} / retrain" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r["time_s"]
        cells = [r["D"], r["D_f"], r["D_r"], f"{t['original']:.1f}", f"{t['retrain']:.1f}"]
        cells += [f"{t[m]:.1f}" for m in methods]
        cells += [f"{t[m] / t['retrain']:.2f}" for m in methods]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(
    size_rows: list[dict], forget_rows: list[dict], methods: list[str], seed: int, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, x, label in (
        (axes[0], size_rows, "D", "training set |D| (10 % forgotten)"),
        (axes[1], forget_rows, "D_f", "forget set |D_f| (fixed pool)"),
    ):
        for stage in ["retrain", *methods]:
            ax.plot([r[x] for r in rows], [r["time_s"][stage] for r in rows], "o-", label=stage)
        ax.set_xlabel(label)
        ax.set_ylabel("wall time of the stage (s)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Cost growth on Fashion-MNIST (seed {seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    methods = args.only.split(",")
    rows = [run_point(args, pool, forget) for pool, forget in points(args)]
    size_rows = sorted(
        (r for r in rows if r["forget_fraction"] == 0.1 and r["pool"] in args.sizes),
        key=lambda r: r["D"],
    )
    forget_rows = sorted((r for r in rows if r["pool"] == args.forget_pool), key=lambda r: r["D_f"])
    (args.out / "cost_growth.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = (
        f"Seed {args.seed}, `{args.config}`"
        f"{' (dry run: tiny stages)' if args.dry_run else ''}.\n\n"
        f"Training-set size (10 % forgotten):\n\n{table(size_rows, methods)}\n\n"
        f"Forget-set size (pool {args.forget_pool}):\n\n{table(forget_rows, methods)}\n"
    )
    (args.out / "cost_growth.md").write_text(text)
    plot(size_rows, forget_rows, methods, args.seed, args.out / "cost_growth.png")
    print(text)


if __name__ == "__main__":
    main()
