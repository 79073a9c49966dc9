"""The unlearning baselines (ltu_lightning.modules.baselines) and their fmnist5k configs."""

from __future__ import annotations

import copy
import csv
import hashlib
import inspect
import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.loggers import CSVLogger

from conftest import _run_ltu
from ltu_lightning.audit.forget_losses import RandomLabelLoss
from ltu_lightning.benchmark.search import read_space
from ltu_lightning.data import UnlearningDataModule
from ltu_lightning.errors import LTUError
from ltu_lightning.evaluation.protocol import evaluate_unlearning
from ltu_lightning.modules import ClassifierModule, LTUModule
from ltu_lightning.modules.baselines import (
    LUR,
    SCRUB,
    BadTeacher,
    BaselineModule,
    FineTune,
    GradientAscent,
    L1Sparse,
    NegGradPlus,
    RandomLabel,
    SalUn,
)
from ltu_lightning.modules.ltu import HoldoutDistillation
from ltu_lightning.networks import MLP

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
BASELINES = (
    FineTune, GradientAscent, RandomLabel, NegGradPlus, L1Sparse, SalUn, SCRUB, BadTeacher, LUR
)  # fmt: skip
CONFIG_NAMES = (
    "ft", "ga", "rl", "neggrad_plus", "l1_sparse", "salun", "scrub", "bad_teacher", "lur"
)  # fmt: skip
HIDDEN = [64]
#: one epoch of two tiny batches, quiet: what every config run through the CLI here adds
TINY = [
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--data.batch_size", "16",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


#: one torch thread per test module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _backbone() -> MLP:
    return MLP(num_classes=10, in_features=64, hidden=HIDDEN)


def _datamodule(
    root: Path, train_on: str = "unlearn", access: str = "partial", eval_batch_size: int = 512
) -> UnlearningDataModule:
    return UnlearningDataModule(
        dataset="digits",
        holdout=0.2,
        manifest_path=str(root / "split_manifest.json"),
        train_on=train_on,
        access=access,
        batch_size=32,
        eval_batch_size=eval_batch_size,
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A digits MLP trained for 3 epochs: (root, checkpoint, backbone state)."""
    root = tmp_path_factory.mktemp("digits")
    L.seed_everything(0)
    model = ClassifierModule(_backbone(), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3))
    trainer = L.Trainer(
        default_root_dir=root / "original",
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, _datamodule(root, train_on="train"))
    ckpt = root / "original" / "checkpoints" / "best.ckpt"
    state = {k: v.clone() for k, v in _backbone_state(ckpt).items()}
    return root, ckpt, state


def _backbone_state(ckpt: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}


def _fit(
    cls: type,
    original: tuple[Path, Path, dict[str, torch.Tensor]],
    name: str,
    lr: float = 0.01,
    weight_decay: float = 0.0,
    access: str | None = None,
    epochs: int = 2,
    batches: int = 3,
    precision: str = "32-true",
    **kwargs,
):
    root, ckpt, _ = original
    L.seed_everything(0)
    model = cls(
        _backbone(),
        original_ckpt=str(ckpt),
        num_classes=10,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=weight_decay),
        **kwargs,
    )
    out = root / name
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=epochs,
        limit_train_batches=batches,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=CSVLogger(out),
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    if access is None:  # LTU's auditors read the holdout's auditor half
        access = "partial+holdout" if cls.reads_holdout else "partial"
    dm = _datamodule(root, access=access)
    trainer.fit(model, dm)
    return model, trainer, dm, out


def _metrics(out: Path) -> list[dict[str, str]]:
    (path,) = out.glob("lightning_logs/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@torch.no_grad()
def _forget_ce(backbone: torch.nn.Module, dm: UnlearningDataModule) -> float:
    backbone.eval()
    losses = [
        F.cross_entropy(backbone(x), y, reduction="sum") for x, y in dm.role_dataloader("forget")
    ]
    return (torch.stack(losses).sum() / len(dm.role_dataset("forget"))).item()


# ------------------------------------------------------------------ shared behaviour
@pytest.mark.parametrize("cls", BASELINES, ids=lambda c: c.__name__)
def test_baseline_unlearns_from_the_original_checkpoint(cls, original):
    _, ckpt, state = original
    digest = _sha(ckpt)
    model, trainer, _, out = _fit(cls, original, f"shared_{cls.__name__}")
    # the last epoch's weights (the network itself holds the kept ones, the start if it won)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    after = {k: last[f"backbone.{k}"] for k in state}
    assert any(not torch.equal(after[k], state[k]) for k in state), "no weight moved"
    assert _sha(ckpt) == digest, "the original checkpoint was modified"
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert "val/criterion" in trainer.callback_metrics
    rows = _metrics(out)
    assert len(_column(rows, "val/criterion")) == 2  # one per epoch
    assert any(k.startswith("train/") and _column(rows, k) for k in rows[0])
    assert model.hparams.num_classes == 10 and model.hparams.original_ckpt == str(ckpt)
    assert "backbone" not in model.hparams and "optimizer" not in model.hparams


def test_start_criterion_is_the_original_models_and_is_logged_every_epoch(original):
    model, trainer, dm, out = _fit(FineTune, original, "start_criterion")
    start = model.start_criterion.item()
    assert start == start and start > 0  # computed, finite
    logged = _column(_metrics(out), "val/criterion_start")
    assert logged == pytest.approx([start] * 2)  # one per epoch, the same reference line
    # It is the criterion `ltu validate` reports for the untouched original model.
    fresh = FineTune(_backbone(), original_ckpt=str(original[1]), num_classes=10)
    results = L.Trainer(logger=False, enable_progress_bar=False).validate(fresh, dm)
    assert results[0]["val/criterion"] == pytest.approx(start, abs=1e-5)


def test_start_criterion_reads_the_batches_each_validation_reads(original):
    # trainer.limit_val_batches caps validation at the first batch of D_f and of the validation
    # half; the starting model's criterion must be scored on those very images, or an epoch
    # that changed nothing (lr 0) would score differently from the start it is compared with.
    root, ckpt, _ = original
    model = FineTune(
        _backbone(),
        original_ckpt=str(ckpt),
        num_classes=10,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )
    dm = _datamodule(root, eval_batch_size=32)
    out = root / "limited_validation"
    trainer = L.Trainer(
        default_root_dir=out,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=CSVLogger(out),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(UserWarning, match="no epoch beat the starting model"):
        trainer.fit(model, dm)
    assert len(dm.role_dataloader("forget")) > 1  # the limit leaves batches out
    (score,) = _column(_metrics(out), "val/criterion")
    assert score == pytest.approx(model.start_criterion.item(), abs=1e-6)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_batches_cover_what_the_processes_validate_together(original, world):
    # Under data parallelism each process validates the first `limit` batches of its shard;
    # the start's criterion must read their union: the first limit * world batches of the role.
    root, _, _ = original
    dm = _datamodule(root, eval_batch_size=8)
    dm.setup("fit")
    model = FineTune(_backbone(), num_classes=10)
    model._trainer = SimpleNamespace(limit_val_batches=2, world_size=world, datamodule=dm)
    n = model.validation_batches("forget")
    dataset = dm.role_dataset("forget")
    validated = set()
    for rank in range(world):
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=False
        )
        validated |= set(list(sampler)[: 2 * 8])
    assert n == 2 * world
    assert validated == set(range(n * 8))
    model._trainer = SimpleNamespace(limit_val_batches=1.0, world_size=world, datamodule=dm)
    assert model.validation_batches("forget") is None  # every batch


def test_a_fit_that_never_beats_the_starting_model_warns(original):
    # lr 0: the weights never move, so no epoch can beat the model it started from
    with pytest.warns(UserWarning, match="no epoch beat the starting model"):
        model, trainer, _, _ = _fit(FineTune, original, "no_gain", lr=0.0)
    assert trainer.checkpoint_callback.best_model_score.item() >= model.start_criterion.item()


def _own_arguments(cls: type) -> set[str]:
    """The named arguments of the ``__init__`` a class defines itself (none if it has none)."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return set()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        p.name for p in inspect.signature(init).parameters.values() if p.kind not in variadic
    } - {"self"}


def _constructor_arguments(cls: type) -> set[str]:
    """Every named argument a constructor accepts, through ``**kwargs`` up its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        names |= _own_arguments(klass)
        init = klass.__dict__.get("__init__")
        params = inspect.signature(init).parameters.values() if init is not None else ()
        if init is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


@pytest.mark.parametrize("cls", BASELINES, ids=lambda c: c.__name__)
def test_hyperparameters_record_every_argument(cls):
    expected = _constructor_arguments(cls) - {"backbone", "optimizer", "lr_scheduler"}
    assert set(cls(_backbone()).hparams) == expected


@pytest.mark.parametrize("cls", BASELINES, ids=lambda c: c.__name__)
def test_each_constructor_states_only_its_own_arguments(cls):
    """No copied signatures: a baseline's ``__init__`` names no argument of its bases."""
    for klass in cls.__mro__[: cls.__mro__.index(BaselineModule)]:
        inherited = set().union(*(_own_arguments(b) for b in klass.__mro__[1:]))
        assert not _own_arguments(klass) & inherited, klass.__name__


def test_num_classes_must_match_the_data(original):
    root, ckpt, _ = original
    model = RandomLabel(_backbone(), original_ckpt=str(ckpt), num_classes=5)
    trainer = L.Trainer(
        default_root_dir=root / "mismatch", max_epochs=1, logger=False, enable_progress_bar=False
    )
    with pytest.raises(LTUError, match="num_classes=5"):
        trainer.fit(model, _datamodule(root))


def test_finetune_with_full_access_draws_retain_batches_from_the_remaining_set(original):
    _, _, dm, out = _fit(FineTune, original, "ft_full", access="full", batches=2)
    assert dm.retain_role == "remaining"
    assert _column(_metrics(out), "train/retain_ce")


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (NegGradPlus, {"alpha": 1.5}),
        (L1Sparse, {"alpha": -1.0}),
        (SalUn, {"sparsity": 0.0}),
        (SalUn, {"sparsity": 1.5}),
        (SCRUB, {"temperature": 0.0}),
        (SCRUB, {"max_steps": -1}),
        (BadTeacher, {"temperature": 0.0}),
        (LUR, {"forget_weight": -1.0}),
        (LUR, {"sparsity": 0.0}),
        (FineTune, {"num_classes": 1}),
        (FineTune, {"stop_rule": "audit"}),
    ],
)
def test_invalid_arguments_are_refused(cls, kwargs):
    with pytest.raises(LTUError):
        cls(_backbone(), **kwargs)


