"""Gradient Harmonization: the PCGrad properties docs/method.md states, and the API forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltu_lightning.errors import LTUError
from ltu_lightning.optim import balance_clip, gradient_stats, harmonize
from ltu_lightning.optim.harmonize import _project_pair


def _conflicting(
    seed: int, n: int = 50, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random pair with <g_r, g_f> < 0 (flip g_f if needed)."""
    gen = torch.Generator().manual_seed(seed)
    g_r = torch.randn(n, generator=gen, dtype=dtype)
    g_f = torch.randn(n, generator=gen, dtype=dtype)
    return (g_r, -g_f) if torch.dot(g_r, g_f) > 0 else (g_r, g_f)


def _reference_pcgrad(
    g_r: np.ndarray, g_f: np.ndarray, protect_remember: bool = False
) -> np.ndarray:
    """Textbook PCGrad for two tasks, in float64 numpy, independent of the library."""
    dot = float(g_r @ g_f)
    if dot >= 0:
        return g_r + g_f
    new_f = g_f - dot / float(g_r @ g_r) * g_r
    new_r = g_r if protect_remember else g_r - dot / float(g_f @ g_f) * g_f
    return new_r + new_f


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conflicting_parts_no_longer_conflict(seed: int, dtype: torch.dtype) -> None:
    g_r, g_f = _conflicting(seed, dtype=dtype)
    new_r, new_f = _project_pair(g_r, g_f)
    # "Up to float error": relative to |g_r| |g_f| (about 50 here).
    tol = 1e-6 * (g_r.norm() * g_f.norm()).item() if dtype == torch.float32 else 1e-6
    assert torch.dot(new_r, g_f) >= -tol
    assert torch.dot(new_f, g_r) >= -tol
    # The projection removes exactly the conflicting component.
    assert torch.dot(new_r, g_f).abs() <= tol and torch.dot(new_f, g_r).abs() <= tol
    assert torch.allclose(harmonize(g_r, g_f), new_r + new_f)


def test_non_conflicting_is_summed_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    g_r, g_f = torch.rand(30, generator=gen), torch.rand(30, generator=gen)
    for mode in ("symmetric", "protect_remember", "none"):
        for granularity in ("global", "per_parameter"):
            assert torch.equal(harmonize(g_r, g_f, mode, granularity), g_r + g_f)
    orthogonal = harmonize(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]))
    assert torch.equal(orthogonal, torch.tensor([1.0, 3.0]))


@pytest.mark.parametrize("granularity", ["global", "per_parameter"])
def test_zero_vectors_give_no_nan(granularity: str) -> None:
    zero, x = torch.zeros(4), torch.tensor([1.0, -2.0, 0.5, 0.0])
    for g_r, g_f in ((zero, zero), (zero, x), (x, zero), (x, -x)):
        out = harmonize([g_r.view(2, 2)], [g_f.view(2, 2)], granularity=granularity)[0]
        assert torch.isfinite(out).all()
        stats = gradient_stats(g_r, g_f)
        assert all(np.isfinite(v) for v in stats.values())
    assert torch.equal(harmonize(zero, zero), zero)
    assert torch.equal(harmonize(x, -x), zero)  # opposite gradients cancel completely
    assert gradient_stats(zero, x)["cos"] == 0.0


def test_per_parameter_differs_from_global_and_agrees_for_one_parameter() -> None:
    # Parameter 1 conflicts, parameter 2 agrees strongly: globally there is no conflict.
    g_r = [torch.tensor([1.0, 0.0]), torch.tensor([2.0])]
    g_f = [torch.tensor([-1.0, 1.0]), torch.tensor([2.0])]
    glob = harmonize(g_r, g_f, granularity="global")
    per = harmonize(g_r, g_f, granularity="per_parameter")
    assert all(torch.equal(h, r + f) for h, r, f in zip(glob, g_r, g_f, strict=True))
    assert not torch.allclose(per[0], glob[0])
    assert torch.equal(per[1], glob[1])

    a, b = _conflicting(1, n=12)
    single_glob = harmonize([a.view(3, 4)], [b.view(3, 4)], granularity="global")[0]
    single_per = harmonize([a.view(3, 4)], [b.view(3, 4)], granularity="per_parameter")[0]
    assert torch.equal(single_glob, single_per)
    assert torch.allclose(single_glob.view(-1), harmonize(a, b))


