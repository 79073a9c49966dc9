"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A temp file in the same folder, ``fsync``, rename: a crash or a full disk at any moment leaves
the old file whole and no temp file behind.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ltu_lightning.errors import LTUError

#: what an ``OSError`` of a write means to the user, by errno
DISK_PROBLEMS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def disk_error(err: OSError, what: str, fix: str) -> LTUError:
    """One line for a failed write: ``<what>: <the disk is full|...> (<path>); <fix>``."""
    reason = DISK_PROBLEMS.get(err.errno or 0, err.strerror or type(err).__name__)
    return LTUError(f"{what}: {reason}; {fix}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp file beside ``path`` to write; renamed onto ``path`` (atomically) only if the
    block ends without an error, removed otherwise. Readers see the old file or the new one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file a plain file's mode
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, ``fsync`` it, rename it onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON to ``path`` through a temp file in the same folder and an atomic rename; a
    full disk or a read-only folder is an ``LTUError`` that says the old file is kept."""
    text = json.dumps(payload, indent=1) + "\n"  # fails (e.g. TypeError) before the file opens
    try:
        write_bytes_atomic(path, text.encode())
    except OSError as err:
        kept = "the previous file is kept whole" if Path(path).exists() else "nothing was written"
        raise disk_error(
            err, f"could not write {str(path)!r}", f"{kept}; free space or write elsewhere"
        ) from err
