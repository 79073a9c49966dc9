"""``ltu tune --search``: one Optuna search per method, the same sampler and budget for each.

A search space is a small YAML per method, ``<search dir>/<method folder>.yaml`` (``ft:partial``
-> ``ft_partial.yaml``), mapping a (dotted) config key to ``{low, high, log}`` (integers when
both bounds are) or ``{choices: [...]}``. Every method gets the same seeded TPE sampler and the
same number of trials; a trial's value is the mean over the tuning seeds of each fit's best
validation criterion (a failed fit: +inf). The studies live in an SQLite file under the output
folder, so a search stopped part-way continues where it stopped (its sampler then seeded with
``sampler_seed`` plus the trials already finished, so that it does not draw the first random
points again; the points differ from an uninterrupted search's, their distribution does not). The chosen values are written
as ``chosen.yaml`` (``{method key: {config key: value}}``, read by ``ltu benchmark --tuned``),
the trial table as ``search.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from ltu_lightning.benchmark.runner import Benchmark, MethodSpec
from ltu_lightning.benchmark.tuning import ensure_originals, score_point
from ltu_lightning.errors import LTUError
from ltu_lightning.utils.files import atomic_path

STORAGE = "search.db"


def read_space(path: Path) -> dict[str, dict[str, Any]]:
    """A search space YAML, checked: every key maps to ``{low, high[, log]}`` or ``{choices}``."""
    try:
        space = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise LTUError(f"cannot read search space {str(path)!r} ({err})") from err
    if not isinstance(space, dict) or not space:
        raise LTUError(f"search space {str(path)!r} must map config keys to ranges or choices")
    for key, dim in space.items():
        ok = isinstance(dim, dict) and (
            (set(dim) == {"choices"} and isinstance(dim["choices"], list) and dim["choices"])
            or ({"low", "high"} <= set(dim) <= {"low", "high", "log"} and dim["low"] < dim["high"])
        )
        if not ok:
            raise LTUError(
                f"search space {str(path)!r}: {key!r} must be {{low: a, high: b, log: true|false}} "
                f"with a < b or {{choices: [...]}}, got {dim!r}"
            )
    return space


def _suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    point = {}
    for key, dim in space.items():
        if "choices" in dim:
            point[key] = trial.suggest_categorical(key, dim["choices"])
        elif isinstance(dim["low"], int) and isinstance(dim["high"], int):
            point[key] = trial.suggest_int(key, dim["low"], dim["high"], log=dim.get("log", False))
        else:
            low, high = float(dim["low"]), float(dim["high"])
            point[key] = trial.suggest_float(key, low, high, log=dim.get("log", False))
    return point


def search(
    bench: Benchmark,
    spaces: dict[str, dict[str, dict[str, Any]]],
    seeds: Sequence[int],
    out: Path,
    trials: int,
    sampler_seed: int = 0,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) one study per method of ``spaces`` until it has ``trials`` finished
    trials; return ``{method key: {"chosen": point, "value": mean criterion, "trials": [...]}}``
    for every method of the benchmark with a study in the storage, and write ``chosen.yaml`` and
    ``search.md`` to ``out``."""
    import optuna

    if trials < 1:
        raise LTUError(f"--trials {trials} runs nothing; pass --trials N (N ≥ 1)")
    unknown = set(spaces) - {m.key for m in bench.methods}
    if unknown:
        raise LTUError(
            f"search spaces name unknown methods {sorted(unknown)}; "
            f"known: {[m.key for m in bench.methods]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    bench = replace(bench, out=out)
    ensure_originals(bench, seeds, progress)
    storage = f"sqlite:///{(out / STORAGE).resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report: dict[str, Any] = {}
    for method in bench.methods:
        if method.key not in spaces:
            continue
        study = optuna.create_study(
            study_name=f"{bench.name}/{method.key}",
            storage=storage,
            direction="minimize",
            load_if_exists=True,
        )
        done = [t for t in study.trials if t.state.is_finished()]
        # A continued study gets a sampler seeded past its finished trials: a sampler seeded as
        # at the start would draw the start's random points again.
        study.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(done))
        left = trials - len(done)
        if left > 0:
            progress(f"[search] {method.key}: {len(done)} trials done, running {left}")
            study.optimize(_objective(bench, method, spaces[method.key], seeds, progress), left)
        report[method.key] = _summary(study)
    # the report covers every study of this benchmark in the storage (earlier runs with --only
    # included), so chosen.yaml and search.md never drop a method searched before
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    for method in bench.methods:
        name = f"{bench.name}/{method.key}"
        if method.key not in report and name in names:
            report[method.key] = _summary(optuna.load_study(study_name=name, storage=storage))
    _write(out, bench.name, seeds, trials, sampler_seed, report)
    return report


