"""One run per output folder: a lock file (``filelock``) plus a note of who holds it.

The operating system releases the lock when its process ends, however it ends, so a lock left
by a killed run never blocks the next one. The note (``.ltu.lock.json``: pid, host, command,
start time) is removed on a clean release; finding it while the lock is free means the run that
wrote it died, and the new run says that it takes over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from ltu_lightning.errors import LTUError
from ltu_lightning.utils.files import disk_error, write_bytes_atomic

LOCK_NAME = ".ltu.lock"
OWNER_NAME = ".ltu.lock.json"


def _describe(owner: dict[str, Any]) -> str:
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
        f"({owner.get('command', '?')!r}, since {owner.get('since', '?')})"
    )


def read_owner(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The note of the run that holds (or last held, if it died) the lock on ``folder``."""
    try:
        owner = json.loads((Path(folder) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


#: environment variables that give a process's rank in a multi-process run (Lightning's own
#: launcher, torchrun, SLURM, LSF), and the node's
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK")


def _first_process() -> bool:
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


class RunLock:
    """Hold ``folder`` for this process: ``with RunLock(path, "--trainer.default_root_dir"):``.

    A second run into a held folder is refused at once (``LTUError`` naming the holder); a
    folder that cannot be written (read-only, full disk) is refused in one line too. ``flag`` is
    the option that chose the folder, named in the fix.
    """

    def __init__(self, folder: str | os.PathLike, flag: str, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.flag = flag
        self.command = command if command is not None else " ".join(sys.argv)
        self._lock: FileLock | None = None

    def acquire(self) -> RunLock:
        if not _first_process():
            return self  # the launcher's process (rank 0) holds the folder for all ranks
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / LOCK_NAME, "a"):  # a read-only folder fails here, not as a wait
                pass
            lock = FileLock(self.folder / LOCK_NAME, timeout=0)
            lock.acquire()
        except Timeout:
            owner = read_owner(self.folder)
            holder = _describe(owner) if owner else "another process"
            raise LTUError(
                f"{self.flag} {str(self.folder)!r} is in use by {holder}; wait for that run to "
                f"end, or pass another {self.flag}"
            ) from None
        except OSError as err:
            raise disk_error(
                err,
                f"cannot write to {self.flag} {str(self.folder)!r}",
                f"pass another {self.flag}",
            ) from err
        stale = read_owner(self.folder)
        if stale is not None:
            print(
                f"notice: {self.flag} {str(self.folder)!r} was locked by {_describe(stale)}, "
                "which is no longer running; taking the lock over",
                file=sys.stderr,
            )
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        try:
            write_bytes_atomic(self.folder / OWNER_NAME, json.dumps(owner).encode())
        except OSError as err:
            lock.release()
            raise disk_error(
                err,
                f"cannot write to {self.flag} {str(self.folder)!r}",
                f"pass another {self.flag}",
            ) from err
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        (self.folder / OWNER_NAME).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
