"""Paired statistics of the benchmark, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.statistics import (
    bootstrap_interval,
    compare_to_all,
    paired_comparison,
    wilcoxon_p,
)


def test_hand_computed_example() -> None:
    # LTU - FT per seed: -1, -2, -3, -4, -5 (LTU lower on all five seeds).
    ltu = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0}
    ft = {0: 2.0, 1: 4.0, 2: 6.0, 3: 8.0, 4: 10.0}
    c = paired_comparison("ltu", "ft", ltu, ft)
    assert c.differences == [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert c.mean == pytest.approx(-3.0)
    assert c.lower_on == 5
    # exact signed-rank test, n = 5, all of one sign: p = 2 / 2**5
    assert c.p_wilcoxon == pytest.approx(2 / 32)
    # every resample mean lies between the smallest and the largest difference
    assert -5.0 <= c.ci_low < c.mean < c.ci_high <= -1.0
    # the interval excludes 0, but five seeds cannot reach p < 0.05 two-sided: not resolved
    assert not c.resolved
    # a sixth seed of the same sign: p = 2 / 2**6 < 0.05, resolved
    six = paired_comparison("ltu", "ft", {**ltu, 5: 6.0}, {**ft, 5: 12.0})
    assert six.p_wilcoxon == pytest.approx(2 / 64)
    assert six.ci_high < 0 and six.resolved


def test_constant_shift_has_a_point_interval() -> None:
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_mixed_signs_are_not_resolved() -> None:
    c = paired_comparison("a", "b", {0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 1.0, 2: 2.5})
    assert c.ci_low < 0 < c.ci_high
    assert not c.resolved
    assert c.as_dict()["resolved"] is False


def test_only_shared_seeds_are_paired() -> None:
    c = paired_comparison("a", "b", {0: 1.0, 1: 2.0, 5: 9.0}, {0: 2.0, 1: 2.0, 7: 0.0})
    assert c.seeds == [0, 1]
    assert c.differences == [-1.0, 0.0]


def test_degenerate_inputs() -> None:
    assert wilcoxon_p([0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p([1.0]))
    with pytest.raises(LTUError, match="share no seed"):
        paired_comparison("a", "b", {0: 1.0}, {1: 1.0})


def test_compare_to_all_reads_results_json_entries() -> None:
    methods = {
        "ltu:partial+holdout": {"per_seed": {"0": {"avg_gap": 1.0}, "1": {"avg_gap": 2.0}}},
        "ft:full": {"per_seed": {"0": {"avg_gap": 3.0}, "1": {"avg_gap": 3.5}}},
        "retrain": {"per_seed": {"0": {"avg_gap": 0.0}, "1": {"avg_gap": 0.0}}},
    }
    rows = compare_to_all(methods, "ltu:partial+holdout")
    assert [r.other for r in rows] == ["ft:full", "retrain"]
    assert rows[0].differences == [-2.0, -1.5]
    with pytest.raises(LTUError, match="no method 'ltu'"):
        compare_to_all(methods, "ltu")
