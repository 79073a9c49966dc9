"""Paired comparisons of one LiRA column between LTU and every other row of a benchmark run.

``ltu benchmark`` compares rows on Avg.Gap only; this reads the per-seed LiRA columns that
``--audits lira`` stored in each stage's ``metrics.json`` and gives, for LTU against every other
row, the per-seed paired mean difference, its bootstrap 95 % interval, the Wilcoxon p and the
seeds on which LTU is lower (``ltu_lightning.evaluation.statistics``, the same rule as results.md).

    python experiments/lira_paired.py runs/report/lira_a runs/report/lira_b --column lira_member_like
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ltu_lightning.evaluation.statistics import paired_comparison

LTU = "ltu_partial+holdout"


def per_seed(outs: list[Path], column: str) -> dict[str, dict[int, float]]:
    """{stage folder: {seed: value of ``column``}} over every seed folder of ``outs``."""
    values: dict[str, dict[int, float]] = {}
    for out in outs:
        for seed_dir in sorted(out.glob("seed_*")):
            seed = int(seed_dir.name.removeprefix("seed_"))
            for metrics in sorted(seed_dir.glob("*/metrics.json")):
                record = json.loads(metrics.read_text())
                lira = record.get("audits", {}).get("lira", {}).get("columns", {})
                if column in lira:
                    values.setdefault(metrics.parent.name, {})[seed] = float(lira[column])
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outs", type=Path, nargs="+", help="ltu benchmark --audits lira outputs")
    p.add_argument("--column", default="lira_member_like")
    args = p.parse_args()
    values = per_seed(args.outs, args.column)
    if LTU not in values:
        raise SystemExit(f"no {LTU} row with a {args.column!r} LiRA column under {args.outs}")
    print(f"{args.column}, seeds {sorted(values[LTU])}\n")
    print("| row | mean | LTU − row | 95 % interval | Wilcoxon p | LTU lower on | resolved |")
    print("|---|---|---|---|---|---|---|")
    for row in sorted(values):
        mean = sum(values[row].values()) / len(values[row])
        if row == LTU:
            print(f"| **{row}** | {mean:.2f} | | | | | |")
            continue
        c = paired_comparison(LTU, row, values[LTU], values[row], metric=args.column)
        print(
            f"| {row} | {mean:.2f} | {c.mean:+.2f} | [{c.ci_low:+.2f}, {c.ci_high:+.2f}] | "
            f"{c.p_wilcoxon:.3g} | {c.lower_on}/{len(c.seeds)} | {'**yes**' if c.resolved else 'no'} |"
        )


if __name__ == "__main__":
    main()
