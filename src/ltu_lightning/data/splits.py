"""The deterministic split of docs/protocol.md and its manifest.

Roles are index arrays into the dataset's training split. The *pool* is that split, or with
``pool_size`` a seeded class-stratified subset of it (the rest of the split is in no role):

- ``holdout_audit`` / ``holdout_val``: the holdout D_h, carved out before pretraining and never
  trained on, halved into the auditor half (non-members for MI auditors) and the validation half
  (pretraining validation, stopping, hyperparameter choice);
- ``train``: D = pool \\ D_h, what the original model trains on;
- ``forget``: D_f ⊂ D (random fraction, class list, or an explicit index file of pool indices);
- ``remaining``: D_r = D \\ D_f; ``retain_order``: a seeded permutation of D_r;
  ``retain_subset``: D̂_r, the first ρ·|D_r| of that order (sorted). Subsets for different ρ are
  nested, and ρ may change per unlearning run without changing the split (``retain_subset_of``).

The test split is the dataset's own and is not stored. The manifest (JSON) records the indices,
the dataset fingerprint, the seed and the spec; its ``manifest_id`` is what checkpoints record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltu_lightning.errors import LTUError
from ltu_lightning.utils.files import write_json_atomic

ROLES = (
    "train",
    "holdout_audit",
    "holdout_val",
    "forget",
    "remaining",
    "retain_order",
    "retain_subset",
)
#: Spec keys that do not change who is a member or what is forgotten (checked per run instead).
RUN_LEVEL_KEYS = ("retain_fraction",)
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SplitSpec:
    """Everything that determines a split (besides the dataset itself)."""

    holdout: float = 1000
    forget_fraction: float | None = 0.1
    forget_classes: tuple[int, ...] | None = None
    forget_index_file: str | None = None
    retain_fraction: float = 0.1
    seed: int = 0
    forget_indices: tuple[int, ...] | None = field(default=None, repr=False)
    #: a count (≥ 8) or fraction (< 1) of the dataset's training split to use as the pool;
    #: None: all of it
    pool_size: float | None = None

    def describe(self) -> dict[str, Any]:
        """The spec as stored in a manifest (the index file is stored by content, not path)."""
        d = asdict(self)
        d.pop("forget_index_file")
        d["forget_classes"] = list(self.forget_classes) if self.forget_classes is not None else None
        d["forget_indices"] = list(self.forget_indices) if self.forget_indices is not None else None
        return d


def read_index_file(path: str | os.PathLike, what: str = "forget index file") -> tuple[int, ...]:
    """Read pool indices from a ``.json`` list, a ``.npy`` array, or text (one per line / comma);
    ``what`` names the file in errors."""
    p = Path(path)
    if not p.is_file():
        raise LTUError(f"{what} {str(p)!r} does not exist; give a path to a list of pool indices")
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False).ravel().tolist()
        elif p.suffix == ".json":
            values = json.loads(p.read_text())
        else:
            values = [tok for tok in p.read_text().replace(",", " ").split() if tok]
        # int() would floor 3.7 or turn true into 1 (JSON, .npy): another sample would be forgotten.
        bad = [v for v in values if isinstance(v, bool) or (isinstance(v, float) and v % 1)]
        if bad:
            raise ValueError(f"{bad[:3]} are not whole numbers")
        return tuple(int(v) for v in values)
    except (ValueError, TypeError) as err:
        raise LTUError(f"{what} {str(p)!r} is not a list of integers ({err})") from err


def _check_spec(spec: SplitSpec, targets: np.ndarray, num_classes: int) -> None:
    n = len(targets)
    given = sum(x is not None for x in (spec.forget_classes, spec.forget_indices))
    if given == 0 and spec.forget_fraction is None:
        raise LTUError(
            "no forget set given: set data.forget_fraction, data.forget_classes or data.forget_index_file"
        )
    if spec.forget_fraction is not None and given == 0 and not 0 < spec.forget_fraction < 1:
        raise LTUError(
            f"forget_fraction={spec.forget_fraction} is outside (0, 1); use e.g. 0.1 for 10% of the training set"
        )
    if spec.forget_classes is not None:
        bad = sorted({c for c in spec.forget_classes if not 0 <= c < num_classes})
        if bad:
            raise LTUError(
                f"forget_classes {bad} are not in the dataset (classes 0..{num_classes - 1}); pick existing classes"
            )
        if not spec.forget_classes:
            raise LTUError("forget_classes is empty: name at least one class to forget")
        if len(set(spec.forget_classes)) >= len(set(targets.tolist())):
            raise LTUError(
                "forget_classes names every class: nothing would remain; keep at least one class"
            )
    if spec.forget_indices is not None:
        idx = np.asarray(spec.forget_indices, dtype=np.int64)
        if idx.size == 0:
            raise LTUError("the forget index file is empty: list at least one pool index")
        out = idx[(idx < 0) | (idx >= n)]
        if out.size:
            raise LTUError(
                f"forget indices {out[:5].tolist()} are out of range for a pool of {n} samples (valid: 0..{n - 1})"
            )
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise LTUError(
                f"forget indices {uniq[counts > 1][:5].tolist()} appear more than once; list each index once"
            )
    if not 0 < spec.retain_fraction <= 1:
        raise LTUError(
            f"retain_fraction={spec.retain_fraction} is outside (0, 1]; use e.g. 0.1 for 10% of the remaining set"
        )
    if spec.holdout <= 0:
        raise LTUError(
            f"holdout={spec.holdout} must be positive (a count ≥ 2 or a fraction in (0, 1))"
        )
    if spec.pool_size is not None:
        _pool_count(spec.pool_size, n)


def _pool_count(pool_size: float, n: int) -> int:
    """The number of pool samples ``pool_size`` (a count ≥ 8 or a fraction < 1) keeps of ``n``."""
    size = int(round(pool_size * n)) if 0 < pool_size < 1 else int(pool_size)
    if pool_size <= 0 or pool_size % 1 and pool_size > 1 or not 8 <= size <= n:
        raise LTUError(
            f"pool_size={pool_size} keeps {size} of the {n} training-split samples; give a "
            f"whole count between 8 and {n} or a fraction in (0, 1), or null for all of them"
        )
    return size


def _draw_pool(targets: np.ndarray, spec: SplitSpec, fixed: np.ndarray | None) -> np.ndarray:
    """The pool: every training-split index, or a seeded class-stratified subset of
    ``spec.pool_size`` that always holds the requested forget indices ``fixed``."""
    from sklearn.model_selection import train_test_split

    everything = np.arange(len(targets))
    if spec.pool_size is None:
        return everything
    size = _pool_count(spec.pool_size, len(targets))
    kept = fixed if fixed is not None else np.empty(0, dtype=np.int64)
    if kept.size > size:
        raise LTUError(
            f"pool_size={spec.pool_size} keeps {size} samples but the forget index file names "
            f"{kept.size}; raise pool_size or forget fewer samples"
        )
    others = np.setdiff1d(everything, kept)
    draw = size - kept.size
    if draw == 0:
        return np.sort(kept)
    if draw == others.size:
        return everything
    counts = np.unique(targets[others], return_counts=True)[1]
    strat = targets[others] if counts.min() >= 2 else None
    try:
        chosen, _ = train_test_split(
            others, train_size=draw, stratify=strat, random_state=spec.seed
        )
    except ValueError:  # too few samples of some class to stratify at this size
        chosen, _ = train_test_split(others, train_size=draw, random_state=spec.seed)
    return np.sort(np.union1d(chosen, kept))


def _holdout_size(holdout: float, n: int) -> int:
    size = int(round(holdout * n)) if holdout < 1 else int(holdout)
    if not 2 <= size <= n // 2:
        raise LTUError(
            f"holdout={holdout} gives {size} samples out of a pool of {n}; it must be between 2 and half "
            "the pool: pass a smaller count or a fraction such as 0.2"
        )
    return size


def make_split(
    targets: Sequence[int] | np.ndarray,
    num_classes: int,
    spec: SplitSpec,
    holdout_indices: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Compute all roles from the pool's labels. Deterministic in ``spec`` (including its seed).

    ``holdout_indices`` fixes the holdout (pool samples the original model never trained on,
    e.g. a user's own validation set appended to the pool) instead of cutting one at random.
    """
    from sklearn.model_selection import train_test_split

    targets = np.asarray(targets, dtype=np.int64)
    _check_spec(spec, targets, num_classes)
    rng = np.random.default_rng(spec.seed)
    # The holdout never contains requested forget indices: those must be in D.
    fixed_forget = (
        np.asarray(spec.forget_indices, dtype=np.int64) if spec.forget_indices is not None else None
    )
    if spec.pool_size is not None and holdout_indices is not None:
        raise LTUError(
            "pool_size subsets the pool, but this data module's holdout is fixed (from_split or "
            "wrap with a holdout dataset); subset the datasets you pass instead, or drop pool_size"
        )
    pool = _draw_pool(targets, spec, fixed_forget)
    candidates = np.setdiff1d(pool, fixed_forget) if fixed_forget is not None else pool
    if candidates.size < 4:  # a holdout of ≥ 2 and a remaining set need the rest of the pool
        raise LTUError(
            f"the forget index file names {len(pool) - candidates.size} of the {len(pool)} pool "
            "samples: nothing would be left for the holdout and the remaining set; forget fewer samples"
        )
    if holdout_indices is not None:
        holdout = np.unique(np.asarray(holdout_indices, dtype=np.int64))
        if (
            len(holdout) < 2
            or np.isin(holdout, fixed_forget if fixed_forget is not None else []).any()
        ):
            raise LTUError(
                "the holdout needs at least 2 samples and none of the forget set; give another holdout"
            )
        train = np.setdiff1d(candidates, holdout)
    else:
        # A seeded uniform draw, not stratified by class (a stratified one would be another split
        # for every seed, so no saved manifest or report could be reproduced).
        size = _holdout_size(spec.holdout, len(candidates))
        train, holdout = train_test_split(candidates, test_size=size, random_state=spec.seed)
    if fixed_forget is not None:
        train = np.union1d(train, fixed_forget)
    train = np.sort(train)
    holdout = rng.permutation(np.sort(holdout))
    half = len(holdout) // 2
    holdout_audit, holdout_val = np.sort(holdout[:half]), np.sort(holdout[half:])

    if fixed_forget is not None:
        forget = np.sort(fixed_forget)
    elif spec.forget_classes is not None:
        forget = train[np.isin(targets[train], spec.forget_classes)]
    else:
        k = int(round(spec.forget_fraction * len(train)))
        forget = np.sort(rng.choice(train, size=max(k, 1), replace=False))
    remaining = np.setdiff1d(train, forget)
    if len(forget) == 0:
        raise LTUError(
            "the forget set is empty for this spec; choose classes/indices present in the training set"
        )
    if len(remaining) == 0:
        raise LTUError(
            "the forget set covers the whole training set: nothing would remain; forget less"
        )
    retain_order = rng.permutation(remaining)
    retain_subset = retain_subset_of(retain_order, spec.retain_fraction)
    return {
        "train": train,
        "holdout_audit": holdout_audit,
        "holdout_val": holdout_val,
        "forget": forget,
        "remaining": remaining,
        "retain_order": retain_order,
        "retain_subset": retain_subset,
    }


