"""The ``ltu benchmark``, ``ltu audit`` and ``ltu tune`` subcommands: their parsers and what
they run.

    ltu benchmark --config configs/benchmark/<name>.yaml [--seeds N] [--out DIR] [--tuned YAML]
        [--audits inversion,lira] [--lira_shadows 8]
    ltu audit --config configs/benchmark/<name>.yaml --audits inversion,lira [--seeds N] [--out DIR]
    ltu tune --benchmark configs/benchmark/digits.yaml \
        --search experiments/search/digits --trials 12 --out runs/search/digits
    ltu tune --benchmark configs/benchmark/fmnist5k.yaml \
        --grid experiments/tuning/fmnist5k.yaml --out runs/tune/fmnist5k
    ltu tune --benchmark configs/benchmark/fmnist5k.yaml configs/benchmark/fmnist5k/classwise.yaml \
        --search experiments/search/fmnist5k --out runs/search/fmnist5k_classwise
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from ltu_lightning.benchmark.audits import AUDITS, audit_names, audit_seed, stored_results
from ltu_lightning.benchmark.progress import (
    BenchmarkProgress,
    override_notices,
    process_wall_time,
)
from ltu_lightning.benchmark.report import (
    aggregate,
    audit_sections,
    markdown_table,
    write_reports,
)
from ltu_lightning.benchmark.runner import (
    REFERENCE_STAGES,
    Benchmark,
    StageResult,
    load_benchmark,
)
from ltu_lightning.benchmark.search import read_spaces, read_tuned, search
from ltu_lightning.benchmark.tuning import tune, tuning_markdown
from ltu_lightning.errors import LTUError
from ltu_lightning.quiet import quiet_wandb
from ltu_lightning.runner.lightning import ToolArgumentParser
from ltu_lightning.tracking import benchmark_group, log_benchmark_to_wandb
from ltu_lightning.utils.run_lock import RunLock

BENCHMARK_HELP = (
    "Train the original and retrained models, run LTU and the baselines on the same split per "
    "seed, evaluate all, and write results.json/.csv/.md and plots."
)
AUDIT_HELP = (
    "Audit the stored models of an ltu benchmark output folder (nothing is fitted) and write "
    "its report again with the audits' columns."
)
TUNE_HELP = (
    "Choose each method's hyperparameters on the validation holdout of the tuning seeds (never "
    "the test split): an Optuna search of the same number of trials per method (--search) or "
    "every point of a grid (--grid); the lowest mean val/criterion wins."
)


def build_parser() -> ArgumentParser:
    """The ``ltu benchmark`` parser (a subcommand of ``ltu``)."""
    parser = ToolArgumentParser(prog="ltu benchmark", description=BENCHMARK_HELP)
    add_benchmark_arguments(parser)
    parser.add_argument(
        "--audits",
        type=list[str] | str,
        default=[],
        help=f"audits of each seed's models after its stages, as a list or comma-separated "
        f"(known: {', '.join(AUDITS)}); their columns go to results.json/.md; default: none",
    )
    parser.add_argument(
        "--overwrite",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="replace results.* of an earlier run in --out and fit its method stages again "
        "(the original and retrained models are reused)",
    )
    parser.add_argument(
        "--resume",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="reuse the method stages an earlier (e.g. interrupted) run in --out finished with "
        "the same configs and overrides; fit the others",
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


def build_audit_parser() -> ArgumentParser:
    """The ``ltu audit`` parser (a subcommand of ``ltu``): the benchmark's flags, which say
    where its stages are and how they were built, and the audits to run."""
    parser = ToolArgumentParser(prog="ltu audit", description=AUDIT_HELP)
    add_benchmark_arguments(parser)
    parser.add_argument(
        "--audits",
        type=list[str] | str,
        required=True,
        help=f"the audits to run, as a list or comma-separated (known: {', '.join(AUDITS)})",
    )
    return parser


def add_benchmark_arguments(parser: ArgumentParser) -> None:
    """The flags of a benchmark's definition, its seeds and its output folder."""
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
        help="list of {key: <method>:<access>, config: <stage yaml or list of yamls composed in "
        "order>, overrides: {config key: value}}",
    )
    parser.add_argument(
        "--lira_shadows",
        type=int,
        default=8,
        help="--audits lira: shadow models per seed (even; each trains on half of the pool with "
        "the original's recipe, cached under out/seed_<s>/audits/shadows/)",
    )
    parser.add_argument(
        "--seeds",
        type=int | list[int] | None,
        default=None,
        help="N: the first N report seeds (seeds 0..N-1 when the config names no report seeds), "
        "or a list of seeds; default: every report seed",
    )
    parser.add_argument(
        "--tuning_seeds",
        type=list[int],
        default=[],
        help="seeds hyperparameters are chosen on (ltu tune); refused by ltu benchmark unless "
        "--on_tuning_seeds true",
    )
    parser.add_argument(
        "--report_seeds",
        type=list[int],
        default=[],
        help="seeds results are reported on (disjoint from --tuning_seeds)",
    )
    parser.add_argument(
        "--on_tuning_seeds",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="allow tuning seeds in --seeds; the results are then labelled a tuning table",
    )
    parser.add_argument("--out", type=str, default="runs/benchmark", help="output folder")
    parser.add_argument(
        "--overrides",
        type=dict,  # values as written: dict[str, Any] would resolve class specs with defaults
        default={},
        help="config values for every stage, as a map of (dotted) keys, e.g. "
        "'{\"trainer.max_epochs\": 1}'; a method's own overrides come after them and win "
        "(rows pin e.g. their optimizer and epochs)",
    )
    parser.add_argument(
        "--method_overrides",
        type=dict,
        default={},
        help="config values for some rows, as {method key: {config key: value}}, applied after "
        "each row's own overrides and before --tuned (a variant of a benchmark pins what its "
        "setting requires, e.g. a forgetting loss for class-wise forgetting)",
    )
    parser.add_argument(
        "--only",
        type=list[str] | str | None,
        default=None,
        help='run only these method keys: "ltu:partial+holdout,ft:full" or a JSON list',
    )
    parser.add_argument(
        "--tuned",
        type=str | None,
        default=None,
        help="chosen.yaml of ltu tune --search: {method key: {config key: value}}, applied after "
        "each method's own overrides",
    )


