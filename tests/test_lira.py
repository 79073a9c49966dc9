"""The per-example membership audit: LiRA's scores and figures (evaluation/lira.py) and its
shadow models on a tiny benchmark (benchmark/shadows.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltu_lightning.benchmark.runner import Benchmark
from ltu_lightning.benchmark.shadows import (
    lira_audit,
    shadow_memberships,
    shadow_pool,
    train_shadows,
)
from ltu_lightning.data.datamodule import UnlearningDataModule
from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.lira import (
    fit_shadow_gaussians,
    logit_confidence,
    membership_figures,
    offline_scores,
    online_scores,
    tpr_at_fpr,
)
from ltu_lightning.modules.checkpoints import load_backbone_weights
from ltu_lightning.networks import MLP

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# ----------------------------------------------------------------------------- pure math


def test_logit_confidence_is_log_odds_of_the_true_label_and_finite_when_p_rounds_to_one():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [80.0, 0.0, 0.0]])
    targets = np.array([0, 2, 0])
    phi = logit_confidence(logits, targets)
    p = np.exp(logits[:2]) / np.exp(logits[:2]).sum(1, keepdims=True)
    py = p[[0, 1], targets[:2]]
    np.testing.assert_allclose(phi[:2], np.log(py / (1 - py)), rtol=1e-12)
    # p_y = 1 - 2e-35 is 1.0 in float64; the log-odds are still 80 - log 2
    assert phi[2] == pytest.approx(80.0 - np.log(2.0))
    with pytest.raises(LTUError, match="class labels"):
        logit_confidence(logits, np.array([0, 3, 0]))


def _paired_mask(num_shadows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Complementary halves: every example is IN for exactly half of the shadows."""
    rows = []
    for _ in range(num_shadows // 2):
        first = rng.permutation(n) < n // 2
        rows += [first, ~first]
    return np.stack(rows)


def test_a_memorised_sample_gets_a_high_score_and_a_typical_one_does_not():
    """Example 0 is a mislabelled outlier: models that train on it memorise its label (φ ≈ 6),
    models that do not give its label little confidence (φ ≈ −3). Examples 1.. are typical:
    training on them barely changes their confidence (φ ≈ 2.2 IN, 2.0 OUT)."""
    rng = np.random.default_rng(0)
    n, shadows = 41, 16
    mean_in = np.r_[6.0, np.full(n - 1, 2.2)]
    mean_out = np.r_[-3.0, np.full(n - 1, 2.0)]
    mask = _paired_mask(shadows, n, rng)
    scores = np.where(mask, mean_in, mean_out) + rng.normal(0, 1.0, (shadows, n))
    fit = fit_shadow_gaussians(scores, mask)
    assert fit.variance == "global"  # few shadows
    member = mean_in + rng.normal(0, 1.0, n)  # a model that trained on every example
    nonmember = mean_out + rng.normal(0, 1.0, n)  # one that trained on none
    on_member, on_nonmember = online_scores(member, fit), online_scores(nonmember, fit)
    assert on_member[0] > 10 and on_nonmember[0] < -10
    # typical examples: only the noise of 8 shadow scores per side (|Λ| of a few units at most)
    assert np.abs(on_member[1:]).max() < 3 and np.abs(on_nonmember[1:]).max() < 3
    assert on_member[0] > 4 * np.abs(on_member[1:]).max()
    off_member, off_nonmember = offline_scores(member, fit), offline_scores(nonmember, fit)
    assert off_member[0] > 10 > off_member[1:].max()
    assert off_nonmember[0] < 2


def test_per_example_variance_falls_back_to_the_global_one_and_missing_sides_are_refused():
    rng = np.random.default_rng(1)
    scores = rng.normal(0, 1, (4, 6))
    scores[:, 0] *= 10  # one example varies far more than the others
    mask = _paired_mask(4, 6, rng)
    per = fit_shadow_gaussians(scores, mask, "per_example")
    glob = fit_shadow_gaussians(scores, mask, "global")
    assert per.std_in[0] > 3 * per.std_in[1:].max()
    assert np.ptp(glob.std_in) == 0 and np.ptp(glob.std_out) == 0
    mask[:, 2] = True  # example 2 is in every shadow's training set
    with pytest.raises(LTUError, match="no shadow model out"):
        fit_shadow_gaussians(scores, mask)
    with pytest.raises(LTUError, match="same examples"):
        online_scores(np.zeros(5), glob)


def test_auc_and_tpr_at_fpr_match_a_hand_computed_roc():
    members = np.array([5.0, 4.0, 3.0, 1.0])
    nonmembers = np.array([3.5, 2.0, 0.5, 0.0, -1.0])
    # pairs member > non-member: 5 + 5 + 4 + 3 = 17 of 20
    figures = membership_figures(members, nonmembers, fprs=(0.2, 0.1), like_fpr=0.2)
    assert figures["auc"] == pytest.approx(17 / 20)
    # "member if score ≥ 3": members 5, 4, 3 and one non-member (3.5) of five: FPR 20 %
    assert figures["tpr@20%"] == pytest.approx(75.0)
    assert figures["member_like"] == 3
    # 10 % is below one non-member in five: zero false positives, members above 3.5
    assert figures["tpr@10%"] == pytest.approx(50.0)
    assert tpr_at_fpr(members, nonmembers, 0.001) == pytest.approx(50.0)
    assert membership_figures(members, nonmembers)["member_like"] == 2
    assert figures["fpr_resolution"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- shadows


@pytest.fixture
def digits_bench(tmp_path: Path) -> tuple[Benchmark, UnlearningDataModule]:
    """A benchmark on scikit-learn's digits (1 epoch) whose seed 0 has its split manifest."""
    bench = Benchmark(
        name="digits",
        original=str(CONFIGS / "pretrain" / "digits.yaml"),
        retrain=str(CONFIGS / "retrain" / "digits.yaml"),
        methods=[],
        seeds=[0],
        out=tmp_path / "bench",
        overrides={"trainer.max_epochs": 1},
    )
    dm = UnlearningDataModule(
        dataset="digits",
        holdout=0.2,
        seed=0,
        manifest_path=str(bench.stage("original", 0).manifest),
    )
    dm.setup()  # writes the seed's manifest, as its original stage would
    return bench, dm


def _network(checkpoint: Path, dm: UnlearningDataModule) -> torch.nn.Module:
    net = MLP(num_classes=10, in_features=64, hidden=[256, 256])
    load_backbone_weights(net, checkpoint, dm.manifest_id)
    return net


@pytest.mark.usefixtures("one_thread")
def test_shadows_train_on_complementary_halves_write_their_cache_and_reuse_it(digits_bench):
    bench, dm = digits_bench
    pool = shadow_pool(dm.manifest.roles)
    lines: list[str] = []
    shadows = train_shadows(bench, 0, num_shadows=2, progress=lines.append)
    root = bench.out / "seed_0" / "audits" / "shadows"
    assert [s.root for s in shadows] == [root / "0", root / "1"]
    first, second = (s.in_indices for s in shadows)
    assert abs(first.size - pool.size / 2) <= 1 and abs(second.size - pool.size / 2) <= 1
    assert np.intersect1d(first, second).size == 0
    np.testing.assert_array_equal(np.union1d(first, second), pool)
    for shadow in shadows:
        recorded = json.loads((shadow.root / "in_indices.json").read_text())
        assert recorded == shadow.in_indices.tolist()
        assert json.loads((shadow.root / "shadow.json").read_text())["num_in"] == len(recorded)
        assert shadow.checkpoint.is_file() and not shadow.reused
    stamps = [s.checkpoint.stat().st_mtime_ns for s in shadows]
    # the audit reuses them: nothing is trained again
    models = {
        "original": _network(shadows[0].checkpoint, dm),
        "retrain": _network(shadows[1].checkpoint, dm),
    }
    lines.clear()
    results = lira_audit(bench, 0, dm, models, num_shadows=2, progress=lines.append)
    assert len(lines) == 2 and all("reusing" in line for line in lines)
    assert [s.checkpoint.stat().st_mtime_ns for s in shadows] == stamps
    n_forget = len(dm.role_indices("forget"))
    for row in results.values():
        assert 0 <= row["lira_auc"] <= 1 and 0 <= row["lira_offline_auc"] <= 1
        assert 0 <= row["lira_tpr@0.1%"] <= row["lira_tpr@1%"] <= 100
        assert row["lira_member_like"] == pytest.approx(row["lira_tpr@1%"] * n_forget / 100)
    assert results["retrain"]["lira_auc_vs_retrain"] == 0.5
    # a changed recipe trains them again
    bench.overrides = {"trainer.max_epochs": 2}
    lines.clear()
    train_shadows(bench, 0, num_shadows=2, progress=lines.append)
    assert sum("training again" in line for line in lines) == 2


def test_memberships_are_paired_halves_and_odd_counts_or_missing_splits_are_refused(tmp_path):
    halves = shadow_memberships(np.arange(11), seed=3, num_shadows=4)
    counts = sum(np.isin(np.arange(11), h).astype(int) for h in halves)
    assert (counts == 2).all()  # every example in exactly half of the shadows
    assert not np.array_equal(halves[0], halves[2])  # each pair its own draw
    with pytest.raises(LTUError, match="even number"):
        shadow_memberships(np.arange(11), seed=3, num_shadows=3)
    bench = Benchmark("x", str(CONFIGS / "pretrain" / "digits.yaml"), "", [], [0], tmp_path)
    with pytest.raises(LTUError, match="no split manifest"):
        train_shadows(bench, 0, num_shadows=2)


def test_a_train_index_file_replaces_the_training_set_and_bad_ones_are_refused(tmp_path):
    (tmp_path / "half.json").write_text(json.dumps([5, 1, 300]))
    dm = UnlearningDataModule(
        dataset="digits", holdout=0.2, train_index_file=str(tmp_path / "half.json")
    )
    dm.setup()
    np.testing.assert_array_equal(dm.role_indices("train"), [1, 5, 300])
    assert len(dm.role_dataset("train")) == 3
    assert len(dm.role_indices("forget")) > 3  # the split itself is the seed's
    (tmp_path / "bad.json").write_text(json.dumps([1, 99999]))
    with pytest.raises(LTUError, match="out of range"):
        UnlearningDataModule(
            dataset="digits", holdout=0.2, train_index_file=str(tmp_path / "bad.json")
        ).setup()
    with pytest.raises(LTUError, match="train_on: train"):
        UnlearningDataModule(dataset="digits", train_on="unlearn", train_index_file="x.json")
