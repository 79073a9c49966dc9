"""SalUn: random labelling restricted to the weights most salient for the forget set."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltu_lightning.modules.baselines.base import Losses
from ltu_lightning.modules.baselines.rl import RandomLabel
from ltu_lightning.modules.unlearning import Batch
from ltu_lightning.utils.checks import check_range


class SalUn(RandomLabel):
    """SalUn (Fan et al., ICLR 2024): RL restricted to the salient weights.

    At fit start (once; restored, not recomputed, when resuming) the gradient of the forget
    cross-entropy is accumulated over the whole forget set with the original model in eval mode;
    the weights whose |gradient| is among the top ``sparsity`` fraction of all backbone
    parameters (one global ranking, weights and biases) form the mask. Training is then RL with
    the gradients of the unmasked entries zeroed after every backward (so momentum and gradient
    clipping see the masked gradient), and the unmasked entries are reset to their original
    values after every optimizer step, so that weight decay cannot move them either: unmasked
    weights stay exactly those of the original model. Under ``access: partial+holdout`` the
    auditor half of the holdout is retain data of the RL step (true labels); the mask is
    computed from D_f alone.

    Args:
        sparsity: fraction of the weights that are updated, in (0, 1] (SalUn's threshold;
            default 0.5).
        kwargs: those of :class:`RandomLabel`.
    """

    def __init__(self, *args: Any, sparsity: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_range("sparsity", sparsity, 0.0, 1.0, low_open=True)
        self.sparsity = sparsity
        # Masks are buffers (saved in checkpoints, so a resumed run keeps its mask).
        self.saliency = nn.Module()
        for name, p in self.backbone.named_parameters():
            self.saliency.register_buffer(self._key(name), torch.ones_like(p, dtype=torch.bool))
        self.register_buffer("mask_ready", torch.tensor(False))
        self._anchor: dict[str, Tensor] = {}
        self._density = float("nan")

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def masks(self) -> dict[str, Tensor]:
        """Parameter name → boolean mask (True = updated)."""
        return {
            name: getattr(self.saliency, self._key(name))
            for name, _ in self.backbone.named_parameters()
        }

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not bool(self.mask_ready):
            self.compute_mask()
        self._density = self.mask_density()
        # Unmasked entries never change: their current values are the original ones.
        self._anchor = {name: p.detach().clone() for name, p in self.backbone.named_parameters()}

    def forget_gradients(self) -> dict[str, Tensor]:
        """Σ over forget batches of ∇θ CE (batch mean), original model in eval mode."""
        params = dict(self.backbone.named_parameters())
        grads = {name: torch.zeros_like(p) for name, p in params.items()}
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            for x, y in self.datamodule.role_dataloader("forget"):
                x, y = self.model_input(x), y.to(self.device)
                with torch.enable_grad():
                    loss = F.cross_entropy(self.backbone(x).float(), y)
                    batch_grads = torch.autograd.grad(
                        loss, list(params.values()), allow_unused=True
                    )
                for name, g in zip(params, batch_grads, strict=True):
                    if g is not None:
                        grads[name] += g
        finally:
            self.backbone.train(was_training)
        return grads

    @torch.no_grad()
    def compute_mask(self) -> None:
        grads = self.forget_gradients()
        scores = torch.cat([g.abs().flatten() for g in grads.values()])
        k = max(1, round(self.sparsity * scores.numel()))
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        chosen[torch.topk(scores, k, sorted=False).indices] = True
        masks, start = self.masks(), 0
        for name, g in grads.items():
            masks[name].copy_(chosen[start : start + g.numel()].view_as(g))
            start += g.numel()
        self.mask_ready.fill_(True)

    def mask_density(self) -> float:
        """Fraction of the backbone's weights the mask lets change."""
        masks = list(self.masks().values())
        return sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        return {**super().losses(forget, retain), "mask_density": self._density}

    def on_after_backward(self) -> None:
        masks = self.masks()
        for name, p in self.backbone.named_parameters():
            if p.grad is not None:
                p.grad.mul_(masks[name])

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        masks = self.masks()
        with torch.no_grad():
            for name, p in self.backbone.named_parameters():
                anchor = self._anchor.get(name)
                if anchor is not None:
                    p.copy_(torch.where(masks[name], p, anchor))
