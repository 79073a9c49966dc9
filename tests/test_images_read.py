"""``images_read``: the distinct training and holdout images a fit touched, per access mode."""

from __future__ import annotations

import numpy as np

from ltu_lightning.benchmark.runner import images_read
from ltu_lightning.data.datamodule import UnlearningDataModule
from ltu_lightning.data.splits import retain_subset_of


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
