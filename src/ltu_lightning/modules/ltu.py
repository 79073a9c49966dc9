"""``LTUModule``: Learning to Unlearn (Huang, Foo, Liu, ECCV 2024) as a LightningModule.

Each training step draws a forget batch and a retain batch (from the retain subset D̂_r under
``access: partial+holdout``, from the remaining set D_r under ``full``), splits each into
disjoint support and query halves (``meta=False``, the joint-step ablation, keeps whole
batches), and hands them to the
:class:`~ltu_lightning.optim.MetaHarmonizer` (meta-tune, meta-test, meta-update with gradient
harmonization). The forgetting feedback comes from K differentiable membership auditors fitted
on the original model's outputs (members: D̂_r; non-members: the auditor half of the holdout).

LTU reads that half of the holdout in every run (its auditors' non-members, and the holdout
distillation term): ``access: partial`` (D̂_r alone) is refused; ``partial+holdout`` reads
D_f + D̂_r + the auditor half, ``full`` D_f + D_r + the auditor half.

LTU's parts: this module (data, auditors, the two losses ``remembering_loss`` and
``forgetting_loss``), the step (:mod:`ltu_lightning.optim.meta_harmonizer`, its knobs in
``MetaSettings``), the projection (:mod:`ltu_lightning.optim.harmonize`) and the forgetting
losses and auditors (:mod:`ltu_lightning.audit`). docs/method.md describes the method as
implemented and how the defaults were chosen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from ltu_lightning.audit import AuditorEnsemble, make_forget_loss
from ltu_lightning.audit.forget_losses import FORGET_LOSSES, ForgetLossName
from ltu_lightning.errors import LTUError, how_to_set
from ltu_lightning.modules.strategy import check_strategy
from ltu_lightning.modules.unlearning import Batch, UnlearningModule, distill_kl
from ltu_lightning.networks import Backbone
from ltu_lightning.optim.meta_harmonizer import Forward, MetaHarmonizer, MetaSettings
from ltu_lightning.utils.checks import check_choice, check_range
from ltu_lightning.utils.generators import OwnGenerator

#: What keeps the model on the retain data (see ``LTUModule``'s ``remember_loss``)
RememberLoss = Literal["ce", "kd", "ce_kd"]
#: LTU's stop rules: the shared ones and ``audit``
LTUStopRule = Literal["criterion", "budget", "audit"]


def sgd_half_momentum(params: Any) -> torch.optim.Optimizer:
    """LTU's default outer optimizer: SGD(lr=0.032, momentum=0.5)."""
    return torch.optim.SGD(params, lr=0.032, momentum=0.5)


class HoldoutDistillation(OwnGenerator):
    """Batches of the auditor half of the holdout (inputs only) for a distillation term that
    keeps the original's function on data the model never trained on.

    The inputs are gathered once at fit start. Indices come from the helper's own generator
    (:class:`~ltu_lightning.utils.generators.OwnGenerator`: checkpointed, and under data
    parallelism each rank keeps its share of one global draw, so N ranks see what one process
    would).
    """

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.inputs: torch.Tensor | None = None

    def sample(self, n: int) -> torch.Tensor:
        """``n`` inputs drawn with replacement (advances the generator)."""
        if self.inputs is None or len(self.inputs) == 0:
            raise LTUError(
                "holdout_distill_weight > 0 needs the auditor half of the holdout; "
                "the data module gave none (set --data.init_args.holdout > 0)"
            )
        idx = self.randint_share(0, len(self.inputs), (n,))
        return self.inputs[idx.to(self.inputs.device)]