def build_tune_parser() -> ArgumentParser:
    """The ``ltu tune`` parser (a subcommand of ``ltu``)."""
    parser = ToolArgumentParser(prog="ltu tune", description=TUNE_HELP)
    parser.add_argument(
        "--benchmark",
        type=str,
        nargs="+",
        required=True,
        help="benchmark YAML, or a benchmark YAML and variants layered on it in order (as "
        "ltu benchmark --config A --config B composes them)",
    )
    parser.add_argument(
        "--search",
        type=str | None,
        default=None,
        help="folder of Optuna search spaces, <method>_<access>.yaml each: {config key: {low, high, "
        "log} | {choices: [...]}}; writes chosen.yaml (for ltu benchmark --tuned) and search.md",
    )
    parser.add_argument(
        "--trials", type=int, default=12, help="--search: trials per method (the same for each)"
    )
    parser.add_argument(
        "--sampler_seed", type=int, default=0, help="--search: seed of the TPE sampler"
    )
    parser.add_argument(
        "--grid",
        type=str | None,
        default=None,
        help="instead of --search: YAML mapping a method key to {config key: [values]}",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="score = mean over these seeds (default: the benchmark's tuning_seeds)",
    )
    parser.add_argument("--out", type=str, required=True, help="output folder")
    parser.add_argument(
        "--only", type=str, nargs="+", default=None, help="method keys to tune (default: all)"
    )
    return parser


def benchmark_main(cfg: Namespace) -> None:
    """Run ``ltu benchmark`` from its parsed arguments."""
    bench = _load_and_select(cfg)  # bad input is refused before --out is created
    with RunLock(cfg.out, "--out"):  # one benchmark at a time per output folder
        _run_benchmark(cfg, bench)