# ------------------------------------------------------------------ method-specific
def test_gradient_ascent_increases_the_forget_loss(original):
    # budget: the network keeps the step's weights (under "criterion" it may keep the start)
    model, _, dm, _ = _fit(GradientAscent, original, "ga_up", lr=0.05, epochs=1, stop_rule="budget")
    before_model = _backbone()
    before_model.load_state_dict(original[2])
    before, after = _forget_ce(before_model, dm), _forget_ce(model.backbone, dm)
    assert after > before + 0.05, (before, after)


def test_neggrad_plus_weights_retain_and_forget_ce():
    torch.manual_seed(0)
    model = NegGradPlus(_backbone(), alpha=0.9)
    forget = (torch.randn(5, 64), torch.randint(0, 10, (5,)))
    retain = (torch.randn(7, 64), torch.randint(0, 10, (7,)))
    out = {k: float(v) for k, v in model.losses(forget, retain).items()}
    with torch.no_grad():
        assert out["forget_ce"] == pytest.approx(
            F.cross_entropy(model(forget[0]), forget[1]).item()
        )
        assert out["retain_ce"] == pytest.approx(
            F.cross_entropy(model(retain[0]), retain[1]).item()
        )
    expected = 0.9 * out["retain_ce"] - 0.1 * out["forget_ce"]
    assert out["loss"] == pytest.approx(expected, rel=1e-5)


