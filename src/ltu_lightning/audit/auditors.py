"""Differentiable membership-inference auditors: LTU's forgetting feedback.

An :class:`AuditorEnsemble` holds K small MLPs, each reading a different set of per-sample
features (:mod:`ltu_lightning.audit.features`) of the model's output and predicting the logit of
P(member). They are fitted once on the original model's outputs (members = the accessible
remaining subset, non-members = the auditor half of the holdout), then frozen: the ``mi``
forgetting loss back-propagates through them into the model's logits, never into the auditors.

Everything that defines a fitted ensemble (weights, standardization statistics, a ``fitted``
flag) lives in parameters and buffers, so a Lightning checkpoint saves and restores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltu_lightning.audit.features import DEFAULT_EPS, check_feature_names, per_sample_features
from ltu_lightning.errors import LTUError

DEFAULT_FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    ("log_loss", "log_entropy", "log_margin"),
    ("loss", "log_entropy", "logit_margin"),
    ("log_loss", "log_margin"),
)
"""Our default (not the paper's, which is unpublished): three log-domain views of the output.

Auditor 0 sees the full smooth log-domain picture; auditor 1 swaps in the raw loss and the hard
top-1 margin (a different shape of the same evidence); auditor 2 sees only true-class evidence
(no entropy), so it cannot be satisfied by merely flattening the non-target probabilities.
With more than three auditors the sets repeat, with different seeds.
"""

STD_FLOOR: float = 1e-3
"""Smallest standard deviation used to standardize a feature: a near-constant feature must
not inflate the forgetting gradient by 1/sd."""


def _seeded_init_(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear init, drawn from ``generator`` (leaves the global RNG alone)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            bound = 1.0 / math.sqrt(layer.in_features)
            with torch.no_grad():
                w = torch.rand(layer.weight.shape, generator=generator) * 2 - 1
                layer.weight.copy_(w * bound)
                if layer.bias is not None:
                    b = torch.rand(layer.bias.shape, generator=generator) * 2 - 1
                    layer.bias.copy_(b * bound)


class MembershipAuditor(nn.Module):
    """An MLP on standardized features returning the logit of P(member).

    Two hidden layers of ``hidden`` units with SiLU (smooth, so the gradient it sends back to
    the model varies smoothly). ``mean``/``std`` are buffers fitted on the auditor's training
    data by :meth:`set_standardization`.
    """

    def __init__(self, feature_names: Sequence[str], hidden: int = 32) -> None:
        super().__init__()
        self.feature_names: tuple[str, ...] = check_feature_names(feature_names)
        d = len(self.feature_names)
        self.net = nn.Sequential(
            nn.Linear(d, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))

    def set_standardization(self, features: Tensor) -> None:
        """Fit the mean/std buffers on ``[N, d]`` training features."""
        with torch.no_grad():
            self.mean.copy_(features.mean(dim=0))
            self.std.copy_(features.std(dim=0).clamp_min(STD_FLOOR))

    def forward(self, features: Tensor) -> Tensor:
        """``[N, d]`` raw features -> ``[N]`` membership logits."""
        x = (features.to(self.mean.dtype) - self.mean) / self.std
        return self.net(x).squeeze(-1)


class AuditorEnsemble(nn.Module):
    """K membership auditors with different seeds and feature sets (LTU's M_1..M_K).

    Call :meth:`fit` on the original model's outputs before unlearning (and again to refit);
    afterwards the auditors are frozen (``requires_grad=False``, eval mode) and
    :meth:`member_prob` is differentiable with respect to the logits only.
    """

    def __init__(
        self,
        num_auditors: int = 3,
        feature_sets: Sequence[Sequence[str]] | None = None,
        hidden: int = 32,
        epochs: int = 200,
        lr: float = 1e-2,
        seed: int = 0,
        weight_decay: float = 1e-4,
        eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        if not isinstance(num_auditors, int) or num_auditors < 1:
            raise LTUError(f"num_auditors must be a positive integer, got {num_auditors!r}")
        if feature_sets is None:
            feature_sets = [
                DEFAULT_FEATURE_SETS[k % len(DEFAULT_FEATURE_SETS)] for k in range(num_auditors)
            ]
        elif isinstance(feature_sets, str) or len(feature_sets) != num_auditors:
            raise LTUError(
                f"feature_sets must list one feature set per auditor ({num_auditors}), "
                f"got {feature_sets!r}"
            )
        if hidden < 1 or epochs < 1 or lr <= 0:
            raise LTUError(
                f"hidden, epochs and lr must be positive, got {hidden!r}, {epochs!r}, {lr!r}"
            )
        self.feature_sets: list[tuple[str, ...]] = [check_feature_names(fs) for fs in feature_sets]
        self.num_auditors = num_auditors
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.seed = seed
        self.weight_decay = weight_decay
        self.eps = eps
        with torch.random.fork_rng(devices=[]):  # nn.Linear's init would draw from global RNG
            self.auditors = nn.ModuleList(MembershipAuditor(fs, hidden) for fs in self.feature_sets)
        # Union of all names (first-appearance order): features are computed once per call.
        self._all_names: tuple[str, ...] = tuple(
            dict.fromkeys(n for fs in self.feature_sets for n in fs)
        )
        self._columns: list[list[int]] = [
            [self._all_names.index(n) for n in fs] for fs in self.feature_sets
        ]
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Per auditor, the median member-logit of the non-members it was fitted on: the level
        # at which a sample "looks like unseen data" (the ``mi_hinge`` forgetting loss).
        self.register_buffer("nonmember_level", torch.zeros(num_auditors))
        # Per auditor, the mean member-logit of those non-members (the ``mi_match`` target).
        self.register_buffer("nonmember_mean", torch.zeros(num_auditors))
        self._is_fitted = False  # host mirror of the buffer: no device sync per step
        for k, auditor in enumerate(self.auditors):
            _seeded_init_(auditor, torch.Generator().manual_seed(self._auditor_seed(k)))
        self.register_load_state_dict_post_hook(AuditorEnsemble._after_load)

    # -- state -----------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` ran (or a fitted state was loaded)."""
        return self._is_fitted

    def _auditor_seed(self, k: int) -> int:
        return self.seed * 1009 + k

    def _freeze(self) -> None:
        for p in self.auditors.parameters():
            p.requires_grad_(False)
            p.grad = None
        super().train(False)

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: object) -> None:
        # Restoring a fitted ensemble (e.g. from a Lightning checkpoint) must freeze it too.
        if isinstance(module, AuditorEnsemble):
            module._is_fitted = bool(module.fitted.item())
            if module._is_fitted:
                module._freeze()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # Ensembles saved before ``nonmember_level`` existed load with the level at logit 0
        # (P(member) = 0.5); only the ``mi_hinge`` loss reads it.
        state_dict.setdefault(prefix + "nonmember_level", torch.zeros_like(self.nonmember_level))
        state_dict.setdefault(prefix + "nonmember_mean", torch.zeros_like(self.nonmember_mean))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> AuditorEnsemble:
        """Fitted auditors stay in eval mode even when the parent module calls ``.train()``."""
        return super().train(mode and not self.is_fitted)

    # -- fitting ---------------------------------------------------------------------------

    def _features(self, logits: Tensor, targets: Tensor) -> Tensor:
        return per_sample_features(logits, targets, self._all_names, eps=self.eps)

    def fit(
        self,
        member_logits: Tensor,
        member_targets: Tensor,
        nonmember_logits: Tensor,
        nonmember_targets: Tensor,
    ) -> AuditorEnsemble:
        """Train every auditor to tell members from non-members, then freeze them.

        Classes are balanced by subsampling the larger set (seeded, so the fit is
        deterministic given ``seed``). Each call re-initializes the auditors from their seeds,
        so refitting does not depend on the previous fit. Full-batch Adam; safe to call inside
        ``torch.no_grad()`` / ``torch.inference_mode()`` (e.g. from a Lightning hook).
        """
        device = self.fitted.device
        with torch.inference_mode(False), torch.enable_grad():
            xm = self._features(member_logits.detach().clone(), member_targets.clone())
            xn = self._features(nonmember_logits.detach().clone(), nonmember_targets.clone())
            xm, xn = xm.to(device), xn.to(device)
            if len(xm) < 2 or len(xn) < 2:
                raise LTUError(
                    f"auditor fit needs at least 2 members and 2 non-members, "
                    f"got {len(xm)} and {len(xn)}"
                )
            if not (torch.isfinite(xm).all() and torch.isfinite(xn).all()):
                raise LTUError("auditor fit got non-finite logits: check the model's outputs")
            g = torch.Generator().manual_seed(self.seed)
            n = min(len(xm), len(xn))
            xm = xm[torch.randperm(len(xm), generator=g)[:n].to(device)]
            xn = xn[torch.randperm(len(xn), generator=g)[:n].to(device)]
            x_all = torch.cat([xm, xn])
            labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(device, x_all.dtype)

            for k, auditor in enumerate(self.auditors):
                _seeded_init_(auditor, torch.Generator().manual_seed(self._auditor_seed(k)))
                auditor.to(device)
                for p in auditor.parameters():
                    p.requires_grad_(True)
                auditor.train()
                x = x_all[:, self._columns[k]].to(auditor.mean.dtype)
                auditor.set_standardization(x)
                opt = torch.optim.Adam(
                    auditor.parameters(), lr=self.lr, weight_decay=self.weight_decay
                )
                for _ in range(self.epochs):
                    opt.zero_grad(set_to_none=True)
                    loss = F.binary_cross_entropy_with_logits(auditor(x), labels.to(x.dtype))
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    scores = auditor(xn[:, self._columns[k]].to(auditor.mean.dtype))
                    self.nonmember_level[k] = scores.median().to(self.nonmember_level.dtype)
                    self.nonmember_mean[k] = scores.mean().to(self.nonmember_mean.dtype)
            self.fitted.fill_(True)
            self._is_fitted = True
        self._freeze()
        return self

    # -- scoring ---------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise LTUError("membership auditors are not fitted: call AuditorEnsemble.fit first")

    def member_logits(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``[K, N]`` logits of P(member), differentiable w.r.t. ``logits``."""
        self._check_fitted()
        # Mixed precision would standardize log-domain features in bf16/fp16: keep fp32+.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            feats = self._features(logits, targets).to(self.fitted.device)
            return torch.stack(
                [aud(feats[:, c]) for aud, c in zip(self.auditors, self._columns, strict=True)]
            )

    def member_prob(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``[K, N]`` P(member) per auditor, differentiable w.r.t. ``logits``."""
        return torch.sigmoid(self.member_logits(logits, targets))

    def mean_member_prob(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Scalar: P(member) averaged over auditors and samples (the ``audit`` stop rule)."""
        return self.member_prob(logits, targets).mean()

    def auc(
        self,
        member_logits: Tensor,
        member_targets: Tensor,
        nonmember_logits: Tensor,
        nonmember_targets: Tensor,
    ) -> list[float]:
        """ROC AUC of each auditor at separating the given members from non-members."""
        from sklearn.metrics import roc_auc_score

        with torch.no_grad():  # logits, not probabilities: saturated sigmoids would tie
            pm = self.member_logits(member_logits, member_targets)
            pn = self.member_logits(nonmember_logits, nonmember_targets)
        scores = torch.cat([pm, pn], dim=1).double().cpu().numpy()
        labels = [1] * pm.shape[1] + [0] * pn.shape[1]
        return [float(roc_auc_score(labels, s)) for s in scores]

    def extra_repr(self) -> str:
        return f"num_auditors={self.num_auditors}, feature_sets={self.feature_sets}"
