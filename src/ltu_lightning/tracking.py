"""Weights & Biases bookkeeping: run summaries, the benchmark's grouped stage runs, its report run.

Every W&B run of the project is offline unless ``WANDB_MODE`` says otherwise, so machines
without credentials log too (upload later with ``wandb sync``). See docs/wandb.md.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

PROJECT = "ltu-lightning"


def wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


@rank_zero_only
def update_wandb_summary(loggers: Iterable[Logger], metrics: Mapping[str, float]) -> None:
    """Write ``metrics`` into the summary (the runs table's columns) of each W&B logger."""
    for logger in wandb_loggers(loggers):
        logger.experiment.summary.update(dict(metrics))


@rank_zero_only
def finish_wandb_stage(loggers: Iterable[Logger], metrics: Mapping[str, float]) -> None:
    """Put a benchmark stage's evaluation into its W&B summary as ``eval/<metric>`` and close
    the run: the next stage's WandbLogger would otherwise reuse this run (``wandb.run``)."""
    for logger in wandb_loggers(loggers):
        logger.experiment.summary.update({f"eval/{k}": v for k, v in metrics.items()})
        logger.experiment.finish()


def save_file_with_run(run: Any, path: Path, folder: str) -> Path:
    """Copy ``path`` into the W&B run's files as ``<folder>/<name>`` (uploaded with the run,
    offline runs on ``wandb sync``); returns the copy."""
    import shutil

    target = Path(run.dir) / folder / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    run.save(str(target), base_path=run.dir, policy="now")
    return target


def benchmark_group(name: str) -> str:
    """The W&B group of one benchmark invocation: its stage runs and its report run."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def wandb_stage_logger(group: str, stage: str, seed: int) -> dict[str, Any]:
    """The trainer logger that records one benchmark stage as a W&B run (what
    configs/logger/wandb.yaml sets, plus the group, the stage as job type and a run name)."""
    init = {"project": PROJECT, "offline": True, "log_model": False, "save_dir": None}
    init |= {"group": group, "job_type": stage, "name": f"{stage}-seed{seed}"}
    return {"trainer": {"logger": {"class_path": "WandbLogger", "init_args": init}}}


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


#: the report run's native W&B charts: (name, kind, x column, y column) of the results table
REPORT_CHARTS = (
    ("avg_gap", "bar", "method", "avg_gap_mean"),
    ("UA", "bar", "method", "UA_mean"),
    ("RA", "bar", "method", "RA_mean"),
    ("TA", "bar", "method", "TA_mean"),
    ("MIA", "bar", "method", "MIA_mean"),
    ("avg_gap_vs_time", "scatter", "time_s_mean", "avg_gap_mean"),
)


def log_benchmark_to_wandb(
    summary: Mapping[str, Any], out_dir: Path, group: str, config: Mapping[str, Any] | None = None
) -> Path:
    """Log a benchmark's results.csv (as a ``wandb.Table``), W&B bar and scatter charts built
    from that table (``charts/<name>``) and the matplotlib plots (``plots/<name>``, images) from
    ``out_dir`` to a ``report`` run of ``group`` whose config is the benchmark's ``config``;
    returns the run's local folder."""
    import wandb

    with (out_dir / "results.csv").open(newline="") as f:
        header, *rows = list(csv.reader(f))
    run = wandb.init(
        project=PROJECT,
        group=group,
        job_type="report",
        name=f"{summary['benchmark']}-report",
        dir=str(out_dir),
        mode=os.environ.get("WANDB_MODE", "offline"),
        config=dict(config or {"benchmark": summary["benchmark"], "seeds": list(summary["seeds"])}),
        settings=wandb.Settings(silent=True),
    )
    table = wandb.Table(columns=header, data=[[_cell(c) for c in r] for r in rows])
    charts = {}
    for name, kind, x, y in REPORT_CHARTS:
        title = f"{summary['benchmark']}: {y.removesuffix('_mean')}" + (
            f" vs {x.removesuffix('_mean')}" if kind == "scatter" else ""
        )
        chart = wandb.plot.bar if kind == "bar" else wandb.plot.scatter
        charts[f"charts/{name}"] = chart(table, x, y, title=title)
    run.log(
        {
            "results": table,
            **charts,
            **{f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))},
        }
    )
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
