"""Shared fixtures: run the ``ltu`` CLI in-process, work in a temp dir, skip torchvision md5s."""

from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest
import torch


class LTURunError(AssertionError):
    """``ltu`` exited with a non-zero status; ``code`` and ``stderr`` say how."""

    def __init__(self, args: list[str], code: object, stderr: str) -> None:
        self.args_ = [str(a) for a in args]
        self.code = code
        self.stderr = stderr
        super().__init__(f"ltu {' '.join(self.args_)} exited with {code!r}; stderr:\n{stderr}")


#: environment variables a run sets that must not leak into the next test
RUN_ENV_PREFIXES = ("PL_", "CUBLAS_WORKSPACE_CONFIG")


def _run_ltu(args: list[str]) -> None:
    """Call ``ltu_lightning.cli.main(args)`` in this process; raise ``LTURunError`` on failure.

    A ``SystemExit`` with status 0/None (``--help``, ``--print_config``) counts as success. The
    CLI's stderr is captured for the error message and echoed afterwards (so ``capsys`` sees it);
    stdout is left alone. Global state a run changes (``PL_*`` environment variables such as
    ``PL_GLOBAL_SEED``, ``torch.use_deterministic_algorithms``) is restored afterwards, so one
    test's ``trainer.deterministic: true`` does not leak into the next.
    """
    from ltu_lightning.cli import main

    env = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    err = io.StringIO()
    code: object = 0
    try:
        with contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        # Drop what Lightning adds (seed, cuBLAS determinism); keep what imports add (their
        # side effects must survive); restore anything changed or removed.
        for key in set(os.environ) - set(env):
            if key.startswith(RUN_ENV_PREFIXES):
                del os.environ[key]
        os.environ.update(env)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        sys.stderr.write(err.getvalue())
    if code not in (0, None):
        raise LTURunError(args, code, err.getvalue())


@pytest.fixture
def run_ltu():
    """``run_ltu(args)``: the ``ltu`` CLI in-process (see ``_run_ltu``); raises ``LTURunError``."""
    return _run_ltu


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test inside ``tmp_path`` (relative ``runs/``, ``data/`` land there), W&B offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision's CIFAR/SVHN md5 checks become "the file exists" (see fake_datasets.skip_md5)."""
    from fake_datasets import skip_md5 as _skip_md5

    _skip_md5(monkeypatch)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny models run as fast and are immune to
    oversubscribed CPUs (OpenMP spin-waits made them 5-10x slower on a busy 2-core host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
