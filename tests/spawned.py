"""Run a test's worker function in ``nprocs`` spawned processes, with each rank's output kept.

A worker that dies (an exception, or a signal such as SIGABRT from C++ code) or hangs fails the
calling test with the tail of every rank's stdout/stderr in the message, so a CI log says why.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


def _logged(rank: int, worker: Callable[..., None], log_dir: str, *args: object) -> None:
    """Point this process's fds 1 and 2 (C++ messages too) at ``rank<r>.log``, then run."""
    log = open(Path(log_dir) / f"rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (process-long)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    worker(rank, *args)


def _tails(log_dir: Path, nprocs: int, chars: int = 3000) -> str:
    parts = []
    for rank in range(nprocs):
        path = log_dir / f"rank{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        parts.append(f"--- rank {rank} output (tail) ---\n{text[-chars:]}")
    return "\n".join(parts)


def run_spawned(
    worker: Callable[..., None], args: tuple, nprocs: int, timeout_s: float, log_dir: Path
) -> None:
    """``worker(rank, *args)`` on ranks ``0..nprocs-1``; ``pytest.fail`` if one fails or hangs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    context = mp.start_processes(
        _logged,
        args=(worker, str(log_dir), *args),
        nprocs=nprocs,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(
                    f"the workers did not finish within {timeout_s} s (deadlock?)\n"
                    + _tails(log_dir, nprocs)
                )
    except ProcessException as err:
        pytest.fail(f"a worker failed: {err}\n{_tails(log_dir, nprocs)}")