def _load_and_select(cfg: Namespace) -> Benchmark:
    out = Path(cfg.out)
    if (out / "results.json").exists() and not cfg.overwrite:
        raise LTUError(
            f"{out}/results.json already exists; pass --overwrite to replace it (with --resume "
            "to reuse its finished stages) or choose another --out"
        )
    cfg.audits = audit_names(cfg.audits)
    bench = _select(cfg, load_benchmark(cfg))
    bench.finished = "reuse" if cfg.resume else "refit" if cfg.overwrite else "refuse"
    if cfg.wandb:
        bench.wandb_group = benchmark_group(bench.name)
    return bench


def _select(cfg: Namespace, bench: Benchmark) -> Benchmark:
    """``--only`` and ``--tuned`` applied to the benchmark's rows."""
    keys = {m.key for m in bench.methods}
    only = cfg.only
    if isinstance(only, str):
        only = [key.strip() for key in only.split(",") if key.strip()]
    if only is not None:
        unknown = set(only) - {m.key for m in bench.methods}
        if unknown:
            raise LTUError(
                f"--only names unknown methods {sorted(unknown)}; known: {[m.key for m in bench.methods]}"
            )
        bench.methods = [m for m in bench.methods if m.key in only]
    if getattr(cfg, "tuned", None):
        tuned = read_tuned(cfg.tuned)
        unknown = set(tuned) - keys
        if unknown:
            raise LTUError(
                f"--tuned {cfg.tuned!r} names methods {sorted(unknown)} not in the benchmark"
            )
        for method in bench.methods:
            method.overrides = {**method.overrides, **tuned.get(method.key, {})}
    return bench


def _run_benchmark(cfg: Namespace, bench: Benchmark) -> None:
    out = Path(cfg.out)
    rows = {m.key: _as_flags(m.overrides) for m in bench.methods}
    for notice in override_notices(_as_flags(bench.overrides), rows):
        print(notice, flush=True)
    print(
        f"benchmark {bench.name}: seeds {bench.seeds}, {len(bench.methods)} methods -> {out}"
        + (" (TUNING TABLE: these include tuning seeds)" if bench.seed_role == "tuning" else ""),
        flush=True,
    )
    start = time.perf_counter()
    total = len(bench.seeds) * (len(REFERENCE_STAGES) + len(bench.methods))
    with quiet_wandb(), BenchmarkProgress(total) as display:

        def audit(seed: int, per_seed: dict[str, StageResult]) -> None:
            # the report shows the audits of this run: stored ones of reused stages are left out
            for result in per_seed.values():
                result.audits = {}
            if cfg.audits:
                found = audit_seed(bench, cfg.audits, seed, display.print, _config_path(cfg))
                for key, audits in found.items():
                    per_seed[key].audits = audits

        results = bench.run(progress=display.print, events=display, after_seed=audit)
    stages_s = time.perf_counter() - start
    summary = aggregate(bench, results)
    paths = write_reports(summary, out)
    print()
    print(markdown_table(summary))
    if cfg.audits:
        print(audit_sections(summary).rstrip())
    if bench.wandb_group:
        run_dir = log_benchmark_to_wandb(summary, out, bench.wandb_group, benchmark_config(cfg))
        print(f"W&B group {bench.wandb_group}: report run in {run_dir}")
    print(
        f"\nwrote {', '.join(str(p) for p in paths)}\nwall time {process_wall_time():.0f}s "
        f"(the whole ltu benchmark process: start-up, {stages_s:.0f}s of stages, reports)"
    )


