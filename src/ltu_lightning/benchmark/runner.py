"""``ltu benchmark``: original, retrain, LTU and the baselines on one split per seed, evaluated.

Every stage is a :class:`~ltu_lightning.runner.Stage`: the stage configs ``ltu fit`` would take,
with the seed, the split manifest and the output folder set per seed. The original and retrained
models (and each stage's metrics) are reused when their checkpoint and metrics already exist. A
method stage that finished in an earlier run is reused only when asked (``resume``) and only when
its recipe (:meth:`Benchmark.recipe`) is the one it was fitted with; it is never replaced unless
asked (``refit``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltu_lightning.benchmark.progress import StageEvents
from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.metrics import avg_gap
from ltu_lightning.runner.stage import FitResult, Stage
from ltu_lightning.tracking import finish_wandb_stage, wandb_stage_logger
from ltu_lightning.utils.files import write_json_atomic

REFERENCE_STAGES = ("original", "retrain")
#: roles every stage reads that ``images_read`` leaves out: the validation half of the holdout
#: (every method's checkpoint selection) and the test split (evaluation only)
NOT_COUNTED = ("holdout_val", "test")


@dataclass
class MethodSpec:
    """One row of the table: ``key`` is ``<method>:<access>`` (e.g. ``ltu:partial+holdout``,
    ``ft:full``); its stage configs (composed in order) and its overrides (a map, applied after
    the benchmark's)."""

    key: str
    config: str | list[str]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def configs(self) -> tuple[str, ...]:
        return (self.config,) if isinstance(self.config, str) else tuple(self.config)

    @property
    def access(self) -> str | None:
        return self.key.split(":", 1)[1] if ":" in self.key else None

    @property
    def method(self) -> str:
        """The method's name: the key before ``:`` (``ltu`` in ``ltu:partial+holdout``)."""
        return self.key.split(":", 1)[0]

    @property
    def folder(self) -> str:
        """The row's folder (and search-space file) name: the key with ``:`` and any character
        other than letters, digits, ``.``, ``+``, ``-`` and ``_`` replaced by ``_``
        (``ltu:partial+holdout`` -> ``ltu_partial+holdout``)."""
        return re.sub(r"[^\w.+-]", "_", self.key, flags=re.ASCII)


@dataclass
class StageResult:
    metrics: dict[str, float]
    time_s: float
    best_score: float | None = None
    #: post-hoc audits of the stage's model (benchmark/audits.py): ``{name: {columns, time_s}}``
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> StageResult:
        """The result a stage's ``metrics.json`` records."""
        return cls(data["metrics"], data["time_s"], data.get("best_score"), data.get("audits", {}))


def images_read(datamodule: Any) -> int | None:
    """Distinct training and holdout images a fit read: the union of the pool indices of the
    roles its data module built (``roles_read``) except :data:`NOT_COUNTED`: |D_f| + |D̂_r|
    under ``partial``, |D_f| + |D̂_r| + |auditor half of the holdout| under ``partial+holdout``
    (LTU's auditors or, for a baseline, its retain batches), |D_f| + |D_r| under ``full`` (plus
    the auditor half for LTU, whose auditors read it in every mode). None for a data module
    that does not record its roles."""
    if not hasattr(datamodule, "roles_read") or not hasattr(datamodule, "role_indices"):
        return None
    roles = [r for r in datamodule.roles_read if r not in NOT_COUNTED]
    if not roles:
        return 0
    return int(np.unique(np.concatenate([datamodule.role_indices(r) for r in roles])).size)


def run_stage(
    stage: Stage, reference: dict[str, float] | None = None, recipe: str | None = None
) -> StageResult:
    """Fit one stage, then evaluate its selected checkpoint with the protocol's metrics (and,
    in a W&B run's summary, its Avg.Gap to ``reference``: the retrained model's metrics); the
    images the fit read are counted before the evaluation reads more. ``recipe`` (what the
    stage was built from, :meth:`Benchmark.recipe`) is stored with its metrics."""
    fit = stage.fit()
    read = images_read(fit.cli.datamodule)
    metrics = stage.evaluate(fit.checkpoint, fit.cli)
    if read is not None:
        metrics["images_read"] = float(read)
    metrics["time_s"] = fit.time_s
    metrics["failed"] = float(fit.failure is not None)
    judge = getattr(fit.cli.model, "no_gain", None)  # unlearning modules only
    verdict = judge(fit.best_score) if judge is not None else None
    if verdict is not None:
        metrics["no_gain"] = float(verdict)
    gap = {"avg_gap": avg_gap(metrics, reference)} if reference is not None else {}
    finish_wandb_stage(fit.cli.trainer.loggers, {**metrics, **gap})
    _write_metrics(stage.root, metrics, fit, recipe)
    return StageResult(metrics, fit.time_s, fit.best_score)


def _write_metrics(
    root: Path, metrics: dict[str, float], fit: FitResult, recipe: str | None = None
) -> None:
    record = {"metrics": metrics, "time_s": fit.time_s, "best_score": fit.best_score}
    record |= {"checkpoint": str(fit.checkpoint), "failure": fit.failure}
    if recipe is not None:
        record["recipe"] = recipe
    write_json_atomic(root / "metrics.json", record)


def reevaluate_stage(stage: Stage) -> StageResult | None:
    """Evaluate a reference stage's existing ``last.ckpt`` again (its training time is kept)."""
    path, last = stage.root / "metrics.json", stage.root / "checkpoints" / "last.ckpt"
    if not (path.is_file() and last.is_file() and stage.manifest.is_file()):
        return None
    earlier = json.loads(path.read_text())
    time_s = earlier["time_s"]
    metrics = stage.evaluate(last)
    metrics["time_s"] = time_s
    if "images_read" in earlier["metrics"]:  # what its fit read, not its evaluation
        metrics["images_read"] = earlier["metrics"]["images_read"]
    _write_metrics(stage.root, metrics, FitResult(None, time_s, None, last), earlier.get("recipe"))
    return StageResult(metrics, time_s)


def cached_stage(root: Path) -> StageResult | None:
    """A reference stage (original/retrain) trained and evaluated earlier, reported from its
    ``last.ckpt``; None when it must be (re)run."""
    path = root / "metrics.json"
    last = root / "checkpoints" / "last.ckpt"
    if not (path.is_file() and last.is_file()):
        return None
    data = json.loads(path.read_text())
    if Path(data.get("checkpoint", "")).name != last.name:
        return None
    return StageResult.from_record(data)


def finished_stage(root: Path) -> tuple[StageResult, str | None] | None:
    """A stage an earlier run fitted and evaluated (``metrics.json`` and the checkpoint it
    reports from, which is the starting model for a run stopped before its first epoch), with
    the recipe it was fitted with (None when not recorded); None when there is none."""
    path = root / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not Path(data.get("checkpoint") or "").is_file():
        return None
    return StageResult.from_record(data), data.get("recipe")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex), read once per version of the file (path, size, mtime):
    every method stage of a seed digests the same original checkpoint."""
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Benchmark:
    """A benchmark definition (the YAML under ``configs/benchmark/``)."""

    name: str
    original: str
    retrain: str
    methods: list[MethodSpec]
    seeds: list[int]
    out: Path
    #: applied to every stage (a method's own overrides come after and win)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: W&B group of this invocation; None logs no W&B runs (``ltu benchmark --wandb`` sets it)
    wandb_group: str | None = None
    #: pre-registered seed roles: hyperparameters are chosen on ``tuning_seeds`` (``ltu tune``),
    #: results reported on ``report_seeds``; disjoint (empty: the config names no roles)
    tuning_seeds: list[int] = field(default_factory=list)
    report_seeds: list[int] = field(default_factory=list)
    #: shadow models per seed of the per-example membership audit (``--audits lira``)
    lira_shadows: int = 8
    #: a method stage that an earlier run finished in ``out``: ``refuse`` to touch it (a
    #: one-line error), ``reuse`` it when its recipe is this run's (``ltu benchmark --resume``),
    #: or ``refit`` it (``--overwrite``)
    finished: str = "refuse"

    @property
    def seed_role(self) -> str | None:
        """``tuning`` when :attr:`seeds` include a tuning seed (a tuning table, not a report),
        ``report`` otherwise; None when the config names no seed roles."""
        if not (self.tuning_seeds or self.report_seeds):
            return None
        return "tuning" if set(self.seeds) & set(self.tuning_seeds) else "report"

    def stage(
        self,
        key: str,
        seed: int,
        root: Path | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Stage:
        """The stage ``key`` (``original``, ``retrain`` or a method key) of benchmark seed
        ``seed``, in ``root`` (default: its folder under ``out/seed_<seed>/``), with ``extra``
        overrides applied last (e.g. a tuning grid point)."""
        seed_root = self.out / f"seed_{seed}"
        method = next((m for m in self.methods if m.key == key), None)
        if method is None and key not in REFERENCE_STAGES:
            known = [*REFERENCE_STAGES, *(m.key for m in self.methods)]
            raise LTUError(f"no stage {key!r}; known: {known}")
        overrides: list[Mapping[str, Any]] = []
        if self.wandb_group:
            overrides.append(wandb_stage_logger(self.wandb_group, key, seed))
        overrides.append(self.overrides)
        if method is not None:
            overrides.append(method.overrides)
        if extra:
            overrides.append(extra)
        configs = method.configs if method else (getattr(self, key),)
        return Stage(
            configs=configs,
            root=root or seed_root / (method.folder if method else key),
            seed=seed,
            manifest=seed_root / "split_manifest.json",
            overrides=tuple(overrides),
            original_ckpt=seed_root / "original" / "checkpoints" / "last.ckpt" if method else None,
        )

    def recipe(self, key: str, seed: int) -> str:
        """What stage ``key`` of ``seed`` is built from, as a digest: the text of its stage
        configs (not files those include), the benchmark's and the row's overrides, the seed
        and, for a method, the bytes of the original checkpoint it starts from. A finished
        stage is reused only under the recipe it was fitted with."""
        stage = self.stage(key, seed)
        method = next((m for m in self.methods if m.key == key), None)
        configs = [
            Path(c).read_text() if not isinstance(c, Mapping) else dict(c) for c in stage.configs
        ]
        parts: dict[str, Any] = {"configs": configs, "seed": seed, "overrides": self.overrides}
        if method is not None:
            parts["row"] = method.overrides
            if stage.original_ckpt is not None and stage.original_ckpt.is_file():
                parts["original"] = file_digest(stage.original_ckpt)
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _check_reference(self, key: str, seed: int, recipe: str) -> None:
        """Refuse a stored original or retrained model built from another recipe (a stage
        without a recorded recipe is taken as it is): it is neither reused for this run's
        settings nor replaced."""
        path = self.stage(key, seed).root / "metrics.json"
        if not path.is_file():
            return
        recorded = json.loads(path.read_text()).get("recipe")
        if recorded is not None and recorded != recipe:
            raise LTUError(
                f"{path.parent} holds the {key} model of seed {seed} trained with other configs "
                "or overrides than this run's; a trained reference model is never replaced: "
                "choose another --out"
            )

    def _finished_method(self, key: str, seed: int) -> StageResult | None:
        """Stage ``key`` of ``seed`` as an earlier run left it, when it is to be reused; None
        when it is to be fitted (none finished, or ``finished == "refit"``)."""
        stage = self.stage(key, seed)
        found = finished_stage(stage.root)
        if found is None or self.finished == "refit":
            return None
        result, recipe = found
        if self.finished == "reuse" and recipe == self.recipe(key, seed):
            return result
        if self.finished == "reuse":
            why = "no recorded recipe" if recipe is None else "other configs or overrides"
            raise LTUError(
                f"{stage.root} holds stage {key!r} of seed {seed} fitted with {why} than this "
                "run's, so --resume cannot reuse it; pass --overwrite true to fit it again or "
                "choose another --out"
            )
        raise LTUError(
            f"{stage.root} holds stage {key!r} of seed {seed} from an earlier run; pass "
            "--resume true to reuse the stages fitted with this run's settings, --overwrite "
            "true to fit them again, or choose another --out"
        )

    def run(
        self,
        progress: Callable[[str], None] = print,
        events: StageEvents | None = None,
        after_seed: Callable[[int, dict[str, StageResult]], None] | None = None,
    ) -> dict[int, dict[str, StageResult]]:
        """Every stage of every seed; ``progress`` gets one line per stage started and finished,
        ``events`` (e.g. the live display) each stage's start and end, ``after_seed`` each
        seed's results once its stages are done (e.g. to audit them)."""
        results: dict[int, dict[str, StageResult]] = {}
        stages = len(REFERENCE_STAGES) + len(self.methods)
        for seed in self.seeds:
            root = self.out / f"seed_{seed}"
            per_seed: dict[str, StageResult] = {}
            for i, key in enumerate(REFERENCE_STAGES):
                stage = self.stage(key, seed)
                recipe = self.recipe(key, seed)
                self._check_reference(key, seed, recipe)
                cached = cached_stage(stage.root) if stage.manifest.exists() else None
                if cached is None:
                    cached = reevaluate_stage(stage)
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
                per_seed[key] = run_stage(stage, recipe=recipe)
                if events is not None:
                    events.finished(seed, key)
                progress(
                    f"[seed {seed}] {i + 1}/{stages} {key}: done in {per_seed[key].time_s:.1f}s "
                    f"(TA {per_seed[key].metrics['TA']:.1f})"
                )
            for j, method in enumerate(self.methods):
                n = len(REFERENCE_STAGES) + j + 1
                earlier = self._finished_method(method.key, seed)
                if earlier is not None:
                    if events is not None:
                        events.started(seed, method.key, "reusing")
                        events.finished(seed, method.key)
                    gap = avg_gap(earlier.metrics, per_seed["retrain"].metrics)
                    progress(
                        f"[seed {seed}] {n}/{stages} {method.key}: reusing "
                        f"{self.stage(method.key, seed).root} (Avg.Gap {gap:.2f})"
                    )
                    per_seed[method.key] = earlier
                    continue
                progress(f"[seed {seed}] {n}/{stages} {method.key}: unlearning ...")
                if events is not None:
                    events.started(seed, method.key, "unlearning")
                stage = self.stage(method.key, seed)
                recipe = self.recipe(method.key, seed)
                result = run_stage(stage, per_seed["retrain"].metrics, recipe)
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
            if after_seed is not None:
                after_seed(seed, per_seed)
            results[seed] = per_seed
        return results


