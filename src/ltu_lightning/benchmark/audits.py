"""Post-hoc audits of a benchmark's stored models: ``ltu benchmark --audits`` and ``ltu audit``.

An audit is a function of an :class:`AuditContext` (one benchmark seed: its split, the original,
the retrained and every method's selected network, loaded from the stored checkpoints) that
returns columns per stage: ``{stage key: {column: value}}``. :data:`AUDITS` names them;
:func:`run_audits` builds the contexts (no fitting), runs and times the audits and writes their
columns into each stage's ``metrics.json`` (key ``audits``), from which the report shows them.
"""

from __future__ import annotations

import copy
import inspect
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltu_lightning.benchmark.runner import REFERENCE_STAGES, Benchmark, StageResult
from ltu_lightning.benchmark.shadows import lira_audit
from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.inversion import classifier_head, inversion_metrics, probe_outputs
from ltu_lightning.modules.checkpoints import load_backbone_weights
from ltu_lightning.runner.stage import quiet_lightning
from ltu_lightning.utils.files import write_json_atomic

#: the folder of a seed where audits keep what they compute (``out/seed_<s>/audits/``)
AUDIT_FOLDER = "audits"


@dataclass
class AuditContext:
    """What an audit of one benchmark seed is given; everything is loaded, nothing is fitted."""

    #: the benchmark (its methods, output folder; ``bench.stage(key, seed)`` builds a stage)
    bench: Benchmark
    seed: int
    #: the seed's data module, set up on the seed's split manifest (``role_dataloader(role)``)
    datamodule: Any
    #: the networks (``nn.Module``, eval mode, on :attr:`device`) of the reference stages ...
    original: nn.Module
    retrain: nn.Module
    #: ... and of each method row, by method key, from the checkpoint its row reports
    models: dict[str, nn.Module]
    num_classes: int
    #: the forgotten classes of class-wise forgetting; empty for random forgetting
    forget_classes: tuple[int, ...]
    #: a folder of this seed an audit may keep files in (``out/seed_<s>/audits/``)
    cache: Path
    #: the checkpoint each network was loaded from, by stage key
    checkpoints: dict[str, Path] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: where an audit reports what it is doing (e.g. shadow models being trained)
    progress: Callable[[str], None] = print

    def labels(self, role: str) -> np.ndarray:
        """The labels of a data role (``forget``, ``train``, ``test``, ...) as integers."""
        targets = getattr(self.datamodule, "role_targets", None)
        if targets is not None:
            return np.asarray(targets(role), dtype=np.int64)
        ys = [y for _, y in self.datamodule.role_dataloader(role)]
        return torch.cat(ys).numpy().astype(np.int64)

    def unlearned(self) -> dict[str, nn.Module]:
        """Retrain and every method row: the models an unlearning audit compares with the
        original (Retrain is the reference target: what a perfect unlearner gives away)."""
        return {"retrain": self.retrain, **self.models}


#: an audit: columns per stage key (``retrain``, method keys, ``original`` if it applies)
Audit = Callable[[AuditContext], dict[str, dict[str, float]]]


def inversion(ctx: AuditContext) -> dict[str, dict[str, float]]:
    """Inversion audit (docs/protocol.md): how much of D_f's labels an attacker infers from the
    original and the unlearned model, probed on the test split. `wb` = white-box (both
    classifier heads), `bb` = black-box (softmax outputs). tv = total variation between the
    inferred and D_f's true label histogram (lower = more revealed; `prior tv` = the
    training-label prior's, what an attacker without the models gets); hit = share of the
    forgotten classes among the top-scored ones (chance k/C), rank = their mean rank (1 = top,
    chance (C+1)/2); rho = Spearman correlation of the class scores with D_f's per-class count
    excess (chance 0)."""
    probes = list(ctx.datamodule.role_dataloader("test"))
    head = classifier_head(ctx.original, ctx.num_classes)
    original = probe_outputs(ctx.original, probes, ctx.num_classes, ctx.device)
    forget, train = ctx.labels("forget"), ctx.labels("train")
    out = {}
    for key, model in ctx.unlearned().items():
        outputs = probe_outputs(model, probes, ctx.num_classes, ctx.device)
        out[key] = inversion_metrics(
            original,
            outputs,
            head,
            classifier_head(model, ctx.num_classes),
            forget,
            train,
            ctx.forget_classes,
        )
    return out