def retain_subset_of(retain_order: np.ndarray, fraction: float) -> np.ndarray:
    """D̂_r for ρ = ``fraction``: the first ρ·|D_r| (at least one) of the manifest's retain order."""
    if not 0 < fraction <= 1:
        raise LTUError(
            f"retain_fraction={fraction} is outside (0, 1]; use e.g. 0.1 for 10% of the remaining set"
        )
    k = max(1, int(round(fraction * len(retain_order))))
    return np.sort(np.asarray(retain_order[:k], dtype=np.int64))


@dataclass
class SplitManifest:
    """A saved split: indices per role, the dataset it belongs to, and how it was made."""

    dataset: str
    fingerprint: str
    spec: dict[str, Any]
    roles: dict[str, np.ndarray]

    @property
    def manifest_id(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.dataset}:{self.fingerprint}".encode())
        for role in ROLES:
            h.update(role.encode())
            h.update(np.asarray(self.roles[role], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "manifest_id": self.manifest_id,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "spec": self.spec,
            "sizes": {role: int(len(self.roles[role])) for role in ROLES},
            "roles": {role: self.roles[role].tolist() for role in ROLES},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename): a crash never leaves a half-written manifest."""
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SplitManifest:
        """Read a manifest and check it (``check_roles``, and its ``manifest_id``): an edited
        or damaged manifest is refused, never trusted."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
            roles = {role: np.asarray(data["roles"][role], dtype=np.int64) for role in ROLES}
            if any(r.ndim != 1 for r in roles.values()):
                raise ValueError("a role is not a flat list of indices")
            manifest = cls(data["dataset"], data["fingerprint"], data["spec"], roles)
        except FileNotFoundError as err:
            raise LTUError(
                f"split manifest {str(p)!r} does not exist; run the pretraining stage first or fix the path"
            ) from err
        except (ValueError, KeyError, TypeError, OverflowError) as err:
            raise LTUError(
                f"split manifest {str(p)!r} is not a valid manifest ({err!r}); delete it to make a new split"
            ) from err
        if "manifest_id" not in data:
            raise LTUError(
                f"split manifest {str(p)!r} has no manifest_id, so its indices cannot be trusted; {MANIFEST_FIX}"
            )
        if data["manifest_id"] != manifest.manifest_id:
            problem = check_roles(roles)
            raise LTUError(
                f"split manifest {str(p)!r} was edited: its indices do not match its manifest_id"
                f"{f' ({problem})' if problem else ''}; {MANIFEST_FIX}"
            )
        manifest.check(p)  # a recomputed manifest_id is not enough
        return manifest

    def check(self, path: str | os.PathLike, pool_size: int | None = None) -> None:
        """Refuse roles that break the split's rules (``check_roles``), with indices bounded
        by ``pool_size`` when given; ``path`` is named in the error."""
        problem = check_roles(self.roles, pool_size)
        if problem:
            raise LTUError(f"split manifest {str(path)!r} is invalid: {problem}; {MANIFEST_FIX}")


MANIFEST_FIX = "restore the manifest the stage wrote, or delete it to make a new split"


#: roles that must hold at least one index
NON_EMPTY = ("train", "holdout_audit", "holdout_val", "forget", "remaining", "retain_order")


def _some(values: np.ndarray) -> str:
    """``3 indices (e.g. [4, 9, 12])``."""
    n = len(values)
    return f"{n} ind{'ex' if n == 1 else 'ices'} (e.g. {values[:3].tolist()})"


def check_roles(roles: dict[str, np.ndarray], pool_size: int | None = None) -> str | None:
    """What is wrong with a split's roles (one phrase naming the role and the count), or None.

    Each role lists unique pool indices in range; ``train``, the two holdout halves are
    disjoint; ``forget`` ⊂ ``train`` and is not all of it; ``remaining`` = ``train`` \
    ``forget``; ``retain_order`` orders ``remaining``; ``retain_subset`` ⊂ ``remaining``.
    """
    for role in ROLES:
        idx = roles[role]
        bad = idx[(idx < 0) | (idx >= pool_size)] if pool_size is not None else idx[idx < 0]
        if bad.size:
            valid = f"0..{pool_size - 1}" if pool_size is not None else "≥ 0"
            return f"{role} has {_some(bad)} out of range (valid: {valid})"
        uniq, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            return f"{role} lists {_some(uniq[counts > 1])} more than once"
    train, forget = roles["train"], roles["forget"]
    if train.size and np.array_equal(np.sort(forget), np.sort(train)):
        return f"forget is the whole train set ({train.size} indices): nothing would remain"
    for role in NON_EMPTY:
        if roles[role].size == 0:
            return f"{role} is empty (0 indices)"
    for a, b in (("train", "holdout_audit"), ("train", "holdout_val"), ("holdout_audit", "holdout_val"), ("forget", "holdout_audit"), ("forget", "holdout_val")):  # fmt: skip
        shared = np.intersect1d(roles[a], roles[b])
        if shared.size:
            return f"{a} and {b} share {_some(shared)}"
    outside = np.setdiff1d(forget, train)
    if outside.size:
        return f"forget has {_some(outside)} that are not in train"
    shared = np.intersect1d(forget, roles["remaining"])
    if shared.size:
        return f"forget and remaining share {_some(shared)}"
    differ = np.setxor1d(roles["remaining"], np.setdiff1d(train, forget))
    if differ.size:
        return f"remaining is not train minus forget ({_some(differ)} differ)"
    if not np.array_equal(np.sort(roles["retain_order"]), roles["remaining"]):
        return "retain_order is not an ordering of remaining"
    outside = np.setdiff1d(roles["retain_subset"], roles["remaining"])
    if outside.size:
        return f"retain_subset has {_some(outside)} that are not in remaining"
    return None
