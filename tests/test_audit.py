"""Membership auditors, audit features and forgetting losses (ltu_lightning.audit)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification

from ltu_lightning.audit import (
    FEATURES,
    FORGET_LOSSES,
    AuditorEnsemble,
    MIHingeLoss,
    MILoss,
    NegCELoss,
    RandomLabelLoss,
    UniformKLLoss,
    make_forget_loss,
    per_sample_features,
)
from ltu_lightning.errors import LTUError

NUM_CLASSES = 4


#: one torch thread per test module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def overfit():
    """An MLP trained to 100% on 400 members of a noisy 4-class task (10% flipped labels).

    Non-members come from the same distribution. Each set is split in halves: the first half
    fits the auditors, the second half (never seen by them) is for held-out checks.
    """
    torch.manual_seed(0)
    x, y = make_classification(
        n_samples=1200,
        n_features=20,
        n_informative=8,
        n_classes=NUM_CLASSES,
        flip_y=0.1,
        random_state=0,
    )
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    mem, non = perm[:400], perm[400:800]
    model = torch.nn.Sequential(
        torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, NUM_CLASSES)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x[mem]), y[mem]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x[mem]).argmax(1) == y[mem]).float().mean() == 1.0
    d = {
        "model": model,
        "xm_fit": x[mem[:200]],
        "ym_fit": y[mem[:200]],
        "xm_out": x[mem[200:]],
        "ym_out": y[mem[200:]],
        "xn_fit": x[non[:200]],
        "yn_fit": y[non[:200]],
        "xn_out": x[non[200:]],
        "yn_out": y[non[200:]],
    }
    with torch.no_grad():
        ens = AuditorEnsemble(seed=0).fit(
            model(d["xm_fit"]), d["ym_fit"], model(d["xn_fit"]), d["yn_fit"]
        )
    d["ensemble"] = ens
    return d


# -- features ----------------------------------------------------------------------------


def test_features_match_float64_reference():
    torch.manual_seed(1)
    logits = torch.randn(64, 7, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (64,))
    f = per_sample_features(logits, y, FEATURES, eps=1e-8)
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    loss = -log_p.gather(1, y[:, None]).squeeze(1)
    ent = -(p * log_p).sum(1)
    p_y = p.gather(1, y[:, None]).squeeze(1)
    z_other = logits.scatter(1, y[:, None], float("-inf"))
    expected = {
        "loss": loss,
        "log_loss": torch.log(loss + 1e-8),
        "log_entropy": torch.log(ent + 1e-8),
        "log_margin": torch.log(p_y) - torch.log1p(-p_y),
        "logit_margin": logits.gather(1, y[:, None]).squeeze(1) - z_other.amax(1),
        "confidence": p_y,
        "entropy": ent,
    }
    for j, name in enumerate(FEATURES):
        torch.testing.assert_close(f[:, j], expected[name], msg=name)


def test_log_loss_is_exact_for_confident_members_in_float32():
    # log_softmax rounds a 2e-9 loss to 0 in float32; the relative-logit form does not.
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    f = per_sample_features(logits, torch.tensor([0]), ["loss", "log_loss", "log_margin"], 0.0)
    ref = torch.log(2 * torch.exp(torch.tensor(-20.0, dtype=torch.float64)))
    assert abs(f[0, 1].item() - ref.item()) < 1e-4
    assert abs(f[0, 2].item() - (20.0 - torch.log(torch.tensor(2.0)).item())) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_features_finite_for_extreme_logits(dtype):
    logits = torch.tensor(
        [
            [1e4, -1e4, 0.0, 5.0],
            [1e4, -1e4, 0.0, 5.0],
            [-1e4, 1e4, 1e4, -1e4],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    logits = logits.to(dtype).requires_grad_(True)
    y = torch.tensor([0, 1, 0, 3])  # very sure right, very sure wrong, tie, uniform
    f = per_sample_features(logits, y, FEATURES)
    assert f.shape == (4, len(FEATURES))
    assert torch.isfinite(f).all(), f
    (g,) = torch.autograd.grad(f.sum(), logits)
    assert torch.isfinite(g).all(), g


def test_feature_gradients_are_well_scaled_for_members():
    # Why the log domain: d log_loss / d logits stays O(1) as the loss goes to 0,
    # while d confidence / d logits vanishes.
    for margin in (5.0, 10.0, 15.0):
        logits = torch.tensor([[margin, 0.0, 0.0]], requires_grad=True)
        f = per_sample_features(logits, torch.tensor([0]), ["log_loss", "confidence"])
        (g_log,) = torch.autograd.grad(f[0, 0], logits)
        (g_raw,) = torch.autograd.grad(
            per_sample_features(logits, torch.tensor([0]), ["confidence"])[0, 0], logits
        )
        assert 0.5 < g_log.norm().item() < 2.0
        assert g_raw.norm().item() < 0.02


def test_unknown_feature_raises():
    with pytest.raises(LTUError, match="'nope'.*log_loss"):
        per_sample_features(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), ["nope"])
    with pytest.raises(LTUError, match="'nope'"):
        AuditorEnsemble(num_auditors=1, feature_sets=[["loss", "nope"]])


# -- auditors ----------------------------------------------------------------------------


def test_auditors_separate_heldout_members(overfit):
    m, ens = overfit["model"], overfit["ensemble"]
    with torch.no_grad():
        aucs = ens.auc(
            m(overfit["xm_out"]), overfit["ym_out"], m(overfit["xn_out"]), overfit["yn_out"]
        )
    print("held-out auditor AUCs:", [round(a, 3) for a in aucs])
    assert len(aucs) == 3
    assert all(a > 0.6 for a in aucs), aucs


def test_member_prob_shapes_frozen_and_differentiable(overfit):
    m, ens = overfit["model"], overfit["ensemble"]
    assert ens.is_fitted and not ens.training
    assert all(not p.requires_grad for p in ens.parameters())
    logits = m(overfit["xm_out"][:10]).detach().requires_grad_(True)
    p = ens.member_prob(logits, overfit["ym_out"][:10])
    assert p.shape == (3, 10)
    assert ((p >= 0) & (p <= 1)).all()
    (g,) = torch.autograd.grad(p.sum(), logits)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    mean = ens.mean_member_prob(logits, overfit["ym_out"][:10])
    assert mean.ndim == 0 and abs(mean.item() - p.mean().item()) < 1e-6
    # extreme logits: finite scores, finite MI loss and gradient
    extreme = torch.tensor([[1e4, -1e4, 0.0, 0.0], [-1e4, 1e4, 0.0, 0.0]], requires_grad=True)
    y2 = torch.tensor([0, 0])
    assert torch.isfinite(ens.member_prob(extreme, y2)).all()
    (g,) = torch.autograd.grad(MILoss(ens)(extreme, y2), extreme)
    assert torch.isfinite(g).all()
    # bf16 autocast does not lower the auditors' precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p_amp = ens.member_prob(logits, overfit["ym_out"][:10])
    assert p_amp.dtype == torch.float32
    torch.testing.assert_close(p_amp, p)
    # a parent LightningModule calling .train() must not unfreeze the auditors
    parent = torch.nn.Module()
    parent.aud = ens
    parent.train()
    assert not ens.training
    parent.eval()


def test_state_dict_round_trip(overfit):
    m, ens = overfit["model"], overfit["ensemble"]
    fresh = AuditorEnsemble(seed=123)
    assert not fresh.is_fitted
    with pytest.raises(LTUError, match="not fitted"):
        fresh.member_prob(torch.zeros(2, NUM_CLASSES), torch.zeros(2, dtype=torch.long))
    # nested, as inside a LightningModule checkpoint
    parent_src, parent_dst = torch.nn.Module(), torch.nn.Module()
    parent_src.auditors, parent_dst.auditors = ens, fresh
    state = copy.deepcopy(parent_src.state_dict())
    assert "auditors.fitted" in state and "auditors.auditors.0.mean" in state
    parent_dst.load_state_dict(state)
    assert fresh.is_fitted and not fresh.training
    assert all(not p.requires_grad for p in fresh.parameters())
    with torch.no_grad():
        logits = m(overfit["xn_out"])
    torch.testing.assert_close(
        fresh.member_prob(logits, overfit["yn_out"]), ens.member_prob(logits, overfit["yn_out"])
    )
    torch.testing.assert_close(fresh.nonmember_level, ens.nonmember_level)
    # A state saved before ``nonmember_level`` existed still loads (strictly), level at logit 0.
    del state["auditors.nonmember_level"]
    older = torch.nn.Module()
    older.auditors = AuditorEnsemble(seed=7)
    older.load_state_dict(state)
    assert older.auditors.is_fitted and (older.auditors.nonmember_level == 0).all()


def _random_audit_data(n_mem: int, n_non: int):
    gen = torch.Generator().manual_seed(0)
    mem = torch.randn(n_mem, 10, generator=gen) * 4
    non = torch.randn(n_non, 10, generator=gen)
    ym = torch.randint(0, 10, (n_mem,), generator=gen)
    yn = torch.randint(0, 10, (n_non,), generator=gen)
    return mem, ym, non, yn


def test_fit_is_deterministic_and_works_in_inference_mode():
    mem, ym, non, yn = _random_audit_data(200, 260)  # unbalanced: non-members subsampled
    a = AuditorEnsemble(seed=7, epochs=50).fit(mem, ym, non, yn)
    b = AuditorEnsemble(seed=7, epochs=50)
    with torch.inference_mode():  # as from a Lightning validation/epoch hook
        b.fit(mem, ym, non, yn)
    torch.testing.assert_close(a.member_prob(non, yn), b.member_prob(non, yn), rtol=0, atol=0)
    c = AuditorEnsemble(seed=8, epochs=50).fit(mem, ym, non, yn)
    assert not torch.equal(a.member_prob(non, yn), c.member_prob(non, yn))
    # refitting re-initializes: same result as a fresh fit
    a.fit(mem, ym, non, yn)
    torch.testing.assert_close(a.member_prob(non, yn), b.member_prob(non, yn), rtol=0, atol=0)


def test_fit_leaves_global_rng_alone():
    x = torch.randn(50, 3)
    y = torch.zeros(50, dtype=torch.long)
    state = torch.get_rng_state()
    AuditorEnsemble(epochs=3).fit(x, y, x + 1, y)
    assert torch.equal(state, torch.get_rng_state())


# -- forgetting losses -------------------------------------------------------------------


def test_mi_loss_descent_lowers_membership_score(overfit):
    ens = overfit["ensemble"]
    model = copy.deepcopy(overfit["model"])
    xf, yf = overfit["xm_out"][:64], overfit["ym_out"][:64]  # forget set: held-out members
    loss_fn = make_forget_loss("mi", NUM_CLASSES, auditors=ens)
    assert isinstance(loss_fn, MILoss)
    with torch.no_grad():
        before = ens.mean_member_prob(model(xf), yf).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(model(xf), yf)
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in ens.parameters())
    with torch.no_grad():
        after = ens.mean_member_prob(model(xf), yf).item()
    print(f"mean P(member) on forget set: {before:.3f} -> {after:.3f}")
    assert after < before - 0.05


def test_mi_loss_is_mean_bce_to_nonmember(overfit):
    ens = overfit["ensemble"]
    with torch.no_grad():
        logits = overfit["model"](overfit["xm_out"])
    p = ens.member_prob(logits, overfit["ym_out"])
    expected = F.binary_cross_entropy(p, torch.zeros_like(p))
    torch.testing.assert_close(MILoss(ens)(logits, overfit["ym_out"]), expected)


def test_nonmember_level_is_the_median_nonmember_logit(overfit):
    ens = overfit["ensemble"]
    with torch.no_grad():
        z = ens.member_logits(overfit["model"](overfit["xn_fit"]), overfit["yn_fit"])
    torch.testing.assert_close(ens.nonmember_level, z.median(dim=1).values)
    # Non-members sit below members: the level is a real threshold between the two.
    with torch.no_grad():
        zm = ens.member_logits(overfit["model"](overfit["xm_fit"]), overfit["ym_fit"])
    assert (zm.median(dim=1).values > ens.nonmember_level).all()


def test_mi_hinge_pushes_only_samples_above_the_nonmember_level(overfit):
    ens = overfit["ensemble"]
    with torch.no_grad():
        logits = torch.cat(
            [overfit["model"](overfit["xm_out"]), overfit["model"](overfit["xn_out"])]
        )
    y = torch.cat([overfit["ym_out"], overfit["yn_out"]])
    logits.requires_grad_(True)
    loss_fn = make_forget_loss("mi_hinge", NUM_CLASSES, auditors=ens)
    assert isinstance(loss_fn, MIHingeLoss)
    (g_hinge,) = torch.autograd.grad(loss_fn(logits, y), logits)
    (g_mi,) = torch.autograd.grad(MILoss(ens)(logits, y), logits)
    with torch.no_grad():
        above = ens.member_logits(logits, y) > ens.nonmember_level.unsqueeze(1)  # [K, N]
    # A sample below the level for every auditor gets no gradient at all ...
    none_above = ~above.any(dim=0)
    assert none_above.sum() > 10
    assert (g_hinge[none_above] == 0).all()
    assert g_mi[none_above].abs().sum() > 0
    # ... and one above it for every auditor gets exactly the mi loss's gradient.
    all_above = above.all(dim=0)
    assert all_above.sum() > 10
    torch.testing.assert_close(g_hinge[all_above], g_mi[all_above])
    # Everything at or below the level: the loss is exactly zero.
    assert loss_fn(logits[none_above], y[none_above]).item() == 0.0


def _one_logit_step(loss_fn, logits, y, lr=0.5):
    logits = logits.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(logits, y), logits)
    return (logits - lr * g).detach()


def test_neg_ce_step_increases_ce():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    loss = NegCELoss()
    torch.testing.assert_close(loss(logits, y), -F.cross_entropy(logits, y))
    stepped = _one_logit_step(loss, logits, y)
    assert F.cross_entropy(stepped, y) > F.cross_entropy(logits, y)


def test_uniform_kl_zero_at_uniform_and_step_moves_toward_uniform():
    loss = UniformKLLoss()
    y = torch.randint(0, 5, (8,))
    assert abs(loss(torch.zeros(8, 5), y).item()) < 1e-6
    assert abs(loss(torch.full((8, 5), 3.0), y).item()) < 1e-6
    torch.manual_seed(0)
    logits = torch.randn(8, 5) * 3
    assert loss(logits, y) > 0.1
    assert loss(_one_logit_step(loss, logits, y), y) < loss(logits, y)
    assert torch.isfinite(loss(torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([0])))


def test_random_label_never_true_resampled_and_seeded():
    y = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(0))
    loss = RandomLabelLoss(5, seed=3)
    r1, r2 = loss.sample_labels(y), loss.sample_labels(y)
    assert (r1 != y).all() and (r2 != y).all()
    assert not torch.equal(r1, r2)  # fresh labels every call
    assert set(r1.tolist()) == set(range(5))
    torch.testing.assert_close(RandomLabelLoss(5, seed=3).sample_labels(y), r1)
    state = torch.get_rng_state()
    logits = torch.zeros(2000, 5)
    value = loss(logits, y)
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(value, torch.log(torch.tensor(5.0)))
    # a step lowers the true-class probability
    small_y, small_logits = y[:16], torch.zeros(16, 5)
    stepped = _one_logit_step(RandomLabelLoss(5, seed=0), small_logits, small_y)
    assert F.cross_entropy(stepped, small_y) > F.cross_entropy(small_logits, small_y)


def test_make_forget_loss_factory_and_errors(overfit):
    assert set(FORGET_LOSSES) == {
        "mi",
        "mi_match",
        "mi_hinge",
        "neg_ce",
        "random_label",
        "uniform_kl",
    }
    assert isinstance(make_forget_loss("neg_ce", 5), NegCELoss)
    assert isinstance(make_forget_loss("random_label", 5, seed=1), RandomLabelLoss)
    assert isinstance(make_forget_loss("uniform_kl", 5), UniformKLLoss)
    assert isinstance(make_forget_loss("mi", 5, auditors=overfit["ensemble"]), MILoss)
    assert isinstance(make_forget_loss("mi_hinge", 5, auditors=overfit["ensemble"]), MIHingeLoss)
    with pytest.raises(LTUError, match="'mi_hinge'.*auditors"):
        make_forget_loss("mi_hinge", 5)
    with pytest.raises(
        LTUError,
        match="'gradient_ascent'.*mi, mi_match, mi_hinge, neg_ce, random_label, uniform_kl",
    ):
        make_forget_loss("gradient_ascent", 5)
    with pytest.raises(LTUError, match="'mi'.*auditors"):
        make_forget_loss("mi", 5)
    with pytest.raises(LTUError, match="num_classes"):
        make_forget_loss("random_label", 1)
    with pytest.raises(ValueError):  # LTUError is a ValueError for library users
        make_forget_loss("MI", 5)
