"""The meta-harmonizer: one LTU step (meta-tune, meta-test, meta-update) on any optimizer.

Plain torch, no Lightning: the LTU LightningModule calls :meth:`MetaHarmonizer.step` from
``training_step`` under manual optimization, and any other two-objective method can do the same.
Its knobs are one dataclass, :class:`MetaSettings`, which ``LTUModule`` reads as well. See
docs/method.md, "One LTU step", "Gradient harmonization" and "Several processes".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase

from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.optim.harmonize import (
    GRANULARITIES,
    MODES,
    Granularity,
    Harmonization,
    balance_clip,
    harmonize,
)
from ltu_lightning.utils.checks import check_choice, check_range
from ltu_lightning.utils.grads import flat_dot, pair_stats

Forward = Callable[[Any], Tensor]
"""``forward(x) -> logits``: the model run with one given set of weights."""
LossFn = Callable[[Forward, Any], Tensor]
"""``loss(forward, batch) -> scalar``: a closure, so the harmonizer can evaluate it at θ and θ'."""

_LossesAt = Callable[[Sequence[Tensor], dict[str, Tensor], Any, Any], tuple[Tensor, Tensor]]

#: The rescaling of the forgetting gradient before harmonization
Balance = Literal["none", "clip"]
#: What normalization layers with running statistics do during a step
BNMode = Literal["eval", "train"]


@dataclass(frozen=True)
class MetaSettings:
    """The knobs of one LTU step, checked when built (``LTUModule`` takes them as its own
    arguments, ``--model.init_args.inner_lr`` and so on).

    Args:
        inner_lr: α, the meta-tune (inner) learning rate (>= 0).
        inner_steps: number of inner steps (>= 1).
        meta_order: 1 (first order: the query gradients taken at θ' are applied to θ) or 2
            (exact second-order meta-gradient, through θ').
        meta: False runs the ablation "harmonized joint descent on the supports" (no
            meta-tune, no queries).
        query_weight: λ_q, the weight of the meta-test (query) losses (>= 0).
        forget_weight: w_f, the weight of the outer forgetting objective (>= 0).
        harmonization: ``symmetric`` projects each gradient off the other when they conflict;
            ``protect_remember`` projects only the forgetting gradient; ``none`` adds them.
        granularity: ``global`` projects the whole concatenated gradients, ``per_parameter``
            each parameter tensor on its own.
        balance: ``none``, or ``clip``: rescale the forgetting gradient to at most
            ``balance_c`` times the remembering gradient's norm before harmonizing.
        balance_c: the clip factor c (> 0).
        bn_mode: ``eval`` keeps BatchNorm running statistics frozen during the step (forget
            batches never leak into them); ``train`` leaves the layers in their mode.
        max_step: a relative trust region for every step, inner and outer: a step ``lr·‖H‖``
            longer than ``max_step·‖θ‖`` is scaled down to that length (``lr`` the inner
            ``inner_lr``, or the optimizer's learning rate for the outer step; > 0, or None:
            off). Default 0.3, for ``LTUModule`` and a ``MetaHarmonizer`` used directly alike:
            a safety cap that the fmnist5k steps stay below (docs/method.md, "Trust region").
    """

    inner_lr: float = 0.03
    inner_steps: int = 1
    meta_order: Literal[1, 2] = 1
    meta: bool = True
    query_weight: float = 1.0
    forget_weight: float = 1.0
    harmonization: Harmonization = "symmetric"
    granularity: Granularity = "global"
    balance: Balance = "none"
    balance_c: float = 10.0
    bn_mode: BNMode = "eval"
    max_step: float | None = 0.3

    def __post_init__(self) -> None:
        check_choice("harmonization", self.harmonization, MODES)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("balance", self.balance, get_args(Balance))
        check_choice("bn_mode", self.bn_mode, get_args(BNMode))
        check_choice("meta_order", self.meta_order, (1, 2))
        check_range("inner_steps", self.inner_steps, 1, integer=True)
        for name in ("inner_lr", "query_weight", "forget_weight"):
            check_range(name, getattr(self, name), 0.0)
        check_range("balance_c", self.balance_c, 0.0, low_open=True)
        if self.max_step is not None and not self.max_step > 0:
            raise LTUError(f"max_step must be > 0 or None (no trust region); got {self.max_step!r}")


