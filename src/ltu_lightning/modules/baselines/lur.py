"""LUR: one objective evaluated after a virtual step on the other, on SalUn's masked weights."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from ltu_lightning.audit.forget_losses import make_forget_loss
from ltu_lightning.modules.baselines.base import Losses
from ltu_lightning.modules.baselines.salun import SalUn
from ltu_lightning.modules.strategy import check_strategy
from ltu_lightning.modules.unlearning import Batch
from ltu_lightning.optim.meta_harmonizer import all_reduce_mean, loss_grads
from ltu_lightning.utils.checks import check_choice, check_range

#: Which objective takes LUR's virtual (inner) step
InnerObjective = Literal["forget", "retain"]
#: LUR's unlearning losses L_u (those of ``ltu_lightning.audit.forget_losses`` needing no auditor)
UnlearnLoss = Literal["random_label", "neg_ce", "uniform_kl"]


class LUR(SalUn):
    """LUR (Patel & Qiu, ICCV 2025): one objective taken after a virtual step on the other.

    *Learning to Unlearn while Retaining: Combating Gradient Conflicts in Machine Unlearning*
    (arXiv 2503.06339): evaluating one objective after a virtual step on the other makes the
    step reward gradients of the two that agree.

    With ``inner_objective="forget"`` (default), α = ``inner_lr``, λ = ``forget_weight`` and m
    the saliency mask, each step minimizes, on a forget batch B_f and a retain batch B_r::

        L(θ) = λ·L_u(θ; B_f) + CE(θ − α·m⊙∇L_u(θ; B_f); B_r)

    (``"retain"``: ``L(θ) = CE(θ; B_r) + λ·L_u(θ − α·m⊙∇CE(θ; B_r); B_f)``). To first order in
    α the second term is ``CE(θ) − α⟨∇CE, m⊙∇L_u⟩``: an implicit regularizer that rewards an
    update whose unlearning and retaining gradients agree (the paper's "implicit gradient
    regularization"). The virtual weights θ' are functional (``torch.func.functional_call``),
    never written into the model.

    The paper's abstract fixes the idea; the rest are this project's choices (docs/protocol.md,
    "LUR"):

    - the unlearning loss L_u (``forget_loss``): random wrong labels by default (RL's, SalUn's),
      or ``neg_ce`` (gradient ascent) or ``uniform_kl``; retaining is CE on the labels;
    - which objective takes the virtual step (``inner_objective``): the forget one by default
      (unlearn, then retain at the unlearned weights);
    - ``meta_order``: 1 (default) treats θ' as a constant (the outer gradient is
      ``λ∇L_u(θ) + ∇CE(θ')``; of the regularizer's gradient it keeps the part through the
      outer objective, ``−α·H_r·m⊙∇L_u``); 2 differentiates through θ' (adds ``−α·H_u·m⊙∇CE``,
      one Hessian-vector product a step);
    - the saliency mask: LUR is built on :class:`SalUn`, whose mask (the top ``sparsity`` of
      |∇CE(D_f)|, computed once at fit start) restricts both the virtual and the real step;
      ``sparsity=1`` updates every weight (plain LUR, no mask computed). ``inner_lr=0``,
      ``forget_weight=1`` gives SalUn's step with the two batch means summed instead of averaged;
    - the data: both terms read the step's whole batches (no support/query split); the forward
      at θ is one pass over the joint batch, as in RL and SalUn, so BatchNorm's running
      statistics are updated exactly as theirs; the forward at θ' runs on a throwaway copy of the
      buffers (θ' is not the model being trained), as the meta-harmonizer's forwards at fast
      weights do.

    Under data parallelism the virtual gradient is averaged across ranks (one all-reduce; a
    differentiable one for ``meta_order=2``) before the virtual step, and Lightning averages
    the outer gradient as for every baseline, so N ranks on equal shards take the step one
    process takes on the global batch. Strategies that shard the parameters are refused at fit
    start (the virtual step needs the whole model).

    Args:
        inner_lr: α, the virtual step's learning rate (>= 0; 0: no virtual step).
        forget_weight: λ, the weight of the unlearning loss (>= 0).
        inner_objective: ``forget`` or ``retain``: the objective that takes the virtual step.
        meta_order: 1 (first order) or 2 (through the virtual step).
        forget_loss: L_u: ``random_label``, ``neg_ce`` or ``uniform_kl``.
        kwargs: those of :class:`SalUn` (``sparsity``: the mask's density, 1 = no mask;
            ``generator_seed``: the random labels' seed) and of ``BaselineModule``.
    """

    def __init__(
        self,
        *args: Any,
        inner_lr: float = 0.01,
        forget_weight: float = 1.0,
        inner_objective: InnerObjective = "forget",
        meta_order: Literal[1, 2] = 1,
        forget_loss: UnlearnLoss = "random_label",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_range("inner_lr", inner_lr, 0.0)
        check_range("forget_weight", forget_weight, 0.0)
        check_choice("inner_objective", inner_objective, get_args(InnerObjective))
        check_choice("meta_order", meta_order, (1, 2))
        check_choice("forget_loss", forget_loss, get_args(UnlearnLoss))
        self.inner_lr = inner_lr
        self.forget_weight = forget_weight
        self.inner_objective = inner_objective
        self.meta_order = meta_order
        # random labels come from RandomLabel's own helper (its seed, its checkpointed stream);
        # private, so that the helper is not saved twice
        self._unlearn_loss = (
            self.random_labels
            if forget_loss == "random_label"
            else make_forget_loss(forget_loss, self.num_classes)
        )

    def on_fit_start(self) -> None:
        check_strategy(self.trainer, type(self).__name__)
        super().on_fit_start()

    def compute_mask(self) -> None:
        if self.sparsity < 1.0:
            super().compute_mask()
        else:  # every weight is updated: no saliency pass over D_f
            for mask in self.masks().values():
                mask.fill_(True)
            self.mask_ready.fill_(True)

    # ------------------------------------------------------------- the step
    def virtual_weights(self, inner_loss: Tensor) -> dict[str, Tensor]:
        """θ' = θ − α·m⊙∇inner_loss, by parameter name: a function of θ through the gradient
        (``meta_order=2``) or through θ alone (1). The gradient is averaged across ranks."""
        named = [(n, p) for n, p in self.backbone.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        second = self.meta_order == 2
        grads = loss_grads(inner_loss, params, create_graph=second, retain_graph=True)
        world = self.trainer.world_size if self._trainer is not None else 1
        grads = all_reduce_mean(grads, world, differentiable=second)
        masks = self.masks()
        return {
            name: p - self.inner_lr * (g if second else g.detach()) * masks[name].to(g.dtype)
            for (name, p), g in zip(named, grads, strict=True)
        }

    def virtual_logits(self, weights: dict[str, Tensor], x: Tensor) -> Tensor:
        """The backbone at ``weights``; BatchNorm in train mode updates a copy of the buffers."""
        buffers = {k: b.clone() for k, b in self.backbone.named_buffers()}
        return functional_call(self.backbone, {**buffers, **weights}, (x,))

    def losses(self, forget: Batch, retain: Batch) -> Losses:
        (xf, yf), (xr, yr) = forget, retain
        n = len(yf)
        logits = self(torch.cat([xf, xr]))  # θ, the joint batch (BatchNorm as in RL and SalUn)
        retain_ce = F.cross_entropy(logits[n:], yr)
        if self.inner_objective == "forget":
            unlearn = self._unlearn_loss(logits[:n], yf)  # one draw of random labels per step
            virtual = F.cross_entropy(self.virtual_logits(self.virtual_weights(unlearn), xr), yr)
            loss = self.forget_weight * unlearn + virtual
            terms = {"forget_loss": unlearn, "retain_ce_virtual": virtual}
        else:
            fast = self.virtual_weights(retain_ce)
            unlearn = self._unlearn_loss(self.virtual_logits(fast, xf), yf)
            loss = retain_ce + self.forget_weight * unlearn
            terms = {"forget_loss_virtual": unlearn}
        forget_ce = F.cross_entropy(logits[:n].detach().float(), yf)
        return {
            "loss": loss,
            **terms,
            "retain_ce": retain_ce.detach(),
            "forget_ce": forget_ce,
            "mask_density": self._density,
        }