def test_l1_sparse_alpha_decays_linearly_to_zero(original):
    model, trainer, _, out = _fit(L1Sparse, original, "l1", alpha=1e-3)
    alphas = _column(_metrics(out), "train/l1_alpha")
    total = trainer.estimated_stepping_batches
    assert len(alphas) == total == 6
    assert alphas[0] == pytest.approx(1e-3)
    assert alphas == pytest.approx([1e-3 * (1 - t / total) for t in range(total)])
    assert model.current_alpha() == pytest.approx(0.0, abs=1e-12)


def test_random_label_trains_on_wrong_labels(original):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    relabel = RandomLabel.relabel

    def spy(self, targets):
        new = relabel(self, targets)
        seen.append((targets.clone(), new.clone()))
        return new

    mp = pytest.MonkeyPatch()
    mp.setattr(RandomLabel, "relabel", spy)
    try:
        _fit(RandomLabel, original, "rl_labels", epochs=1)
    finally:
        mp.undo()
    assert len(seen) == 3  # one relabelling per training step
    true = torch.cat([t for t, _ in seen])
    new = torch.cat([n for _, n in seen])
    assert (true != new).all()
    assert ((new >= 0) & (new < 10)).all()
    assert len(new.unique()) > 5  # spread over the wrong classes, not one fixed shift