def lira(ctx: AuditContext) -> dict[str, dict[str, float]]:
    """Per-example membership audit (LiRA, docs/protocol.md): each D_f sample's confidence
    against shadow models that trained on it (IN) or not (OUT), `--lira_shadows` per seed, with
    the validation half of the holdout as the non-members. auc and tpr@1%/0.1% FPR (percent) of
    the online test (IN vs OUT; `offline`: OUT only), member_like = D_f samples flagged at 1 %
    FPR, auc_vs_retrain = D_f's scores under the model against under Retrain (0.5 = as if never
    seen). The shadows' training time is part of the audit's time on the seed that trains them."""
    models = {"original": ctx.original, **ctx.unlearned()}
    return lira_audit(
        ctx.bench,
        ctx.seed,
        ctx.datamodule,
        models,
        ctx.bench.lira_shadows,
        ctx.cache,
        progress=ctx.progress,
    )


#: the audits ``--audits`` may name; add one by adding its function here (docs/architecture.md)
AUDITS: dict[str, Audit] = {"inversion": inversion, "lira": lira}


def audit_legend(name: str) -> str:
    """The legend of an audit's table in results.md: its docstring's first paragraph."""
    audit = AUDITS.get(name)
    doc = inspect.getdoc(audit) if audit is not None else None
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def audit_names(names: str | Iterable[str] | None) -> list[str]:
    """``--audits`` as a list (a comma-separated string or a list), each a known audit."""
    if names is None:
        return []
    if isinstance(names, str):
        names = names.split(",")
    chosen = [n.strip() for n in names if n.strip()]
    unknown = [n for n in chosen if n not in AUDITS]
    if unknown:
        raise LTUError(f"--audits names unknown audits {unknown}; known: {sorted(AUDITS)}")
    return list(dict.fromkeys(chosen))


def _missing(bench: Benchmark, key: str, seed: int, what: str, config: str | None) -> LTUError:
    command = (
        f"ltu benchmark --config {config or '<benchmark yaml>'} --seeds [{seed}] --out {bench.out}"
    )
    return LTUError(
        f"seed {seed} has no stored stage {key!r} ({what}); run `{command}` first to train it"
    )


def stored_checkpoint(bench: Benchmark, key: str, seed: int, config: str | None = None) -> Path:
    """The checkpoint stage ``key`` of ``seed`` reports (``metrics.json``'s ``checkpoint``),
    found again under ``bench.out`` if the folder moved since it was written."""
    root = bench.stage(key, seed).root
    path = root / "metrics.json"
    if not path.is_file():
        raise _missing(bench, key, seed, f"no {path}", config)
    recorded = Path(json.loads(path.read_text()).get("checkpoint") or "")
    if recorded.is_file():
        return recorded
    # <seed folder>/<stage folder>/checkpoints/<file>: the same file under this --out
    moved = bench.out / f"seed_{seed}" / Path(*recorded.parts[-3:])
    if len(recorded.parts) >= 3 and moved.is_file():
        return moved
    raise _missing(bench, key, seed, f"its checkpoint {str(recorded)!r} does not exist", config)


def stored_results(
    bench: Benchmark, seeds: Sequence[int], config: str | None = None
) -> dict[int, dict[str, StageResult]]:
    """Every stage of ``seeds`` as stored by ``ltu benchmark`` (``metrics.json``), audits
    included, for a report written without fitting anything."""
    results: dict[int, dict[str, StageResult]] = {}
    for seed in seeds:
        per_seed = {}
        for key in [*REFERENCE_STAGES, *(m.key for m in bench.methods)]:
            path = bench.stage(key, seed).root / "metrics.json"
            if not path.is_file():
                raise _missing(bench, key, seed, f"no {path}", config)
            per_seed[key] = StageResult.from_record(json.loads(path.read_text()))
        results[seed] = per_seed
    return results


