"""``UnlearningModule``: what LTU and every baseline share.

- the original model is loaded from ``original_ckpt`` (a ``ClassifierModule`` checkpoint, read
  with ``weights_only=True``), refusing one trained on another split or with another backbone;
- data access goes through the data module's roles (``train_on="unlearn"`` batches are dicts
  ``{"forget": (x, y), "retain": (x, y)}``);
- after each epoch the honest selection criterion (docs/protocol.md) is computed on the forget set
  and the *validation half* of the holdout (never the test split, never a retrained model; the
  first ``trainer.limit_val_batches`` batches of each where that is set) and
  logged as ``val/criterion``; the stage's ``ModelCheckpoint`` keeps the best epoch
  (``stop_rule="criterion"``), or only the last one (``"budget"``);
- the starting model's criterion is computed once before the first step and logged with every
  validation as ``val/criterion_start`` (the "do nothing" line on a dashboard). The starting
  model is a selection candidate: the kept weights (held in memory, so selection works without
  checkpointing, and loaded into the network at the end of ``fit``) are never scored worse by
  the criterion than the start. A fit in which no epoch beats the start says so and ends with
  the starting weights; so does a start whose D_f is already indistinguishable from unseen data
  ("nothing to forget"): the criterion penalizes over-forgetting (D_f looking *less* familiar
  than unseen data) exactly as much as under-forgetting.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ltu_lightning.audit.forget_losses import RandomLabelLoss
from ltu_lightning.errors import LTUError, NonFiniteStepError, how_to_set
from ltu_lightning.evaluation.metrics import loss_auc, selection_criterion
from ltu_lightning.modules.base import BaseModule, monitored_best_score
from ltu_lightning.modules.checkpoints import load_backbone_weights
from ltu_lightning.networks import Backbone
from ltu_lightning.utils.checks import check_choice

#: When an unlearning run stops: keep the best ``val/criterion`` epoch, or the last one
StopRule = Literal["criterion", "budget"]
Batch = tuple[torch.Tensor, torch.Tensor]
#: checkpoint key of the state of plain (non-``nn.Module``) helpers, e.g. a loss's generator
HELPER_STATE_KEY = "ltu_helper_states"
#: checkpoint key of the in-memory selection: the kept weights, their score and epoch
KEPT_STATE_KEY = "ltu_kept"
#: frozen helper networks (eval mode, no gradients): held outside the module tree, so that
#: Lightning neither counts them as modules left in eval mode nor trains them, but moved with
#: the module (``.to``) and saved in its ``state_dict`` under these names
FROZEN_HELPERS = ("teacher", "auditors")
#: what a data module must have for unlearning (``ltu_lightning.UnlearningData``)
DATA_MEMBERS = ("train_on", "val_roles", "role_dataloader", "train_dataloader", "val_dataloader")


def distill_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T²·KL(softmax(t/T) ‖ softmax(s/T))``, batch mean (Hinton et al.'s scaling, so the
    gradient's size does not shrink with T)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class UnlearningModule(BaseModule):
    """Base of the unlearning methods (LTU and the baselines).

    Args:
        backbone: the architecture of the original model (same settings as when it was trained).
        original_ckpt: checkpoint of the original model (``ltu fit`` of ``ClassifierModule``).
            None starts from the backbone's current weights (for users who load weights
            themselves).
        optimizer: optimizer factory for the backbone's parameters.
        lr_scheduler: optional scheduler factory, stepped each epoch.
        stop_rule: ``criterion`` keeps the epoch with the lowest honest criterion on the
            validation holdout; ``budget`` keeps the last epoch (``max_epochs`` passes).
    """

    monitor = "val/criterion"
    monitor_mode = "min"

    def __init__(
        self,
        backbone: Backbone,
        original_ckpt: str | None = None,
        optimizer: OptimizerCallable = torch.optim.SGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        stop_rule: StopRule = "criterion",
    ) -> None:
        super().__init__(backbone, optimizer, lr_scheduler)
        check_choice("stop_rule", stop_rule, self.stop_rules)
        self.original_ckpt = original_ckpt
        self.stop_rule = stop_rule
        if stop_rule != "criterion":
            self.monitor = None  # the stage's checkpoint keeps the last pass
        self.register_buffer("original_val_acc", torch.tensor(float("nan")))
        self.register_buffer("start_criterion", torch.tensor(float("nan")))
        self._val_outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.teacher: nn.Module | None = None
        #: classes of the network's output; None = inferred at set-up (one dry forward)
        self.num_classes: int | None = None
        # in-memory selection: weights of the best candidate so far (the start included)
        self._kept: dict[str, torch.Tensor] | None = None
        self._kept_score = math.inf
        self._kept_epoch: int | None = None
        #: set at fit start: the start's D_f is already indistinguishable from unseen data
        self.nothing_to_forget = False

    #: the stop rules this class accepts (a subclass with a rule of its own extends it)
    stop_rules: tuple[str, ...] = get_args(StopRule)
    #: whether the method reads the auditor half of the holdout through parts of its own (LTU);
    #: under ``access: partial+holdout`` every other method gets that half as retain data
    reads_holdout: bool = False

    # ------------------------------------------------------- frozen helpers
    def __setattr__(self, name: str, value: Any) -> None:
        if name in FROZEN_HELPERS:
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def frozen_helpers(self) -> list[tuple[str, nn.Module]]:
        """The frozen helper networks this module holds (e.g. the teacher, the auditors)."""
        return [
            (name, module)
            for name in FROZEN_HELPERS
            if isinstance(module := self.__dict__.get(name), nn.Module)
        ]

    def _apply(self, fn: Any, recurse: bool = True) -> UnlearningModule:
        super()._apply(fn, recurse)
        for _, module in self.frozen_helpers():
            module._apply(fn, recurse)
        return self

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, module in self.frozen_helpers():
            module.state_dict(
                destination=destination, prefix=f"{prefix}{name}.", keep_vars=keep_vars
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for name, module in self.frozen_helpers():
            head = f"{prefix}{name}."
            own = {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}
            result = module.load_state_dict(own, strict=False)
            unexpected_keys[:] = [k for k in unexpected_keys if not k.startswith(head)]
            unexpected_keys.extend(head + k for k in result.unexpected_keys)
            missing_keys.extend(head + k for k in result.missing_keys)

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_data_contract()
        if self.original_ckpt is not None and not getattr(self, "_original_loaded", False):
            load_backbone_weights(self.backbone, self.original_ckpt, self.split_id)
            self._original_loaded = True
        if self.teacher is not None and not self._teacher_synced:
            # On resume the checkpoint's (identical) teacher weights are restored after this.
            self.teacher.load_state_dict(self.backbone.state_dict())
            self._teacher_synced = True
        super().setup(stage)

    def check_data_contract(self) -> None:
        """Refuse, before any work, a data module that lacks the unlearning roles, in one line
        naming the fix for the API in use (Python or the ``ltu`` command)."""
        name = type(self).__name__
        dm = self.datamodule
        if dm is None:
            raise LTUError(
                f"{name} needs a data module with the unlearning roles: "
                + how_to_set(
                    "trainer.fit(model, datamodule=UnlearningDataModule.from_split(train, test, "
                    "forget=...)) or UnlearningDataModule.wrap(your_datamodule, forget=...)",
                    "pass --data UnlearningDataModule (e.g. --config configs/unlearn/datasets/<dataset>.yaml)",
                )
            )
        missing = [m for m in DATA_MEMBERS if not hasattr(dm, m)]
        if missing:
            raise LTUError(
                f"{name} needs the unlearning roles and {type(dm).__name__} has no "
                f"{', '.join(missing)}: adapt it with UnlearningDataModule.wrap(datamodule, "
                "forget=...) (or implement ltu_lightning.UnlearningData)"
            )
        if dm.train_on != "unlearn":
            raise LTUError(
                f"{name} needs the unlearning batches but the data module trains on "
                f"{dm.train_on!r}: set "
                + how_to_set("train_on='unlearn' on it", "--data.init_args.train_on unlearn")
            )
        roles = list(dm.val_roles)
        if "forget" not in roles or "holdout_val" not in roles:
            raise LTUError(
                f"{name} selects its epoch on the forget set and the validation holdout, but the "
                f"data module's val_roles are {roles}: they must include 'forget' and 'holdout_val'"
            )

    def check_backbone_fits_data(self) -> None:
        """One dry forward on a validation-holdout sample: the network must take the data, and
        its output width gives ``num_classes`` (a given ``num_classes`` or labels beyond the
        width are refused)."""
        dm = self.datamodule
        if dm is None or not hasattr(dm, "role_dataloader"):
            return
        x, y = next(iter(dm.role_dataloader("holdout_val")))
        try:
            out = self.dry_forward(x[:1])
        except RuntimeError as err:
            raise LTUError(
                f"the network {type(self.backbone).__name__} cannot take the data's inputs of shape "
                f"{tuple(x.shape[1:])} ({str(err).splitlines()[0]}); build it for that input"
            ) from err
        if out.ndim != 2:
            raise LTUError(
                f"the network {type(self.backbone).__name__} returns shape {tuple(out.shape)}; "
                "unlearning needs [batch, classes] logits"
            )
        width = int(out.shape[-1])
        labels = getattr(dm, "num_classes", None)
        labels = labels if isinstance(labels, int) else int(y.max()) + 1
        given = self.num_classes
        if given is not None and given != width:
            raise LTUError(
                f"{type(self).__name__} has num_classes={given} but the network outputs {width} "
                "logits: "
                + how_to_set(
                    "drop num_classes (it is inferred)", "drop --model.init_args.num_classes"
                )
                + f" or set it to {width}"
            )
        if labels > width:
            raise LTUError(
                f"the data has {labels} classes but the network outputs {width} logits; "
                + how_to_set(
                    f"build it with {labels} outputs",
                    f"set --model.init_args.backbone.init_args.num_classes {labels}",
                )
            )
        self.num_classes = width
        for helper in vars(self).values():
            if isinstance(helper, RandomLabelLoss):
                helper.set_num_classes(width)

    def add_teacher(self) -> None:
        """Keep a frozen copy of the starting model as ``self.teacher`` (eval mode, no
        gradients, not in the optimizer; filled with the original weights in ``setup``)."""
        self.teacher = copy.deepcopy(self.backbone).requires_grad_(False).eval()
        self._teacher_synced = False

    def train(self, mode: bool = True) -> UnlearningModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def on_fit_start(self) -> None:
        if torch.isnan(self.original_val_acc):  # not restored from a resumed checkpoint
            # the same batches every validation reads (trainer.limit_val_batches)
            logits, y = self.role_logits("holdout_val", self.validation_batches("holdout_val"))
            keep = ~self._forgotten_class_mask(y)
            self.original_val_acc.fill_(
                100.0 * (logits.argmax(-1) == y)[keep].float().mean().item()
            )
            with torch.random.fork_rng(devices=[]):  # a loader's iterator draws a base seed
                forget = self.role_logits("forget", self.validation_batches("forget"))
            outputs = {"forget": forget, "holdout_val": (logits, y)}
            metrics = self.validation_metrics(outputs)
            self.start_criterion.fill_(metrics["val/criterion"])
            if self.monitor is not None:
                self.keep(metrics["val/criterion"], epoch=None)
            self.nothing_to_forget = not (~keep).any() and self.looks_unseen(
                metrics, len(forget[1]), int(keep.sum())
            )
            if self.nothing_to_forget:
                rank_zero_warn(
                    f"{type(self).__name__}: nothing to forget: on the validation holdout the "
                    f"starting model's D_f already looks like unseen data (loss-AUC "
                    f"{metrics['val/loss_auc']:.3f}, accuracy {metrics['val/forget_acc']:.1f} vs "
                    f"{metrics['val/acc']:.1f}); the starting model stays unless an epoch "
                    "scores better"
                )

    @staticmethod
    def looks_unseen(metrics: dict[str, float], n_forget: int, n_val: int) -> bool:
        """Whether D_f is indistinguishable from the validation holdout: its loss-AUC is within
        one standard error of chance and its accuracy within one of the holdout's (one, not two:
        on small sets two would call an undetected but real difference "nothing to forget")."""
        n = max(1, min(n_forget, n_val))
        auc_se = math.sqrt((2 * n + 1) / (12.0 * n * n))
        acc = metrics["val/acc"] / 100.0
        acc_se = 100.0 * math.sqrt(max(acc * (1 - acc), 1.0 / n) * (1.0 / n_forget + 1.0 / n))
        return (
            abs(metrics["val/loss_auc"] - 0.5) <= auc_se
            and abs(metrics["val/forget_acc"] - metrics["val/acc"]) <= acc_se
        )

    def keep(self, score: float, epoch: int | None) -> None:
        """Hold the network's current weights (on CPU) as the selected candidate."""
        self._kept = {
            k: v.detach().to("cpu", copy=True) for k, v in self.backbone.state_dict().items()
        }
        self._kept_score = float(score)
        self._kept_epoch = epoch

    @property
    def keeps_start(self) -> bool:
        """Whether the selected candidate so far is the starting model (no epoch beat it)."""
        return self._kept is not None and self._kept_epoch is None

    @property
    def kept_epoch(self) -> int | None:
        """The selected epoch (None: the starting model, or no selection)."""
        return self._kept_epoch

    def no_gain(self, best_score: float | None) -> bool | None:
        """Whether a fit's best validation criterion failed to beat the starting model's: the
        kept epoch is no closer to retrain-like than not unlearning. None when unknown (no
        monitored criterion, or no start computed)."""
        start = self.start_criterion.item()
        if self.monitor is None or best_score is None or math.isnan(start):
            return None
        return float(best_score) >= start

    def on_fit_end(self) -> None:
        """Load the kept weights into the network; when the start won, say so and write them
        over the stage's ``best.ckpt`` too, so that every reader of the selection gets them."""
        if self._kept is None:
            return
        self.backbone.load_state_dict(self._kept)
        if self._kept_epoch is not None:
            return
        best = monitored_best_score(self.trainer, self.monitor) if self.monitor else None
        rank_zero_warn(
            f"{type(self).__name__}: no epoch beat the starting model on the validation "
            f"criterion (start {self.start_criterion.item():.3f}"
            + (f", best epoch {best:.3f}" if best is not None else "")
            + "); the network keeps the starting weights (no gain): "
            + (
                "there was nothing to forget, its D_f already looked like unseen data"
                if self.nothing_to_forget
                else "lower the learning rate or give the method more remaining data"
            )
        )
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "is_stage_best", False) and cb.best_model_path:
                self.trainer.save_checkpoint(cb.best_model_path)

    def _forgotten_class_mask(self, targets: torch.Tensor) -> torch.Tensor:
        """Samples of the classes being forgotten (all False for random/index forgetting)."""
        classes = (getattr(self.datamodule, "hparams", None) or {}).get("forget_classes")
        if not classes:
            return torch.zeros_like(targets, dtype=torch.bool)
        return torch.isin(targets, torch.as_tensor(list(classes), device=targets.device))

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs read outside Lightning's loops (the role loaders) on this module's device and
        in the trainer's precision, as Lightning hands training batches over (``bf16-true``,
        ``64-true``: the backbone's weights are no longer float32)."""
        x = x.to(self.device)
        return self._trainer.precision_plugin.convert_input(x) if self._trainer is not None else x

    def validation_batches(self, role: str) -> int | None:
        """How many batches of a validation role each validation reads under the trainer's
        ``limit_val_batches`` (Lightning's rule: a count, or a fraction of the loader); None for
        all of them, and where validation is off (a limit of 0), so that the starting model's
        criterion is computed on the very images every later validation scores. Under data
        parallelism each of W processes validates the first batches of its shard (sample i goes
        to process i mod W), which together are the first W times as many of the whole role."""
        trainer = self._trainer
        limit = getattr(trainer, "limit_val_batches", None)
        if limit is None:
            return None
        total = len(self.datamodule.role_dataloader(role))
        world = max(1, int(getattr(trainer, "world_size", 1)))
        shard = math.ceil(total / world)
        if isinstance(limit, int):
            n = min(limit, shard)
        else:
            n = shard if limit >= 1.0 else int(shard * limit)
        n *= world
        return n if 0 < n < total else None

    @torch.no_grad()
    def role_logits(
        self, role: str, max_batches: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of the current backbone (eval mode) on one data role (its first
        ``max_batches`` evaluation batches; None: all of it)."""
        was_training = self.backbone.training
        self.backbone.eval()
        logits, targets = [], []
        try:
            for i, (x, y) in enumerate(self.datamodule.role_dataloader(role)):
                if max_batches is not None and i >= max_batches:
                    break
                logits.append(self.backbone(self.model_input(x)).float())
                targets.append(y.to(self.device))
        finally:
            self.backbone.train(was_training)
        return torch.cat(logits), torch.cat(targets)

    def _accuracy_on(self, role: str) -> float:
        logits, y = self.role_logits(role)
        return 100.0 * (logits.argmax(-1) == y).float().mean().item()

    # ------------------------------------------------------------- training
    @staticmethod
    def split_support_query(batch: Batch) -> tuple[Batch, Batch]:
        """Two disjoint halves of a shuffled batch (support, query); a 1-sample batch serves both."""
        x, y = batch
        if len(y) < 2:
            return (x, y), (x, y)
        half = len(y) // 2
        return (x[:half], y[:half]), (x[half:], y[half:])

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            scheduler = self.lr_schedulers()
            if scheduler is not None:
                scheduler.step()

    # ----------------------------------------------------------- checkpoints
    def stateful_helpers(self) -> dict[str, Any]:
        """Plain attributes with state of their own outside ``nn.Module`` (e.g. the random-label
        generator of ``RandomLabelLoss``): saved in checkpoints so that a resumed run continues
        their streams exactly."""
        return {
            name: value
            for name, value in vars(self).items()
            if not name.startswith("_")
            and not isinstance(value, type | nn.Module)
            and callable(getattr(value, "state_dict", None))
            and callable(getattr(value, "load_state_dict", None))
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[HELPER_STATE_KEY] = {
            k: v.state_dict() for k, v in self.stateful_helpers().items()
        }
        if self._kept is not None:
            checkpoint[KEPT_STATE_KEY] = {
                "state": self._kept,
                "score": self._kept_score,
                "epoch": self._kept_epoch,
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict") or {}
        saved_teacher = any(k.startswith("teacher.") for k in state)
        if state and saved_teacher != (self.teacher is not None):
            raise LTUError(
                f"this checkpoint was saved {'with' if saved_teacher else 'without'} a frozen "
                f"teacher and this {type(self).__name__} has {'none' if saved_teacher else 'one'}"
                ": load it with the settings that saved it (for LTU the same remember_loss and "
                "holdout_distill_weight; before they existed: ce and 0)"
            )
        kept = checkpoint.get(KEPT_STATE_KEY)
        if kept is not None:
            self._kept, self._kept_score, self._kept_epoch = (
                kept["state"],
                kept["score"],
                kept["epoch"],
            )
        saved = checkpoint.get(HELPER_STATE_KEY, {})
        for name, helper in self.stateful_helpers().items():
            if name in saved:
                helper.load_state_dict(saved[name])

    # ----------------------------------------------------------- validation
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self._val_outputs.setdefault(dataloader_idx, []).append((self(x).float(), y))

    def on_validation_epoch_end(self) -> None:
        roles = list(getattr(self.datamodule, "val_roles", ["forget", "holdout_val"]))
        outputs = {}
        for idx, role in enumerate(roles):
            parts = self._val_outputs.get(idx)
            if not parts:
                continue
            logits = torch.cat([p[0] for p in parts])
            targets = torch.cat([p[1] for p in parts])
            if self.trainer.world_size > 1:
                logits = self.all_gather(logits).flatten(0, 1)
                targets = self.all_gather(targets).flatten(0, 1)
            outputs[role] = (logits, targets)
        self._val_outputs.clear()
        for role, (logits, _) in outputs.items():
            self.check_finite_outputs(logits, role)
        if "forget" not in outputs or "holdout_val" not in outputs:
            return
        self.log_validation(outputs)

    def check_finite_outputs(self, logits: torch.Tensor, role: str) -> None:
        """Stop a run whose model gives non-finite logits (its weights can be finite while its
        activations overflow, e.g. after gradient ascent): a diverged run, handled like a
        non-finite step (the kept model and the last good checkpoint stay)."""
        if torch.isfinite(logits).all():
            return
        bad = int((~torch.isfinite(logits)).any(dim=-1).sum())
        raise NonFiniteStepError(
            f"{type(self).__name__} gives non-finite logits on {bad} of {len(logits)} {role} "
            f"samples after epoch {self.current_epoch} (its activations overflow): the run "
            "diverged and was stopped (the kept model and the last checkpoint are intact); "
            "lower the learning rate"
        )

    def log_validation(self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Log forget/val accuracy, the loss-AUC of D_f vs val, and the selection criterion.

        Random forgetting: D_f should look like unseen data, so it is compared with the whole
        validation half. Class-wise forgetting: a retrained model does not know the class at all,
        so D_f's accuracy target is 0, D_f is compared (loss-AUC) with validation samples of the
        forgotten classes, and the accuracy drop is measured on the remaining classes.
        """
        metrics = self.validation_metrics(outputs)
        criterion = metrics.pop("val/criterion")
        start = self.start_criterion.item()
        if not math.isnan(start):
            metrics["val/criterion_start"] = start
        # computed from the outputs of every process (all_gather): equal on all ranks
        self.log_dict(metrics, sync_dist=True)
        self.log("val/criterion", criterion, prog_bar=True, sync_dist=True)
        trainer = self._trainer
        sanity = trainer is not None and trainer.sanity_checking
        if self.monitor is not None and not sanity and criterion < self._kept_score:
            self.keep(criterion, epoch=self.current_epoch)

    def validation_metrics(
        self, outputs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """Forget/val accuracy, loss-AUC and the selection criterion of one model's outputs."""
        (f_logits, f_y), (v_logits, v_y) = outputs["forget"], outputs["holdout_val"]
        forget_acc = 100.0 * (f_logits.argmax(-1) == f_y).float().mean().item()
        forgotten = self._forgotten_class_mask(v_y)
        v_correct = (v_logits.argmax(-1) == v_y).float()
        val_acc = 100.0 * v_correct[~forgotten].mean().item()
        f_loss = F.cross_entropy(f_logits, f_y, reduction="none").cpu().numpy()
        v_loss = F.cross_entropy(v_logits, v_y, reduction="none")
        auc = loss_auc(f_loss, (v_loss[forgotten] if forgotten.any() else v_loss).cpu().numpy())
        original = self.original_val_acc.item()
        if original != original:  # nan: validate() outside fit
            original = val_acc
        target = 0.0 if forgotten.any() else None
        criterion = selection_criterion(forget_acc, val_acc, original, auc, forget_target=target)
        return {
            "val/forget_acc": forget_acc,
            "val/acc": val_acc,
            "val/loss_auc": auc,
            "val/criterion": criterion,
        }

    # ------------------------------------------------------------------ test
    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        roles = getattr(self.datamodule, "test_roles", ("test", "forget", "remaining"))
        acc = 100.0 * (self(x).argmax(-1) == y).float().mean()
        self.log(
            f"test/acc_{roles[dataloader_idx]}",
            acc,
            on_epoch=True,
            add_dataloader_idx=False,
            batch_size=len(y),
            sync_dist=True,
        )
