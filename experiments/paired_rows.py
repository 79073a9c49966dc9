"""Two rows of ``ltu benchmark`` outputs, paired by seed: B − A for each column.

The ``results.json`` files given are merged by seed (e.g. one benchmark run as two processes over
disjoint seeds, each with its own original and Retrain per seed); each must hold both rows.
Per column: both rows' means, the paired mean difference B − A, its bootstrap 95 % interval and
the Wilcoxon p (``ltu_lightning.evaluation.statistics``, the rule of results.md). ``--ratio-to``
adds each row's per-seed ratio of a column to another row's (e.g. fit time over Retrain's).

    python experiments/paired_rows.py runs/report/fm_passes_a/results.json \
        runs/report/fm_passes_b/results.json --a ltu:partial+holdout \
        --b ltu_3_passes:partial+holdout --ratio-to retrain
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from ltu_lightning.evaluation.statistics import paired_comparison


def merged(runs: list[tuple[Path, dict[str, Any]]], row: str, column: str) -> dict[int, float]:
    """``column`` of ``row`` per seed, over every run's ``methods`` table."""
    values: dict[int, float] = {}
    for path, methods in runs:
        if row not in methods:
            raise SystemExit(f"{path} has no row {row!r}; its rows: {', '.join(methods)}")
        for seed, entry in methods[row]["per_seed"].items():
            if int(seed) in values:
                raise SystemExit(f"seed {seed} of {row!r} is in more than one of the files given")
            values[int(seed)] = float(entry[column])
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path, nargs="+", help="results.json files, merged by seed")
    p.add_argument("--a", required=True, help="row A (e.g. ltu:partial+holdout)")
    p.add_argument("--b", required=True, help="row B")
    p.add_argument("--columns", nargs="+", default=["avg_gap", "UA", "RA", "TA", "MIA", "time_s"])
    p.add_argument("--ratio-to", default=None, help="row whose time_s each row's is divided by")
    args = p.parse_args()
    runs = [(path, json.loads(path.read_text())["methods"]) for path in args.results]
    print("| column | A | B | B − A | 95 % interval | Wilcoxon p | B lower on | resolved |")
    print("|---|---|---|---|---|---|---|---|")
    for column in args.columns:
        a = merged(runs, args.a, column)
        b = merged(runs, args.b, column)
        c = paired_comparison("B", "A", b, a, metric=column)
        mean_a = statistics.fmean(a[s] for s in c.seeds)
        mean_b = statistics.fmean(b[s] for s in c.seeds)
        print(
            f"| {column} | {mean_a:.2f} | {mean_b:.2f} | {c.mean:+.2f} | "
            f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}] | {c.p_wilcoxon:.3g} | "
            f"{c.lower_on}/{len(c.seeds)} | {'**yes**' if c.resolved else 'no'} |"
        )
    print()
    print("per seed (avg_gap A, avg_gap B):")
    a, b = merged(runs, args.a, "avg_gap"), merged(runs, args.b, "avg_gap")
    print(", ".join(f"{s}: {a[s]:.2f} / {b[s]:.2f}" for s in sorted(a)))
    if args.ratio_to:
        ref = merged(runs, args.ratio_to, "time_s")
        for row in (args.a, args.b):
            t = merged(runs, row, "time_s")
            ratios = [t[s] / ref[s] for s in sorted(t)]
            print(
                f"{row}: time_s / {args.ratio_to} time_s per seed "
                + ", ".join(f"{r:.3f}" for r in ratios)
                + f"; mean {statistics.fmean(ratios):.3f}"
            )


if __name__ == "__main__":
    main()
