"""Metrics on inputs whose answers are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation import (
    accuracy,
    avg_gap,
    loss_auc,
    loss_auc_attack,
    mia_efficacy,
    per_sample_outputs,
    relative_time_efficiency,
    selection_criterion,
    summarize,
    svc_mia_efficacy,
    unlearning_metrics,
)


def _overfit_features(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Members: confidence ~1; non-members: spread over low confidences (heavy overfitting)."""
    rng = np.random.default_rng(seed)
    members = 1.0 - rng.uniform(0.0, 0.02, n)
    nonmembers = rng.uniform(0.05, 0.7, n)
    return members, nonmembers


def _outputs(conf: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """A per_sample_outputs-like dict of a 2-class model with the given true-label confidence."""
    p = np.clip(conf, 1e-12, 1 - 1e-12)
    return {
        "loss": -np.log(p),
        "confidence": conf,
        "entropy": -(p * np.log(p) + (1 - p) * np.log(1 - p)),
        "correct": correct.astype(bool),
    }


# --------------------------------------------------------------------------- accuracy


def test_accuracy_of_known_logits_and_labels():
    logits = torch.tensor([[2.0, 0.1, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 2, 1])  # the last one is wrong
    assert accuracy(logits, targets) == pytest.approx(75.0)
    assert accuracy(logits.argmax(1), targets) == pytest.approx(75.0)
    assert accuracy(np.array([1, 1, 0, 0]), np.array([1, 1, 0, 0])) == pytest.approx(100.0)
    assert accuracy([0, 0], [1, 1]) == pytest.approx(0.0)


def test_accuracy_rejects_bad_input():
    with pytest.raises(LTUError, match="samples"):
        accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(LTUError, match="empty"):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(LTUError, match="only 3 classes"):
        accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_per_sample_outputs_match_hand_values():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([2, 1])
    out = per_sample_outputs(logits, targets)
    assert set(out) == {"loss", "confidence", "entropy", "correct"}
    assert all(isinstance(v, np.ndarray) for v in out.values())
    np.testing.assert_allclose(out["confidence"][0], 0.25)
    np.testing.assert_allclose(out["entropy"][0], math.log(4))
    np.testing.assert_allclose(out["loss"], F.cross_entropy(logits, targets, reduction="none"))
    np.testing.assert_allclose(out["confidence"], np.exp(-out["loss"]))
    assert out["correct"].dtype == bool
    assert out["correct"][1] == np.False_
    with pytest.raises(LTUError, match="samples"):
        per_sample_outputs(logits, torch.tensor([0]))
    with pytest.raises(LTUError, match="shape"):
        per_sample_outputs(torch.zeros(4), torch.zeros(4, dtype=torch.long))


# --------------------------------------------------------------------------- Avg.Gap


def test_avg_gap_self_is_zero_and_shift_is_the_shift():
    m = {"UA": 10.0, "RA": 99.0, "TA": 90.0, "MIA": 20.0, "loss_auc": 0.6}
    assert avg_gap(m, m) == 0.0
    shifted = {k: v + (3.0 if i % 2 else -3.0) for i, (k, v) in enumerate(m.items())}
    assert avg_gap(shifted, m) == pytest.approx(3.0)
    assert avg_gap({"UA": 4.0}, {"UA": 1.0}, keys=("UA",)) == pytest.approx(3.0)
    with pytest.raises(LTUError, match="'MIA'"):
        avg_gap({"UA": 1, "RA": 1, "TA": 1}, m)


# --------------------------------------------------------------------------- attacks


def test_svc_mia_finds_members_of_an_overfit_model():
    members, nonmembers = _overfit_features()
    rng = np.random.default_rng(1)
    member_like = 1.0 - rng.uniform(0.0, 0.02, 200)
    nonmember_like = rng.uniform(0.05, 0.7, 200)
    assert svc_mia_efficacy(members, nonmembers, member_like) < 5.0
    assert svc_mia_efficacy(members, nonmembers, nonmember_like) > 95.0


def test_svc_mia_is_seeded_and_balances_classes():
    members, nonmembers = _overfit_features(n=300)
    rng = np.random.default_rng(2)
    target = rng.uniform(0.0, 1.0, 100)
    many_members = np.concatenate([members, 1.0 - rng.uniform(0.0, 0.02, 3000)])
    a = svc_mia_efficacy(many_members, nonmembers, target, seed=3)
    assert a == svc_mia_efficacy(many_members, nonmembers, target, seed=3)
    assert 0.0 <= a <= 100.0
    # max_train caps the training set per class and still works
    assert svc_mia_efficacy(members, nonmembers, target, max_train=50) <= 100.0


def test_mia_efficacy_wrapper_and_feature_names():
    members, nonmembers = _overfit_features()
    ones = np.ones_like(members)
    remaining = _outputs(members, ones)
    test = _outputs(nonmembers, ones)
    forget_like_test = _outputs(np.random.default_rng(3).uniform(0.05, 0.7, 150), np.ones(150))
    assert mia_efficacy(remaining, test, forget_like_test) > 95.0
    assert mia_efficacy(remaining, test, forget_like_test, feature="entropy") > 80.0
    with pytest.raises(LTUError, match="unknown MIA feature 'margin'"):
        mia_efficacy(remaining, test, forget_like_test, feature="margin")
    with pytest.raises(LTUError, match="'confidence'"):
        mia_efficacy({"loss": members}, test, forget_like_test)


def test_loss_auc_attack_chance_and_separated():
    rng = np.random.default_rng(0)
    same_a, same_b = rng.exponential(0.5, 600), rng.exponential(0.5, 600)
    assert abs(loss_auc_attack(same_a, same_b) - 0.5) < 0.08
    low, high = rng.exponential(0.01, 300), rng.exponential(1.0, 300) + 0.5
    assert loss_auc_attack(low, high) > 0.9
    assert loss_auc_attack(high, low) > 0.9  # the attack learns the direction itself
    assert loss_auc_attack(low, high, seed=5) == loss_auc_attack(low, high, seed=5)


def test_loss_auc_attack_degenerate_inputs_do_not_crash():
    rng = np.random.default_rng(0)
    # 3 forget samples < 5 folds: folds shrink to 3; the larger set is subsampled to 3
    assert 0.0 <= loss_auc_attack([0.01, 0.02, 0.03], rng.exponential(1.0, 50) + 1) <= 1.0
    assert loss_auc_attack(np.full(20, 0.3), np.full(40, 0.3)) == 0.5
    assert loss_auc_attack(np.zeros(10), np.zeros(10)) == 0.5
    assert math.isnan(loss_auc_attack([0.1], [0.2, 0.3]))
    with pytest.raises(LTUError, match="empty"):
        loss_auc_attack([], [0.1, 0.2])
    with pytest.raises(LTUError, match="non-negative"):
        loss_auc_attack([-1.0, 0.2], [0.1, 0.2])
    with pytest.raises(LTUError, match="folds"):
        loss_auc_attack([0.1, 0.2], [0.1, 0.2], folds=1)


def test_loss_auc_direct():
    assert loss_auc([0.1, 0.2], [1.0, 2.0]) == 1.0  # a has lower loss: a is the member
    assert loss_auc([1.0, 2.0], [0.1, 0.2]) == 0.0
    # pairs (a, b): (0.1,0.05) lose, (0.1,0.5) win, (0.4,0.05) lose, (0.4,0.5) win -> 2/4
    assert loss_auc([0.1, 0.4], [0.05, 0.5]) == pytest.approx(0.5)
    assert loss_auc([0.3, 0.3], [0.3]) == pytest.approx(0.5)
    with pytest.raises(LTUError, match="b_loss is empty"):
        loss_auc([0.1], [])
    with pytest.raises(LTUError, match="NaN"):
        loss_auc([float("nan")], [0.1])


# --------------------------------------------------------------------------- aggregates


def test_unlearning_metrics_on_a_known_setup():
    members, nonmembers = _overfit_features(n=200)
    rng = np.random.default_rng(4)
    remaining = _outputs(members, np.ones(200))  # RA = 100
    test = _outputs(nonmembers, np.arange(200) % 4 != 0)  # TA = 75
    forget_conf = 1.0 - rng.uniform(0.0, 0.02, 50)  # still remembered: looks like members
    forget = _outputs(forget_conf, np.arange(50) % 5 != 0)  # Acc(D_f) = 80 -> UA = 20
    m = unlearning_metrics(forget, remaining, test, seed=0)
    assert set(m) == {"UA", "RA", "TA", "MIA", "MIA_entropy", "loss_auc"}
    assert m["UA"] == pytest.approx(20.0)
    assert m["RA"] == pytest.approx(100.0)
    assert m["TA"] == pytest.approx(75.0)
    assert m["MIA"] < 5.0
    assert m["loss_auc"] > 0.9
    assert all(isinstance(v, float) for v in m.values())


def test_selection_criterion_matches_hand_computation():
    # |90-80| = 10; 2*max(0, 85-80) = 10; 100*|0.6-0.5| = 10 -> mean 10
    assert selection_criterion(90.0, 80.0, 85.0, 0.6) == pytest.approx(10.0)
    # validation accuracy above the original: no utility penalty; AUC below 0.5 counts too
    assert selection_criterion(80.0, 86.0, 85.0, 0.45) == pytest.approx((6.0 + 0.0 + 5.0) / 3)
    assert selection_criterion(80.0, 80.0, 80.0, 0.5) == 0.0
    with pytest.raises(LTUError, match="fraction"):
        selection_criterion(80.0, 80.0, 80.0, 55.0)


def test_relative_time_efficiency():
    assert relative_time_efficiency(100.0, 10.0) == pytest.approx(10.0)
    assert relative_time_efficiency(5.0, 0.0) == math.inf
    assert math.isnan(relative_time_efficiency(0.0, 0.0))
    with pytest.raises(LTUError, match="unlearn_time_s"):
        relative_time_efficiency(1.0, -1.0)


def test_summarize():
    s = summarize([1.0, 2.0, 3.0])
    assert s == {"mean": pytest.approx(2.0), "std": pytest.approx(1.0)}  # sample std, ddof=1
    assert summarize([4.0]) == {"mean": 4.0, "std": 0.0}
    with pytest.raises(LTUError, match="at least one"):
        summarize([])


def test_errors_are_value_errors_with_one_line_messages():
    with pytest.raises(ValueError) as info:
        svc_mia_efficacy([], [0.1], [0.1])
    assert "\n" not in str(info.value)
    assert "member_feat is empty" in str(info.value)
