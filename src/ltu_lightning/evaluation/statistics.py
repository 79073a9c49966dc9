"""Paired comparisons of two methods over the same seeds: is a difference resolved?

Each seed gives both methods the same split, original model and retrained reference, so the
per-seed differences are paired. A difference counts as *resolved* when its bootstrap interval
excludes 0 **and** the two-sided Wilcoxon signed-rank test (scipy) rejects "no difference" at the
same level (p < 1 − confidence). The percentile bootstrap alone is too generous on few seeds:
on three it excludes 0 whenever the three differences share a sign. The exact signed-rank test
cannot go below p = 2 / 2^n, so at the 95 % level a difference needs at least six seeds to be
resolved. The number of seeds on which the method of interest was lower is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from ltu_lightning.errors import LTUError


@dataclass(frozen=True)
class PairedComparison:
    """``method`` − ``other`` over paired seeds (negative: ``method`` is lower)."""

    method: str
    other: str
    metric: str
    seeds: list[int]
    differences: list[float]
    mean: float
    ci_low: float
    ci_high: float
    confidence: float
    p_wilcoxon: float
    lower_on: int

    @property
    def resolved(self) -> bool:
        """True when the bootstrap interval excludes 0 and the Wilcoxon p is below
        1 − ``confidence`` (never for a single seed: one difference has no spread to resolve it
        against; never below six seeds at 95 %: the signed-rank test cannot reject there)."""
        if len(self.differences) < 2 or not (self.ci_low > 0 or self.ci_high < 0):
            return False
        return bool(self.p_wilcoxon < 1 - self.confidence)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``resolved`` is None for a single seed: the question does not apply)."""
        return {**asdict(self), "resolved": self.resolved if len(self.differences) > 1 else None}


def bootstrap_interval(
    differences: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (seeded, reproducible)."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or d.size == 0:
        raise LTUError("bootstrap_interval needs a non-empty list of paired differences")
    if not 0 < confidence < 1:
        raise LTUError(f"confidence must be between 0 and 1, got {confidence}")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is 0, NaN for n < 2."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(
    method: str,
    other: str,
    values: Mapping[int, float],
    other_values: Mapping[int, float],
    metric: str = "avg_gap",
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``method`` with ``other`` on the seeds both have (per-seed ``metric`` values)."""
    seeds = sorted(set(values) & set(other_values))
    if not seeds:
        raise LTUError(f"{method} and {other} share no seed; run both on the same seeds")
    diffs = [float(values[s]) - float(other_values[s]) for s in seeds]
    low, high = bootstrap_interval(diffs, confidence, n_boot, seed)
    return PairedComparison(
        method=method,
        other=other,
        metric=metric,
        seeds=seeds,
        differences=diffs,
        mean=float(np.mean(diffs)),
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_wilcoxon=wilcoxon_p(diffs),
        lower_on=sum(d < 0 for d in diffs),
    )


def compare_to_all(
    methods: Mapping[str, Mapping[str, Any]], reference: str, metric: str = "avg_gap"
) -> list[PairedComparison]:
    """``reference`` against every other entry of a ``results.json`` ``methods`` mapping.

    Each entry needs ``per_seed``: ``{seed: {metric: value}}`` (seed keys may be strings).
    """
    if reference not in methods:
        raise LTUError(f"no method {reference!r} in the results; choose one of {sorted(methods)}")

    def per_seed(key: str) -> dict[int, float]:
        return {int(s): float(row[metric]) for s, row in methods[key]["per_seed"].items()}

    ref = per_seed(reference)
    return [
        paired_comparison(reference, key, ref, per_seed(key), metric)
        for key in methods
        if key != reference
    ]
