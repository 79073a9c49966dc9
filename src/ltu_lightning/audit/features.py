"""Per-sample features of a classifier's output, the inputs of the membership auditors.

Why the log domain: a trained model's members have losses of 1e-4..1e-8 and non-members a
wide spread, so raw-probability features (confidence, entropy) are squeezed near 0/1 and have
tiny standard deviations. The auditors standardize their inputs, and dividing by a tiny sd
inflates the forgetting gradient by 1/sd (until it dwarfs the remembering one and the model
collapses). Log-domain features spread members and non-members over
a few units and keep the gradient well scaled. See docs/method.md, "Membership auditors".

All features are computed from *relative* logits ``s_j = z_j - z_y`` (``y`` the true class),
which keeps them exact in float32 where ``log_softmax`` rounds a tiny loss to exactly 0:

- ``m = logsumexp_{j != y} s_j``: log of the odds against the true class.
- ``loss = softplus(m) = -log p_y`` (the per-sample cross-entropy).
- ``log p_j = s_j - loss``, so ``log p_y = -loss`` exactly.

Available features (``FEATURES``):

- ``loss``: ``-log p_y``, the per-sample cross-entropy (>= 0).
- ``log_loss``: ``log(loss + eps)``. The eps is a smooth floor (about -18.4 for 1e-8), not a
  hard clamp, so the gradient fades out gently instead of being cut.
- ``log_entropy``: ``log(H(p) + eps)`` with ``H`` the Shannon entropy of the prediction.
- ``log_margin``: ``log p_y - log(1 - p_y) = -m``, the log-odds of the true class (the "logit
  scaling" of LiRA, Carlini et al. 2022). It is a smooth version of ``logit_margin``, computed
  against the total mass of the other classes instead of the largest one, so it is
  differentiable everywhere and unbounded in both directions (no eps needed).
- ``logit_margin``: ``z_y - max_{j != y} z_j``, true-class log-prob minus the largest other
  log-prob (the hard margin). Subdifferentiable at ties.
- ``confidence``: ``p_y`` (raw probability, for the ablation only).
- ``entropy``: ``H(p)`` (raw, for the ablation only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ltu_lightning.errors import LTUError

FEATURES: tuple[str, ...] = (
    "loss",
    "log_loss",
    "log_entropy",
    "log_margin",
    "logit_margin",
    "confidence",
    "entropy",
)
"""Names accepted by :func:`per_sample_features`. The first four are the log-domain defaults."""

LOG_FEATURES: tuple[str, ...] = ("loss", "log_loss", "log_entropy", "log_margin", "logit_margin")
"""Features that are well scaled for standardization (log domain or logit scale)."""

DEFAULT_EPS: float = 1e-8


def check_feature_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate feature names; raise :class:`LTUError` naming the bad one and the allowed ones."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise LTUError(f"empty feature set: choose one or more of {', '.join(FEATURES)}")
    for name in names:
        if name not in FEATURES:
            raise LTUError(f"unknown audit feature {name!r}: choose from {', '.join(FEATURES)}")
    return names


def per_sample_features(
    logits: Tensor,
    targets: Tensor,
    names: Sequence[str] = ("loss", "log_loss", "log_entropy", "log_margin"),
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """Return a ``[N, len(names)]`` tensor of per-sample features, differentiable in ``logits``.

    ``logits`` is ``[N, C]`` (C >= 2), ``targets`` is ``[N]`` class indices. Half-precision
    logits are upcast to float32. Finite values and gradients for logits as large as +-1e4.
    """
    names = check_feature_names(names)
    if logits.ndim != 2:
        raise LTUError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if c < 2:
        raise LTUError(f"membership features need at least 2 classes, got {c}")
    if targets.shape != (n,):
        raise LTUError(
            f"targets must be [N] = [{n}] class indices, got shape {tuple(targets.shape)}"
        )
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    y = targets.to(device=z.device, dtype=torch.long).unsqueeze(1)

    s = z - z.gather(1, y)  # relative logits, s_y = 0
    is_y = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y, True)
    others = s.masked_fill(is_y, float("-inf"))
    m = torch.logsumexp(others, dim=1)  # log odds against the true class
    loss = F.softplus(m)  # -log p_y, exact for tiny losses

    cache: dict[str, Tensor] = {}

    def entropy() -> Tensor:
        if "entropy" not in cache:
            log_p = s - loss.unsqueeze(1)  # log p_y = -loss exactly
            p = log_p.exp()
            # p * log p -> 0 where p underflows; no NaN since log_p is finite.
            cache["entropy"] = (-(p * log_p).sum(dim=1)).clamp_min(0.0)
        return cache["entropy"]

    cols: list[Tensor] = []
    for name in names:
        if name == "loss":
            cols.append(loss)
        elif name == "log_loss":
            cols.append(torch.log(loss + eps))
        elif name == "log_entropy":
            cols.append(torch.log(entropy() + eps))
        elif name == "log_margin":
            cols.append(-m)
        elif name == "logit_margin":
            cols.append(-others.amax(dim=1))
        elif name == "confidence":
            cols.append(torch.exp(-loss))
        elif name == "entropy":
            cols.append(entropy())
    return torch.stack(cols, dim=1)