class SupportsStep(Protocol):
    """An optimizer: ``torch.optim.Optimizer``, Lightning's ``LightningOptimizer``, ..."""

    def step(self, *args: Any, **kwargs: Any) -> Any: ...


def loss_grads(
    loss: Tensor,
    inputs: Sequence[Tensor],
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> list[Tensor]:
    """``d loss / d inputs``, zeros for inputs the loss does not use.

    ``torch.autograd.grad`` rather than ``backward``: nothing accumulates into ``.grad`` and no
    DDP reducer hook fires, so the caller alone decides what the optimizer sees (the
    harmonizer's step; LUR's virtual step).
    """
    if not loss.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        loss, inputs, create_graph=create_graph, retain_graph=retain_graph, materialize_grads=True
    )
    return list(grads)


def _scalar(loss: Tensor, name: str) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise LTUError(f"{name} must return a scalar tensor (reduce it, e.g. mean); got {shape}")
    return loss


@contextlib.contextmanager
def _frozen_norm_stats(model: nn.Module) -> Iterator[None]:
    """Put the normalization layers with running statistics in eval mode, then restore."""
    layers = [m for m in model.modules() if isinstance(m, _NormBase)]
    flags = [m.training for m in layers]
    for m in layers:
        m.train(False)
    try:
        yield
    finally:
        for m, flag in zip(layers, flags, strict=True):
            m.train(flag)


