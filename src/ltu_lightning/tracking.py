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


def benchmark_group(name: str) -> str:
    """The W&B group of one benchmark invocation: its stage runs and its report run."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def wandb_stage_args(group: str, stage: str, seed: int) -> list[str]:
    """``ltu fit`` flags that log one benchmark stage as a W&B run (what
    configs/logger/wandb.yaml sets, plus the group, the stage as job type and a run name)."""
    init = "--trainer.logger.init_args."
    return [
        "--trainer.logger.class_path", "WandbLogger",
        f"{init}project", PROJECT,
        f"{init}offline", "true",
        f"{init}log_model", "false",
        f"{init}save_dir", "null",
        f"{init}group", group,
        f"{init}job_type", stage,
        f"{init}name", f"{stage}-seed{seed}",
    ]  # fmt: skip


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def log_benchmark_to_wandb(summary: Mapping[str, Any], out_dir: Path, group: str) -> Path:
    """Log a benchmark's results.csv (as a ``wandb.Table``) and its plots (``wandb.Image``)
    from ``out_dir`` to a ``report`` run of ``group``; returns the run's local folder."""
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
        config={"benchmark": summary["benchmark"], "seeds": list(summary["seeds"])},
    )
    run.log(
        {
            "results": wandb.Table(columns=header, data=[[_cell(c) for c in r] for r in rows]),
            **{f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))},
        }
    )
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
