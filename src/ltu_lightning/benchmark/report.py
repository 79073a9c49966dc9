"""Aggregate benchmark results over seeds and write results.json / .csv / .md and plots."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ltu_lightning.benchmark.audits import audit_legend
from ltu_lightning.benchmark.runner import REFERENCE_STAGES, Benchmark, StageResult
from ltu_lightning.evaluation.metrics import avg_gap, relative_time_efficiency, summarize
from ltu_lightning.evaluation.protocol import VERDICTS, forgetting_verdict
from ltu_lightning.evaluation.statistics import compare_to_all
from ltu_lightning.utils.files import atomic_path, write_json_atomic

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
        read = [row["images_read"] for row in rows if "images_read" in row]
        entry["images_read"] = summarize(read) if len(read) == len(rows) else None
        verdicts = [forgetting_verdict(results[seed][key].metrics) for seed in bench.seeds]
        entry["verdicts"] = {v: verdicts.count(v) for v in VERDICTS}
        if "TA_forgotten_classes" in rows[0]:
            for extra in ("TA_remaining_classes", "TA_forgotten_classes"):
                entry[extra] = summarize([row[extra] for row in rows])
        entry["per_seed"] = {str(seed): row for seed, row in zip(bench.seeds, rows, strict=True)}
        methods[key] = entry
    summary = {
        "benchmark": bench.name,
        "seeds": list(bench.seeds),
        "seed_role": bench.seed_role,
        "tuning_seeds": list(bench.tuning_seeds),
        "report_seeds": list(bench.report_seeds),
        "methods": methods,
    }
    summary["comparisons"] = comparisons(methods)
    summary["audits"] = aggregate_audits(bench, results, methods)
    return summary


def aggregate_audits(
    bench: Benchmark, results: dict[int, dict[str, StageResult]], methods: dict[str, Any]
) -> dict[str, Any]:
    """The audits every seed ran (benchmark/audits.py): each row's columns as mean ± std over
    seeds with their per-seed values (in ``methods[key]["audits"][name]``), and per audit its
    columns and wall time per seed (returned: ``{name: {columns, time_s, per_seed_time_s}}``)."""
    seeds = [str(s) for s in bench.seeds]
    names: list[str] = []
    for seed in bench.seeds:
        for r in results[seed].values():
            names += [n for n in r.audits if n not in names]
    audits: dict[str, Any] = {}
    for name in names:
        ran = [s for s in bench.seeds if any(name in r.audits for r in results[s].values())]
        if len(ran) < len(bench.seeds):  # a seed without it: no mean over the seeds
            continue
        columns: list[str] = []
        times: dict[str, float] = {}
        for key, entry in methods.items():
            blocks = [results[s][key].audits.get(name) for s in bench.seeds]
            if any(b is None for b in blocks):
                continue
            per_seed = {s: dict(b["columns"]) for s, b in zip(seeds, blocks, strict=True)}
            columns += [
                c
                for c in dict.fromkeys(c for b in blocks for c in b["columns"])
                if c not in columns
            ]
            stats = {
                c: summarize([row.get(c, math.nan) for row in per_seed.values()])
                for c in dict.fromkeys(c for b in blocks for c in b["columns"])
            }
            entry.setdefault("audits", {})[name] = {**stats, "per_seed": per_seed}
            times |= {s: float(b["time_s"]) for s, b in zip(seeds, blocks, strict=True)}
        audits[name] = {
            "columns": columns,
            "time_s": summarize(list(times.values())),
            "per_seed_time_s": times,
        }
    return audits


def method_name(key: str) -> str:
    """A row's method: its key before ``:`` (``ltu`` in ``ltu:partial+holdout``)."""
    return key.split(":", 1)[0]


def methods_of_interest(methods: dict[str, Any]) -> list[str]:
    """The rows the others are compared with: every row whose method is ``ltu``, whatever its
    access (ablation rows such as ``ltu_no_meta:...`` are other methods)."""
    return [key for key in methods if method_name(key) == "ltu"]


def _images_mean(entry: dict[str, Any]) -> float | None:
    stat = entry.get("images_read")
    return stat["mean"] if isinstance(stat, dict) else None


