"""Gradients given as lists of per-parameter tensors, read as one concatenated vector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def flat_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two gradients given as lists (the concatenated vectors)."""
    return torch.stack(
        [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]
    ).sum()


def pair_stats(g_r: Sequence[Tensor], g_f: Sequence[Tensor]) -> Tensor:
    """``[cos, conflict, norm_r, norm_f]`` of two gradients as one detached tensor, so that
    callers read it with one device-to-host copy. ``cos`` is 0 when either vector is zero."""
    dot = flat_dot(g_r, g_f)
    norm_r, norm_f = flat_dot(g_r, g_r).sqrt(), flat_dot(g_f, g_f).sqrt()
    denom = norm_r * norm_f
    cos = dot / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.stack([cos, (dot < 0).to(dot.dtype), norm_r, norm_f]).detach()
