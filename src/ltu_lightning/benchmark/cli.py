"""``ltu benchmark --config configs/benchmark/<name>.yaml [--seeds N] [--out DIR]``."""

from __future__ import annotations

import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from ltu_lightning.benchmark.report import markdown_table, write_reports
from ltu_lightning.benchmark.runner import load_benchmark
from ltu_lightning.errors import LTUError
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
    start = time.perf_counter()
    print(
        f"benchmark {bench.name}: seeds {bench.seeds}, {len(bench.methods)} methods -> {out}",
        flush=True,
    )
    results = bench.run(progress=lambda line: print(line, flush=True))
    from ltu_lightning.benchmark.report import aggregate

    summary = aggregate(bench, results)
    paths = write_reports(summary, out)
    print()
    print(markdown_table(summary))
    print(
        f"\nwall time {time.perf_counter() - start:.0f}s; wrote {', '.join(str(p) for p in paths)}"
    )
    if bench.wandb_group:
        run_dir = log_benchmark_to_wandb(summary, out, bench.wandb_group)
        print(f"W&B group {bench.wandb_group}: report run in {run_dir}")