def comparisons(methods: dict[str, Any], metric: str = "avg_gap") -> list[dict[str, Any]]:
    """Each LTU row against every other row except Retrain (Avg.Gap's reference), paired over
    seeds: differences, bootstrap 95 % interval, Wilcoxon p and ``resolved``. ``other_access``
    and ``same_access`` (None for a row without access, e.g. the original) mark the rows of
    the same access, which come first; ``same_images`` says whether both rows' measured
    ``images_read`` agree (None when either is unknown: under ``full`` LTU reads the
    holdout's auditor half beyond a baseline). Two LTU rows are compared once."""
    out: list[dict[str, Any]] = []
    references = methods_of_interest(methods)
    for i, reference in enumerate(references):
        rows = {k: v for k, v in methods.items() if k != "retrain" and k not in references[:i]}
        access = methods[reference].get("access")
        read = _images_mean(methods[reference])
        found = []
        for c in compare_to_all(rows, reference, metric):
            other = methods[c.other].get("access")
            same = None if other is None or access is None else other == access
            other_read = _images_mean(methods[c.other])
            images = None if read is None or other_read is None else read == other_read
            found.append(
                {**c.as_dict(), "other_access": other, "same_access": same, "same_images": images}
            )
        found.sort(key=lambda c: c["same_access"] is not True)  # stable: same access first
        out += found
    return out


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def comparison_table(summary: dict[str, Any], reference: str | None = None) -> str:
    """The comparisons (of ``reference``, default all) as markdown: which differences of
    Avg.Gap are resolved, rows of the same access marked; an empty string when the table has
    no ``ltu`` row."""
    rows = [
        c for c in summary.get("comparisons") or [] if reference is None or c["method"] == reference
    ]
    if not rows:
        return ""
    head = (
        "| other row | access | mean difference | 95 % interval | Wilcoxon p | lower on "
        "| resolved |"
    )
    lines = [head, "|" + "---|" * 7]
    for c in rows:
        several = c["resolved"] is not None
        interval = f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" if several else "n/a"
        resolved = {True: "**yes**", False: "no", None: "n/a"}[c["resolved"]]
        access = c.get("other_access") or "-"
        if c.get("same_access"):
            same = c.get("same_images") is not False
            access = f"**{access}** (same)" if same else f"{access} (same access, other images)"
        cells = [
            c["other"],
            access,
            f"{c['mean']:+.2f}",
            interval,
            _p(c["p_wilcoxon"]) if several else "n/a",
        ]
        cells += [f"{c['lower_on']}/{len(c['seeds'])}", resolved]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(stat: dict[str, float], digits: int = 2, seeds: int = 2) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed (there is no spread to show)."""
    if any(math.isinf(v) or math.isnan(v) for v in stat.values()):
        return "n/a"
    if seeds < 2:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def detectable_cell(entry: dict[str, Any]) -> str:
    """The two-sided verdict of the seeds: one word for one seed, else the counts."""
    counts = {v: n for v, n in entry.get("verdicts", {}).items() if n}
    if not counts:
        return "-"
    if len(counts) == 1 and sum(counts.values()) == 1:
        return next(iter(counts))
    return ", ".join(f"{n}× {v}" for v, n in counts.items())


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


def _images_cell(stat: dict[str, float] | None) -> str:
    """Images read: the count (the mean when it varies over seeds), ``-`` when not recorded."""
    if stat is None:
        return "-"
    return f"{stat['mean']:.0f}" + (f" ± {stat['std']:.0f}" if stat["std"] > 0 else "")


def grouped_by_access(methods: dict[str, Any]) -> list[str]:
    """The rows in table order: the reference models, then one group per access mode (groups
    in the order their first row appears, rows in config order within a group), so that each
    row stands next to the rows that read the same data."""
    keys = list(methods)
    groups: list[str | None] = []
    for key in keys:
        access = methods[key].get("access")
        if key not in REFERENCE_STAGES and access not in groups:
            groups.append(access)
    head = [k for k in keys if k in REFERENCE_STAGES]
    rest = [k for g in groups for k in keys if k not in head and methods[k].get("access") == g]
    return head + rest


def markdown_table(summary: dict[str, Any]) -> str:
    head = ["method", "access"] + [name for _, name, _ in COLUMNS]
    head += ["images read", "collapsed", "failed", "no gain", "detectable"]
    seeds = len(summary["seeds"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in grouped_by_access(summary["methods"]):
        entry = summary["methods"][key]
        cells = [method_name(key), entry["access"] or "-"]
        cells += [_fmt(entry[m], d, seeds) for m, _, d in COLUMNS]
        cells += [
            _images_cell(entry.get("images_read")),
            str(entry["collapsed"]),
            str(entry.get("failed", 0)),
            str(entry.get("no_gain", 0)),
            detectable_cell(entry),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CLASS_COLUMNS = (
    ("TA_remaining_classes", "TA remaining classes"),
    ("TA_forgotten_classes", "TA forgotten classes"),
)


def class_table(summary: dict[str, Any]) -> str:
    """Class-wise forgetting: test accuracy on the remaining and on the forgotten classes apart
    (docs/protocol.md); an empty string for benchmarks that do not forget whole classes."""
    entries = {k: e for k, e in summary["methods"].items() if CLASS_COLUMNS[0][0] in e}
    if not entries:
        return ""
    lines = ["| method | access | " + " | ".join(name for _, name in CLASS_COLUMNS) + " |"]
    lines.append("|" + "---|" * (2 + len(CLASS_COLUMNS)))
    for key in grouped_by_access(entries):
        entry = entries[key]
        cells = [method_name(key), entry["access"] or "-"]
        cells += [_fmt(entry[m], 1, len(summary["seeds"])) for m, _ in CLASS_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def audit_table(summary: dict[str, Any], name: str) -> str:
    """One audit's columns as markdown: the rows it scored, mean ± std over seeds."""
    columns = summary["audits"][name]["columns"]
    lines = ["| method | access | " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * (2 + len(columns)))
    seeds = len(summary["seeds"])
    for key, entry in summary["methods"].items():
        stats = entry.get("audits", {}).get(name)
        if stats is None:
            continue
        cells = [key.split(":")[0], entry["access"] or "-"]
        cells += [_fmt(stats[c], 3, seeds) if c in stats else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def audit_sections(summary: dict[str, Any]) -> str:
    """A section per audit (its legend, its table, its wall time); empty without audits."""
    text = ""
    for name, info in (summary.get("audits") or {}).items():
        legend = audit_legend(name)
        time_s = _fmt(info["time_s"], 1, len(summary["seeds"]))
        text += (
            f"\n## Audit `{name}`\n\n"
            + (legend + "\n\n" if legend else "")
            + audit_table(summary, name)
            + f"\n\nWall time of the audit: {time_s} s per seed (all its rows; loading the models not included).\n"
        )
    return text


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
            "images_read",
            "collapsed",
            "failed",
            "no_gain",
            "detectable",
        ]
    )
    for key, entry in summary["methods"].items():
        writer.writerow(
            [
                key,
                entry["access"] or "",
                *[entry[m][s] for m in METRICS for s in ("mean", "std")],
                (entry.get("images_read") or {}).get("mean", ""),
                entry["collapsed"],
                entry.get("failed", 0),
                entry.get("no_gain", 0),
                detectable_cell(entry),
            ]
        )
    _write_text(out / "results.csv", buf.getvalue())
    md = f"# Benchmark `{summary['benchmark']}`\n\n"
    if summary.get("seed_role") == "tuning":
        md += (
            f"**Tuning table, not a report**: seeds {summary['seeds']} include tuning seeds "
            f"{summary['tuning_seeds']} (hyperparameters were chosen on them); report on the "
            f"report seeds {summary['report_seeds']}.\n\n"
        )
    md += (
        f"Seeds: {summary['seeds']}"
        + (f" ({summary['seed_role']} seeds)" if summary.get("seed_role") else "")
        + ". "
        + ("Mean ± std over seeds; " if len(summary["seeds"]) > 1 else "One seed (no spread); ")
        + "metrics in percent except loss-AUC (0.5 = forget set indistinguishable from test data); "
        "Avg.Gap against Retrain of the same seed (lower is better); RTE = retrain time / unlearning "
        "time; images read = distinct training and holdout images the row's fit read (D_f, the "
        "retain data of its access, the auditor half of the holdout if used; the validation "
        "half, read by every row for checkpoint selection, is not counted); collapsed = seeds "
        "with TA < 50; failed = seeds stopped by a guard (non-finite "
        "step), reported from their best epoch so far (the starting model if no epoch beat it "
        "or none ended); no gain = seeds whose kept epoch did "
        "not beat the starting model on the validation criterion; detectable = the two-sided "
        "verdict of the membership attacks on D_f vs test data (forgotten, still detectable: "
        "D_f looks more familiar, over-forgotten: D_f looks less familiar than unseen data).\n\n"
        + "Rows are grouped by access (partial: D_f and the retain subset; partial+holdout: "
        "also the auditor half of the holdout; full: D_f and the whole remaining set); compare "
        "a row with the rows of its own access.\n\n" + markdown_table(summary) + "\n"
    )
    classes = class_table(summary)
    if classes:
        md += "\nTest accuracy by class group (class-wise forgetting):\n\n" + classes + "\n"
    references = list(dict.fromkeys(c["method"] for c in summary.get("comparisons") or []))
    for reference in references:
        access = summary["methods"][reference].get("access")
        md += (
            f"\n## `{reference}` against every other row (Avg.Gap)\n\n"
            f"Paired over seeds: mean of `{reference}` − other (negative: `{reference}` is "
            "lower), seeded bootstrap 95 % interval of that mean, two-sided Wilcoxon "
            f"signed-rank p, seeds on which `{reference}` is lower; resolved = the interval "
            "excludes 0 and p < 0.05 (n/a for one seed; the signed-rank test needs six seeds "
            "or more to reach p < 0.05). "
            + (
                f"Rows of the same access (`{access}`, listed first) are the matched "
                "comparison, marked *same* when they also read as many images (images read "
                "differ, e.g. under `full`, where LTU's auditors read the holdout's auditor half "
                "and a baseline does not: *other images*).\n\n"
                if access
                else "\n\n"
            )
            + comparison_table(summary, reference)
            + "\n"
        )
    md += audit_sections(summary)
    _write_text(out / "results.md", md)
    return [out / "results.json", out / "results.csv", out / "results.md", *plot(summary, out)]


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


