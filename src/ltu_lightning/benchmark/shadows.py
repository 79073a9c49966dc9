"""The per-example membership audit (LiRA, Carlini et al. 2022): shadow models trained on random
halves of a benchmark seed's pool, and :func:`lira_audit`, which scores every model of that seed
against them (docs/protocol.md, "Per-example membership audit").

Shadow models reuse the benchmark's pretraining recipe (``Benchmark.original``) through
:class:`~ltu_lightning.runner.Stage`, with the training set replaced by their half of the pool
(``data.init_args.train_index_file``) and their own ``seed_everything``. They come in
complementary pairs: shadow 2k trains on a seeded random half of the pool, shadow 2k + 1 on the
other half, so each pool example is in the training set of exactly half of the shadows, and
adding pairs keeps the earlier ones. Each lives in ``<cache>/shadows/<i>/`` (by default
``<out>/seed_<s>/audits/shadows/<i>/``): ``in_indices.json`` (the pool indices it trained on),
``checkpoints/last.ckpt`` and ``shadow.json`` (what it was trained with), and is reused when
that record matches the seed's split, its half and the recipe.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from ltu_lightning.benchmark.runner import Benchmark
from ltu_lightning.data.splits import SplitManifest
from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.lira import (
    Variance,
    fit_shadow_gaussians,
    logit_confidence,
    membership_figures,
    offline_scores,
    online_scores,
)
from ltu_lightning.evaluation.protocol import role_logits
from ltu_lightning.modules.checkpoints import load_backbone_weights
from ltu_lightning.utils.files import write_json_atomic
from ltu_lightning.utils.run_lock import RunLock

#: folder of the shadow models under an audit cache
SHADOWS = "shadows"
IN_FILE = "in_indices.json"
RECORD = "shadow.json"
#: the audited examples: D_f (members of the original model) and the non-member reference set
MEMBER_ROLE, NONMEMBER_ROLE = "forget", "holdout_val"
#: the roles whose union is the pool the shadows' halves are drawn from
POOL_ROLES = ("train", "holdout_audit", "holdout_val")
DEFAULT_SHADOWS = 8
_SALT = 0x4C495241  # "LIRA": keeps the shadows' draws apart from the split's own


def audit_cache(bench: Benchmark, seed: int) -> Path:
    """The default audit cache of a benchmark seed: ``<out>/seed_<seed>/audits``."""
    return bench.out / f"seed_{seed}" / "audits"


def shadow_pool(roles: Mapping[str, np.ndarray]) -> np.ndarray:
    """The pool indices the shadows' halves are drawn from: the training set D (D_f included)
    and both holdout halves (sorted)."""
    return np.unique(np.concatenate([np.asarray(roles[r], dtype=np.int64) for r in POOL_ROLES]))


def shadow_memberships(pool: np.ndarray, seed: int, num_shadows: int) -> list[np.ndarray]:
    """The sorted pool indices each shadow trains on: for pair k, a permutation of ``pool``
    seeded by (``seed``, k) split in two halves, shadow 2k the first, 2k + 1 the second."""
    check_num_shadows(num_shadows)
    halves = []
    for pair in range(num_shadows // 2):
        order = np.random.default_rng([_SALT, seed, pair]).permutation(np.asarray(pool))
        half = order.size // 2
        halves += [np.sort(order[:half]), np.sort(order[half:])]
    return halves


def shadow_seed(seed: int, index: int) -> int:
    """``seed_everything`` of shadow ``index`` of benchmark seed ``seed`` (its initialisation
    and batch order)."""
    return int(np.random.SeedSequence([_SALT, seed, index]).generate_state(1)[0] % 2**31)


def check_num_shadows(num_shadows: int) -> None:
    if isinstance(num_shadows, bool) or not isinstance(num_shadows, int):
        raise LTUError(f"num_shadows must be an even integer ≥ 2, got {num_shadows!r}")
    if num_shadows < 2 or num_shadows % 2:
        raise LTUError(
            f"num_shadows={num_shadows}: shadow models come in complementary pairs (each example "
            "in the training set of exactly half of them); pass an even number ≥ 2, e.g. 8"
        )


@dataclass(frozen=True)
class Shadow:
    """One trained shadow model: its folder, the pool indices it trained on, its checkpoint,
    its training time and whether it was reused from the cache."""

    index: int
    root: Path
    in_indices: np.ndarray
    checkpoint: Path
    time_s: float
    reused: bool


def _digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _recipe(bench: Benchmark) -> str:
    """What the shadows' training depends on besides their half and seed: the pretraining
    config's text and the benchmark's overrides."""
    text = Path(bench.original).read_text() + json.dumps(
        bench.overrides, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _seed_manifest(bench: Benchmark, seed: int) -> SplitManifest:
    path = bench.stage("original", seed).manifest
    if not path.is_file():
        raise LTUError(
            f"seed {seed} has no split manifest {str(path)!r}; train its original model first "
            f"(ltu benchmark --config <benchmark> --seeds [{seed}])"
        )
    return SplitManifest.load(path)


def train_shadows(
    bench: Benchmark,
    seed: int,
    num_shadows: int = DEFAULT_SHADOWS,
    cache: Path | None = None,
    progress: Callable[[str], None] = print,
) -> list[Shadow]:
    """Train (or reuse) ``num_shadows`` shadow models of benchmark seed ``seed`` in
    ``<cache>/shadows/<i>/`` (``cache`` defaults to :func:`audit_cache`).

    Each is a fit of the benchmark's pretraining stage (its config and overrides, the seed's
    split manifest) with ``data.init_args.train_index_file`` = its half of the pool and
    ``seed_everything`` = :func:`shadow_seed`; no W&B run. One at a time per folder (a run
    lock); the record is written atomically after the fit, so a killed fit is trained again.
    """
    check_num_shadows(num_shadows)
    manifest = _seed_manifest(bench, seed)
    pool = shadow_pool(manifest.roles)
    halves = shadow_memberships(pool, seed, num_shadows)
    folder = Path(cache if cache is not None else audit_cache(bench, seed)) / SHADOWS
    quiet = replace(bench, wandb_group=None)
    recipe = _recipe(bench)
    shadows = []
    for i, in_indices in enumerate(halves):
        root = folder / str(i)
        expected = {
            "index": i,
            "benchmark_seed": seed,
            "seed_everything": shadow_seed(seed, i),
            "manifest_id": manifest.manifest_id,
            "pool_size": int(pool.size),
            "num_in": int(in_indices.size),
            "in_digest": _digest(in_indices),
            "recipe": recipe,
        }
        with RunLock(root, "cache"):
            shadows.append(
                _train_one(quiet, seed, root, in_indices, expected, num_shadows, progress)
            )
    return shadows


def _train_one(
    bench: Benchmark,
    seed: int,
    root: Path,
    in_indices: np.ndarray,
    expected: dict[str, Any],
    num_shadows: int,
    progress: Callable[[str], None],
) -> Shadow:
    i = expected["index"]
    last = root / "checkpoints" / "last.ckpt"
    record_path = root / RECORD
    tag = f"[seed {seed}] shadow {i + 1}/{num_shadows}"
    if record_path.is_file() and last.is_file():
        try:
            record = json.loads(record_path.read_text())
        except ValueError:
            record = {}
        if all(record.get(k) == v for k, v in expected.items()):
            progress(f"{tag}: reusing {root} ({record['time_s']:.1f}s)")
            return Shadow(i, root, in_indices, last, float(record["time_s"]), True)
        progress(f"{tag}: its record differs from this split, half or recipe; training again")
    record_path.unlink(missing_ok=True)  # a fit killed from here on leaves no valid record
    in_file = root / IN_FILE
    write_json_atomic(in_file, in_indices.tolist())
    progress(f"{tag}: training on {in_indices.size} of {expected['pool_size']} pool images ...")
    stage = bench.stage(
        "original",
        seed,
        root=root,
        extra={
            "seed_everything": expected["seed_everything"],
            "data.init_args.train_index_file": str(in_file),
        },
    )
    fit = stage.fit()
    if fit.checkpoint != last or not last.is_file():
        raise LTUError(
            f"shadow {i} wrote no {last}; the pretraining config must save last.ckpt "
            "(the project's ModelCheckpoint default)"
        )
    record = {**expected, "config": str(bench.original), "time_s": fit.time_s}
    write_json_atomic(record_path, record)
    progress(f"{tag}: done in {fit.time_s:.1f}s")
    return Shadow(i, root, in_indices, last, fit.time_s, False)


def _network(model: nn.Module) -> nn.Module:
    return getattr(model, "backbone", model)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def audited_scores(model: nn.Module, datamodule: Any) -> np.ndarray:
    """φ (:func:`~ltu_lightning.evaluation.lira.logit_confidence`) of ``model`` on the audited
    examples: D_f, then the non-member reference set, in their loaders' order."""
    net = _network(model)
    parts = [role_logits(net, datamodule, r, _device(net)) for r in (MEMBER_ROLE, NONMEMBER_ROLE)]
    logits = torch.cat([p[0] for p in parts]).numpy()
    targets = torch.cat([p[1] for p in parts]).numpy()
    return logit_confidence(logits, targets)


