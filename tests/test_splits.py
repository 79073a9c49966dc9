import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltu_lightning.data.splits import ROLES, SplitManifest, SplitSpec, make_split
from ltu_lightning.errors import LTUError

TARGETS = np.repeat(np.arange(10), 100)  # 1,000 samples, 10 classes


def split(**kw):
    spec = SplitSpec(**{"holdout": 200, **kw})
    return make_split(TARGETS, 10, spec), spec


def test_roles_disjoint_and_cover_the_pool():
    roles, _ = split()
    pool = np.arange(len(TARGETS))
    assert np.array_equal(
        np.union1d(roles["train"], np.union1d(roles["holdout_audit"], roles["holdout_val"])), pool
    )
    assert not np.intersect1d(roles["train"], roles["holdout_audit"]).size
    assert not np.intersect1d(roles["train"], roles["holdout_val"]).size
    assert not np.intersect1d(roles["holdout_audit"], roles["holdout_val"]).size
    assert np.array_equal(np.union1d(roles["forget"], roles["remaining"]), roles["train"])
    assert not np.intersect1d(roles["forget"], roles["remaining"]).size
    assert np.isin(roles["retain_subset"], roles["remaining"]).all()
    assert len(roles["holdout_audit"]) + len(roles["holdout_val"]) == 200
    assert len(roles["forget"]) == 80 and len(roles["retain_subset"]) == 72


def test_same_seed_same_split_other_seed_other_split():
    a, _ = split(seed=3)
    b, _ = split(seed=3)
    c, _ = split(seed=4)
    assert all(np.array_equal(a[r], b[r]) for r in ROLES)
    assert not np.array_equal(a["forget"], c["forget"])


def test_class_wise_forget_takes_the_whole_class_of_the_training_set():
    roles, _ = split(forget_classes=(3,), forget_fraction=None)
    assert (TARGETS[roles["forget"]] == 3).all()
    assert not (TARGETS[roles["remaining"]] == 3).any()
    assert len(roles["forget"]) == (TARGETS[roles["train"]] == 3).sum()


def test_index_file_indices_are_forgotten_and_never_in_the_holdout(tmp_path):
    idx = tuple(range(0, 1000, 7))
    roles, _ = split(forget_indices=idx, forget_fraction=None)
    assert np.array_equal(roles["forget"], np.array(idx))
    assert (
        not np.isin(idx, roles["holdout_val"]).any()
        and not np.isin(idx, roles["holdout_audit"]).any()
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"forget_fraction": 0.0}, "outside (0, 1)"),
        ({"forget_fraction": 1.5}, "outside (0, 1)"),
        ({"forget_classes": (11,), "forget_fraction": None}, "not in the dataset"),
        ({"forget_classes": tuple(range(10)), "forget_fraction": None}, "nothing would remain"),
        ({"forget_indices": (1, 1, 2), "forget_fraction": None}, "more than once"),
        ({"forget_indices": (5, 5000), "forget_fraction": None}, "out of range"),
        ({"forget_indices": (), "forget_fraction": None}, "empty"),
        ({"retain_fraction": 0.0}, "retain_fraction"),
        ({"retain_fraction": 1.2}, "retain_fraction"),
        ({"holdout": 900}, "holdout"),
        ({"forget_fraction": None}, "no forget set"),
    ],
)
def test_bad_specs_give_one_line_errors(kw, message):
    with pytest.raises(LTUError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        split(**kw)
    assert "\n" not in str(err.value)


def test_manifest_round_trip_and_tamper_detection(tmp_path):
    roles, spec = split(seed=1)
    manifest = SplitManifest("toy", "abc", spec.describe(), roles)
    path = tmp_path / "m.json"
    manifest.save(path)
    loaded = SplitManifest.load(path)
    assert loaded.manifest_id == manifest.manifest_id
    data = json.loads(path.read_text())
    data["roles"]["forget"][0] = data["roles"]["remaining"][0]
    path.write_text(json.dumps(data))
    with pytest.raises(LTUError, match="was edited"):
        SplitManifest.load(path)
    with pytest.raises(LTUError, match="does not exist"):
        SplitManifest.load(tmp_path / "missing.json")


@settings(max_examples=40, deadline=None)
@given(
    n_per_class=st.integers(4, 40),
    classes=st.integers(2, 6),
    fraction=st.floats(0.01, 0.9),
    retain=st.floats(0.01, 1.0),
    holdout=st.floats(0.05, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_valid_random_spec_gives_disjoint_deterministic_roles(
    n_per_class, classes, fraction, retain, holdout, seed
):
    targets = np.repeat(np.arange(classes), n_per_class)
    spec = SplitSpec(holdout=holdout, forget_fraction=fraction, retain_fraction=retain, seed=seed)
    try:
        roles = make_split(targets, classes, spec)
    except LTUError as err:  # only a holdout that leaves too little pool may be refused here
        assert "holdout" in str(err)
        return
    again = make_split(targets, classes, spec)
    assert all(np.array_equal(roles[r], again[r]) for r in ROLES)
    assert np.array_equal(np.union1d(roles["forget"], roles["remaining"]), roles["train"])
    assert not np.intersect1d(roles["forget"], roles["remaining"]).size
    held = np.union1d(roles["holdout_audit"], roles["holdout_val"])
    assert not np.intersect1d(held, roles["train"]).size
    assert np.array_equal(np.union1d(held, roles["train"]), np.arange(len(targets)))
    assert (
        np.isin(roles["retain_subset"], roles["remaining"]).all()
        and len(roles["retain_subset"]) >= 1
    )
    assert len(roles["forget"]) >= 1 and len(roles["remaining"]) >= 1


@settings(max_examples=25, deadline=None)
@given(
    forget=st.lists(st.integers(0, 299), min_size=1, max_size=100, unique=True),
    seed=st.integers(0, 1000),
)
def test_any_index_file_spec_forgets_exactly_those_indices(forget, seed):
    targets = np.repeat(np.arange(3), 100)
    spec = SplitSpec(holdout=0.2, forget_fraction=None, forget_indices=tuple(forget), seed=seed)
    roles = make_split(targets, 3, spec)
    assert np.array_equal(roles["forget"], np.sort(forget))
    assert not np.isin(forget, roles["holdout_val"]).any()