def _overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LTUError(
            f"{where} overrides must be a map of config keys to values "
            f"(e.g. {{trainer.max_epochs: 10}}), got {value!r}"
        )
    return dict(value)


def resolve_seeds(
    seeds: int | list[int] | None,
    tuning_seeds: list[int],
    report_seeds: list[int],
    on_tuning_seeds: bool = False,
) -> list[int]:
    """The seeds ``ltu benchmark`` runs: every report seed by default, the first N of them for
    ``--seeds N`` (seeds 0..N-1 when the config names no report seeds), or a given list.

    Seeds that hyperparameters were chosen on (``tuning_seeds``) are refused unless
    ``on_tuning_seeds`` (the table is then labelled a tuning table).
    """
    if set(tuning_seeds) & set(report_seeds):
        raise LTUError(
            f"--tuning_seeds {sorted(tuning_seeds)} and --report_seeds {sorted(report_seeds)} "
            f"share {sorted(set(tuning_seeds) & set(report_seeds))}; make them disjoint"
        )
    if seeds is None:
        chosen = list(report_seeds) or [0]
    elif isinstance(seeds, int):
        if seeds < 1:
            raise LTUError(f"--seeds {seeds} runs nothing; pass --seeds N (N ≥ 1) or a list")
        if report_seeds and seeds > len(report_seeds):
            raise LTUError(
                f"--seeds {seeds} asks for more than the {len(report_seeds)} report seeds "
                f"{report_seeds}; pass --seeds as a list of seeds or add --report_seeds"
            )
        chosen = list(report_seeds[:seeds]) if report_seeds else list(range(seeds))
    else:
        chosen = list(seeds)
    if not chosen:
        raise LTUError("no seeds to run: pass --seeds N (N ≥ 1) or a list of seeds")
    tuned = sorted(set(chosen) & set(tuning_seeds))
    if tuned and not on_tuning_seeds:
        raise LTUError(
            f"seeds {tuned} are tuning seeds (hyperparameters were chosen on them), so a table "
            f"on them is no report; choose --seeds among the report seeds {report_seeds} or pass "
            "--on_tuning_seeds true to write a table labelled as a tuning table"
        )
    return chosen


