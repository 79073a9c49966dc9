"""The spawn helper of the DDP tests: signal deaths are retried once, bugs never."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spawned import run_spawned


def _abort_first_time(rank: int, marker: str) -> None:
    path = Path(marker)
    if rank == 0 and not path.exists():
        path.write_text("aborted once")
        os.abort()


def _raise(rank: int) -> None:
    raise ValueError(f"a bug on rank {rank}")


def test_a_worker_killed_by_a_signal_is_retried_once(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    with pytest.warns(UserWarning, match="SIGABRT"):
        run_spawned(_abort_first_time, lambda: (marker,), 2, 60, tmp_path / "logs")
    assert (tmp_path / "logs" / "attempt1").is_dir()


def test_a_worker_exception_fails_at_once_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="a bug on rank") as err:
        run_spawned(_raise, tuple, 2, 60, tmp_path / "logs")
    assert not (tmp_path / "logs" / "attempt1").exists()
    assert "rank 0 output" in str(err.value)
