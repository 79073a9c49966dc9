"""The same rows in two ``ltu benchmark`` outputs, paired by seed: did a code change move them?

For each row present in both ``results.json`` files (or the ``--rows`` given): per-seed values of
``--columns`` (Avg.Gap and stage time by default) in run A and run B, the paired mean difference
B − A, its bootstrap 95 % interval and the Wilcoxon p (``ltu_lightning.evaluation.statistics``,
the rule of results.md). Both runs must share the reference stages (the same original and
Retrain per seed, e.g. symlinked), so that only the code under test differs.

    python experiments/paired_runs.py runs/report/before/results.json runs/report/after/results.json \
        --rows ltu:partial+holdout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ltu_lightning.evaluation.statistics import paired_comparison


def per_seed(results: Path, row: str, column: str) -> dict[int, float]:
    methods = json.loads(results.read_text())["methods"]
    if row not in methods:
        raise SystemExit(f"{results} has no row {row!r}; its rows: {', '.join(methods)}")
    return {int(seed): float(values[column]) for seed, values in methods[row]["per_seed"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="results.json of run A (before)")
    p.add_argument("b", type=Path, help="results.json of run B (after)")
    p.add_argument("--rows", nargs="+", default=None, help="rows to compare (default: shared)")
    p.add_argument("--columns", nargs="+", default=["avg_gap", "time_s"])
    args = p.parse_args()
    shared = [
        row
        for row in json.loads(args.a.read_text())["methods"]
        if row in json.loads(args.b.read_text())["methods"] and row not in ("original", "retrain")
    ]
    print("| row | column | A | B | B − A | 95 % interval | Wilcoxon p | B lower on | resolved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in args.rows or shared:
        for column in args.columns:
            a, b = per_seed(args.a, row, column), per_seed(args.b, row, column)
            c = paired_comparison("B", "A", b, a, metric=column)
            mean_a = sum(a[s] for s in c.seeds) / len(c.seeds)
            mean_b = sum(b[s] for s in c.seeds) / len(c.seeds)
            print(
                f"| {row} | {column} | {mean_a:.2f} | {mean_b:.2f} | {c.mean:+.2f} | "
                f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}] | {c.p_wilcoxon:.3g} | "
                f"{c.lower_on}/{len(c.seeds)} | {'**yes**' if c.resolved else 'no'} |"
            )


if __name__ == "__main__":
    main()
