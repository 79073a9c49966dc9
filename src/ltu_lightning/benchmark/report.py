"""Aggregate benchmark results over seeds and write results.json / .csv / .md and plots."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ltu_lightning.benchmark.runner import REFERENCE_STAGES, Benchmark, StageResult
from ltu_lightning.data.splits import atomic_path, write_json_atomic
from ltu_lightning.evaluation.metrics import avg_gap, relative_time_efficiency, summarize

METRICS = ("UA", "RA", "TA", "MIA", "MIA_entropy", "loss_auc", "avg_gap", "time_s", "rte")
COLLAPSE_TA = 50.0  # a seed whose test accuracy falls below this counts as collapsed


def aggregate(bench: Benchmark, results: dict[int, dict[str, StageResult]]) -> dict[str, Any]:
    """The ``results.json`` contract: mean ± std per metric and method over seeds."""
    keys = list(REFERENCE_STAGES) + [m.key for m in bench.methods]
    access = {m.key: m.access for m in bench.methods}
    methods: dict[str, Any] = {}
    for key in keys:
        rows = []
        for seed in bench.seeds:
            r = results[seed][key]
            retrain = results[seed]["retrain"]
            row = {k: float(v) for k, v in r.metrics.items()}
            row["avg_gap"] = avg_gap(r.metrics, retrain.metrics)
            row["time_s"] = r.time_s
            row["rte"] = relative_time_efficiency(retrain.time_s, r.time_s)
            rows.append(row)
        entry: dict[str, Any] = {m: summarize([row[m] for row in rows]) for m in METRICS}
        entry["collapsed"] = sum(row["TA"] < COLLAPSE_TA for row in rows)
        entry["failed"] = int(sum(row.get("failed", 0.0) for row in rows))
        entry["no_gain"] = int(sum(row.get("no_gain", 0.0) for row in rows))
        entry["access"] = access.get(key)
        if "TA_forgotten_classes" in rows[0]:
            for extra in ("TA_remaining_classes", "TA_forgotten_classes"):
                entry[extra] = summarize([row[extra] for row in rows])
        entry["per_seed"] = {str(seed): row for seed, row in zip(bench.seeds, rows, strict=True)}
        methods[key] = entry
    return {"benchmark": bench.name, "seeds": list(bench.seeds), "methods": methods}


def _fmt(stat: dict[str, float], digits: int = 2) -> str:
    if any(math.isinf(v) or math.isnan(v) for v in stat.values()):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


COLUMNS = [
    ("UA", "UA", 2),
    ("RA", "RA", 2),
    ("TA", "TA", 2),
    ("MIA", "MIA", 2),
    ("loss_auc", "loss-AUC", 3),
    ("avg_gap", "Avg.Gap", 2),
    ("time_s", "time (s)", 1),
    ("rte", "RTE", 1),
]


def markdown_table(summary: dict[str, Any]) -> str:
    head = ["method", "access"] + [name for _, name, _ in COLUMNS]
    head += ["collapsed", "failed", "no gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, entry in summary["methods"].items():
        cells = [key.split(":")[0], entry["access"] or "-"]
        cells += [_fmt(entry[m], d) for m, _, d in COLUMNS]
        cells += [
            str(entry["collapsed"]),
            str(entry.get("failed", 0)),
            str(entry.get("no_gain", 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLASS_COLUMNS = (
    ("TA_remaining_classes", "TA remaining classes"),
    ("TA_forgotten_classes", "TA forgotten classes"),
)


def class_table(summary: dict[str, Any]) -> str:
    """Class-wise forgetting: test accuracy on the remaining and on the forgotten classes apart
    (PROTOCOL.md); an empty string for benchmarks that do not forget whole classes."""
    entries = {k: e for k, e in summary["methods"].items() if CLASS_COLUMNS[0][0] in e}
    if not entries:
        return ""
    lines = ["| method | access | " + " | ".join(name for _, name in CLASS_COLUMNS) + " |"]
    lines.append("|" + "---|" * (2 + len(CLASS_COLUMNS)))
    for key, entry in entries.items():
        cells = [key.split(":")[0], entry["access"] or "-"]
        cells += [_fmt(entry[m], 1) for m, _ in CLASS_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(summary: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", summary)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        [
            "method",
            "access",
            *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")],
            "collapsed",
            "failed",
            "no_gain",
        ]
    )
    for key, entry in summary["methods"].items():
        writer.writerow(
            [
                key,
                entry["access"] or "",
                *[entry[m][s] for m in METRICS for s in ("mean", "std")],
                entry["collapsed"],
                entry.get("failed", 0),
                entry.get("no_gain", 0),
            ]
        )
    _write_text(out / "results.csv", buf.getvalue())
    md = (
        f"# Benchmark `{summary['benchmark']}`\n\nSeeds: {summary['seeds']}. Mean ± std over seeds; "
        "metrics in percent except loss-AUC (0.5 = forget set indistinguishable from test data); "
        "Avg.Gap against Retrain of the same seed (lower is better); RTE = retrain time / unlearning "
        "time; collapsed = seeds with TA < 50; failed = seeds stopped by a guard (non-finite "
        "step), reported from their last good checkpoint (the starting model if stopped in "
        "their first epoch); no gain = seeds whose kept epoch did "
        "not beat the starting model on the validation criterion.\n\n"
        + markdown_table(summary)
        + "\n"
    )
    classes = class_table(summary)
    if classes:
        md += "\nTest accuracy by class group (class-wise forgetting):\n\n" + classes + "\n"
    _write_text(out / "results.md", md)
    return [out / "results.json", out / "results.csv", out / "results.md", *plot(summary, out)]


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    """Avg.Gap vs unlearning time, and one bar chart per metric with Retrain marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {k: v for k, v in summary["methods"].items() if k not in REFERENCE_STAGES}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, entry in methods.items():
        ax.errorbar(
            entry["time_s"]["mean"],
            entry["avg_gap"]["mean"],
            yerr=entry["avg_gap"]["std"],
            fmt="o",
            capsize=3,
        )
        ax.annotate(
            key,
            (entry["time_s"]["mean"], entry["avg_gap"]["mean"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    retrain_t = summary["methods"]["retrain"]["time_s"]["mean"]
    ax.axvline(retrain_t, color="k", ls="--", lw=1, label=f"retrain time ({retrain_t:.0f}s)")
    ax.set_xlabel("unlearning time (s)")
    ax.set_ylabel("Avg.Gap to Retrain (lower is better)")
    ax.set_title(f"{summary['benchmark']}: gap vs time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out / "avg_gap_vs_time.png"]
    _save_png(fig, paths[0])
    plt.close(fig)

    keys = list(summary["methods"])
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, metric in zip(axes, ("UA", "RA", "TA", "MIA"), strict=True):
        means = [summary["methods"][k][metric]["mean"] for k in keys]
        stds = [summary["methods"][k][metric]["std"] for k in keys]
        ax.bar(range(len(keys)), means, yerr=stds, capsize=2, color="tab:blue")
        ax.axhline(
            summary["methods"]["retrain"][metric]["mean"], color="tab:red", ls="--", label="Retrain"
        )
        ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=7)
        ax.set_title(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "metrics_bars.png")
    _save_png(fig, paths[1])
    plt.close(fig)
    return paths