#: marker of each access mode in the plots (reference models have none)
ACCESS_MARKERS = {"partial": "o", "partial+holdout": "^", "full": "s", None: "D"}
REFERENCE_COLOURS = {"original": "0.45", "retrain": "black"}


def method_styles(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Colour per method (``ltu`` in ``ltu:partial+holdout`` and ``ltu:full`` alike), marker
    per access."""
    import matplotlib

    tab10 = matplotlib.colormaps["tab10"].colors
    # tab10's grey (index 7) is left to the original model
    palette = tab10[:7] + tab10[8:] + matplotlib.colormaps["Dark2"].colors
    names: list[str] = []
    styles = {}
    for key, entry in summary["methods"].items():
        name = method_name(key)
        if name not in REFERENCE_COLOURS and name not in names:
            names.append(name)
        colour = REFERENCE_COLOURS.get(name) or palette[names.index(name) % len(palette)]
        label = name if entry["access"] is None else f"{name} ({entry['access']})"
        styles[key] = {
            "color": colour,
            "marker": ACCESS_MARKERS.get(entry["access"], "o"),
            "label": label,
        }
    return styles


def _zoom(values: list[float], extra: float = 0.08) -> tuple[float, float]:
    """Axis limits around ``values`` with a margin (a fixed one when they are all equal)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * extra or max(abs(hi) * 0.05, 0.5)
    return lo - pad, hi + pad


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    """Avg.Gap vs unlearning time, and the metrics of every row next to Retrain's; a colour per
    method, a marker per access mode, axes zoomed to the data, error bars only over 2+ seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several = len(summary["seeds"]) > 1
    styles = method_styles(summary)
    methods = {k: v for k, v in summary["methods"].items() if k not in REFERENCE_STAGES}
    retrain = summary["methods"]["retrain"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, entry in methods.items():
        x, y = entry["time_s"]["mean"], entry["avg_gap"]["mean"]
        ax.errorbar(
            x, y, yerr=entry["avg_gap"]["std"] if several else None, capsize=3, ls="none",
            ms=7, **styles[key],
        )  # fmt: skip
    retrain_t = retrain["time_s"]["mean"]
    ax.axvline(retrain_t, color="k", ls="--", lw=1, label=f"retrain time ({retrain_t:.0f}s)")
    times = [e["time_s"]["mean"] for e in methods.values()] + [retrain_t]
    gaps = [
        e["avg_gap"]["mean"] + (e["avg_gap"]["std"] if several else 0) for e in methods.values()
    ]
    gaps += [
        e["avg_gap"]["mean"] - (e["avg_gap"]["std"] if several else 0) for e in methods.values()
    ]
    ax.set_xlim(*_zoom(times))
    if gaps:
        ax.set_ylim(*_zoom(gaps))
    ax.set_xlabel("unlearning time (s)")
    ax.set_ylabel("Avg.Gap to Retrain (lower is better)")
    ax.set_title(f"{summary['benchmark']}: gap vs time")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    paths = [out / "avg_gap_vs_time.png"]
    _save_png(fig, paths[0])
    plt.close(fig)

    keys = list(summary["methods"])
    fig, axes = plt.subplots(1, 4, figsize=(15, 0.35 * len(keys) + 1.6), sharey=True)
    for ax, metric in zip(axes, ("UA", "RA", "TA", "MIA"), strict=True):
        values = []
        for row, key in enumerate(keys):
            stat = summary["methods"][key][metric]
            ax.errorbar(
                stat["mean"], row, xerr=stat["std"] if several else None, capsize=2, ls="none",
                ms=6, **styles[key],
            )  # fmt: skip
            spread = stat["std"] if several else 0.0
            values += [stat["mean"] - spread, stat["mean"] + spread]
        ax.axvline(retrain[metric]["mean"], color="black", ls="--", lw=1)
        ax.set_xlim(*_zoom(values))
        ax.set_title(f"{metric} (%) — dashed: Retrain")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(keys)), [styles[k]["label"] for k in keys], fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    paths.append(out / "metrics_bars.png")
    _save_png(fig, paths[1])
    plt.close(fig)
    return paths