def lira_audit(
    bench: Benchmark,
    seed: int,
    datamodule: Any,
    models: Mapping[str, nn.Module],
    num_shadows: int = DEFAULT_SHADOWS,
    cache: Path | None = None,
    variance: Variance = "auto",
    progress: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """LiRA's per-example membership test of every model of benchmark seed ``seed``.

    Args:
        bench: the benchmark (its pretraining recipe trains the shadows).
        seed: the benchmark seed; its split manifest must exist (its original model trained).
        datamodule: that seed's data module (any stage's: the roles are the split's), for the
            audited examples, D_f (``forget``) and the non-member reference set
            (``holdout_val``), and their pool indices (``role_indices``).
        models: networks (or modules with a ``backbone``) by key: ``original`` (required: the
            shadows' architecture), ``retrain`` and the method keys.
        num_shadows: shadow models (even, ≥ 2), trained or reused by :func:`train_shadows`.
        cache: folder of ``shadows/<i>/`` (default ``<out>/seed_<seed>/audits``).
        variance: how the shadows' Gaussians are fitted
            (:func:`~ltu_lightning.evaluation.lira.fit_shadow_gaussians`).

    Returns, per model key, with D_f as the positives and the reference set as the negatives
    for every model (for the original model D_f are members; for Retrain and the unlearned
    models the question is whether D_f still looks like members):

    - ``lira_auc``, ``lira_tpr@1%``, ``lira_tpr@0.1%``, ``lira_member_like``: the online test
      (IN vs OUT shadows; :func:`~ltu_lightning.evaluation.lira.membership_figures`): AUC
      (0..1), TPR in percent, and the count of D_f samples above the threshold that flags 1 %
      of the reference set;
    - ``lira_offline_auc``, ``lira_offline_tpr@1%``, ``lira_offline_tpr@0.1%``,
      ``lira_offline_member_like``: the same for the offline test (OUT shadows only);
    - ``lira_auc_vs_retrain`` (when ``models`` has ``retrain``): AUC of the online scores of
      D_f under this model against those of D_f under Retrain (0.5: the model's D_f scores are
      those of a model that never saw D_f).
    """
    if "original" not in models:
        raise LTUError("lira_audit needs models['original']: the shadows share its architecture")
    if not hasattr(datamodule, "role_indices"):
        raise LTUError(
            f"{type(datamodule).__name__} has no role_indices(role); the audit needs the pool "
            "indices of D_f and the holdout (use UnlearningDataModule)"
        )
    shadows = train_shadows(bench, seed, num_shadows, cache, progress)
    audited = np.concatenate([datamodule.role_indices(r) for r in (MEMBER_ROLE, NONMEMBER_ROLE)])
    n_members = len(datamodule.role_indices(MEMBER_ROLE))
    in_mask = np.stack([np.isin(audited, s.in_indices) for s in shadows])
    net = copy.deepcopy(_network(models["original"]))
    shadow_phi = []
    for shadow in shadows:
        load_backbone_weights(net, shadow.checkpoint, getattr(datamodule, "manifest_id", None))
        shadow_phi.append(audited_scores(net, datamodule))
    fit = fit_shadow_gaussians(np.stack(shadow_phi), in_mask, variance)
    phi = {key: audited_scores(model, datamodule) for key, model in models.items()}
    online = {key: online_scores(p, fit) for key, p in phi.items()}
    results: dict[str, dict[str, float]] = {}
    for key in models:
        row: dict[str, float] = {}
        scores = {"lira": online[key], "lira_offline": offline_scores(phi[key], fit)}
        for name, s in scores.items():
            figures = membership_figures(s[:n_members], s[n_members:])
            for figure in ("auc", "tpr@1%", "tpr@0.1%", "member_like"):
                row[f"{name}_{figure}"] = figures[figure]
        if "retrain" in online:
            ours, theirs = online[key][:n_members], online["retrain"][:n_members]
            y = np.concatenate([np.ones(ours.size), np.zeros(theirs.size)])
            row["lira_auc_vs_retrain"] = float(roc_auc_score(y, np.concatenate([ours, theirs])))
        results[key] = row
    return results
