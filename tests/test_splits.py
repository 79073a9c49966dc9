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
        ({"pool_size": 5000}, "pool_size=5000 keeps 5000 of the 1000"),
        ({"pool_size": 0.0}, "pool_size=0.0"),
        ({"pool_size": 250.5}, "give a whole count"),
        (
            {"pool_size": 300, "forget_indices": tuple(range(301)), "forget_fraction": None},
            "raise pool_size",
        ),
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


def _moved(roles, role, index, to):
    """Roles with ``index`` added to role ``to`` (and, for ``remaining``, its orders)."""
    roles = {r: np.asarray(v).copy() for r, v in roles.items()}
    roles[to] = np.sort(np.append(roles[to], index))
    return roles


def _forget_all(roles):
    empty = np.array([], dtype=np.int64)
    return {**roles, "forget": roles["train"], "remaining": empty, "retain_order": empty, "retain_subset": empty}  # fmt: skip


#: corruption -> (edit of the roles, a fragment of the one error line)
CORRUPTIONS = {
    "forget_overlaps_holdout": (lambda r: _moved(r, "forget", r["holdout_val"][0], "forget"), "forget and holdout_val share 1 index"),
    "negative_index": (lambda r: {**r, "forget": np.append(r["forget"], -1)}, "forget has 1 index (e.g. [-1]) out of range"),
    "duplicate_index": (lambda r: {**r, "forget": np.sort(np.append(r["forget"], r["forget"][0]))}, "forget lists 1 index"),
    "forget_inside_remaining": (lambda r: _moved(r, "forget", r["remaining"][0], "forget"), "forget and remaining share 1 index"),
    "empty_forget": (lambda r: {**r, "forget": np.array([], dtype=np.int64)}, "forget is empty (0 indices)"),
    "forget_is_the_whole_train_set": (_forget_all, "forget is the whole train set (800 indices): nothing would remain"),
    "holdout_inside_train": (lambda r: _moved(r, "train", r["holdout_audit"][0], "train"), "train and holdout_audit share 1 index"),
    "remaining_misses_a_sample": (lambda r: {**r, "remaining": r["remaining"][1:]}, "remaining is not train minus forget (1 index"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_an_edited_manifest_is_refused_even_with_a_recomputed_id(case, tmp_path):
    """Each corruption, with ``manifest_id`` recomputed to match the edit (so the id check
    alone would pass) and with the old id (an edit without it), is refused in one line naming
    the role and the count."""
    edit, expected = CORRUPTIONS[case]
    roles, spec = split(seed=1)
    path = tmp_path / "m.json"
    SplitManifest("toy", "abc", spec.describe(), roles).save(path)
    data = json.loads(path.read_text())
    edited = {r: np.asarray(v, dtype=np.int64) for r, v in edit(roles).items()}
    data["roles"] = {r: v.tolist() for r, v in edited.items()}
    path.write_text(json.dumps(data))  # the old id: "was edited", with what is wrong
    with pytest.raises(LTUError, match="was edited") as stale:
        SplitManifest.load(path)
    assert expected in str(stale.value) and "\n" not in str(stale.value)
    data["manifest_id"] = SplitManifest("toy", "abc", spec.describe(), edited).manifest_id
    path.write_text(json.dumps(data))
    with pytest.raises(LTUError, match="is invalid") as recomputed:
        SplitManifest.load(path)
    assert expected in str(recomputed.value) and "\n" not in str(recomputed.value)


def test_a_manifest_without_its_id_or_with_indices_past_the_pool_is_refused(tmp_path):
    roles, spec = split(seed=1)
    path = tmp_path / "m.json"
    manifest = SplitManifest("toy", "abc", spec.describe(), roles)
    manifest.save(path)
    SplitManifest.load(path).check(path, pool_size=len(TARGETS))  # the manifest as written
    with pytest.raises(LTUError, match="out of range") as err:
        SplitManifest.load(path).check(path, pool_size=int(roles["train"].max()))
    assert "(valid: 0.." in str(err.value)
    data = json.loads(path.read_text())
    del data["manifest_id"]
    path.write_text(json.dumps(data))
    with pytest.raises(LTUError, match="has no manifest_id, so its indices cannot be trusted"):
        SplitManifest.load(path)


def test_a_forget_index_file_naming_the_whole_pool_says_so():
    spec = SplitSpec(holdout=0.2, forget_fraction=None, forget_indices=tuple(range(len(TARGETS))))
    with pytest.raises(
        LTUError, match="names 1000 of the 1000 pool samples: nothing would be left"
    ):
        make_split(TARGETS, 10, spec)


def _every_role(roles):
    return np.unique(np.concatenate([roles[r] for r in ("train", "holdout_audit", "holdout_val")]))


def test_pool_size_draws_a_seeded_stratified_subset_every_role_comes_from():
    full, _ = split(seed=5)
    roles, _ = split(seed=5, pool_size=400)
    pool = _every_role(roles)
    assert pool.size == 400  # train and the two holdout halves cover exactly the subset
    assert np.array_equal(np.bincount(TARGETS[pool]), np.full(10, 40))  # stratified
    assert len(roles["forget"]) == round(0.1 * roles["train"].size)
    again, _ = split(seed=5, pool_size=0.4)  # a fraction is the same subset as its count
    assert all(np.array_equal(roles[r], again[r]) for r in ROLES)
    other, _ = split(seed=6, pool_size=400)
    assert not np.array_equal(_every_role(other), pool)
    assert _every_role(full).size == 1000  # without pool_size, the whole split


def test_pool_size_keeps_the_forget_index_file_and_refuses_a_fixed_holdout():
    idx = tuple(range(0, 1000, 50))
    roles, _ = split(pool_size=300, holdout=100, forget_indices=idx, forget_fraction=None)
    assert _every_role(roles).size == 300 and np.array_equal(roles["forget"], np.array(idx))
    with pytest.raises(LTUError, match="subset the datasets you pass instead"):
        make_split(TARGETS, 10, SplitSpec(holdout=200, pool_size=300), holdout_indices=range(100))


def test_the_data_module_draws_its_roles_from_pool_size_and_its_manifest_records_it(tmp_path):
    from ltu_lightning.data import UnlearningDataModule

    path = tmp_path / "split_manifest.json"
    dm = UnlearningDataModule("digits", holdout=100, pool_size=600, manifest_path=str(path))
    dm.setup()
    pool = _every_role(dm.manifest.roles)
    assert pool.size == 600 and json.loads(path.read_text())["spec"]["pool_size"] == 600
    assert len(dm.role_dataset("train")) == 500
    other = UnlearningDataModule("digits", holdout=100, pool_size=700, manifest_path=str(path))
    with pytest.raises(LTUError, match="pool_size: manifest 600 vs this run 700"):
        other.setup()