def test_salun_updates_only_the_salient_weights(original):
    _, ckpt, state = original
    model, _, dm, _ = _fit(
        SalUn,
        original,
        "salun_mask",
        sparsity=0.3,
        weight_decay=5e-3,
        batches=3,
        stop_rule="budget",  # the network keeps the last step's weights, not a selection
    )
    masks = model.masks()
    n_total = sum(m.numel() for m in masks.values())
    n_masked = sum(int(m.sum()) for m in masks.values())
    assert n_masked == round(0.3 * n_total)
    assert model.mask_density() == pytest.approx(0.3, abs=1e-4)
    after = model.backbone.state_dict()
    changed = 0
    for name, mask in masks.items():
        assert torch.equal(after[name][~mask], state[name][~mask]), name  # even with weight decay
        changed += int((after[name][mask] != state[name][mask]).sum())
    assert changed > 0.5 * n_masked
    # The mask is the top-|grad CE(D_f)| set of the original model.
    reference = _backbone()
    reference.load_state_dict(state)
    reference.eval()
    grads = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for x, y in dm.role_dataloader("forget"):
        reference.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        for n, p in reference.named_parameters():
            grads[n] += p.grad
    inside = torch.cat([grads[n].abs()[m] for n, m in masks.items()])
    outside = torch.cat([grads[n].abs()[~m] for n, m in masks.items()])
    assert inside.min() >= outside.max() - 1e-7


def test_salun_keeps_its_mask_in_the_checkpoint(original):
    model, _, _, out = _fit(SalUn, original, "salun_ckpt", epochs=1, batches=1)
    sd = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    restored = SalUn(_backbone())
    restored.load_state_dict(sd["state_dict"])
    assert bool(restored.mask_ready)
    for name, mask in model.masks().items():
        assert torch.equal(restored.masks()[name], mask)


def test_scrub_keeps_the_teacher_frozen(original):
    _, _, state = original
    model, trainer, _, out = _fit(SCRUB, original, "scrub", max_steps=1, lr=0.05)
    assert not model.automatic_optimization
    teacher = model.teacher.state_dict()
    for k, v in state.items():
        assert torch.equal(teacher[k], v), k
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not model.teacher.training
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.teacher.parameters()}
    # epoch 0: a max-step and a min-step per batch; epoch 1: min-steps only
    assert trainer.global_step == 2 * 3 + 3
    rows = _metrics(out)
    kl_epochs = {r["epoch"] for r in rows if r.get("train/forget_kl")}
    assert kl_epochs == {"0"}
    forget_kl = _column(rows, "train/forget_kl")
    # the student starts as the teacher (KL 0, a stationary point); min-steps move it off
    assert forget_kl[0] == pytest.approx(0.0, abs=1e-6)
    assert forget_kl[-1] > 0


def test_scrub_distillation_kl_is_zero_for_identical_logits_and_positive_otherwise():
    model = SCRUB(_backbone(), temperature=4.0)
    logits = torch.randn(6, 10)
    assert model.distill_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert model.distill_kl(logits, torch.randn(6, 10)).item() > 0


def test_bad_teacher_distils_the_incompetent_teacher_on_the_forget_set(original):
    _, _, state = original
    model, trainer, _, out = _fit(BadTeacher, original, "bad_teacher", lr=0.05, epochs=2)
    competent, incompetent = model.teacher.state_dict(), model.incompetent.state_dict()
    for k, v in state.items():
        assert torch.equal(competent[k], v), k  # the competent teacher is the original
        assert not torch.equal(incompetent[k], v), k  # the incompetent one is random
    fresh = BadTeacher(_backbone()).incompetent.state_dict()
    assert all(torch.equal(fresh[k], incompetent[k]) for k in fresh)  # seeded, not trained
    for teacher in (model.teacher, model.incompetent):
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.backbone.parameters()}
    forget_kl, retain_kl = (
        _column(_metrics(out), f"train/{k}") for k in ("forget_kl", "retain_kl")
    )
    # the student starts as the original: retain KL 0, forget KL large; training moves D_f
    assert retain_kl[0] == pytest.approx(0.0, abs=1e-6)
    assert forget_kl[-1] < 0.8 * forget_kl[0]


