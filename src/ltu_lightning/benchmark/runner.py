"""``ltu benchmark``: original, retrain, LTU and the baselines on one split per seed, evaluated.

Every stage is the same ``ltu fit --config <stage yaml>`` a user would run by hand, with the
seed, the split manifest and the output folder set per seed. The original and retrained models
(and each stage's metrics) are reused when their checkpoint and metrics already exist.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltu_lightning.benchmark.progress import StageEvents
from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.evaluation.cli import evaluate_checkpoint
from ltu_lightning.evaluation.metrics import avg_gap
from ltu_lightning.modules.base import OVERWRITE_ARGS, monitored_best_score
from ltu_lightning.tracking import finish_wandb_stage, wandb_stage_args
from ltu_lightning.utils.files import write_json_atomic

REFERENCE_STAGES = ("original", "retrain")


@dataclass
class MethodSpec:
    """One row of the table: ``key`` is ``<method>:<access>`` (e.g. ``ltu:partial``)."""

    key: str
    config: str
    overrides: list[str] = field(default_factory=list)

    @property
    def access(self) -> str | None:
        return self.key.split(":", 1)[1] if ":" in self.key else None

    @property
    def folder(self) -> str:
        return self.key.replace(":", "_")


@dataclass
class StageResult:
    metrics: dict[str, float]
    time_s: float
    best_score: float | None = None


@contextmanager
def _quiet_lightning():
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in zip(names, levels, strict=True):
            logging.getLogger(n).setLevel(level)


@dataclass
class FitResult:
    """A finished ``ltu fit``: the CLI object, its wall time, best monitored score and checkpoint."""

    cli: Any
    time_s: float
    best_score: float | None
    checkpoint: Path
    failure: str | None = None


def _stage_args(
    config: str,
    root: Path,
    seed: int,
    manifest: Path,
    overrides: Sequence[str],
    original_ckpt: Path | None = None,
) -> list[str]:
    """``ltu fit`` arguments of one stage of one benchmark seed."""
    args = [
        "fit",
        "--config",
        config,
        "--seed_everything",
        str(seed),
        "--trainer.default_root_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--data.init_args.seed",
        str(seed),
        "--data.init_args.manifest_path",
        str(manifest),
    ]
    if original_ckpt is not None:
        # The benchmark owns its stage folders: re-running an unlearning stage replaces it.
        args += ["--model.init_args.original_ckpt", str(original_ckpt), *OVERWRITE_ARGS]
    args += list(overrides)
    return args


def fit_stage(
    config: str,
    root: Path,
    seed: int,
    manifest: Path,
    overrides: Sequence[str],
    original_ckpt: Path | None = None,
) -> FitResult:
    """``ltu fit`` one stage into ``root`` with the seed and split manifest of this benchmark seed.

    The benchmark owns its stage folders: checkpoints of an earlier attempt at this stage are
    removed first (``ltu benchmark`` refuses to replace earlier *results* without --overwrite).
    """
    from ltu_lightning.cli import LTUCLI

    shutil.rmtree(root / "checkpoints", ignore_errors=True)

    args = _stage_args(config, root, seed, manifest, overrides, original_ckpt)
    with _quiet_lightning():
        start = time.perf_counter()
        failure = None
        try:
            cli = LTUCLI(args=args)
        except LTUError as err:
            # A run stopped by a guard (e.g. a non-finite step) keeps its last good checkpoint:
            # the table reports the method from it, flagged, instead of losing the benchmark.
            # Refused before its first epoch ended, it has no checkpoint of its own: it is
            # reported, flagged, from the model it started from.
            saved = (root / "checkpoints" / "last.ckpt").exists()
            if original_ckpt is None or not (saved or isinstance(err, NonFiniteStepError)):
                raise
            failure = str(err)
            cli = LTUCLI(args=args[1:], run=False)
        elapsed = time.perf_counter() - start
    chosen = selected_checkpoint(cli.model, root)
    if failure is not None and not chosen.exists():
        chosen = original_ckpt
    score = monitored_best_score(cli.trainer)
    return FitResult(cli, elapsed, score, chosen, failure)


def run_stage(
    config: str,
    root: Path,
    seed: int,
    manifest: Path,
    overrides: Sequence[str],
    original_ckpt: Path | None = None,
    reference: dict[str, float] | None = None,
) -> StageResult:
    """Fit one stage, then evaluate its selected checkpoint with the protocol's metrics (and,
    in a W&B run's summary, its Avg.Gap to ``reference``: the retrained model's metrics)."""
    fit = fit_stage(config, root, seed, manifest, overrides, original_ckpt)
    with _quiet_lightning():
        metrics = evaluate_checkpoint(
            fit.cli.model, fit.cli.datamodule, str(fit.checkpoint), seed=seed
        )
    metrics["time_s"] = fit.time_s
    metrics["failed"] = float(fit.failure is not None)
    judge = getattr(fit.cli.model, "no_gain", None)  # unlearning modules only
    verdict = judge(fit.best_score) if judge is not None else None
    if verdict is not None:
        metrics["no_gain"] = float(verdict)
    gap = {"avg_gap": avg_gap(metrics, reference)} if reference is not None else {}
    finish_wandb_stage(fit.cli.trainer.loggers, {**metrics, **gap})
    result = StageResult(metrics, fit.time_s, fit.best_score)
    write_json_atomic(
        root / "metrics.json",
        {
            "metrics": metrics,
            "time_s": fit.time_s,
            "best_score": fit.best_score,
            "checkpoint": str(fit.checkpoint),
            "failure": fit.failure,
        },
    )
    return result


def selected_checkpoint(model: Any, root: Path) -> Path:
    """The checkpoint a stage reports: an unlearning run's best epoch by the honest criterion;
    for the original and the retrained model, the end of their recipe (``last.ckpt``), which is
    the model unlearning starts from and the gold standard it is compared with."""
    best = root / "checkpoints" / "best.ckpt"
    if getattr(model, "stop_rule", None) == "criterion" and best.exists():
        return best
    return root / "checkpoints" / "last.ckpt"


def reevaluate_stage(
    config: str, root: Path, seed: int, manifest: Path, overrides: Sequence[str]
) -> StageResult | None:
    """Evaluate a reference stage's existing ``last.ckpt`` again (its training time is kept)."""
    from ltu_lightning.cli import LTUCLI

    path, last = root / "metrics.json", root / "checkpoints" / "last.ckpt"
    if not (path.is_file() and last.is_file() and manifest.is_file()):
        return None
    time_s = json.loads(path.read_text())["time_s"]
    with _quiet_lightning():
        cli = LTUCLI(args=_stage_args(config, root, seed, manifest, overrides)[1:], run=False)
        metrics = evaluate_checkpoint(cli.model, cli.datamodule, str(last), seed=seed)
    metrics["time_s"] = time_s
    write_json_atomic(
        path,
        {
            "metrics": metrics,
            "time_s": time_s,
            "best_score": None,
            "checkpoint": str(last),
            "failure": None,
        },
    )
    return StageResult(metrics, time_s)


