"""examples/dropin_own_project.py: a user's own net and plain data module, adapted by
UnlearningDataModule.wrap and unlearned by LTUModule and by MetaHarmonizer in the user's own
training_step (tiny size)."""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import RUN_ENV_PREFIXES
from ltu_lightning import UnlearningData
from ltu_lightning.data.protocol import EVALUATE_ROLES, FIT_ROLES

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dropin_own_project.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("dropin_own_project", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = _load_example()


@pytest.fixture(scope="module", autouse=True)
def _isolated():
    """One thread (tiny models: as fast, and immune to busy CPUs); the ``PL_*`` variables that
    the example's ``seed_everything`` sets do not leak into later tests."""
    threads, env = torch.get_num_threads(), dict(os.environ)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for key in set(os.environ) - set(env):
        if key.startswith(RUN_ENV_PREFIXES):
            del os.environ[key]
    os.environ.update(env)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The user's original model (8 epochs), its unlearning data and its accuracies."""
    root = tmp_path_factory.mktemp("dropin")
    users = ex.DigitsData()
    original = ex.train_original(users, epochs=8, root=root)
    data = ex.unlearning_data(users)
    return root, original, data, ex.accuracies(original, data)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_example_uses_only_its_own_data_and_model_and_the_public_api():
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(EXAMPLE.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m.startswith("ltu_lightning.")}
    assert not hasattr(ex.DigitsData(), "role_dataloader")  # a plain LightningDataModule


def test_the_adapted_roles_of_the_users_data_module_are_disjoint():
    users = ex.DigitsData()
    data = ex.unlearning_data(users)
    assert isinstance(data, UnlearningData)
    data.setup()
    roles = {r: set(data.role_indices(r).tolist()) for r in data.manifest.roles}
    assert roles["forget"] | roles["remaining"] == roles["train"]
    assert not roles["forget"] & roles["remaining"]
    assert roles["retain_subset"] < roles["remaining"]
    held = roles["holdout_audit"] | roles["holdout_val"]
    assert not held & roles["train"] and len(held) == len(users.val_set)
    assert set(data.role_targets("forget").tolist()) == {3}
    for role in (*FIT_ROLES, *EVALUATE_ROLES):
        x, y = next(iter(data.role_dataloader(role)))
        assert x.shape[1:] == (1, 8, 8) and len(y) == len(x) > 0
    data.train_on = "unlearn"
    batch = next(iter(data.train_dataloader()))[0]
    assert set(batch) == {"forget", "retain"}


def test_ltu_module_unlearns_the_users_net(setting):
    root, original, data, before = setting
    start = _weights(original)
    unlearned = ex.unlearn_with_ltu(original, data, epochs=3, root=root)
    after = ex.accuracies(unlearned, data)
    assert before["forget"] > 80.0, before
    assert after["forget"] < before["forget"] - 50.0, (before, after)
    assert after["test (remaining classes)"] > 80.0, after  # chance: 10%
    assert any(not torch.equal(v, start[k]) for k, v in unlearned.state_dict().items())
    # the user's original model is left as it was
    assert all(torch.equal(v, start[k]) for k, v in original.state_dict().items())
    assert (root / "ltu" / "checkpoints" / "best.ckpt").is_file()


def test_meta_harmonizer_in_the_users_own_training_step(setting):
    root, original, data, before = setting
    unlearned = ex.unlearn_with_harmonizer(original, data, epochs=2, root=root)
    after = ex.accuracies(unlearned, data)
    assert after["forget"] < before["forget"] - 50.0, (before, after)
    assert after["test (remaining classes)"] > 80.0, after
    changed = [
        not torch.equal(v, w)
        for v, w in zip(unlearned.parameters(), original.parameters(), strict=True)
    ]
    assert all(changed)


def test_forget_margin_is_zero_once_the_true_class_is_beaten_by_the_margin():
    targets = torch.tensor([0, 1])
    beaten = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert ex.forget_margin(beaten, targets).item() == 0.0
    kept = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    np.testing.assert_allclose(ex.forget_margin(kept, targets).item(), (3.0 + 1.5) / 2)