def test_bad_teacher_loss_is_the_joint_batch_mean_of_both_distillations():
    torch.manual_seed(1)  # the student's initial weights differ from the incompetent teacher's
    model = BadTeacher(_backbone(), temperature=2.0)
    model.teacher.load_state_dict(model.backbone.state_dict())
    forget = (torch.randn(3, 64), torch.randint(0, 10, (3,)))
    retain = (torch.randn(5, 64), torch.randint(0, 10, (5,)))
    out = model.losses(forget, retain)
    assert out["retain_kl"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        student, bad = (
            F.log_softmax(model(forget[0]) / 2, 1),
            F.log_softmax(model.incompetent(forget[0]) / 2, 1),
        )
    expected = 4.0 * F.kl_div(student, bad, reduction="batchmean", log_target=True).item()
    assert out["forget_kl"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() == pytest.approx(
        (3 * expected + 5 * out["retain_kl"].item()) / 8, rel=1e-5
    )


# ------------------------------------------------------------------ LUR
def _ce_grads(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of CE(x·Wᵀ + b, y) (batch mean) by hand: ((P − Y)ᵀ·X, mean(P − Y)) / n."""
    p = torch.softmax(x @ weight.T + bias, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.mean(dim=0)


def _tiny_batches(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    torch.manual_seed(seed)
    forget = (torch.randn(4, 5), torch.randint(0, 3, (4,)))
    retain = (torch.randn(6, 5), torch.randint(0, 3, (6,)))
    return forget, retain


def test_lur_first_order_gradient_is_the_unlearning_gradient_plus_the_retain_one_at_theta_prime():
    """∇L = λ·∇L_u(θ) + ∇CE_r(θ') with θ' = θ − α·m⊙∇L_u(θ), on a linear model, by hand."""
    forget, retain = _tiny_batches(0)
    net = torch.nn.Linear(5, 3)
    model = LUR(net, inner_lr=0.3, forget_weight=0.7, forget_loss="neg_ce", sparsity=1.0)
    mask = torch.rand(3, 5) > 0.5  # a saliency mask on the weight; the bias is all in
    model.masks()["weight"].copy_(mask)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    out = model.losses(forget, retain)
    out["loss"].backward()
    w, b = start["weight"], start["bias"]
    gw_f, gb_f = _ce_grads(w, b, *forget)
    gw_u, gb_u = -gw_f, -gb_f  # neg_ce: L_u = −CE(D_f)
    w1, b1 = w - 0.3 * mask * gw_u, b - 0.3 * gb_u
    gw_r, gb_r = _ce_grads(w1, b1, *retain)
    torch.testing.assert_close(net.weight.grad, 0.7 * gw_u + gw_r)
    torch.testing.assert_close(net.bias.grad, 0.7 * gb_u + gb_r)
    assert all(torch.equal(v, start[k]) for k, v in net.state_dict().items())  # θ' is virtual
    virtual = F.cross_entropy(retain[0] @ w1.T + b1, retain[1]).item()
    assert out["retain_ce_virtual"].item() == pytest.approx(virtual, rel=1e-5)
    assert out["forget_ce"].item() == pytest.approx(-out["forget_loss"].item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.7 * out["forget_loss"].item() + virtual, rel=1e-5)
    # without the virtual step the gradient is the joint one: the test above has power
    assert not torch.allclose(net.weight.grad, 0.7 * gw_u + _ce_grads(w, b, *retain)[0])


def test_lur_second_order_differentiates_through_the_virtual_step():
    """``meta_order=2`` with the retain objective inside: the exact gradient of
    CE_r(θ) + λ·L_u(θ − α·∇CE_r(θ)), here by ``torch.func`` on the written-out objective."""
    forget, retain = _tiny_batches(1)

    def ce(params, x, y):
        return F.cross_entropy(x @ params[0].T + params[1], y)

    def uniform_kl(params, x):
        log_p = F.log_softmax(x @ params[0].T + params[1], dim=1)
        return (-math.log(3) - log_p.mean(dim=1)).mean()

    def objective(params):
        step = torch.func.grad(ce)(params, *retain)
        fast = tuple(p - 0.5 * g for p, g in zip(params, step, strict=True))
        return ce(params, *retain) + 2.0 * uniform_kl(fast, forget[0])

    grads = {}
    for order in (1, 2):
        torch.manual_seed(2)
        net = torch.nn.Linear(5, 3)
        model = LUR(
            net, inner_lr=0.5, forget_weight=2.0, inner_objective="retain",
            meta_order=order, forget_loss="uniform_kl", sparsity=1.0,
        )  # fmt: skip
        model.losses(forget, retain)["loss"].backward()
        grads[order] = (net.weight.grad, net.bias.grad)
        params = (net.weight.detach(), net.bias.detach())
    expected = torch.func.grad(objective)(params)
    torch.testing.assert_close(grads[2], expected)
    assert not torch.allclose(grads[1][0], expected[0], atol=1e-4)  # first order drops a term


@pytest.mark.parametrize("inner_objective", ["forget", "retain"])
def test_lur_updates_batchnorm_statistics_once_a_step_from_the_joint_batch(inner_objective):
    """The forward at θ' runs on a throwaway copy of the buffers: the running statistics move
    as under one forward of the joint batch (RL's and SalUn's step), not twice."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )
    reference = copy.deepcopy(net).train()
    model = LUR(net, num_classes=10, inner_objective=inner_objective, sparsity=1.0).train()
    forget = (torch.randn(8, 64), torch.randint(0, 10, (8,)))
    retain = (torch.randn(12, 64), torch.randint(0, 10, (12,)))
    model.losses(forget, retain)["loss"].backward()
    with torch.no_grad():
        reference(torch.cat([forget[0], retain[0]]))
    stats = [k for k in reference.state_dict() if "running" in k or "num_batches" in k]
    assert len(stats) == 3
    for key in stats:
        torch.testing.assert_close(net.state_dict()[key], reference.state_dict()[key])


def test_lur_forgets_the_forget_set_and_keeps_the_retain_data(original):
    model, _, dm, out = _fit(LUR, original, "lur_fit", lr=0.02, epochs=2, stop_rule="budget")
    start = _backbone()
    start.load_state_dict(original[2])

    @torch.no_grad()
    def accuracy(net: torch.nn.Module, role: str) -> float:
        net.eval()
        hits = [(net(x).argmax(1) == y).float() for x, y in dm.role_dataloader(role)]
        return torch.cat(hits).mean().item()

    assert _forget_ce(model.backbone, dm) > _forget_ce(start, dm) + 0.1
    assert accuracy(model.backbone, "forget") < accuracy(start, "forget") - 0.02
    assert accuracy(model.backbone, "retain_subset") > accuracy(start, "retain_subset") - 0.05
    rows = _metrics(out)
    assert _column(rows, "train/retain_ce_virtual") and _column(rows, "train/forget_loss")
    assert _column(rows, "train/mask_density") == pytest.approx([0.5] * 6, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_lr": -0.1}, "inner_lr must be >= 0; got -0.1"),
        (
            {"inner_objective": "both"},
            "inner_objective must be one of 'forget', 'retain'; got 'both'",
        ),
        ({"meta_order": 3}, "meta_order must be one of 1, 2; got 3"),
        (
            {"forget_loss": "mi"},
            "forget_loss must be one of 'random_label', 'neg_ce', 'uniform_kl'; got 'mi'",
        ),
    ],
)
def test_lur_refuses_bad_arguments_in_one_line(kwargs, message):
    with pytest.raises(LTUError) as err:
        LUR(_backbone(), **kwargs)
    assert str(err.value) == message


def test_lur_search_space_resolves_through_its_config(run_ltu, capsys):
    """The fmnist5k search space has 2-4 dimensions, each a key LUR's config accepts."""
    space = read_space(REPO / "experiments" / "search" / "fmnist5k" / "lur_partial.yaml")
    assert 2 <= len(space) <= 4
    point = [str(v) for key, dim in space.items() for v in (f"--{key}", dim["low"])]
    configs = ["--config", CONFIGS / "unlearn" / "lur_fmnist5k.yaml"]
    configs += ["--config", CONFIGS / "unlearn" / "datasets" / "fmnist5k.yaml"]
    run_ltu(["fit", *configs, *point, "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].endswith("LUR")
    for key, dim in space.items():
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(dim["low"]), key


def test_ltu_remember_losses_use_the_frozen_original():
    """``ce`` keeps no teacher (old checkpoints load); ``kd`` is 0 while the model equals the
    original and positive once it moved; ``ce_kd`` is CE + KD."""
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    plain = LTUModule(_backbone(), remember_loss="ce", holdout_distill_weight=0.0)
    assert plain.teacher is None
    assert not any(k.startswith("teacher.") for k in plain.state_dict())
    kd = LTUModule(
        _backbone(), remember_loss="kd", distill_temperature=2.0, holdout_distill_weight=0.0
    )
    both = LTUModule(_backbone(), remember_loss="ce_kd", holdout_distill_weight=0.0)
    for model in (kd, both):
        assert not any(p.requires_grad for p in model.teacher.parameters())
        model.teacher.load_state_dict(model.backbone.state_dict())
    ce = F.cross_entropy(both.backbone(x), y).item()
    assert kd.remembering_loss(kd.backbone, (x, y)).item() == pytest.approx(0.0, abs=1e-6)
    assert both.remembering_loss(both.backbone, (x, y)).item() == pytest.approx(ce, rel=1e-5)
    with torch.no_grad():
        for p in kd.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert kd.remembering_loss(kd.backbone, (x, y)).item() > 0


def test_generator_helpers_pickle_and_continue_their_stream():
    """ddp_spawn pickles the module: the generators must cross as plain bytes and go on."""
    for helper in (HoldoutDistillation(seed=5), RandomLabelLoss(10, seed=5)):
        torch.randint(0, 9, (3,), generator=helper.generator)
        copy = pickle.loads(pickle.dumps(helper))
        assert torch.equal(copy.generator.get_state(), helper.generator.get_state())
        assert torch.equal(
            torch.randint(0, 9, (8,), generator=copy.generator),
            torch.randint(0, 9, (8,), generator=helper.generator),
        )


def test_holdout_distillation_draws_reproducible_batches_of_the_holdout():
    helper = HoldoutDistillation(seed=3)
    with pytest.raises(LTUError, match="needs the auditor half of the holdout"):
        helper.sample(4)
    helper.inputs = torch.arange(10.0).unsqueeze(1)
    first = helper.sample(6)
    assert first.shape == (6, 1) and set(first.flatten().tolist()) <= set(range(10))
    state = helper.state_dict()
    second = helper.sample(6)
    again = HoldoutDistillation(seed=3)
    again.inputs = helper.inputs
    assert torch.equal(again.sample(6), first)
    again.load_state_dict(state)
    assert torch.equal(again.sample(6), second)


def test_ltu_holdout_distillation_adds_a_term_that_is_zero_at_the_original():
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    model = LTUModule(_backbone(), remember_loss="ce", holdout_distill_weight=2.0)
    assert model.teacher is not None and "holdout_distill" in model.stateful_helpers()
    model.teacher.load_state_dict(model.backbone.state_dict())
    model.holdout_distill.inputs = torch.randn(20, 64)
    ce = F.cross_entropy(model.backbone(x), y).item()
    assert model.remembering_loss(model.backbone, (x, y)).item() == pytest.approx(ce, rel=1e-5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    moved_ce = F.cross_entropy(model.backbone(x), y).item()
    assert model.remembering_loss(model.backbone, (x, y)).item() > moved_ce
    with pytest.raises(LTUError, match="holdout_distill_weight must be >= 0; got -1.0"):
        LTUModule(_backbone(), holdout_distill_weight=-1.0)


def test_ltu_holdout_distillation_fit_gathers_the_auditor_half(original):
    model, _, dm, _ = _fit(LTUModule, original, "ltu_hkd", holdout_distill_weight=1.0, epochs=1)
    expected = torch.cat([x for x, _ in dm.role_dataloader("holdout_audit")])
    assert torch.equal(model.holdout_distill.inputs, expected)


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(LTUModule, {"holdout_distill_weight": 1.0}), (SalUn, {}), (SCRUB, {}), (LUR, {})],
    ids=["LTUModule", "SalUn", "SCRUB", "LUR"],
)
def test_unlearning_runs_in_the_trainers_precision(original, cls, kwargs, precision):
    """Role loaders are read outside Lightning's loops (start criterion, auditors, SalUn's mask,
    holdout batches): their inputs must follow the weights out of float32, and so must the
    evaluation of the result."""
    name = f"precision_{cls.__name__}_{precision}"
    model, _, dm, _ = _fit(cls, original, name, epochs=1, batches=2, precision=precision, **kwargs)
    dtype = {"64-true": torch.float64, "bf16-true": torch.bfloat16}[precision]
    assert all(p.dtype == dtype for p in model.backbone.parameters())
    assert math.isfinite(model.start_criterion.item())
    metrics = evaluate_unlearning(model.backbone, dm)
    assert all(math.isfinite(metrics[k]) for k in ("UA", "RA", "TA", "MIA", "loss_auc"))


def test_ltu_kd_fit_distills_the_original_and_keeps_it_frozen(original):
    _, _, state = original
    model, trainer, _, _ = _fit(
        LTUModule, original, "ltu_kd", remember_loss="kd", epochs=1, stop_rule="budget"
    )
    teacher = model.teacher.state_dict()
    for k, v in state.items():
        assert torch.equal(teacher[k], v), k
    assert not model.teacher.training
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.teacher.parameters()}
    moved = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, state[k])]
    assert moved


def test_ltu_refuses_a_checkpoint_saved_with_another_remember_loss():
    no_teacher = {"remember_loss": "ce", "holdout_distill_weight": 0.0}
    saved_ce = {"state_dict": LTUModule(_backbone(), **no_teacher).state_dict()}
    saved_kd = {"state_dict": LTUModule(_backbone(), remember_loss="kd").state_dict()}
    with pytest.raises(LTUError, match="saved without a frozen teacher"):
        LTUModule(_backbone(), remember_loss="kd").on_load_checkpoint(saved_ce)
    with pytest.raises(LTUError, match="saved with a frozen teacher"):
        LTUModule(_backbone(), **no_teacher).on_load_checkpoint(saved_kd)
    LTUModule(_backbone(), remember_loss="ce_kd").on_load_checkpoint(saved_kd)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remember_loss": "mse"}, "remember_loss must be one of 'ce', 'kd', 'ce_kd'; got 'mse'"),
        (
            {"remember_loss": "kd", "distill_temperature": 0.0},
            "distill_temperature must be > 0; got 0.0",
        ),
    ],
)
def test_ltu_refuses_bad_remember_settings(kwargs, message):
    with pytest.raises(LTUError, match=message):
        LTUModule(_backbone(), **kwargs)