def _cached(root: Path) -> StageResult | None:
    """A reference stage (original/retrain) trained and evaluated earlier, reported from its
    ``last.ckpt``; None when it must be (re)run."""
    path = root / "metrics.json"
    last = root / "checkpoints" / "last.ckpt"
    if not (path.is_file() and last.is_file()):
        return None
    data = json.loads(path.read_text())
    if Path(data.get("checkpoint", "")).name != last.name:
        return None
    return StageResult(data["metrics"], data["time_s"], data.get("best_score"))


@dataclass
class Benchmark:
    """A benchmark definition (the YAML under ``configs/benchmark/``)."""

    name: str
    original: str
    retrain: str
    methods: list[MethodSpec]
    seeds: list[int]
    out: Path
    overrides: list[str] = field(default_factory=list)
    #: W&B group of this invocation; None logs no W&B runs (``ltu benchmark --wandb`` sets it)
    wandb_group: str | None = None

    def _stage_overrides(self, stage: str, seed: int) -> list[str]:
        """The benchmark's overrides after the stage's W&B logger flags (so they can change them)."""
        wandb = wandb_stage_args(self.wandb_group, stage, seed) if self.wandb_group else []
        return [*wandb, *self.overrides]

    def run(
        self, progress: Callable[[str], None] = print, events: StageEvents | None = None
    ) -> dict[int, dict[str, StageResult]]:
        """Every stage of every seed; ``progress`` gets one line per stage started and finished,
        ``events`` (e.g. the live display) each stage's start and end."""
        results: dict[int, dict[str, StageResult]] = {}
        stages = len(REFERENCE_STAGES) + len(self.methods)
        for seed in self.seeds:
            root = self.out / f"seed_{seed}"
            manifest = root / "split_manifest.json"
            per_seed: dict[str, StageResult] = {}
            for i, (key, config) in enumerate(
                (("original", self.original), ("retrain", self.retrain))
            ):
                cached = _cached(root / key) if manifest.exists() else None
                if cached is None:
                    cached = reevaluate_stage(
                        config, root / key, seed, manifest, self._stage_overrides(key, seed)
                    )
                if events is not None:
                    events.started(seed, key, "reusing" if cached is not None else "training")
                if cached is not None:
                    if events is not None:
                        events.finished(seed, key)
                    progress(
                        f"[seed {seed}] {i + 1}/{stages} {key}: reusing {root / key} ({cached.time_s:.1f}s)"
                    )
                    per_seed[key] = cached
                    continue
                progress(f"[seed {seed}] {i + 1}/{stages} {key}: training ...")
                per_seed[key] = run_stage(
                    config, root / key, seed, manifest, self._stage_overrides(key, seed)
                )
                if events is not None:
                    events.finished(seed, key)
                progress(
                    f"[seed {seed}] {i + 1}/{stages} {key}: done in {per_seed[key].time_s:.1f}s "
                    f"(TA {per_seed[key].metrics['TA']:.1f})"
                )
            original_ckpt = root / "original" / "checkpoints" / "last.ckpt"
            for j, method in enumerate(self.methods):
                n = len(REFERENCE_STAGES) + j + 1
                progress(f"[seed {seed}] {n}/{stages} {method.key}: unlearning ...")
                if events is not None:
                    events.started(seed, method.key, "unlearning")
                result = run_stage(
                    method.config,
                    root / method.folder,
                    seed,
                    manifest,
                    [*self._stage_overrides(method.key, seed), *method.overrides],
                    original_ckpt,
                    per_seed["retrain"].metrics,
                )
                per_seed[method.key] = result
                gap = avg_gap(result.metrics, per_seed["retrain"].metrics)
                if events is not None:
                    events.finished(seed, method.key)
                progress(
                    f"[seed {seed}] {n}/{stages} {method.key}: done in {result.time_s:.1f}s "
                    f"(Avg.Gap {gap:.2f}, TA {result.metrics['TA']:.1f})"
                    + (
                        " FAILED, reported from its last good checkpoint"
                        if result.metrics["failed"]
                        else ""
                    )
                )
            results[seed] = per_seed
        return results


def load_benchmark(cfg: Any) -> Benchmark:
    """Build a :class:`Benchmark` from the parsed ``ltu benchmark`` configuration."""
    seeds = list(range(cfg.seeds)) if isinstance(cfg.seeds, int) else list(cfg.seeds)
    if not seeds:
        raise LTUError("no seeds to run: pass --seeds N (N ≥ 1) or a list of seeds")
    methods = []
    for m in cfg.methods:
        m = dict(m)
        if "key" not in m or "config" not in m:
            raise LTUError(f"benchmark method {m!r} needs 'key' and 'config'")
        methods.append(MethodSpec(m["key"], m["config"], list(m.get("overrides") or [])))
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys) or set(keys) & set(REFERENCE_STAGES):
        raise LTUError(f"benchmark method keys must be unique and not 'original'/'retrain': {keys}")
    for path in [cfg.original, cfg.retrain, *(m.config for m in methods)]:
        if not Path(path).is_file():
            raise LTUError(
                f"stage config {path!r} does not exist; fix the path in the benchmark config"
            )
    return Benchmark(
        cfg.name,
        cfg.original,
        cfg.retrain,
        methods,
        seeds,
        Path(cfg.out),
        list(cfg.overrides or []),
    )
