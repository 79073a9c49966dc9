"""Honest hyperparameter choice: a grid per method, scored by the best ``val/criterion``.

The criterion (PROTOCOL.md) uses only D_f and the validation half of the holdout, never the
test split or a retrained model, and every method gets the same kind of grid and budget.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ltu_lightning.benchmark.runner import Benchmark, _cached, fit_stage, run_stage
from ltu_lightning.data.splits import write_json_atomic
from ltu_lightning.errors import LTUError


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Full factorial of ``{flag: [values]}``; an empty grid is one point (the config as is)."""
    flags = list(grid)
    return [
        dict(zip(flags, values, strict=True))
        for values in itertools.product(*(grid[f] for f in flags))
    ]


def tune(
    bench: Benchmark, grids: dict[str, dict[str, list[Any]]], seed: int, out: Path, progress=print
) -> dict[str, Any]:
    """Fit every grid point of every method on one seed; keep the lowest best ``val/criterion``."""
    unknown = set(grids) - {m.key for m in bench.methods}
    if unknown:
        raise LTUError(
            f"grid names unknown methods {sorted(unknown)}; known: {[m.key for m in bench.methods]}"
        )
    root = out / f"seed_{seed}"
    manifest = root / "split_manifest.json"
    if _cached(root / "original") is None or not manifest.exists():
        progress(f"[tune] original model for seed {seed} ...")
        run_stage(bench.original, root / "original", seed, manifest, bench.overrides)
    original_ckpt = root / "original" / "checkpoints" / "last.ckpt"
    report: dict[str, Any] = {"benchmark": bench.name, "seed": seed, "methods": {}}
    for method in bench.methods:
        if method.key not in grids:
            continue
        rows = []
        for i, point in enumerate(grid_points(grids[method.key])):
            flags = [str(x) for kv in point.items() for x in kv]
            folder = root / method.folder / f"point_{i}"
            fit = fit_stage(
                method.config,
                folder,
                seed,
                manifest,
                [*bench.overrides, *method.overrides, *flags],
                original_ckpt,
            )
            epoch = None
            if fit.checkpoint.exists():
                import torch

                epoch = torch.load(fit.checkpoint, map_location="cpu", weights_only=True).get(
                    "epoch"
                )
            rows.append(
                {"point": point, "criterion": fit.best_score, "epoch": epoch, "time_s": fit.time_s}
            )
            progress(
                f"[tune] {method.key} {point}: val criterion {fit.best_score:.3f} (epoch {epoch}, "
                f"{fit.time_s:.0f}s)"
            )
        best = min(rows, key=lambda r: float("inf") if r["criterion"] is None else r["criterion"])
        report["methods"][method.key] = {"grid": grids[method.key], "points": rows, "chosen": best}
        write_json_atomic(out / "tuning.json", report)
    return report


def tuning_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Tuning `{report['benchmark']}` on seed {report['seed']} (lower val criterion is better):",
        "",
    ]
    for key, entry in report["methods"].items():
        lines.append(
            f"- **{key}**: grid {entry['grid']} → chosen {entry['chosen']['point']} "
            f"(criterion {entry['chosen']['criterion']:.3f}, epoch {entry['chosen']['epoch']})"
        )
        for row in entry["points"]:
            lines.append(f"  - {row['point']}: {row['criterion']:.3f} (epoch {row['epoch']})")
    return "\n".join(lines) + "\n"
