"""``images_read``: the distinct training and holdout images a fit touched, per access mode."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml

from conftest import LTURunError
from ltu_lightning.benchmark.runner import MethodSpec, images_read
from ltu_lightning.data.datamodule import ACCESS, UnlearningDataModule
from ltu_lightning.data.splits import retain_subset_of
from ltu_lightning.errors import LTUError
from ltu_lightning.modules import LTUModule
from ltu_lightning.modules.baselines import FineTune
from ltu_lightning.networks import MLP

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _unlearning(access: str) -> UnlearningDataModule:
    dm = UnlearningDataModule(
        dataset="digits", holdout=0.2, train_on="unlearn", access=access, retain_fraction=0.1
    )
    dm.setup()
    return dm


def _read_like_a_fit(dm: UnlearningDataModule) -> None:
    """What every unlearning fit reads: its training streams and the validation roles."""
    dm.train_dataloader()
    dm.val_dataloader()


def test_partial_access_reads_the_forget_set_and_the_retain_subset() -> None:
    dm = _unlearning("partial")
    _read_like_a_fit(dm)
    roles = dm.manifest.roles
    subset = retain_subset_of(roles["retain_order"], 0.1)
    assert images_read(dm) == len(roles["forget"]) + len(subset)
    dm.test_dataloader()  # evaluation reads the remaining set and the test split: not counted
    assert "remaining" in dm.roles_read
    dm.roles_read.discard("remaining")
    assert images_read(dm) == len(roles["forget"]) + len(subset)


def test_full_access_reads_the_forget_and_the_remaining_set() -> None:
    dm = _unlearning("full")
    _read_like_a_fit(dm)
    roles = dm.manifest.roles
    assert images_read(dm) == len(roles["forget"]) + len(roles["remaining"])


def test_partial_holdout_access_reads_the_retain_subset_and_the_auditor_half() -> None:
    dm = _unlearning("partial+holdout")
    _read_like_a_fit(dm)  # outside a fit: a baseline's stream, the holdout half as retain data
    roles = dm.manifest.roles
    subset = retain_subset_of(roles["retain_order"], 0.1)
    assert images_read(dm) == len(roles["forget"]) + len(subset) + len(roles["holdout_audit"])
    assert dm.retain_role == "retain_subset"


def test_auditors_on_the_holdout_add_its_auditor_half() -> None:
    dm = _unlearning("partial")
    _read_like_a_fit(dm)
    partial = images_read(dm)
    dm.role_dataloader("holdout_audit")  # LTU's auditors' non-members, holdout distillation
    roles = dm.manifest.roles
    assert images_read(dm) == partial + len(roles["holdout_audit"])
    # the validation half is read by every row and never counted
    assert not np.isin(roles["holdout_val"], roles["holdout_audit"]).any()
    assert "holdout_val" in dm.roles_read


def test_a_data_module_without_a_record_reads_an_unknown_number() -> None:
    assert images_read(object()) is None


# ------------------------------------------------------- the access modes, measured in real fits
def _fit(module: L.LightningModule, access: str) -> UnlearningDataModule:
    """One tiny unlearning fit (one step, one validation batch) on a fresh digits split."""
    dm = _unlearning(access)
    dm.batch_size = 32
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0,
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, dm)
    return dm


def _net() -> MLP:
    return MLP(num_classes=10, in_features=64, hidden=[16])


def _ltu() -> LTUModule:
    return LTUModule(_net(), num_auditors=1, auditor_epochs=5)


def _retain_stream(dm: UnlearningDataModule) -> int:
    """Images in the retain stream the fit trained on."""
    loaders = dm.trainer.train_dataloader  # the CombinedLoader's loaders, by stream
    return len(getattr(loaders, "iterables", loaders)["retain"].dataset)


def test_ltu_and_a_baseline_read_the_same_images_with_the_holdout(one_thread) -> None:
    ltu, ft = _fit(_ltu(), "partial+holdout"), _fit(FineTune(_net()), "partial+holdout")
    roles = ltu.manifest.roles
    sizes = {r: len(ltu.role_indices(r)) for r in ("forget", "retain_subset", "holdout_audit")}
    assert images_read(ltu) == images_read(ft) == sum(sizes.values())
    # the baseline trains on the holdout half as retain data; LTU's retain batches stay D̂_r
    # (its auditors and its holdout distillation read that half)
    assert _retain_stream(ft) == sizes["retain_subset"] + sizes["holdout_audit"]
    assert _retain_stream(ltu) == sizes["retain_subset"]
    assert "holdout_val" in ltu.roles_read and len(roles["holdout_val"]) > 0  # never counted


def test_under_full_access_ltu_reads_the_holdout_half_beyond_a_baseline(one_thread) -> None:
    ltu, ft = _fit(_ltu(), "full"), _fit(FineTune(_net()), "full")
    roles = ltu.manifest.roles
    assert images_read(ft) == len(roles["forget"]) + len(roles["remaining"])
    assert images_read(ltu) == images_read(ft) + len(roles["holdout_audit"])
    assert _retain_stream(ltu) == _retain_stream(ft) == len(roles["remaining"])


def test_ltu_refuses_partial_access_before_reading_the_holdout(one_thread) -> None:
    with pytest.raises(LTUError, match=r"access='partial' leaves out.*partial\+holdout") as err:
        _fit(_ltu(), "partial")
    assert "\n" not in str(err.value)
    dm = _fit(FineTune(_net()), "partial")  # a baseline under partial never touches it
    assert "holdout_audit" not in dm.roles_read


def test_the_access_modes_from_python_and_an_unknown_one_in_one_line() -> None:
    assert ACCESS == ("partial", "partial+holdout", "full")
    assert UnlearningDataModule(access="partial+holdout").retain_roles() == (
        "retain_subset",
        "holdout_audit",
    )
    assert UnlearningDataModule(access="partial+holdout").retain_roles(False) == ("retain_subset",)
    with pytest.raises(LTUError) as err:
        UnlearningDataModule(access="holdout")
    message = str(err.value)
    assert "\n" not in message and "access='holdout' is unknown" in message
    assert all(f"'{mode}'" in message for mode in ACCESS)


def test_the_access_modes_from_the_command_line(in_tmp, run_ltu, capsys) -> None:
    config = CONFIGS / "unlearn" / "ltu_digits.yaml"
    run_ltu(["fit", "--config", config, "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["access"] == (
        "partial+holdout"
    )
    for mode in ACCESS:
        run_ltu(["fit", "--config", config, "--data.init_args.access", mode, "--print_config"])
        assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["access"] == mode
    with pytest.raises(LTURunError) as err:
        run_ltu(["fit", "--config", config, "--data.init_args.access", "holdout"])
    assert err.value.code == 2 and "'partial+holdout'" in err.value.stderr
    with pytest.raises(LTURunError) as err:  # refused at set-up, before the original is read
        run_ltu(["fit", "--config", config, "--data.init_args.access", "partial"])
    assert err.value.code == 2
    assert "--data.init_args.access partial+holdout" in err.value.stderr


def test_a_row_key_with_access_gives_a_safe_folder() -> None:
    assert MethodSpec("ltu:partial+holdout", "x.yaml").folder == "ltu_partial+holdout"
    assert MethodSpec("ltu:partial+holdout", "x.yaml").access == "partial+holdout"
    assert MethodSpec("ltu:partial+holdout", "x.yaml").method == "ltu"
    assert MethodSpec("ft:a/b c", "x.yaml").folder == "ft_a_b_c"