def load_benchmark(cfg: Any) -> Benchmark:
    """Build a :class:`Benchmark` from the parsed ``ltu benchmark`` configuration."""
    tuning_seeds = list(getattr(cfg, "tuning_seeds", None) or [])
    report_seeds = list(getattr(cfg, "report_seeds", None) or [])
    seeds = resolve_seeds(
        cfg.seeds, tuning_seeds, report_seeds, bool(getattr(cfg, "on_tuning_seeds", False))
    )
    methods = []
    for m in cfg.methods:
        m = dict(m)
        if "key" not in m or "config" not in m:
            raise LTUError(f"benchmark method {m!r} needs 'key' and 'config'")
        overrides = _overrides(m.get("overrides"), f"benchmark method {m['key']!r}:")
        methods.append(MethodSpec(m["key"], m["config"], overrides))
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys) or set(keys) & set(REFERENCE_STAGES):
        raise LTUError(f"benchmark method keys must be unique and not 'original'/'retrain': {keys}")
    pinned = _overrides(getattr(cfg, "method_overrides", None), "--method_overrides:")
    unknown = sorted(set(pinned) - set(keys))
    if unknown:
        raise LTUError(
            f"--method_overrides names methods {unknown} not in the benchmark; known: {keys}"
        )
    for method in methods:
        if method.key in pinned:
            row = _overrides(pinned[method.key], f"--method_overrides {method.key!r}:")
            method.overrides = {**method.overrides, **row}
    for path in [cfg.original, cfg.retrain, *(c for m in methods for c in m.configs)]:
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
        _overrides(cfg.overrides, "--overrides:"),
        tuning_seeds=tuning_seeds,
        report_seeds=report_seeds,
        lira_shadows=_lira_shadows(getattr(cfg, "lira_shadows", 8)),
    )


def _lira_shadows(value: int) -> int:
    if not isinstance(value, int) or value < 2 or value % 2:
        raise LTUError(
            f"--lira_shadows {value!r}: the shadows come in complementary pairs; pass an even "
            "number ≥ 2 (e.g. --lira_shadows 8)"
        )
    return value