class _Layout:
    """Gradients of one list of weights as one flat vector, and back.

    With ``granularity="global"`` the harmonizer's arithmetic (inner products, projection,
    trust region, the fast weights' update) reads the gradients as one concatenated vector, so
    it runs on one flat tensor: a few whole-vector operations a step instead of a few per
    parameter tensor (ResNet-18 has 62), which is what a GPU pays for in kernel launches.
    A list holding one flat tensor is a valid gradient for every function of
    ``ltu_lightning.optim.harmonize``; :meth:`split` gives per-parameter views of it.
    """

    def __init__(self, like: Sequence[Tensor]) -> None:
        self.shapes = [t.shape for t in like]
        self.sizes = [t.numel() for t in like]

    def join(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        return [torch.cat([t.reshape(-1) for t in tensors])]

    def split(self, flat: Sequence[Tensor]) -> list[Tensor]:
        (vector,) = flat
        return [c.view(s) for c, s in zip(vector.split(self.sizes), self.shapes, strict=True)]


class _PerParameter:
    """The identity layout: per-parameter lists as they are (``granularity="per_parameter"``,
    or weights of several dtypes or devices, which one flat tensor cannot hold)."""

    def join(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        return list(tensors)

    def split(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        return list(tensors)


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """The norm of the concatenated ``tensors`` (one fused ``_foreach_norm`` where supported)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


class MetaHarmonizer:
    """Computes the harmonized LTU gradient, writes it into ``.grad`` and steps ``optimizer``.

    One :meth:`step` (``meta=True``):

    1. meta-tune: ``θ' = θ - inner_lr * H(∇L_r(θ;S_r), ∇L_f(θ;S_f))``, ``inner_steps`` times
       (each at the current fast weights, on the same supports). Fast weights are functional
       (``torch.func.functional_call``); the model's parameters are never overwritten.
    2. meta-test: ``L_r(θ';Q_r)`` and ``L_f(θ';Q_f)``.
    3. meta-update: ``g_r = ∇[L_r(θ;S_r) + λ_q L_r(θ';Q_r)]``,
       ``g_f = ∇[w_f (L_f(θ;S_f) + λ_q L_f(θ';Q_f))]``, ``g = H(g_r, balance(g_f))`` into
       ``.grad``, then ``optimizer.step()``. ``meta_order=2`` differentiates through θ'
       (``create_graph=True``); ``meta_order=1`` treats θ' as a constant, i.e. applies the
       query gradients taken at θ' to θ.

    ``H`` (balancing then projection) is the same in the inner and the outer step;
    ``forget_weight`` scales only the outer forgetting objective.
    ``meta=False`` is the ablation: harmonized joint descent ``H(∇L_r(θ;S_r), ∇w_f L_f(θ;S_f))``,
    query batches unused (they may be ``None``).

    ``bn_mode``: ``"eval"`` (default) runs the layers with running statistics (BatchNorm,
    tracked InstanceNorm) in eval mode during the step and restores their flags afterwards, so
    forget batches never leak into the running statistics. ``"train"`` leaves the layers in their
    current mode: in train mode they normalize with batch statistics, and only the forwards at θ
    (one on S_r and one on S_f per step, like a joint-descent step) update the running
    statistics; forwards at fast weights (inner steps after the first, the queries) update a
    throwaway copy, because θ' is not the model being trained.

    ``sync_grads``: under an initialized ``torch.distributed`` with more than one rank, the
    inner gradients and the outer ``g_r`` and ``g_f`` are each averaged across ranks as one
    flattened bucket (one ``all_reduce`` each) *before* harmonizing, since projection is not
    linear: N ranks on equal shards of a batch compute the same step as one process on the
    whole batch (with mean-reduced losses). For ``meta_order=2`` the inner all-reduce is
    differentiable, so its backward is a collective as well; every rank must call :meth:`step`
    the same number of times. Pass the plain module, not a DDP wrapper (a DDP wrapper around
    it, as Lightning's DDP strategy makes, is harmless: no reducer hook fires). Batch
    statistics in ``bn_mode="train"`` stay per rank unless the model uses ``SyncBatchNorm``.

    ``max_step`` (a :class:`MetaSettings` knob, 0.3 by default): the relative trust region
    of every step, inner and outer; the outer step's length is taken at the learning rate of
    the optimizer's first parameter group.

    Under Lightning, use a ``32-true`` or ``bf16-mixed`` precision: ``16-mixed`` steps through
    a ``GradScaler`` that would unscale gradients this class never scaled.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: SupportsStep,
        settings: MetaSettings | None = None,
        *,
        eps: float = 1e-12,
        sync_grads: bool = True,
        **knobs: Any,
    ) -> None:
        """``settings``, or the same knobs as keywords (``inner_lr=0.1, meta_order=2``, the
        fields of :class:`MetaSettings`); ``eps`` bounds the squared norms in the projection's
        denominators; ``sync_grads`` averages the gradients across ranks (see above)."""
        if settings is not None and knobs:
            raise LTUError(
                f"pass the knobs as settings=MetaSettings(...) or as keywords, not both; got "
                f"settings and {', '.join(knobs)}"
            )
        check_range("eps", eps, 0.0, low_open=True)
        self.model = model
        self.optimizer = optimizer
        self.settings = settings if settings is not None else MetaSettings(**knobs)
        self.eps = eps
        self.sync_grads = sync_grads

    def step(
        self,
        remember_loss: LossFn,
        forget_loss: LossFn,
        support_r: Any,
        query_r: Any,
        support_f: Any,
        query_f: Any,
    ) -> dict[str, float]:
        """Run one LTU step and return its statistics as floats.

        Keys: ``loss_r_support``, ``loss_f_support`` (at θ, forget loss without
        ``forget_weight``), ``loss_r_query``, ``loss_f_query`` (at θ'; absent when
        ``meta=False``), ``cos`` and ``conflict`` (1.0/0.0) of ``g_r`` and ``g_f`` after the
        cross-rank average and before balancing/harmonization, their norms ``norm_r`` and
        ``norm_f``, and ``norm_update`` (the norm of the gradient written into ``.grad``).
        """
        if self.settings.meta and (query_r is None or query_f is None):
            raise LTUError("meta=True needs the query batches query_r and query_f; got None")
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise LTUError("the model has no parameter with requires_grad=True")
        names, params = [n for n, _ in named], [p for _, p in named]
        buffers = dict(self.model.named_buffers())
        one_vector = self.settings.granularity == "global" and (
            len({(p.dtype, p.device) for p in params}) == 1
        )
        layout = _Layout(params) if one_vector else _PerParameter()

        def losses_at(
            weights: Sequence[Tensor], state: dict[str, Tensor], batch_r: Any, batch_f: Any
        ) -> tuple[Tensor, Tensor]:
            """``(L_r, L_f)`` of the model with ``weights`` and buffers ``state``."""
            params_and_buffers = {**dict(zip(names, weights, strict=True)), **state}

            def forward(x: Any) -> Tensor:
                return functional_call(self.model, params_and_buffers, (x,))

            return (
                _scalar(remember_loss(forward, batch_r), "remember_loss"),
                _scalar(forget_loss(forward, batch_f), "forget_loss"),
            )

        world = self._world_size()
        frozen = (
            _frozen_norm_stats(self.model)
            if self.settings.bn_mode == "eval"
            else contextlib.nullcontext()
        )
        with frozen:
            if self.settings.meta:
                g_r, g_f, losses = self._meta_gradients(
                    losses_at,
                    params,
                    buffers,
                    world,
                    layout,
                    (support_r, support_f),
                    (query_r, query_f),
                )
            else:
                l_r, l_f = losses_at(params, buffers, support_r, support_f)
                g_r, g_f = (
                    layout.join(loss_grads(l_r, params)),
                    layout.join(loss_grads(self.settings.forget_weight * l_f, params)),
                )
                losses = [l_r, l_f]
        g_r, g_f = all_reduce_mean(g_r, world), all_reduce_mean(g_f, world)
        stats = pair_stats(g_r, g_f)
        update = self._harmonize(g_r, g_f)
        update = self._trust(update, params, self._outer_lr())
        values = torch.cat(
            [
                torch.stack([loss.detach().to(stats.dtype) for loss in losses]),
                stats,
                flat_dot(update, update).sqrt().detach().reshape(1),
            ]
        )
        keys = ["loss_r_support", "loss_f_support"]
        keys += ["loss_r_query", "loss_f_query"] if self.settings.meta else []
        keys += ["cos", "conflict", "norm_r", "norm_f", "norm_update"]
        result = dict(zip(keys, values.tolist(), strict=True))
        bad = [key for key, value in result.items() if not math.isfinite(value)]
        if bad:  # checked before stepping: the weights stay those of the last good step
            raise NonFiniteStepError(
                f"the LTU step produced a non-finite {', '.join(bad)} and was not applied; lower "
                "the learning rates (optimizer lr, inner_lr) or set balance: clip"
            )
        with torch.no_grad():
            update = layout.split(update)
            present = [
                (p.grad, g) for p, g in zip(params, update, strict=True) if p.grad is not None
            ]
            if present:
                torch._foreach_copy_(*(list(t) for t in zip(*present, strict=True)))
            for p, g in zip(params, update, strict=True):
                if p.grad is None:
                    p.grad = g.detach().to(p.dtype)
        self.optimizer.step()
        return result

    def _world_size(self) -> int:
        if self.sync_grads and dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def _outer_lr(self) -> float:
        """The outer step's learning rate, for the trust region."""
        if self.settings.max_step is None:
            return 0.0
        groups = getattr(self.optimizer, "param_groups", None)
        if not groups or "lr" not in groups[0]:
            raise LTUError(
                f"max_step={self.settings.max_step} needs the optimizer's learning rate "
                f"(param_groups[0]['lr']), which {type(self.optimizer).__name__} does not have; "
                "pass max_step=None"
            )
        return float(groups[0]["lr"])

    def _harmonize(self, g_r: list[Tensor], g_f: list[Tensor]) -> list[Tensor]:
        """``H``: optional balancing of ``g_f``, then the projection."""
        if self.settings.balance == "clip":
            g_f = balance_clip(g_r, g_f, self.settings.balance_c, self.eps)
        return harmonize(g_r, g_f, self.settings.harmonization, self.settings.granularity, self.eps)

    def _trust(self, step: list[Tensor], params: list[Tensor], lr: float) -> list[Tensor]:
        """Scale ``step`` down so that ``lr·‖step‖ ≤ max_step·‖θ‖`` (a relative trust region;
        unchanged inside it). Gradient scales differ by orders of magnitude between networks
        (a well-trained one's forgetting gradient can be 100× another's); without the cap a
        step tuned on one diverges on the next."""
        if self.settings.max_step is None or lr <= 0:
            return step
        with torch.no_grad():
            size = lr * flat_dot(step, step).sqrt()
            limit = self.settings.max_step * _norm(params)
            scale = torch.clamp(limit / (size + self.eps), max=1.0)
        return [s * scale.to(s.dtype) for s in step]

    def _meta_gradients(
        self,
        losses_at: _LossesAt,
        params: list[Tensor],
        buffers: dict[str, Tensor],
        world: int,
        layout: _Layout | _PerParameter,
        support: tuple[Any, Any],
        query: tuple[Any, Any],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Outer ``g_r``, ``g_f`` (before the cross-rank average, in ``layout``) and the four
        losses."""
        second = self.settings.meta_order == 2
        fast_buffers = (
            buffers
            if self.settings.bn_mode == "eval"
            else {k: b.clone() for k, b in buffers.items()}
        )
        fast: list[Tensor] = params
        for k in range(self.settings.inner_steps):
            l_r, l_f = losses_at(fast, buffers if k == 0 else fast_buffers, *support)
            g_r, g_f = (
                all_reduce_mean(
                    layout.join(loss_grads(loss, fast, create_graph=second)), world, second
                )
                for loss in (l_r, l_f)
            )
            if k == 0:
                # The outer support terms are exactly these gradients at θ: reuse them.
                at_theta = (l_r, l_f, g_r, g_f)
            with torch.set_grad_enabled(second):
                step = layout.split(
                    self._trust(self._harmonize(g_r, g_f), fast, self.settings.inner_lr)
                )
                if second:  # differentiable, through θ' back to θ
                    fast = [w - self.settings.inner_lr * s for w, s in zip(fast, step, strict=True)]
                else:  # one fused update of every tensor
                    fast = torch._foreach_add(fast, step, alpha=-self.settings.inner_lr)
                    fast = [w.requires_grad_() for w in fast]
        lq_r, lq_f = losses_at(fast, fast_buffers, *query)
        # First order: gradients at θ' (leaves). Second order: through θ' back to θ, where the
        # two calls share the inner graph, so the first one keeps it.
        wrt = params if second else fast
        q_r = layout.join(loss_grads(self.settings.query_weight * lq_r, wrt, retain_graph=second))
        q_f = layout.join(
            loss_grads(self.settings.forget_weight * self.settings.query_weight * lq_f, wrt)
        )
        l_r, l_f, s_r, s_f = at_theta
        g_r = [s.detach() + q for s, q in zip(s_r, q_r, strict=True)]
        g_f = [
            torch.add(q, s.detach(), alpha=self.settings.forget_weight)
            for s, q in zip(s_f, q_f, strict=True)
        ]
        return g_r, g_f, [l_r, l_f, lq_r, lq_f]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum across ranks: the all-reduce is self-adjoint, so is its backward."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)


def all_reduce_mean(grads: list[Tensor], world: int, differentiable: bool = False) -> list[Tensor]:
    """Average ``grads`` across ``world`` ranks with one all-reduce of a flattened bucket
    (``differentiable``: through an all-reduce whose backward is one too, for second-order
    meta-gradients)."""
    if world == 1:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    if differentiable:
        flat = _AllReduceSum.apply(flat)
    else:
        dist.all_reduce(flat)
    flat = flat / world
    return [
        c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)
    ]
