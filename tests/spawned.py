"""Run a test's worker function in ``nprocs`` spawned processes, with each rank's output kept.

A worker that dies (an exception, or a signal such as SIGABRT from C++ code) or hangs fails the
calling test with the tail of every rank's stdout/stderr in the message, so a CI log says why.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException


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
    # The worker's results are written. Leave without the interpreter's teardown: with the
    # process group Lightning leaves alive, a rank was seen to abort there ("terminate called
    # without an active exception", SIGABRT) after every result had been saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _tails(log_dir: Path, nprocs: int, chars: int = 3000) -> str:
    parts = []
    for rank in range(nprocs):
        path = log_dir / f"rank{rank}.log"
        text = path.read_text(errors="replace") if path.exists() else "(no log)"
        parts.append(f"--- rank {rank} output (tail) ---\n{text[-chars:]}")
    return "\n".join(parts)


def run_spawned(
    worker: Callable[..., None],
    make_args: Callable[[], tuple],
    nprocs: int,
    timeout_s: float,
    log_dir: Path,
    signal_retries: int = 1,
) -> None:
    """``worker(rank, *make_args())`` on ranks ``0..nprocs-1``; ``pytest.fail`` if one fails or
    hangs.

    A worker killed by a *signal* (the process group's C++ side aborting, e.g. a rendezvous that
    a loaded machine broke) is retried ``signal_retries`` times with fresh arguments (a new
    port), with a warning that carries the first attempt's output; a Python exception in a
    worker, a wrong result or a hang fails at once, so a real bug is never retried away.
    """
    for attempt in range(signal_retries + 1):
        attempt_dir = log_dir / f"attempt{attempt}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        context = mp.start_processes(
            _logged,
            args=(worker, str(attempt_dir), *make_args()),
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
                        + _tails(attempt_dir, nprocs)
                    )
            return
        except ProcessExitedException as err:
            if err.signal_name is None or attempt == signal_retries:
                pytest.fail(f"a worker failed: {err}\n{_tails(attempt_dir, nprocs)}")
            warnings.warn(
                f"a worker died ({err}); retrying once\n{_tails(attempt_dir, nprocs)}",
                stacklevel=2,
            )
        except ProcessException as err:
            pytest.fail(f"a worker failed: {err}\n{_tails(attempt_dir, nprocs)}")
