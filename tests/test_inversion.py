"""The inversion audit's scoring (evaluation/inversion.py): hand-made heads and outputs, then
real unlearning on scikit-learn's digits (plain torch, a small MLP: about a second in all)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.inversion import (
    black_box_scores,
    class_ranks,
    classifier_head,
    excess_correlation,
    inferred_histogram,
    inversion_metrics,
    label_histogram,
    probe_outputs,
    total_variation,
    white_box_scores,
)
from ltu_lightning.networks import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def _head(weight: list[list[float]], bias: list[float]) -> nn.Linear:
    head = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
        head.bias.copy_(torch.tensor(bias))
    return head


def test_white_box_scores_are_the_centred_drop_of_the_head_at_the_mean_feature() -> None:
    original = _head([[0.0, 0.0]] * 3, [0.0, 0.0, 0.0])
    # class 0's bias drops by 3; class 2's weight row drops by 1 on feature 0, whose mean is 2
    unlearned = _head([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], [-3.0, 0.0, 0.0])
    features = torch.tensor([[1.0, 5.0], [3.0, -5.0]])  # mean (2, 0)
    scores = white_box_scores(original, unlearned, features)
    # drops (3, 0, 2), centred by their mean 5/3
    assert scores == pytest.approx([3 - 5 / 3, -5 / 3, 2 - 5 / 3])
    # a shift of every logit changes no prediction, and no score
    shifted = _head([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], [-2.0, 1.0, 1.0])
    assert white_box_scores(original, shifted, features) == pytest.approx(scores)
    with pytest.raises(LTUError, match="same architecture"):
        white_box_scores(original, _head([[0.0]] * 3, [0.0] * 3), features)


def test_black_box_scores_are_the_drop_of_the_mean_probability() -> None:
    original = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    unlearned = torch.log(torch.tensor([[0.1, 0.45, 0.45], [0.3, 0.35, 0.35]]))
    scores = black_box_scores(original, unlearned)
    assert scores == pytest.approx([0.3, -0.15, -0.15])
    assert scores.sum() == pytest.approx(0.0)


def test_histograms_ranks_and_correlation() -> None:
    assert inferred_histogram([0.3, -0.15, 0.1]) == pytest.approx([0.75, 0.0, 0.25])
    assert inferred_histogram([0.0, 0.0]) == pytest.approx([0.5, 0.5])  # nothing learned
    assert label_histogram([0, 0, 2, 1], 3) == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(LTUError, match="classes 0..2"):
        label_histogram([3], 3)
    assert total_variation(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0
    assert total_variation(np.array([0.5, 0.5]), np.array([0.75, 0.25])) == pytest.approx(0.25)
    scores = np.array([0.1, 0.9, 0.5, 0.5])
    assert class_ranks(scores, [1]) == (1.0, 1.0)
    assert class_ranks(scores, [0]) == (0.0, 4.0)
    assert class_ranks(scores, [2]) == (0.0, 2.5)  # tied with class 3: the average rank
    assert class_ranks(scores, [1, 0]) == (0.5, 2.5)
    prior = np.full(4, 0.25)
    forget = np.array([1, 1, 1, 2, 2, 0, 3, 3])  # counts 1, 3, 2, 2: excess -1, 1, 0, 0
    assert excess_correlation(np.array([0.0, 1.0, 0.5, 0.4]), forget, prior) > 0.9
    assert np.isnan(excess_correlation(np.zeros(4), forget, prior))


def test_probe_outputs_need_a_network_that_ends_in_its_head() -> None:
    batches = [(torch.randn(5, 4), torch.zeros(5))]
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    out = probe_outputs(net, batches, 3)
    assert out.logits.shape == (5, 3) and out.features.shape == (5, 6)
    assert classifier_head(net, 3) is net[2]
    with pytest.raises(LTUError, match="is not its output layer"):
        probe_outputs(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), batches, 3)
    with pytest.raises(LTUError, match="no nn.Linear with 7 outputs"):
        classifier_head(net, 7)


# ------------------------------------------------------------- real unlearning on digits
X_ALL, Y_ALL = load_digits(return_X_y=True)
X = torch.tensor(X_ALL / 16.0, dtype=torch.float32)
Y = torch.tensor(Y_ALL)
_ORDER = np.random.default_rng(0).permutation(len(Y))
TRAIN, TEST = _ORDER[:1400], _ORDER[1400:]  # the test part is the probes: never trained on


def _train(indices: np.ndarray, net: nn.Module | None = None, epochs: int = 20) -> nn.Module:
    torch.manual_seed(0)
    net = net or MLP(10, 64, [64])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    idx = torch.as_tensor(indices)
    for _ in range(epochs):
        for batch in idx[torch.randperm(len(idx))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[batch]), Y[batch]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def original() -> nn.Module:
    net = _train(TRAIN)
    assert (net(X[TEST]).argmax(1) == Y[TEST]).float().mean() > 0.9
    return net


def _audit(original: nn.Module, unlearned: nn.Module, forget: np.ndarray, classes=()) -> dict:
    probes = [(X[TEST], Y[TEST])]
    return inversion_metrics(
        probe_outputs(original, probes, 10),
        probe_outputs(unlearned, probes, 10),
        classifier_head(original, 10),
        classifier_head(unlearned, 10),
        Y_ALL[forget],
        Y_ALL[TRAIN],
        classes,
    )


def _gradient_ascent(original: nn.Module, forget: np.ndarray, steps: int = 5) -> nn.Module:
    net = copy.deepcopy(original).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        (-nn.functional.cross_entropy(net(X[forget]), Y[forget])).backward()
        opt.step()
    return net.eval()


def test_class_wise_unlearning_gives_the_forgotten_class_away(original) -> None:
    forget = TRAIN[Y_ALL[TRAIN] == 3]
    ga = _audit(original, _gradient_ascent(original, forget), forget, [3])
    retrain = _audit(original, _train(TRAIN[Y_ALL[TRAIN] != 3]), forget, [3])
    for columns in (ga, retrain):
        assert columns["inv_wb_hit"] == columns["inv_bb_hit"] == 1.0  # chance: 1/10
        assert columns["inv_wb_rank"] == columns["inv_bb_rank"] == 1.0  # chance: 5.5
        # the inferred histogram is far closer to D_f's (all 3s) than the prior (TV 0.9)
        assert max(columns["inv_wb_tv"], columns["inv_bb_tv"]) < 0.5 < columns["inv_prior_tv"]
    # the original compared with itself reveals nothing: chance exactly
    same = _audit(original, original, forget, [3])
    assert same["inv_bb_hit"] == 0.0 and same["inv_bb_rank"] == 5.5
    assert same["inv_bb_tv"] == pytest.approx(0.9, abs=0.01)


def _retrained(original: nn.Module, weights: np.ndarray, size: int, n: int) -> list[dict]:
    """The audit of ``n`` models retrained without a forget set of ``size`` drawn from D with
    per-sample ``weights`` (seeded)."""
    out = []
    for seed in range(n):
        p = weights / weights.sum()
        forget = np.random.default_rng(10 + seed).choice(TRAIN, size, replace=False, p=p)
        out.append(_audit(original, _train(np.setdiff1d(TRAIN, forget)), forget))
    return out


def test_retraining_without_a_random_forget_set_reveals_no_labels(original) -> None:
    """Five random forget sets (10 % of D), each retrained without: the inferred histograms are
    farther from D_f's than the training-label prior is. The prior's TV is only D_f's sampling
    noise (~0.07 here); an attack without signal spreads its positive scores over a few classes
    (TV ~0.5); with signal it goes below the prior (the class-wise test above: < 0.5 against
    0.9), so this comparison can fail. (The rank correlation ρ is not asserted here: D_r = D −
    D_f, so a retrained model does carry D_f's label excess, weakly: over 12 such sets the mean
    white-box ρ was 0.25 ± 0.10, the black-box one 0.04 ± 0.11.)"""
    for columns in _retrained(original, np.ones(len(TRAIN)), 140, 5):
        assert columns["inv_wb_tv"] > columns["inv_prior_tv"]
        assert columns["inv_bb_tv"] > columns["inv_prior_tv"]


def test_the_rank_correlation_finds_a_forget_set_skewed_to_some_classes(original) -> None:
    """Forget sets drawn with classes 0-2 five times as likely (about 20 % of each of them, 4 %
    of the others): the black-box scores rank the over-represented classes first. Under no
    signal a Spearman ρ over 10 classes has a standard deviation of about 1/√9 = 0.33, the mean
    of three about 0.19; each of these is above 0.5."""
    skewed = _retrained(original, np.where(Y_ALL[TRAIN] < 3, 5.0, 1.0), 200, 3)
    assert min(c["inv_bb_rho"] for c in skewed) > 0.5
