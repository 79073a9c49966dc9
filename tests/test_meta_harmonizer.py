"""MetaHarmonizer: the meta-gradient against finite differences and hand computations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from ltu_lightning.errors import LTUError
from ltu_lightning.optim import MetaHarmonizer, gradient_stats

Batch = tuple[Tensor, Tensor]


#: one torch thread per test module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


class TinyMLP(nn.Module):
    """Smooth (tanh) so second derivatives are non-trivial; a buffer so buffers must be passed."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4) if norm else nn.Identity()
        self.fc2 = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([1.0, 0.5, 2.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x * self.scale))))


def remember_loss(forward, batch: Batch) -> Tensor:
    x, y = batch
    return F.cross_entropy(forward(x), y)


def forget_loss(forward, batch: Batch) -> Tensor:
    """Gradient ascent: conflicts with remembering, so harmonization has work to do."""
    x, y = batch
    return -F.cross_entropy(forward(x), y)


def _batches(seed: int, dtype: torch.dtype = torch.float64, n: int = 6) -> list[Batch]:
    """``[S_r, Q_r, S_f, Q_f]``; forget inputs lie near the remember inputs with the same labels,
    so ascent on them conflicts with remembering (the projection has work to do)."""
    gen = torch.Generator().manual_seed(seed)
    s_r, q_r = (
        (torch.randn(n, 3, generator=gen, dtype=dtype), torch.randint(0, 3, (n,), generator=gen))
        for _ in range(2)
    )
    s_f, q_f = ((x + 0.5 * torch.randn(n, 3, generator=gen, dtype=dtype), y) for x, y in (s_r, q_r))
    return [s_r, q_r, s_f, q_f]


