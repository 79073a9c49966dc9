"""Honest hyperparameter choice: a grid per method, scored by the best ``val/criterion``.

The criterion (docs/protocol.md) uses only D_f and the validation half of the holdout, never the
test split or a retrained model, and every method gets the same kind of grid and budget. A grid
maps a method key of the benchmark to ``{config key: [values]}`` (dotted keys such as
``model.init_args.optimizer.init_args.lr``; a leading ``--`` is allowed).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ltu_lightning.benchmark.runner import Benchmark, MethodSpec, cached_stage, run_stage
from ltu_lightning.errors import LTUError
from ltu_lightning.utils.files import write_json_atomic


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Full factorial of ``{key: [values]}``; an empty grid is one point (the config as is)."""
    flags = list(grid)
    return [
        dict(zip(flags, values, strict=True))
        for values in itertools.product(*(grid[f] for f in flags))
    ]


def point_overrides(point: dict[str, Any]) -> dict[str, Any]:
    """A grid point as stage overrides: ``--`` dropped from its keys, a value written as a YAML or
    JSON string of a list or map (a whole optimizer, a callback list) read as that structure."""
    return {
        key.removeprefix("--"): yaml.safe_load(value)
        if isinstance(value, str) and value[:1] in "[{"
        else value
        for key, value in point.items()
    }


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    """Mean and sample std; a missing or non-finite score (a failed fit) makes the mean +inf."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return math.inf, math.nan
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _best_epoch(checkpoint: Path) -> int | None:
    if not checkpoint.exists():
        return None
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True).get("epoch")


def tune(
    bench: Benchmark,
    grids: dict[str, dict[str, list[Any]]],
    seeds: int | Sequence[int],
    out: Path,
    progress=print,
) -> dict[str, Any]:
    """Fit every grid point of every method on every seed; keep the lowest mean ``val/criterion``.

    A grid point's score is the mean over ``seeds`` (each seed its own split and original model)
    of the best validation criterion of its fit: one seed's 500 validation images make the
    criterion noisy (±0.4 between neighbouring points), and the minimum of many noisy scores
    favours a lucky point (the winner's curse). A point that fails on any seed scores +inf.
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise LTUError("tune needs at least one seed; pass --seeds 0 1 2")
    unknown = set(grids) - {m.key for m in bench.methods}
    if unknown:
        raise LTUError(
            f"grid names unknown methods {sorted(unknown)}; known: {[m.key for m in bench.methods]}"
        )
    bench = replace(bench, out=out)  # each seed's split and original model live under ``out``
    ensure_originals(bench, seeds, progress)
    report: dict[str, Any] = {"benchmark": bench.name, "seeds": seeds, "methods": {}}
    for method in bench.methods:
        if method.key not in grids:
            continue
        rows = []
        for i, point in enumerate(grid_points(grids[method.key])):
            rows.append(score_point(bench, method, seeds, f"point_{i}", point))
            progress(f"[tune] {method.key} {point}: val criterion {_score(rows[-1])}")
        best = min(rows, key=lambda r: r["criterion"])
        report["methods"][method.key] = {"grid": grids[method.key], "points": rows, "chosen": best}
        write_json_atomic(out / "tuning.json", report)
    return report


def ensure_originals(bench: Benchmark, seeds: Sequence[int], progress=print) -> None:
    """Train each seed's original model (and split) under ``bench.out`` unless it exists."""
    for seed in seeds:
        original = bench.stage("original", seed)
        if cached_stage(original.root) is None or not original.manifest.exists():
            progress(f"[tune] original model for seed {seed} ...")
            run_stage(original)


def score_point(
    bench: Benchmark, method: MethodSpec, seeds: Sequence[int], name: str, point: dict[str, Any]
) -> dict[str, Any]:
    """Fit ``method`` with ``point``'s overrides on every seed (in ``seed_<s>/<method>/<name>``):
    the mean and std over seeds of each fit's best validation criterion (+inf if one failed)."""
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        root = bench.out / f"seed_{seed}" / method.folder / name
        stage = bench.stage(method.key, seed, root=root, extra=point_overrides(point))
        fit = stage.fit()
        per_seed[str(seed)] = {
            "criterion": fit.best_score,
            # None for a fit refused before its first checkpoint (reported from the original
            # model, scored +inf)
            "epoch": _best_epoch(fit.checkpoint) if fit.checkpoint.is_relative_to(root) else None,
            "time_s": fit.time_s,
        }
    mean, std = _mean_std([r["criterion"] for r in per_seed.values()])
    return {
        "point": point,
        "criterion": mean,
        "criterion_std": std,
        "per_seed": per_seed,
        "time_s": sum(r["time_s"] for r in per_seed.values()),
    }


def _score(row: dict[str, Any]) -> str:
    epochs = ", ".join(str(r["epoch"]) for r in row["per_seed"].values())
    if not math.isfinite(row["criterion"]):
        return f"failed on a seed (epochs {epochs})"
    return f"{row['criterion']:.3f} ± {row['criterion_std']:.3f} (best epochs {epochs})"


def tuning_markdown(report: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in report["seeds"])
    lines = [
        f"Tuning `{report['benchmark']}` on seeds {seeds}: mean ± std over seeds of each fit's "
        "best validation criterion (lower is better).",
        "",
    ]
    for key, entry in report["methods"].items():
        lines.append(
            f"- **{key}**: grid {entry['grid']} → chosen {entry['chosen']['point']} "
            f"(criterion {_score(entry['chosen'])})"
        )
        for row in entry["points"]:
            lines.append(f"  - {row['point']}: {_score(row)}")
    return "\n".join(lines) + "\n"
