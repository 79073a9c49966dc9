"""Drop-in use from Python: a user's own network and data through the public adapters."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

import ltu_lightning
from foreign_projects import ArrayData, Classifier, image_project, tabular_project, train
from ltu_lightning import (
    LUR,
    SCRUB,
    FineTune,
    GradientAscent,
    L1Sparse,
    LTUError,
    LTUModule,
    NegGradPlus,
    RandomLabel,
    SalUn,
    UnlearningDataModule,
    evaluate_unlearning,
)
from ltu_lightning.audit.features import per_sample_features
from ltu_lightning.errors import CLI_ACTIVE, how_to_set

METHODS = (
    LTUModule, FineTune, GradientAscent, RandomLabel, NegGradPlus, L1Sparse, SalUn, SCRUB, LUR
)  # fmt: skip


def _trainer(root, epochs: int = 2, **kwargs) -> L.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        default_root_dir=root, max_epochs=epochs, logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, **kwargs,
    )  # fmt: skip


def _criterion(module) -> float:
    outputs = {role: module.role_logits(role) for role in ("forget", "holdout_val")}
    return module.validation_metrics(outputs)["val/criterion"]


@pytest.fixture(scope="module", params=["tabular", "image"])
def project(request):
    data, net = (tabular_project if request.param == "tabular" else image_project)()
    return data, train(data, net, epochs=25 if request.param == "tabular" else 15)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_foreign_project_every_method_three_seeds_never_ends_worse_than_start(
    project, method, tmp_path
):
    data, original = project
    for seed in range(3):
        access = "partial+holdout" if method.reads_holdout else "partial"
        dm = UnlearningDataModule.wrap(data, forget=0.1, seed=seed, batch_size=32, access=access)
        L.seed_everything(seed)
        module = method(copy.deepcopy(original))
        _trainer(tmp_path / str(seed)).fit(module, dm)  # NonFiniteStepError would raise
        assert module.num_classes == dm.num_classes
        assert all(torch.isfinite(p).all() for p in module.backbone.parameters())
        start = module.start_criterion.item()
        assert np.isfinite(start)
        assert _criterion(module) <= start + 1e-6, (method.__name__, seed)


def test_num_classes_is_inferred_from_the_network(tmp_path):
    data, net = tabular_project(300)
    dm = UnlearningDataModule.wrap(data, forget=0.1)
    module = RandomLabel(net)
    _trainer(tmp_path, epochs=1).fit(module, dm)
    assert module.num_classes == 3
    assert module.random_labels.num_classes == 3


def test_saturated_original_gives_finite_ltu(tmp_path):
    data, net = tabular_project(300)
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(Classifier(net, lr=1e-2), data)
    x, y = data.train_set.tensors
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    assert (losses == 0).float().mean() > 0.3  # saturated: many losses exactly 0 in float32
    dm = UnlearningDataModule.wrap(data, forget=0.1, access="partial+holdout")
    module = LTUModule(net)
    _trainer(tmp_path, epochs=3).fit(module, dm)
    assert all(torch.isfinite(p).all() for p in module.backbone.parameters())
    logits = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    feats = per_sample_features(logits, torch.tensor([0]))
    feats.sum().backward()
    assert torch.isfinite(feats).all() and torch.isfinite(logits.grad).all()


def test_nothing_to_forget_is_detected_and_changes_little(tmp_path):
    """D_f never trained on: its membership is undetectable, LTU says so and stays near the start."""
    data, net = tabular_project(900)
    x, y = data.train_set.tensors
    forget = np.zeros(len(y), dtype=bool)
    forget[np.random.default_rng(0).permutation(len(y))[:120]] = True
    seen = ArrayData(np.zeros((1, 12)), np.zeros(1), 0, 0)
    seen.train_set = TensorDataset(x[~forget], y[~forget])
    seen.val_set, seen.test_set = data.val_set, data.test_set
    original = train(seen, net, epochs=25)
    dm = UnlearningDataModule.wrap(data, forget=forget, access="partial+holdout")
    before = evaluate_unlearning(original, dm)
    module = LTUModule(copy.deepcopy(original))
    with pytest.warns(UserWarning, match="nothing to forget"):
        _trainer(tmp_path, epochs=3).fit(module, dm)
    assert module.nothing_to_forget
    after = evaluate_unlearning(module.backbone, dm)
    assert abs(after["loss_auc"] - before["loss_auc"]) <= 0.05
    assert abs(after["MIA"] - before["MIA"]) <= 10.0


def test_user_checkpoint_and_callbacks_stay_and_kept_weights_are_in_the_network(tmp_path):
    data, net = tabular_project(300)
    dm = UnlearningDataModule.wrap(data, forget=0.1)
    mine = ModelCheckpoint(dirpath=tmp_path / "mine", monitor="val/criterion")
    module = FineTune(net)
    trainer = _trainer(tmp_path, epochs=3, enable_checkpointing=True, callbacks=[mine])
    trainer.fit(module, dm)
    assert mine in trainer.callbacks
    assert [cb for cb in trainer.checkpoint_callbacks] == [mine]
    assert _criterion(module) == pytest.approx(module._kept_score)
    assert not (tmp_path / "checkpoints").exists()


def test_start_wins_when_no_epoch_beats_it(tmp_path):
    data, net = tabular_project(300)
    train(data, net, epochs=15)
    dm = UnlearningDataModule.wrap(data, forget=0.1)
    start = copy.deepcopy(net.state_dict())
    module = GradientAscent(net, optimizer=lambda p: torch.optim.SGD(p, lr=5.0))
    with pytest.warns(UserWarning, match="no gain"):
        _trainer(tmp_path, epochs=2, enable_checkpointing=True).fit(module, dm)
    assert module.kept_epoch is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, start[k])
    saved = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(saved["backbone.layers.0.weight"], start["layers.0.weight"])


def test_from_split_takes_indices_mask_class_and_refuses_bad_forget():
    x = torch.randn(60, 5)
    y = torch.arange(60) % 3
    train, test = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])
    by_index = UnlearningDataModule.from_split(train, test, forget=[0, 1, 2], holdout=10)
    assert sorted(by_index.role_indices("forget").tolist()) == [0, 1, 2]
    mask = np.zeros(40, dtype=bool)
    mask[[5, 6]] = True
    by_mask = UnlearningDataModule.from_split(train, test, forget=mask, holdout=10)
    assert by_mask.role_indices("forget").tolist() == [5, 6]
    by_class = UnlearningDataModule.from_split(train, test, forget=2, holdout=10)
    assert set(y[by_class.role_indices("forget")].tolist()) == {2}
    assert by_class.num_classes == 3 and by_class.manifest_id
    with pytest.raises(LTUError, match="boolean forget mask needs one entry per training sample"):
        UnlearningDataModule.from_split(train, test, forget=np.ones(3, dtype=bool))
    with pytest.raises(LTUError, match="forget must be training-set indices"):
        UnlearningDataModule.from_split(train, test, forget=[0.5, 1.5])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_datamodule", r"needs a data module with the unlearning roles: trainer\.fit\(model, datamodule=UnlearningDataModule"),
        ("plain_datamodule", r"ArrayData has no train_on, val_roles, role_dataloader: adapt it with UnlearningDataModule\.wrap"),
        ("train_on", r"trains on 'train': set train_on='unlearn' on it"),
        ("num_classes", r"num_classes=10 but the network outputs 3 logits: drop num_classes \(it is inferred\)"),
        ("labels", r"the data has 3 classes but the network outputs 2 logits"),
        ("shape", r"cannot take the data's inputs of shape \(12,\)"),
    ],
)  # fmt: skip
def test_data_contract_errors_are_one_line(case, message, tmp_path):
    data, net = tabular_project(300)
    dm = UnlearningDataModule.wrap(
        data, forget=0.1, train_on="train" if case == "train_on" else "unlearn"
    )
    kwargs = {"num_classes": 10} if case == "num_classes" else {}
    if case == "labels":
        net = torch.nn.Linear(12, 2)
    if case == "shape":
        net = torch.nn.Linear(7, 3)
    module = FineTune(net, **kwargs)
    trainer = _trainer(tmp_path, epochs=1)
    with pytest.raises(LTUError, match=message) as err:
        if case == "no_datamodule":
            trainer.fit(module, train_dataloaders=data.train_dataloader())
        else:
            trainer.fit(module, data if case == "plain_datamodule" else dm)
    assert "\n" not in str(err.value)


def test_wrap_refuses_a_datamodule_without_test_loader():
    data, _ = tabular_project(300)

    class NoTest(L.LightningDataModule):
        def train_dataloader(self):
            return data.train_dataloader()

        def val_dataloader(self):
            return data.val_dataloader()

    with pytest.raises(LTUError, match=r"NoTest has no test_dataloader\(\) for the test set"):
        UnlearningDataModule.wrap(NoTest(), forget=0.1)


def test_errors_name_cli_flags_only_under_the_cli():
    assert (
        how_to_set("train_on='unlearn'", "--data.init_args.train_on unlearn")
        == "train_on='unlearn'"
    )
    token = CLI_ACTIVE.set(True)
    try:
        assert how_to_set("a", "--b") == "--b"
    finally:
        CLI_ACTIVE.reset(token)


def test_public_names_for_python_users():
    for name in ("RunFolderGuard", "load_unlearned_weights", "UnlearningDataModule"):
        assert name in ltu_lightning.__all__ and getattr(ltu_lightning, name) is not None


def test_no_eval_mode_warning_from_frozen_helpers(tmp_path):
    data, net = tabular_project(300)
    dm = UnlearningDataModule.wrap(data, forget=0.1, access="partial+holdout")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _trainer(tmp_path, epochs=1).fit(LTUModule(net), dm)
    assert not [w for w in seen if "eval mode" in str(w.message)]


def test_trust_region_caps_every_ltu_step_relative_to_the_weights():
    from ltu_lightning import MetaHarmonizer

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    opt = torch.optim.SGD(net.parameters(), lr=100.0)
    harmonizer = MetaHarmonizer(net, opt, inner_lr=100.0, max_step=0.01)
    batch = (torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))

    def loss(forward, b):
        return torch.nn.functional.cross_entropy(forward(b[0]), b[1])

    other = (torch.randn(4, 4), torch.tensor([2, 2, 1, 1]))
    harmonizer.step(loss, loss, batch, batch, other, other)
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert (after - before).norm() <= 0.01 * before.norm() * (1 + 1e-5)
    assert (after - before).norm() > 0
    with pytest.raises(LTUError, match="max_step must be > 0 or None"):
        MetaHarmonizer(net, opt, max_step=0.0)


def test_unlearning_set_up_forward_runs_where_the_weights_are(monkeypatch):
    from types import SimpleNamespace

    module = FineTune(torch.nn.Linear(5, 3))
    rows = TensorDataset(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    data = SimpleNamespace(role_dataloader=lambda role: torch.utils.data.DataLoader(rows, 4))
    monkeypatch.setattr(type(module), "datamodule", property(lambda self: data))
    module._device = torch.device("meta")  # the target device, not yet the weights'
    module.check_backbone_fits_data()  # a forward on the meta device would raise
    assert module.num_classes == 3


def test_frozen_helpers_move_with_the_module_and_live_in_its_state_dict():
    module = LTUModule(torch.nn.Linear(5, 3))
    names = {name for name, _ in module.named_modules()}
    assert not {"teacher", "auditors"} & names  # Lightning does not see them
    module.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in module.teacher.parameters())
    assert all(p.dtype == torch.float64 for p in module.auditors.parameters())
    state = module.state_dict()
    assert any(k.startswith("teacher.") for k in state) and "auditors.fitted" in state
    state["auditors.fitted"] = torch.tensor(True)
    state["teacher.weight"] = torch.zeros(3, 5, dtype=torch.float64)
    fresh = LTUModule(torch.nn.Linear(5, 3)).to(torch.float64)
    fresh.load_state_dict(state)  # strict: every key has its place
    assert fresh.auditors.is_fitted and torch.equal(fresh.teacher.weight, state["teacher.weight"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**state, "teacher.extra": torch.zeros(1)})


def test_sequences_reach_the_network_as_they_are():
    x = torch.randn(50, 7, 3)  # 50 sequences of 7 steps, 3 features
    y = torch.arange(50) % 2
    data = UnlearningDataModule.from_split(
        TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:]), forget=0.1, holdout=10
    )
    for role in ("forget", "holdout_val", "retain_subset", "test"):
        batch, _ = next(iter(data.role_dataloader(role)))
        assert batch.shape[1:] == (7, 3) and batch.dtype == torch.float32
    index = int(data.role_indices("forget")[0])
    assert torch.equal(data.role_dataset("forget")[0][0], x[index])