# ------------------------------------------------------------------ configs through the CLI
@pytest.fixture(scope="module")
def fmnist_original(tmp_path_factory) -> Path:
    """A fmnist5k original trained for 2 batches, in the layout the configs expect."""
    root = tmp_path_factory.mktemp("fmnist5k")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        _run_ltu(
            [
                "fit",
                "--config",
                CONFIGS / "pretrain" / "fmnist5k.yaml",
                *TINY,
            ]
        )
    assert (root / "runs/fmnist5k/original/checkpoints/best.ckpt").is_file()
    return root


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_runs_through_the_cli(name, fmnist_original, monkeypatch):
    monkeypatch.chdir(fmnist_original)
    config = CONFIGS / "unlearn" / f"{name}_fmnist5k.yaml"
    _run_ltu(
        [
            "fit",
            "--config",
            config,
            "--config",
            CONFIGS / "unlearn" / "datasets" / "fmnist5k.yaml",
            *TINY,
        ]
    )
    best = fmnist_original / "runs" / "fmnist5k" / name / "checkpoints" / "best.ckpt"
    assert best.is_file()
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["original_ckpt"].startswith("runs/fmnist5k/original/")
    # the best checkpoint was chosen on a logged, finite val/criterion (whatever the logger)
    scores = [
        state["best_model_score"]
        for state in ckpt["callbacks"].values()
        if state.get("monitor") == "val/criterion"
    ]
    assert scores and all(torch.isfinite(torch.as_tensor(s)) for s in scores)


@pytest.mark.parametrize("meta", [True, False])
def test_ltu_without_meta_steps_on_the_whole_batch(meta: bool) -> None:
    """The no-meta ablation is a joint step on every sample of the batch, not on a support half."""
    model = LTUModule(_backbone(), remember_loss="ce", holdout_distill_weight=0.0, meta=meta)
    seen: dict[str, int | None] = {}

    def step(l_r, l_f, support_r, query_r, support_f, query_f):  # noqa: ANN001, ANN202
        seen.update(
            support_r=len(support_r[1]),
            query_r=None if query_r is None else len(query_r[1]),
            support_f=len(support_f[1]),
        )
        return {}

    model.harmonizer = SimpleNamespace(step=step)
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    model.training_step({"forget": (x[:4], y[:4]), "retain": (x, y)}, 0)
    if meta:
        assert seen == {"support_r": 4, "query_r": 4, "support_f": 2}
    else:
        assert seen == {"support_r": 8, "query_r": None, "support_f": 4}