class LTUModule(UnlearningModule):
    """LTU unlearning under manual optimization.

    Args:
        backbone: architecture of the original model.
        original_ckpt: the original model's checkpoint (``ClassifierModule``).
        num_classes: number of classes (None: the network's output width, one dry forward).
        optimizer: outer optimizer factory (lr β). Default SGD(lr=0.032, momentum=0.5), chosen
            on the fmnist5k validation holdout (docs/method.md, "How the defaults were chosen").
        lr_scheduler: optional scheduler factory, stepped each epoch.
        remember_loss: what keeps the model on the retain batches: ``kd`` distils the original
            model (``T²·KL`` at ``distill_temperature``; a frozen copy of the original is kept
            as ``teacher``), ``ce`` is cross-entropy on the labels (the paper's reading),
            ``ce_kd`` their sum.
        distill_temperature: T of the distillation terms (> 0).
        holdout_distill_weight: weight of a second distillation term on batches of the
            auditor half of the holdout (unlabelled inputs, as many as the retain batch; the
            frozen original is the teacher, whatever the remember loss; 0 = off).
        forget_loss: the forgetting objective: ``mi`` (membership auditors), ``mi_match``
            (the forget batch's membership scores matched to the holdout's non-member level
            from either side: over-forgetting costs like under-forgetting), ``mi_hinge`` (only
            down to the auditors' non-member level), ``neg_ce``, ``random_label``,
            ``uniform_kl``.
        num_auditors: K, the number of membership auditors.
        auditor_features: one feature list per auditor (default: log-domain sets).
        auditor_epochs: training epochs of each auditor (full batch).
        refit_every: refit the auditors on the current model every N steps (0 = never).
        stop_rule: ``criterion`` (keep the best ``val/criterion`` epoch), ``audit`` (stop when
            the auditors score D_f no higher than unseen data) or ``budget`` (keep the last).
        generator_seed: seed of the auditors, of the ``random_label`` loss and of the holdout
            batches (named apart from the data module's split ``seed``: Lightning merges both
            hparams into one namespace).
        knobs: the knobs of the LTU step, the fields of
            :class:`~ltu_lightning.optim.meta_harmonizer.MetaSettings` (``inner_lr``,
            ``inner_steps``, ``meta_order``, ``meta``, ``query_weight``, ``forget_weight``,
            ``harmonization``, ``granularity``, ``balance``, ``balance_c``, ``bn_mode``,
            ``max_step``, the trust region of every step).
    """

    stop_rules = get_args(LTUStopRule)
    #: LTU reads the auditor half of the holdout itself (auditors, holdout distillation), so
    #: under ``access: partial+holdout`` its retain batches stay D̂_r
    reads_holdout = True

    def __init__(
        self,
        backbone: Backbone,
        original_ckpt: str | None = None,
        num_classes: int | None = None,
        optimizer: OptimizerCallable = sgd_half_momentum,
        lr_scheduler: LRSchedulerCallable | None = None,
        remember_loss: RememberLoss = "kd",
        distill_temperature: float = 4.0,
        holdout_distill_weight: float = 0.5,
        forget_loss: ForgetLossName = "mi",
        num_auditors: int = 3,
        auditor_features: Sequence[Sequence[str]] | None = None,
        auditor_epochs: int = 300,
        refit_every: int = 0,
        stop_rule: LTUStopRule = "criterion",
        generator_seed: int = 0,
        **knobs: Any,
    ) -> None:
        super().__init__(backbone, original_ckpt, optimizer, lr_scheduler, stop_rule)
        self.meta_settings = MetaSettings(**knobs)
        check_choice("remember_loss", remember_loss, get_args(RememberLoss))
        check_choice("forget_loss", forget_loss, FORGET_LOSSES)
        check_range("distill_temperature", distill_temperature, 0.0, low_open=True)
        check_range("holdout_distill_weight", holdout_distill_weight, 0.0)
        check_range("refit_every", refit_every, 0, integer=True)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "lr_scheduler"])
        # record every knob of the step, the defaults too
        self.save_hyperparameters({**self.hparams, **asdict(self.meta_settings)})
        self.num_classes = num_classes
        self.automatic_optimization = False
        if remember_loss != "ce" or holdout_distill_weight > 0:
            self.add_teacher()
        self.holdout_distill = (
            HoldoutDistillation(seed=generator_seed) if holdout_distill_weight > 0 else None
        )
        self.auditors = AuditorEnsemble(
            num_auditors=num_auditors,
            feature_sets=auditor_features,
            epochs=auditor_epochs,
            seed=generator_seed,
        )
        self.forget_objective = make_forget_loss(
            forget_loss, num_classes, self.auditors, seed=generator_seed
        )
        self.harmonizer: MetaHarmonizer | None = None

    # ---------------------------------------------------------------- set-up
    def check_data_contract(self) -> None:
        """Also refuse ``access: partial``: LTU's auditors need the holdout's non-members."""
        super().check_data_contract()
        access = getattr(self.datamodule, "access", None)
        if access == "partial":
            raise LTUError(
                "LTUModule reads the auditor half of the holdout (its membership auditors' "
                "non-members and its holdout distillation), which access='partial' leaves out; "
                "set "
                + how_to_set(
                    "UnlearningDataModule(access='partial+holdout')",
                    "--data.init_args.access partial+holdout",
                )
                + " (the retain subset and that half) or access 'full'"
            )

    def on_fit_start(self) -> None:
        batch_stats = self.backbone if self.meta_settings.bn_mode == "train" else None
        check_strategy(self.trainer, type(self).__name__, batch_stats)
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise LTUError(
                f"LTUModule writes its own gradients and does not support precision={precision!r} "
                "(fp16 loss scaling); use bf16-mixed or 32-true"
            )
        super().on_fit_start()
        if not self.auditors.is_fitted:
            self.fit_auditors()
        if self.holdout_distill is not None and self.holdout_distill.inputs is None:
            with torch.random.fork_rng(devices=[]):  # a loader's iterator draws a base seed
                xs = [x for x, _ in self.datamodule.role_dataloader("holdout_audit")]
            self.holdout_distill.inputs = self.model_input(torch.cat(xs)) if xs else None
        self.harmonizer = MetaHarmonizer(self.backbone, self.optimizers(), self.meta_settings)

    def fit_auditors(self) -> None:
        """Fit the K auditors on the current model: members D̂_r, non-members the auditor half."""
        member_logits, member_y = self.role_logits("retain_subset")
        non_logits, non_y = self.role_logits("holdout_audit")
        self.auditors.fit(member_logits, member_y, non_logits, non_y)

    # ------------------------------------------------------------- training
    def remembering_loss(self, forward: Forward, batch: Batch) -> torch.Tensor:
        """``L_r``: the ``remember_loss`` on a retain batch, plus the holdout distillation term."""
        x, y = batch
        logits = forward(x)
        kind = self.hparams.remember_loss
        t = self.hparams.distill_temperature
        loss = F.cross_entropy(logits, y) if kind in ("ce", "ce_kd") else logits.new_zeros(())
        if kind in ("kd", "ce_kd"):
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            loss = loss + distill_kl(logits, teacher_logits, t)
        if self.holdout_distill is not None:
            xh = self.holdout_distill.sample(len(x))
            with torch.no_grad():
                teacher_h = self.teacher(xh)
            weight = self.hparams.holdout_distill_weight
            loss = loss + weight * distill_kl(forward(xh), teacher_h, t)
        return loss

    def forgetting_loss(self, forward: Forward, batch: Batch) -> torch.Tensor:
        """``L_f``: the ``forget_loss`` on a forget batch."""
        x, y = batch
        return self.forget_objective(forward(x).float(), y)

    def training_step(self, batch: dict[str, Batch], batch_idx: int) -> None:
        assert self.harmonizer is not None
        if self.meta_settings.meta:
            support_f, query_f = self.split_support_query(batch["forget"])
            support_r, query_r = self.split_support_query(batch["retain"])
        else:  # no meta-test: the joint step uses the whole batch, not a support half of it
            (support_f, query_f), (support_r, query_r) = (
                (batch["forget"], None),
                (batch["retain"], None),
            )
        stats = self.harmonizer.step(
            self.remembering_loss, self.forgetting_loss, support_r, query_r, support_f, query_f
        )
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=len(support_f[1]))
        refit = self.hparams.refit_every
        if refit and (self.global_step + 1) % refit == 0:
            self.fit_auditors()

    # ----------------------------------------------------------- validation
    def log_validation(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().log_validation(outputs)
        if not self.auditors.is_fitted:
            return
        with torch.no_grad():
            audit_forget = self.auditors.mean_member_prob(*outputs["forget"]).item()
            audit_val = self.auditors.mean_member_prob(*outputs["holdout_val"]).item()
        self.log_dict(
            {"val/audit_forget": audit_forget, "val/audit_val": audit_val}, sync_dist=True
        )
        if (
            self.stop_rule == "audit"
            and not self.trainer.sanity_checking
            and audit_forget <= audit_val
        ):
            self.trainer.should_stop = True
