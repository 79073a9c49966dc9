"""Concurrent runs, full disks, damaged files, resumes and diverging pretraining through the
real ``ltu`` CLI (docs/reliability.md): each is refused in one line (exit 2) or survived, and
no earlier result is lost. Digits + MLP on the CPU, like ``test_reliability.py``."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import _run_ltu
from ltu_lightning.data.splits import SplitManifest
from ltu_lightning.errors import LTUError
from ltu_lightning.modules.checkpoints import SPLIT_KEY, load_checkpoint
from ltu_lightning.utils.run_lock import OWNER_NAME
from test_reliability import CONFIGS, OVERWRITE_ARGS, QUIET, REPO, _file, digits, user_error  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

PRETRAIN = CONFIGS / "pretrain" / "digits.yaml"


def pretrain(root: Path, manifest: Path, *extra: object) -> list:
    """``ltu fit`` arguments of one digits pretraining epoch into ``root``."""
    return ["fit", "--config", PRETRAIN, "--trainer.max_epochs", "1", "--trainer.default_root_dir", root,
            "--data.init_args.manifest_path", manifest, "--trainer.logger", "false", "--trainer.callbacks", "[]",
            *QUIET, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """``last.ckpt`` of one digits pretraining epoch (split manifest ``split_manifest.json`` beside it)."""
    root = tmp_path_factory.mktemp("original")
    _run_ltu(pretrain(root, root / "split_manifest.json"))
    return root / "checkpoints" / "last.ckpt"


# ---------------------------------------------------------------------------- one run per folder


def test_a_folder_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    """A real ``ltu fit`` in another process holds the folder: a second ``ltu fit`` (and an
    ``ltu benchmark --out``) into it is refused naming that process; after ``kill -9`` of
    it, the next run says that it takes the lock over, and trains."""
    folder, manifest = tmp_path / "run", tmp_path / "m.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    first = [sys.executable, "-m", "ltu_lightning", *map(str, pretrain(folder, manifest, "--trainer.max_epochs", "100000"))]  # fmt: skip
    holder = subprocess.Popen(first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (folder / OWNER_NAME).exists():
            assert holder.poll() is None and time.monotonic() < deadline, (
                "the first run did not start"
            )
            time.sleep(0.2)
        line = user_error(pretrain(folder, tmp_path / "m2.json"))
        assert f"is in use by pid {holder.pid} on {socket.gethostname()} (" in line
        assert f"fit --config {PRETRAIN}" in line and not (tmp_path / "m2.json").exists()
        line = user_error(["benchmark", "--config", CONFIGS / "benchmark" / "digits.yaml", "--out", folder])  # fmt: skip
        assert line.startswith(f"error: --out '{folder}' is in use by pid {holder.pid}")
    finally:
        holder.kill()  # dies without releasing: its note stays, the OS frees the lock
        holder.wait()
    capsys.readouterr()
    _run_ltu(pretrain(folder, manifest, *OVERWRITE_ARGS))
    err = capsys.readouterr().err
    assert (
        f"was locked by pid {holder.pid}" in err
        and "no longer running; taking the lock over" in err
    )
    assert load_checkpoint(folder / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not (folder / OWNER_NAME).exists()  # released when the run ended


@pytest.mark.parametrize(
    "where, error, expected",
    [
        ("lock", errno.EROFS, "the file system is read-only"),
        ("note", errno.ENOSPC, "the disk is full"),
    ],
)
def test_an_output_folder_that_cannot_be_written_is_one_line(
    where, error, expected, tmp_path, monkeypatch
):
    """A read-only folder or a full disk when the run starts (simulated: tests run as root)."""

    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    target = (
        "filelock.FileLock.acquire"
        if where == "lock"
        else "ltu_lightning.utils.run_lock.write_bytes_atomic"
    )
    monkeypatch.setattr(target, fail)
    line = user_error(pretrain(tmp_path / "run", tmp_path / "m.json"))
    assert (
        f"cannot write to --trainer.default_root_dir '{tmp_path / 'run'}': {expected}; pass another"
        in line
    )


# ---------------------------------------------------------------------------- a full disk


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoints(
    tmp_path, monkeypatch
):
    """Epoch 0 writes best.ckpt and last.ckpt; in epoch 1 the disk fills half-way through the
    next write: the error is one line, both epoch-0 checkpoints load, no temp file is left."""
    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    run = tmp_path / "run"
    line = user_error(pretrain(run, tmp_path / "m.json", "--trainer.max_epochs", "3"))
    assert "could not write checkpoint" in line and ": the disk is full; " in line
    assert (
        "; the previous best.ckpt is kept whole; " in line
        or "; the previous last.ckpt is kept whole; " in line
    )
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert all(load_checkpoint(ckpts / name)["epoch"] == 0 for name in ("best.ckpt", "last.ckpt"))
    assert not (run / OWNER_NAME).exists()


def test_a_full_disk_during_a_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Manifests, metrics.json, results.json: the same temp file, fsync and rename."""
    from ltu_lightning.utils.files import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"UA": 1.0})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the data is written, the flush to disk fails
    with pytest.raises(LTUError) as err:
        write_json_atomic(path, {"UA": 2.0})
    assert str(err.value) == (
        f"could not write '{path}': the disk is full; the previous file is kept whole; "
        "free space or write elsewhere"
    )
    assert json.loads(path.read_text()) == {"UA": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ---------------------------------------------------------------------------- non-finite training


@pytest.mark.parametrize("when", ["from_the_first_step", "after_epoch_0"])
def test_diverging_pretraining_stops_and_leaves_only_finite_checkpoints(when, tmp_path):
    """Plain SGD at lr 1e6 (from the start, or from epoch 1 by a ×1e7 StepLR)."""
    sgd = ["--model.init_args.optimizer", "torch.optim.SGD"]
    if when == "from_the_first_step":
        sgd += ["--model.init_args.optimizer.init_args.lr", "1e6"]
    else:
        sgd += ["--model.init_args.optimizer.init_args.lr", "0.1",
                "--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
                "--model.init_args.lr_scheduler.init_args.step_size", "1",
                "--model.init_args.lr_scheduler.init_args.gamma", "1e7"]  # fmt: skip
    run = tmp_path / "run"
    line = user_error(pretrain(run, tmp_path / "m.json", "--trainer.max_epochs", "3", *sgd))
    assert "lower the learning rate" in line
    written = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else []
    for ckpt in written:
        load_checkpoint(ckpt)  # refuses non-finite weights
    if when == "after_epoch_0":
        assert [load_checkpoint(p)["epoch"] for p in written] == [0, 0]


# ---------------------------------------------------------------------------- resumes


def _edited(tmp: Path, original: Path, name: str, edit) -> Path:
    ckpt = torch.load(original, weights_only=True)
    edit(ckpt)
    path = tmp / name
    torch.save(ckpt, path)
    return path


def _first_weight(ckpt: dict) -> torch.Tensor:
    return next(v for k, v in ckpt["state_dict"].items() if k.startswith("backbone."))


#: name -> (extra ``ltu fit`` arguments given (tmp, original), fragment of the one error line)
RESUMES = {
    "another_split": (lambda t, o: ["--data.init_args.seed", "1", "--data.init_args.manifest_path", t / "m1.json", "--ckpt_path", o], "was trained on split"),
    "no_split_recorded": (lambda t, o: ["--ckpt_path", _edited(t, o, "nosplit.ckpt", lambda c: c.pop(SPLIT_KEY))], f"records no split ({SPLIT_KEY}), but this run uses split"),
    "hparam_differs": (lambda t, o: ["--model.init_args.label_smoothing", "0.1", "--ckpt_path", o], "(--model.init_args.label_smoothing 0.1 vs 0.0); a resume continues that run"),
    "other_backbone": (lambda t, o: ["--model.init_args.backbone.init_args.hidden", "[128]", "--ckpt_path", o], "does not match the backbone MLP (backbone.net.1.bias of shape (256,) where the backbone has (128,))"),
    "nan_weights": (lambda t, o: ["--ckpt_path", _edited(t, o, "nan.ckpt", lambda c: _first_weight(c).view(-1)[0].fill_(float("nan")))], "holds non-finite weights (NaN or inf in backbone."),
    "bit_flipped_weights": (lambda t, o: ["--ckpt_path", _edited(t, o, "huge.ckpt", lambda c: _first_weight(c).view(-1)[0].fill_(3e38))], "holds weights beyond ±1e+18 in backbone."),
    "raw_pickle": (lambda t, o: ["--ckpt_path", _raw_pickle(t)], "holds objects that are not plain weights and was refused by weights-only loading (a raw pickle"),
    "missing_from_yaml": (lambda t, o: ["--config", _file(t, "resume.yaml", f"ckpt_path: {t / 'gone.ckpt'}")], "gone.ckpt' does not exist"),
    "truncated_from_file_url": (lambda t, o: ["--ckpt_path", f"file://{_truncated(t, o)}"], "is unreadable or truncated"),
}  # fmt: skip


def _raw_pickle(tmp: Path) -> Path:
    path = tmp / "raw.ckpt"
    path.write_bytes(
        pickle.dumps({"state_dict": {}, "payload": print})
    )  # pickle.dump, no torch.save
    return path


def _truncated(tmp: Path, original: Path) -> Path:
    path = tmp / "half.ckpt"
    path.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    return path


@pytest.mark.parametrize("case", list(RESUMES))
def test_a_resume_that_does_not_fit_the_run_is_one_line(case, original, tmp_path):
    extra, expected = RESUMES[case]
    run = tmp_path / "run"
    line = user_error(pretrain(run, original.parents[1] / "split_manifest.json", "--trainer.max_epochs", "2", *extra(tmp_path, original)))  # fmt: skip
    assert expected in line
    assert not (run / "checkpoints").exists()


def test_a_non_finite_original_is_refused_naming_it(digits, tmp_path):  # noqa: F811
    bad = _edited(tmp_path, digits.original, "nan.ckpt", lambda c: _first_weight(c).view(-1)[0].fill_(float("inf")))  # fmt: skip
    line = user_error(["fit", "--config", digits.config, "--trainer.default_root_dir", tmp_path / "run",
                       "--model.init_args.original_ckpt", bad])  # fmt: skip
    assert f"checkpoint '{bad}' holds non-finite weights" in line


# ---------------------------------------------------------------------------- more bad input

#: name -> (extra ``ltu fit`` arguments given tmp, fragment of the one error line)
MESSAGES = {
    "negative_lr": (lambda t: ["--model.init_args.optimizer.init_args.lr", "-0.1"], "the optimizer refused its arguments (Invalid learning rate: -0.1); fix --model.init_args.optimizer.init_args"),
    "nan_lr": (lambda t: ["--model.init_args.optimizer.init_args.lr", "nan"], "--model.init_args.optimizer.init_args.lr nan is not a finite number"),
    "yaml_syntax_error": (lambda t: ["--config", _file(t, "bad.yaml", "trainer:\n  max_epochs: [1\n")], "bad.yaml' is not valid YAML (expected ',' or ']', but got '<stream end>' at line 3, column 1); fix the file"),
    "index_file_of_the_whole_pool": (lambda t: ["--data.init_args.manifest_path", t / "m2.json", "--data.init_args.forget_index_file", _file(t, "all.txt", " ".join(map(str, range(1437))))], "the forget index file names 1437 of the 1437 pool samples: nothing would be left"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MESSAGES))
def test_more_bad_input_is_one_error_line(case, original, tmp_path):
    extra, expected = MESSAGES[case]
    line = user_error(pretrain(tmp_path / "run", tmp_path / "m.json", *extra(tmp_path)))
    assert expected in line


def test_a_refused_run_leaves_nothing_in_the_original_folder(digits, tmp_path):  # noqa: F811
    """Refused before the trainer starts: not even its logger's ``lightning_logs/`` is made."""
    root = digits.original.parents[1]
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    line = user_error(["fit", "--config", digits.config, "--trainer.default_root_dir", root,
                       "--trainer.logger", "true", *OVERWRITE_ARGS])  # fmt: skip
    assert "holds the original checkpoint" in line
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_an_edited_manifest_is_refused_on_load_by_the_cli(original, tmp_path):
    """The data module checks every manifest it loads, against the dataset's pool too (here an
    index past the pool, with ``manifest_id`` recomputed so that only the check can see it)."""
    data = json.loads((original.parents[1] / "split_manifest.json").read_text())
    roles = {r: np.asarray(v, dtype=np.int64) for r, v in data["roles"].items()}
    roles["holdout_val"] = np.append(roles["holdout_val"], 99999)
    data["roles"]["holdout_val"] = roles["holdout_val"].tolist()
    data["manifest_id"] = SplitManifest(
        data["dataset"], data["fingerprint"], data["spec"], roles
    ).manifest_id
    manifest = _file(tmp_path, "m.json", json.dumps(data))
    line = user_error(pretrain(tmp_path / "run", manifest))
    assert (
        f"split manifest '{manifest}' is invalid: holdout_val has 1 index (e.g. [99999]) out of range (valid: 0..1436)"
        in line
    )


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    """The writer's own guard, behind the gradient check: e.g. a last step whose update
    overflowed the weights with finite gradients."""
    from ltu_lightning.errors import NonFiniteStepError
    from ltu_lightning.modules.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    path.write_bytes(b"epoch 0")
    bad = {"epoch": 1, "state_dict": {"backbone.w": torch.tensor([1.0, float("inf")])}}
    with pytest.raises(
        NonFiniteStepError, match=r"non-finite weights .* \(the previous last.ckpt is kept whole\)"
    ):
        AtomicCheckpointIO().save_checkpoint(bad, path)
    assert path.read_bytes() == b"epoch 0" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    AtomicCheckpointIO().save_checkpoint(
        {"epoch": 1, "state_dict": {"backbone.w": torch.ones(2)}}, path
    )
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_only_the_first_process_of_a_multi_process_run_takes_the_lock(tmp_path, monkeypatch):
    """Lightning's DDP launcher starts ranks 1.. with the same ``ltu fit`` command while rank
    0 holds the folder: they must not be refused by it."""
    from ltu_lightning.utils.run_lock import RunLock

    with RunLock(tmp_path, "--trainer.default_root_dir"):
        with pytest.raises(LTUError, match="is in use by pid"):
            RunLock(tmp_path, "--trainer.default_root_dir").acquire()
        monkeypatch.setenv("LOCAL_RANK", "1")
        with RunLock(tmp_path, "--trainer.default_root_dir"):
            pass  # rank 1: no lock of its own
        assert (tmp_path / OWNER_NAME).exists()  # rank 0's note is untouched


def test_a_stopped_run_whose_start_won_is_reported_from_the_start(tmp_path: Path) -> None:
    """A guard stops a fit after an epoch that the starting model beat: its ``best.ckpt`` holds
    that epoch (the start is written over it only when a fit ends), so the start is reported."""
    from types import SimpleNamespace

    from ltu_lightning.runner.stage import reported_checkpoint

    best = tmp_path / "checkpoints" / "best.ckpt"
    best.parent.mkdir()
    best.write_bytes(b"epoch 0")
    original = tmp_path / "original.ckpt"
    started = SimpleNamespace(keeps_start=True, stop_rule="criterion")
    moved_on = SimpleNamespace(keeps_start=False, stop_rule="criterion")
    assert reported_checkpoint(started, tmp_path, original, failed=True) == original
    assert reported_checkpoint(moved_on, tmp_path, original, failed=True) == best
    # a finished fit has written the start over best.ckpt itself
    assert reported_checkpoint(started, tmp_path, original, failed=False) == best
    best.unlink()
    assert reported_checkpoint(moved_on, tmp_path, original, failed=True) == original