def _objective(
    bench: Benchmark,
    method: MethodSpec,
    space: dict[str, dict[str, Any]],
    seeds: Sequence[int],
    progress: Callable[[str], None],
) -> Callable[[Any], float]:
    def objective(trial: Any) -> float:
        point = _suggest(trial, space)
        row = score_point(bench, method, seeds, f"trial_{trial.number}", point)
        progress(f"[search] {method.key} trial {trial.number} {point}: {row['criterion']:.4g}")
        return row["criterion"]  # +inf when a seed failed

    return objective


def _summary(study: Any) -> dict[str, Any]:
    finished = [t for t in study.trials if t.state.is_finished()]
    rows = [
        {"number": t.number, "params": t.params, "value": t.value, "state": t.state.name}
        for t in finished
    ]
    scored = [r for r in rows if r["value"] is not None and math.isfinite(r["value"])]
    best = min(scored, key=lambda r: r["value"]) if scored else None
    return {
        "chosen": best["params"] if best else None,
        "value": best["value"] if best else math.inf,
        "trials": rows,
    }


def _write(
    out: Path,
    name: str,
    seeds: Sequence[int],
    trials: int,
    sampler_seed: int,
    report: dict[str, Any],
) -> None:
    chosen = {key: entry["chosen"] for key, entry in report.items() if entry["chosen"]}
    with atomic_path(out / "chosen.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(chosen, sort_keys=False))
    lines = [
        f"# Search `{name}`",
        "",
        f"Optuna TPE (seed {sampler_seed}), {trials} trials per method; value = mean over "
        f"tuning seeds {list(seeds)} of each fit's best validation criterion (lower is better, "
        "inf = a fit failed).",
    ]
    for key, entry in report.items():
        lines += ["", f"## {key}: chosen {entry['chosen']}", "", "| trial | values | criterion |"]
        lines.append("|---|---|---|")
        for row in entry["trials"]:
            value = "inf" if row["value"] is None else f"{row['value']:.4g}"
            lines.append(f"| {row['number']} | {row['params']} | {value} |")
    with atomic_path(out / "search.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_spaces(folder: Path, bench: Benchmark, only: Sequence[str] | None) -> dict[str, Any]:
    """The search spaces in ``folder`` for the benchmark's methods (``only``: these keys)."""
    if not folder.is_dir():
        raise LTUError(f"--search {str(folder)!r} is not a folder of <method>.yaml search spaces")
    keys = [m.key for m in bench.methods if only is None or m.key in only]
    spaces = {
        m.key: read_space(folder / f"{m.folder}.yaml")
        for m in bench.methods
        if m.key in keys and (folder / f"{m.folder}.yaml").is_file()
    }
    if not spaces:
        raise LTUError(
            f"--search {str(folder)!r} has no search space for {keys}; "
            "add <method>_<access>.yaml files (e.g. ft_partial.yaml)"
        )
    return spaces


def read_tuned(path: str) -> dict[str, dict[str, Any]]:
    """``chosen.yaml`` of a search: ``{method key: {config key: value}}``."""
    try:
        tuned = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise LTUError(
            f"cannot read --tuned {path!r} ({err}); pass the chosen.yaml of ltu tune"
        ) from err
    if not isinstance(tuned, dict) or not all(isinstance(v, dict) for v in tuned.values()):
        raise LTUError(f"--tuned {path!r} must map method keys to {{config key: value}} maps")
    return tuned
