"""Gradient Harmonization: PCGrad-style removal of the conflict between two gradients.

See docs/method.md, "Gradient harmonization". Every function accepts either two
tensors (treated as one vector each) or two equal-length sequences of per-parameter tensors,
and returns the same form it was given. The projection is branch-free (``torch.where`` instead
of ``if dot < 0``): it never synchronizes an accelerator with the host, and it stays
differentiable, which the second-order meta-gradient needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, get_args

import torch
from torch import Tensor

from ltu_lightning.errors import LTUError
from ltu_lightning.utils.checks import check_choice, check_range
from ltu_lightning.utils.grads import flat_dot, pair_stats

#: How two conflicting gradients are combined (see :func:`harmonize`)
Harmonization = Literal["symmetric", "protect_remember", "none"]
#: Whether the projection sees whole gradients or each parameter tensor on its own
Granularity = Literal["global", "per_parameter"]
MODES: tuple[str, ...] = get_args(Harmonization)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)

Grad = TypeVar("Grad", Tensor, Sequence[Tensor])


def _as_lists(g_r: Grad, g_f: Grad) -> tuple[list[Tensor], list[Tensor], bool]:
    """Return both gradients as lists, and whether the caller passed single tensors."""
    if isinstance(g_r, Tensor) and isinstance(g_f, Tensor):
        pairs, single = ([g_r], [g_f]), True
    elif isinstance(g_r, Sequence) and isinstance(g_f, Sequence):
        pairs, single = (list(g_r), list(g_f)), False
    else:
        raise LTUError(
            "g_r and g_f must both be tensors or both be sequences of tensors; got "
            f"{type(g_r).__name__} and {type(g_f).__name__}"
        )
    r, f = pairs
    if not r:
        raise LTUError("g_r and g_f must not be empty sequences")
    if len(r) != len(f):
        raise LTUError(f"g_r and g_f must have the same length; got {len(r)} and {len(f)}")
    for i, (a, b) in enumerate(zip(r, f, strict=True)):
        if a.shape != b.shape:
            raise LTUError(
                f"g_r and g_f differ in shape at index {i}: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
    return r, f, single


def _project_lists(
    g_r: list[Tensor], g_f: list[Tensor], mode: str, eps: float
) -> tuple[list[Tensor], list[Tensor]]:
    """PCGrad on the concatenation of the lists, both parts from the original vectors."""
    if mode == "none":
        return g_r, g_f
    dot = flat_dot(g_r, g_f)
    conflict = dot < 0
    zero = torch.zeros_like(dot)
    coef_f = torch.where(conflict, dot / flat_dot(g_r, g_r).clamp_min(eps), zero)
    new_f = [f - coef_f * r for r, f in zip(g_r, g_f, strict=True)]
    if mode == "protect_remember":
        return g_r, new_f
    coef_r = torch.where(conflict, dot / flat_dot(g_f, g_f).clamp_min(eps), zero)
    return [r - coef_r * f for r, f in zip(g_r, g_f, strict=True)], new_f


def _project_pair(
    g_r: Grad, g_f: Grad, mode: str = "symmetric", eps: float = 1e-12
) -> tuple[Grad, Grad]:
    """Return the projected parts ``(g_r', g_f')``, treating each input as one vector.

    Exposed for tests and diagnostics: :func:`harmonize` returns only their sum.
    """
    check_choice("mode", mode, MODES)
    r, f, single = _as_lists(g_r, g_f)
    new_r, new_f = _project_lists(r, f, mode, eps)
    return (new_r[0], new_f[0]) if single else (new_r, new_f)


def harmonize(
    g_r: Grad,
    g_f: Grad,
    mode: Harmonization = "symmetric",
    granularity: Granularity = "global",
    eps: float = 1e-12,
) -> Grad:
    """Combine the remembering and forgetting gradients into ``H = g_r' + g_f'``.

    ``mode``: ``symmetric`` projects each gradient onto the normal plane of the other when
    they conflict (``<g_r, g_f> < 0``); ``protect_remember`` projects only ``g_f``;
    ``none`` is the plain sum. Without a conflict the result is exactly ``g_r + g_f``.
    ``granularity``: ``global`` projects the whole concatenated vectors, ``per_parameter``
    projects each parameter tensor on its own (a single tensor is one parameter).
    ``eps`` is the lower bound of the squared norms in the denominators, so zero gradients
    give zeros, never NaN. Balancing is not done here (see :func:`balance_clip`).
    """
    check_choice("mode", mode, MODES)
    check_choice("granularity", granularity, GRANULARITIES)
    check_range("eps", eps, 0.0, low_open=True)
    r, f, single = _as_lists(g_r, g_f)
    if granularity == "global":
        new_r, new_f = _project_lists(r, f, mode, eps)
    else:
        parts = [_project_lists([a], [b], mode, eps) for a, b in zip(r, f, strict=True)]
        new_r, new_f = [p[0][0] for p in parts], [p[1][0] for p in parts]
    out = [a + b for a, b in zip(new_r, new_f, strict=True)]
    return out[0] if single else out


def balance_clip(g_r: Grad, g_f: Grad, c: float, eps: float = 1e-12) -> Grad:
    """Rescale ``g_f`` so that ``||g_f|| <= c * ||g_r||`` (norms of the whole vectors).

    A safety cap on the forgetting gradient. A small ``c`` starves forgetting, because
    ``||g_r||`` is near zero on data the model was trained on.
    Returns the rescaled ``g_f`` in the form it was given; differentiable.
    """
    check_range("balance_c", c, 0.0, low_open=True)
    r, f, single = _as_lists(g_r, g_f)
    norm_r, norm_f = flat_dot(r, r).sqrt(), flat_dot(f, f).sqrt()
    scale = (c * norm_r / norm_f.clamp_min(eps)).clamp(max=1.0)
    out = [x * scale for x in f]
    return out[0] if single else out


def gradient_stats(g_r: Grad, g_f: Grad) -> dict[str, float]:
    """Cosine, conflict flag (1.0 if ``<g_r, g_f> < 0``) and norms; cos is 0 for a zero vector."""
    r, f, _ = _as_lists(g_r, g_f)
    cos, conflict, norm_r, norm_f = pair_stats(r, f).tolist()
    return {"cos": cos, "conflict": conflict, "norm_r": norm_r, "norm_f": norm_f}