def test_protect_remember_keeps_g_r() -> None:
    g_r, g_f = _conflicting(3)
    new_r, new_f = _project_pair(g_r, g_f, mode="protect_remember")
    assert torch.equal(new_r, g_r)
    assert torch.dot(new_f, g_r).abs() < 1e-4
    assert torch.allclose(harmonize(g_r, g_f, mode="protect_remember"), g_r + new_f)
    assert torch.equal(harmonize(g_r, g_f, mode="none"), g_r + g_f)


@pytest.mark.parametrize("mode", ["symmetric", "protect_remember"])
def test_matches_reference_pcgrad(mode: str) -> None:
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (2, 2, 2), (1,)]
    protect = mode == "protect_remember"
    for _ in range(20):
        r = [rng.standard_normal(s) for s in shapes]
        f = [rng.standard_normal(s) for s in shapes]
        tr, tf = [torch.from_numpy(x) for x in r], [torch.from_numpy(x) for x in f]
        flat = np.concatenate([x.ravel() for x in r]), np.concatenate([x.ravel() for x in f])
        got = harmonize(tr, tf, mode, "global")
        assert [g.shape for g in got] == [torch.Size(s) for s in shapes]
        got_flat = torch.cat([g.reshape(-1) for g in got]).numpy()
        np.testing.assert_allclose(got_flat, _reference_pcgrad(*flat, protect), atol=1e-12)
        got = harmonize(tr, tf, mode, "per_parameter")
        for g, a, b in zip(got, r, f, strict=True):
            expected = _reference_pcgrad(a.ravel(), b.ravel(), protect)
            np.testing.assert_allclose(g.numpy().ravel(), expected, atol=1e-12)


def test_form_is_preserved() -> None:
    g_r, g_f = _conflicting(4, n=6)
    assert isinstance(harmonize(g_r, g_f), torch.Tensor)
    out = harmonize((g_r[:2], g_r[2:].view(2, 2)), (g_f[:2], g_f[2:].view(2, 2)))
    assert isinstance(out, list) and [o.shape for o in out] == [(2,), (2, 2)]


def test_differentiable() -> None:
    g_r, g_f = (t.double().requires_grad_() for t in _conflicting(5, n=5))
    assert torch.autograd.gradcheck(lambda a, b: harmonize(a, b), (g_r, g_f))
    assert torch.autograd.gradgradcheck(lambda a, b: harmonize(a, b), (g_r, g_f))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "pcgrad"}, r"mode must be one of 'symmetric', .*'none'; got 'pcgrad'"),
        ({"granularity": "layer"}, r"granularity must be one of 'global', 'per_parameter'"),
        ({"eps": 0.0}, r"eps must be > 0; got 0.0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(LTUError, match=match):
        harmonize(torch.ones(2), torch.ones(2), **kwargs)


def test_bad_inputs_raise() -> None:
    with pytest.raises(LTUError, match="same length"):
        harmonize([torch.ones(2)], [torch.ones(2), torch.ones(1)])
    with pytest.raises(LTUError, match=r"shape at index 0: \(2,\) vs \(3,\)"):
        harmonize([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(LTUError, match="both be tensors or both be sequences"):
        harmonize(torch.ones(2), [torch.ones(2)])
    with pytest.raises(LTUError, match="balance_c must be > 0"):
        balance_clip(torch.ones(2), torch.ones(2), 0.0)


def test_balance_clip() -> None:
    g_r, g_f = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 100.0])
    clipped = balance_clip(g_r, g_f, 2.0)
    assert torch.allclose(clipped.norm(), torch.tensor(10.0))
    assert torch.allclose(clipped / clipped.norm(), g_f / g_f.norm())  # direction kept
    assert torch.equal(balance_clip(g_r, torch.tensor([1.0, 1.0]), 2.0), torch.tensor([1.0, 1.0]))
    as_list = balance_clip([g_r[:1], g_r[1:]], [g_f[:1], g_f[1:]], 2.0)
    assert torch.allclose(torch.cat(as_list), clipped)
    assert torch.equal(balance_clip(torch.zeros(2), g_f, 2.0), torch.zeros(2))
    assert torch.equal(balance_clip(g_r, torch.zeros(2), 2.0), torch.zeros(2))


def test_gradient_stats() -> None:
    stats = gradient_stats(torch.tensor([3.0, 4.0]), torch.tensor([-3.0, 0.0]))
    assert stats == pytest.approx({"cos": -0.6, "conflict": 1.0, "norm_r": 5.0, "norm_f": 3.0})
    assert all(isinstance(v, float) for v in stats.values())
    assert gradient_stats([torch.ones(2)], [torch.ones(2)])["conflict"] == 0.0