def audit_main(cfg: Namespace) -> None:
    """Run ``ltu audit``: audit the stored models of every seed in --out (nothing is fitted),
    then write results.json/.csv/.md and the plots again with every stored audit's columns."""
    names = audit_names(cfg.audits)
    if not names:
        raise LTUError(f"--audits names no audit; choose among {sorted(AUDITS)}")
    bench = _select(cfg, load_benchmark(cfg))
    out = Path(cfg.out)
    config = _config_path(cfg)
    if not out.is_dir():
        raise LTUError(
            f"--out {str(out)!r} does not exist; pass the output folder of an ltu benchmark run "
            f"(or run `ltu benchmark --config {config or '<benchmark yaml>'} --out {out}` first)"
        )
    print(f"audit {bench.name}: seeds {bench.seeds}, audits {names} -> {out}", flush=True)
    with RunLock(cfg.out, "--out"):
        stored_results(bench, bench.seeds, config)  # every stage is there before any audit runs
        for seed in bench.seeds:
            audit_seed(bench, names, seed, _progress, config)
        summary = aggregate(bench, stored_results(bench, bench.seeds, config))
        paths = write_reports(summary, out)
    print()
    print(audit_sections(summary).strip())
    print(f"\nwrote {', '.join(str(p) for p in paths)}")


def _config_path(cfg: Namespace) -> str | None:
    """The benchmark YAML given as --config (for the command an error suggests), if one was."""
    configs = cfg.get("config") or []
    return str(configs[-1]) if configs else None


def _as_flags(overrides: Mapping[str, Any]) -> list[str]:
    """An override map in the words of the command line (``--key value``), for the notices."""
    flags = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        flags += [f"--{key}", text]
    return flags


def benchmark_config(cfg: Namespace) -> dict[str, Any]:
    """The parsed benchmark configuration as plain data (the report run's W&B config)."""
    config = cfg.as_dict()
    config.pop("config", None)
    config.pop("__path__", None)
    return config


def load_tune_benchmark(layers: str | list[str]) -> Benchmark:
    """The benchmark ``ltu tune --benchmark`` names: one YAML, or a YAML and the variants layered
    on it in order (a later file's top-level keys replace the earlier's, as with ``ltu benchmark
    --config A --config B``)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    for layer in layers:
        if not Path(layer).is_file():
            raise LTUError(f"--benchmark {layer!r} does not exist; pass a benchmark YAML")
    return load_benchmark(build_parser().parse_args([a for x in layers for a in ("--config", x)]))


def tune_main(cfg: Namespace) -> None:
    """Run ``ltu tune`` from its parsed arguments: writes tuning.json and tuning.md to --out."""
    bench = load_tune_benchmark(cfg.benchmark)
    named = " ".join([cfg.benchmark] if isinstance(cfg.benchmark, str) else cfg.benchmark)
    if (cfg.grid is None) == (cfg.search is None):
        raise LTUError("pass either --search <folder of search spaces> or --grid <grid YAML>")
    seeds = cfg.seeds or bench.tuning_seeds
    if not seeds:
        raise LTUError(f"{named} names no tuning_seeds; add them to it or pass --seeds 0 1 2")
    reported = sorted(set(seeds) & set(bench.report_seeds))
    if reported:
        raise LTUError(
            f"--seeds {reported} are report seeds of {named}; tune on its tuning seeds "
            f"{bench.tuning_seeds} or other seeds outside {bench.report_seeds}"
        )
    out = Path(cfg.out)
    if cfg.search is not None:
        spaces = read_spaces(Path(cfg.search), bench, cfg.only)
        search(bench, spaces, seeds, out, cfg.trials, cfg.sampler_seed, _progress)
        print((out / "search.md").read_text())
        print(
            f"wrote {out / 'chosen.yaml'} (pass it as ltu benchmark --tuned) and {out / 'search.md'}"
        )
        return
    try:
        grids = yaml.safe_load(Path(cfg.grid).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LTUError(f"cannot read --grid {cfg.grid!r} ({err}); pass a grid YAML") from err
    if cfg.only:
        grids = {k: v for k, v in grids.items() if k in cfg.only}
    report = tune(bench, grids, seeds, out, progress=_progress)
    text = tuning_markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.md").write_text(text)
    print(text)


def _progress(line: str) -> None:
    print(line, flush=True)