def _model(seed: int = 0, norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return TinyMLP(norm).double()


def _run(model: nn.Module, batches: list[Batch], **kwargs) -> tuple[Tensor, dict[str, float]]:
    """One step with SGD(lr=1); returns the gradient written into .grad (flattened) and stats.
    The step is the exact one of the formulas: the trust region is off unless a test sets it."""
    kwargs.setdefault("max_step", None)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    s_r, q_r, s_f, q_f = batches
    stats = MetaHarmonizer(model, opt, **kwargs).step(
        remember_loss, forget_loss, s_r, q_r, s_f, q_f
    )
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(after, before - grad, atol=1e-12, rtol=0)  # the optimizer stepped
    return grad, stats


def _pcgrad(g_r: Tensor, g_f: Tensor) -> Tensor:
    """Hand-written two-task PCGrad on flat vectors (the spec's formula)."""
    dot = torch.dot(g_r, g_f)
    if dot >= 0:
        return g_r + g_f
    return g_r - dot / g_f.dot(g_f) * g_f + g_f - dot / g_r.dot(g_r) * g_r


class Reference:
    """The LTU outer objectives as functions of a flat θ, written independently of the library."""

    def __init__(
        self,
        model: nn.Module,
        batches: list[Batch],
        alpha: float,
        inner_steps: int,
        mode: str,
        query_weight: float = 1.0,
        forget_weight: float = 1.0,
    ) -> None:
        self.model, self.batches = model, batches
        self.alpha, self.inner_steps, self.mode = alpha, inner_steps, mode
        self.lam, self.w_f = query_weight, forget_weight
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for p in model.parameters()]

    def _loss(self, loss, theta: Tensor, batch: Batch) -> Tensor:
        chunks = theta.split([s.numel() for s in self.shapes])
        params = {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}
        return loss(lambda x: functional_call(self.model, params, (x,)), batch)

    def _grad(self, loss, theta: Tensor, batch: Batch) -> Tensor:
        theta = theta.detach().requires_grad_()
        with torch.enable_grad():
            return torch.autograd.grad(self._loss(loss, theta, batch), theta)[0]

    def fast(self, theta: Tensor) -> Tensor:
        s_r, _, s_f, _ = self.batches
        for _ in range(self.inner_steps):
            g_r, g_f = self._grad(remember_loss, theta, s_r), self._grad(forget_loss, theta, s_f)
            h = g_r + g_f if self.mode == "none" else _pcgrad(g_r, g_f)
            theta = theta - self.alpha * h
        return theta

    def objectives(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        s_r, q_r, s_f, q_f = self.batches
        fast = self.fast(theta)
        f_r = self._loss(remember_loss, theta, s_r) + self.lam * self._loss(
            remember_loss, fast, q_r
        )
        f_f = self._loss(forget_loss, theta, s_f) + self.lam * self._loss(forget_loss, fast, q_f)
        return f_r, self.w_f * f_f

    def finite_difference(self, theta: Tensor, h: float = 1e-5) -> tuple[Tensor, Tensor]:
        """Central differences of both outer objectives (second-order truth)."""
        g_r, g_f = torch.zeros_like(theta), torch.zeros_like(theta)
        with torch.no_grad():
            for i in range(theta.numel()):
                e = torch.zeros_like(theta)
                e[i] = h
                (rp, fp), (rm, fm) = self.objectives(theta + e), self.objectives(theta - e)
                g_r[i], g_f[i] = (rp - rm) / (2 * h), (fp - fm) / (2 * h)
        return g_r, g_f

    def first_order(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Support gradients at θ plus query gradients taken at the (constant) fast weights."""
        s_r, q_r, s_f, q_f = self.batches
        fast = self.fast(theta).detach()
        g_r = self._grad(remember_loss, theta, s_r) + self.lam * self._grad(
            remember_loss, fast, q_r
        )
        g_f = self._grad(forget_loss, theta, s_f) + self.lam * self._grad(forget_loss, fast, q_f)
        return g_r, self.w_f * g_f


def _flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize(
    ("harmonization", "inner_steps"), [("none", 1), ("symmetric", 1), ("symmetric", 2)]
)
def test_second_order_matches_finite_differences(harmonization: str, inner_steps: int) -> None:
    batches, alpha = _batches(0), 0.5
    model = _model()
    ref = Reference(
        copy.deepcopy(model),
        batches,
        alpha,
        inner_steps,
        harmonization,
        query_weight=0.7,
        forget_weight=1.3,
    )
    theta = _flat_params(model)
    fd_r, fd_f = ref.finite_difference(theta)
    expected = fd_r + fd_f if harmonization == "none" else _pcgrad(fd_r, fd_f)
    kwargs = dict(
        inner_lr=alpha,
        inner_steps=inner_steps,
        harmonization=harmonization,
        query_weight=0.7,
        forget_weight=1.3,
    )
    grad2, stats = _run(model, batches, meta_order=2, **kwargs)
    assert torch.allclose(grad2, expected, atol=1e-7, rtol=0)
    assert stats == pytest.approx(stats | gradient_stats(fd_r, fd_f), abs=1e-6)
    assert grad2.abs().max() > 1e-2  # the meta-gradient is not trivially zero

    fo_r, fo_f = ref.first_order(theta)
    grad1, _ = _run(_model(), batches, meta_order=1, **kwargs)
    assert torch.allclose(grad1, fo_r + fo_f if harmonization == "none" else _pcgrad(fo_r, fo_f))
    assert (grad1 - grad2).abs().max() > 1e-3  # first order is an approximation


@pytest.mark.parametrize("meta_order", [1, 2])
def test_query_term_contributes(meta_order: int) -> None:
    batches = _batches(1)
    grad, stats = _run(_model(), batches, meta_order=meta_order)
    other_query = [batches[0], batches[3], batches[2], batches[1]]  # swap Q_r and Q_f
    grad_other, _ = _run(_model(), other_query, meta_order=meta_order)
    assert (grad - grad_other).abs().max() > 1e-3
    # Without the query terms, the meta update is the joint descent on the supports.
    no_query, _ = _run(_model(), batches, meta_order=meta_order, query_weight=0.0)
    joint, _ = _run(_model(), batches, meta=False)
    assert torch.allclose(no_query, joint, atol=1e-12, rtol=0)
    assert (grad - joint).abs().max() > 1e-3
    assert set(stats) == {
        "loss_r_support",
        "loss_f_support",
        "loss_r_query",
        "loss_f_query",
        "cos",
        "conflict",
        "norm_r",
        "norm_f",
        "norm_update",
    }


@pytest.mark.parametrize(
    ("harmonization", "balance"), [("symmetric", "none"), ("protect_remember", "clip")]
)
def test_joint_descent_equals_hand_computation(harmonization: str, balance: str) -> None:
    s_r, _, s_f, _ = _batches(2)
    model, w_f, c = _model(), 2.0, 0.5
    hand = copy.deepcopy(model)
    remember_loss(hand, s_r).backward()
    g_r = torch.cat([p.grad.reshape(-1) for p in hand.parameters()])
    hand.zero_grad()
    (w_f * forget_loss(hand, s_f)).backward()
    g_f = torch.cat([p.grad.reshape(-1) for p in hand.parameters()])
    stats_expected = gradient_stats(g_r, g_f)
    if balance == "clip":
        g_f = g_f * min(1.0, (c * g_r.norm() / g_f.norm()).item())
    assert torch.dot(g_r, g_f) < 0, "the example must conflict"
    if harmonization == "symmetric":
        expected = _pcgrad(g_r, g_f)
    else:
        expected = g_r + g_f - torch.dot(g_r, g_f) / g_r.dot(g_r) * g_r

    grad, stats = _run(
        model,
        [s_r, None, s_f, None],
        meta=False,
        forget_weight=w_f,
        harmonization=harmonization,
        balance=balance,
        balance_c=c,
    )
    assert torch.allclose(grad, expected, atol=1e-12, rtol=0)
    assert "loss_r_query" not in stats
    assert stats["conflict"] == 1.0
    assert stats == pytest.approx(stats | stats_expected, abs=1e-12)
    assert stats["norm_update"] == pytest.approx(expected.norm().item(), abs=1e-12)
    assert stats["loss_f_support"] == pytest.approx(forget_loss(hand, s_f).item(), abs=1e-12)


@pytest.mark.parametrize("meta_order", [1, 2])
def test_bn_eval_freezes_running_stats_and_restores_modes(meta_order: int) -> None:
    model = _model(norm=True).train()
    before = {k: b.clone() for k, b in model.named_buffers()}
    grad, stats = _run(model, _batches(3), meta_order=meta_order, inner_steps=2)
    for k, b in model.named_buffers():
        assert torch.equal(b, before[k]), k
    assert model.training and model.norm.training
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    model.eval()
    _run(model, _batches(3), meta_order=meta_order)
    assert not model.norm.training


def test_bn_train_updates_running_stats_at_theta_only() -> None:
    model = _model(norm=True).train()
    mean_before = model.norm.running_mean.clone()
    _run(model, _batches(4), bn_mode="train", inner_steps=3)
    # One forward on S_r and one on S_f at θ; inner and query forwards use a throwaway copy.
    assert model.norm.num_batches_tracked.item() == 2
    assert not torch.equal(model.norm.running_mean, mean_before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dtypes_buffers_unused_and_frozen_parameters(dtype: torch.dtype) -> None:
    model = _model(norm=True).to(dtype)
    model.unused = nn.Parameter(torch.ones(2, dtype=dtype))
    model.fc1.bias.requires_grad_(False)
    frozen = model.fc1.bias.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    s_r, q_r, s_f, q_f = _batches(5, dtype=dtype)
    stats = MetaHarmonizer(model, opt, meta_order=2, granularity="per_parameter").step(
        remember_loss, forget_loss, s_r, q_r, s_f, q_f
    )
    assert all(isinstance(v, float) and v == v for v in stats.values())
    assert model.fc2.weight.grad.dtype == dtype and model.fc2.weight.grad.abs().max() > 0
    assert torch.equal(model.unused.grad, torch.zeros(2, dtype=dtype))
    assert model.fc1.bias.grad is None and torch.equal(model.fc1.bias, frozen)


def test_grad_is_overwritten_not_accumulated() -> None:
    batches = _batches(6)
    model = _model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    grad, _ = _run(model, batches, meta=False)
    fresh, _ = _run(_model(), batches, meta=False)
    assert torch.allclose(grad, fresh, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bn_mode": "frozen"}, r"bn_mode must be one of 'eval', 'train'; got 'frozen'"),
        ({"harmonization": "pcgrad"}, "harmonization must be one of"),
        ({"granularity": "layer"}, "granularity must be one of"),
        ({"balance": "norm"}, r"balance must be one of 'none', 'clip'"),
        ({"meta_order": 3}, r"meta_order must be one of 1, 2; got 3"),
        ({"inner_steps": 0}, "inner_steps must be an integer >= 1; got 0"),
        ({"inner_lr": -0.1}, "inner_lr must be >= 0"),
        ({"balance_c": 0}, "balance_c must be > 0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    model = _model()
    with pytest.raises(LTUError, match=match):
        MetaHarmonizer(model, torch.optim.SGD(model.parameters(), lr=1.0), **kwargs)


def test_bad_step_inputs_raise() -> None:
    model = _model()
    harmonizer = MetaHarmonizer(model, torch.optim.SGD(model.parameters(), lr=1.0))
    s_r, q_r, s_f, q_f = _batches(7)
    with pytest.raises(LTUError, match="needs the query batches"):
        harmonizer.step(remember_loss, forget_loss, s_r, None, s_f, q_f)

    def per_sample(forward, batch: Batch) -> Tensor:
        return F.cross_entropy(forward(batch[0]), batch[1], reduction="none")

    with pytest.raises(LTUError, match=r"remember_loss must return a scalar tensor.*\(6,\)"):
        harmonizer.step(per_sample, forget_loss, s_r, q_r, s_f, q_f)


@pytest.mark.filterwarnings("ignore:.*LeafSpec")  # inside Lightning, not ours
def test_drives_a_lightning_optimizer_under_manual_optimization() -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = _model(norm=True)

        def training_step(self, batch, batch_idx: int) -> None:
            harmonizer = MetaHarmonizer(self.net, self.optimizers())
            stats = harmonizer.step(remember_loss, forget_loss, *_batches(batch_idx))
            self.log_dict(stats)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> list[int]:
            return [0, 1]

    module = Module()
    before = _flat_params(module.net)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert trainer.global_step == 2  # LightningOptimizer.step counted each step
    assert not torch.allclose(_flat_params(module.net), before)
    assert set(trainer.callback_metrics) >= {"cos", "norm_update", "loss_f_query"}


class _CountDots(TorchDispatchMode):
    """Counts the inner products dispatched to ATen (the harmonizer's gradient arithmetic)."""

    def __init__(self) -> None:
        super().__init__()
        self.dots = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.dots += func is torch.ops.aten.dot.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("meta", [True, False])
def test_global_harmonization_runs_on_one_flat_vector(meta: bool) -> None:
    """The projection, statistics and trust region cost the same number of operations for a
    network of 2 or of 12 layers: the gradients are one flat vector, not a list per tensor."""

    def dots(depth: int) -> int:
        torch.manual_seed(0)
        layers = [nn.Linear(3, 3) for _ in range(depth - 1)] + [nn.Linear(3, 3)]
        model = nn.Sequential(*layers).double()
        harmonizer = MetaHarmonizer(model, torch.optim.SGD(model.parameters(), lr=0.1), meta=meta)
        counter = _CountDots()
        with counter:
            harmonizer.step(remember_loss, forget_loss, *_batches(0))
        return counter.dots

    assert dots(2) == dots(12) > 0
