"""``ltu benchmark --config configs/benchmark/<name>.yaml [--seeds N] [--out DIR]``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from ltu_lightning.benchmark.progress import (
    BenchmarkProgress,
    override_notices,
    process_wall_time,
)
from ltu_lightning.benchmark.report import markdown_table, write_reports
from ltu_lightning.benchmark.runner import REFERENCE_STAGES, load_benchmark
from ltu_lightning.errors import LTUError
from ltu_lightning.quiet import quiet_wandb
from ltu_lightning.tracking import benchmark_group, log_benchmark_to_wandb


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="ltu benchmark",
        description="Train the original and retrained models, run LTU and the baselines on the same "
        "split per seed, evaluate all, and write results.json/.csv/.md and plots.",
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="benchmark YAML (configs/benchmark/)"
    )
    parser.add_argument(
        "--name", type=str, required=True, help="benchmark id (results.json 'benchmark')"
    )
    parser.add_argument(
        "--original", type=str, required=True, help="stage YAML of the original model"
    )
    parser.add_argument(
        "--retrain", type=str, required=True, help="stage YAML of the retrained model"
    )
    parser.add_argument(
        "--methods",
        type=list[dict],
        required=True,
        help="list of {key: <method>:<access>, config: <stage yaml>, overrides: [args]}",
    )
    parser.add_argument(
        "--seeds", type=int | list[int], default=1, help="N (seeds 0..N-1) or a list"
    )
    parser.add_argument("--out", type=str, default="runs/benchmark", help="output folder")
    parser.add_argument(
        "--overrides",
        type=list[str],
        default=[],
        help="extra ltu fit arguments for every stage (e.g. tiny sizes); a method's own "
        "overrides come after them and win (rows pin e.g. their optimizer and epochs)",
    )
    parser.add_argument(
        "--only",
        type=list[str] | str | None,
        default=None,
        help='run only these method keys: "ltu:partial,ft:full" or a JSON list',
    )
    parser.add_argument(
        "--overwrite",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="replace results.* of an earlier run in --out (stage checkpoints are reused)",
    )
    parser.add_argument(
        "--wandb",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="log each stage trained, the results table and the plots as W&B runs of one group "
        "(offline under --out unless WANDB_MODE is set; docs/wandb.md)",
    )
    return parser


def benchmark_main(args: list[str]) -> None:
    cfg = build_parser().parse_args(args)
    out = Path(cfg.out)
    if (out / "results.json").exists() and not cfg.overwrite:
        raise LTUError(
            f"{out}/results.json already exists; pass --overwrite to replace it or choose another --out"
        )
    bench = load_benchmark(cfg)
    if cfg.wandb:
        bench.wandb_group = benchmark_group(bench.name)
    if isinstance(cfg.only, str):
        cfg.only = [key.strip() for key in cfg.only.split(",") if key.strip()]
    if cfg.only is not None:
        unknown = set(cfg.only) - {m.key for m in bench.methods}
        if unknown:
            raise LTUError(
                f"--only names unknown methods {sorted(unknown)}; known: {[m.key for m in bench.methods]}"
            )
        bench.methods = [m for m in bench.methods if m.key in cfg.only]
    for notice in override_notices(bench.overrides, {m.key: m.overrides for m in bench.methods}):
        print(notice, flush=True)
    print(
        f"benchmark {bench.name}: seeds {bench.seeds}, {len(bench.methods)} methods -> {out}",
        flush=True,
    )
    start = time.perf_counter()
    total = len(bench.seeds) * (len(REFERENCE_STAGES) + len(bench.methods))
    with quiet_wandb(), BenchmarkProgress(total) as display:
        results = bench.run(progress=display.print, events=display)
    stages_s = time.perf_counter() - start
    from ltu_lightning.benchmark.report import aggregate

    summary = aggregate(bench, results)
    paths = write_reports(summary, out)
    print()
    print(markdown_table(summary))
    if bench.wandb_group:
        run_dir = log_benchmark_to_wandb(summary, out, bench.wandb_group, benchmark_config(cfg))
        print(f"W&B group {bench.wandb_group}: report run in {run_dir}")
    print(
        f"\nwrote {', '.join(str(p) for p in paths)}\nwall time {process_wall_time():.0f}s "
        f"(the whole ltu benchmark process: start-up, {stages_s:.0f}s of stages, reports)"
    )


def benchmark_config(cfg: Namespace) -> dict[str, Any]:
    """The parsed benchmark configuration as plain data (the report run's W&B config)."""
    config = cfg.as_dict()
    config.pop("config", None)
    config.pop("__path__", None)
    return config