def audit_context(
    bench: Benchmark, seed: int, config: str | None = None, device: str = "cpu"
) -> AuditContext:
    """The :class:`AuditContext` of ``seed`` from its stored checkpoints (one-line error naming
    the stage and the command that trains it when one is missing)."""
    keys = [*REFERENCE_STAGES, *(m.key for m in bench.methods)]
    ckpts = {key: stored_checkpoint(bench, key, seed, config) for key in keys}
    manifest = bench.out / f"seed_{seed}" / "split_manifest.json"
    if not manifest.is_file():
        raise _missing(bench, "original", seed, f"no split manifest {manifest}", config)
    networks: dict[str, nn.Module] = {}
    with quiet_lightning():
        built = {key: bench.stage(key, seed).build() for key in REFERENCE_STAGES}
    datamodule = built["original"].datamodule  # on the seed's manifest
    datamodule.setup("test")
    manifest_id = getattr(datamodule, "manifest_id", None)
    for key in keys:
        if key in built:
            network = getattr(built[key].model, "backbone", built[key].model)
        else:  # a method's network is the original's: it starts from the original's weights
            network = copy.deepcopy(networks["original"])
        load_backbone_weights(network, ckpts[key], manifest_id)
        networks[key] = network.eval().to(device)
    num_classes = getattr(datamodule, "num_classes", None)
    if num_classes is None:  # a user's data module: the width of the original's output
        x, _ = next(iter(datamodule.role_dataloader("test")))
        with torch.no_grad():
            num_classes = int(networks["original"](x[:1].to(device)).shape[1])
    classes = getattr(datamodule, "hparams", {}).get("forget_classes") or ()
    cache = bench.out / f"seed_{seed}" / AUDIT_FOLDER
    cache.mkdir(parents=True, exist_ok=True)
    return AuditContext(
        bench=bench,
        seed=seed,
        datamodule=datamodule,
        original=networks.pop("original"),
        retrain=networks.pop("retrain"),
        models=networks,
        num_classes=int(num_classes),
        forget_classes=tuple(int(c) for c in classes),
        cache=cache,
        checkpoints=ckpts,
        device=torch.device(device),
    )


def _columns(name: str, key: str, columns: Any) -> dict[str, float]:
    if not isinstance(columns, dict):
        raise LTUError(f"audit {name!r} returned {type(columns).__name__} for {key!r}, not columns")
    return {str(c): float(v) for c, v in columns.items()}


def audit_seed(
    bench: Benchmark,
    names: Sequence[str],
    seed: int,
    progress: Callable[[str], None] = print,
    config: str | None = None,
    device: str = "cpu",
) -> dict[str, dict[str, dict[str, Any]]]:
    """Run the audits ``names`` on ``seed``'s stored models; write each stage's columns into its
    ``metrics.json`` (``audits: {name: {columns, time_s}}``) and a record per audit under
    ``out/seed_<seed>/audits/``. Returns ``{stage key: {audit name: {columns, time_s}}}``."""
    start = time.perf_counter()
    ctx = audit_context(bench, seed, config, device)
    ctx.progress = progress
    progress(f"[seed {seed}] audits: models loaded in {time.perf_counter() - start:.1f}s")
    found: dict[str, dict[str, dict[str, Any]]] = {}
    keys = [*REFERENCE_STAGES, *(m.key for m in bench.methods)]
    for name in names:
        start = time.perf_counter()
        columns = AUDITS[name](ctx)
        elapsed = time.perf_counter() - start
        unknown = set(columns) - set(keys)
        if unknown:
            raise LTUError(f"audit {name!r} returned columns for unknown stages {sorted(unknown)}")
        stages = {key: _columns(name, key, columns[key]) for key in keys if key in columns}
        for key, cols in stages.items():
            found.setdefault(key, {})[name] = {"columns": cols, "time_s": elapsed}
        record = {"audit": name, "seed": seed, "time_s": elapsed, "stages": stages}
        record["checkpoints"] = {k: str(p) for k, p in ctx.checkpoints.items()}
        write_json_atomic(ctx.cache / f"{name}.json", record)
        progress(f"[seed {seed}] audit {name}: done in {elapsed:.1f}s")
    for key, audits in found.items():
        path = bench.stage(key, seed).root / "metrics.json"
        data = json.loads(path.read_text())
        data["audits"] = {**data.get("audits", {}), **audits}
        write_json_atomic(path, data)
    return found


def run_audits(
    bench: Benchmark,
    names: Sequence[str],
    seeds: Sequence[int] | None = None,
    progress: Callable[[str], None] = print,
    config: str | None = None,
    device: str = "cpu",
) -> dict[int, dict[str, dict[str, dict[str, Any]]]]:
    """:func:`audit_seed` for every seed (default: the benchmark's): ``{seed: {stage key:
    {audit name: {columns, time_s}}}}``, also merged into the stored metrics."""
    names = audit_names(names)
    return {
        seed: audit_seed(bench, names, seed, progress, config, device)
        for seed in (bench.seeds if seeds is None else seeds)
    }
