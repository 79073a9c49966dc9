"""What ``ltu benchmark`` shows while it runs: a live progress display, the notices about
overrides, and the process's wall time.

The display (rich) keeps one line at the bottom of the terminal: the stage running, its seed,
the stages done out of all, the elapsed time and an ETA (the mean time of the stages fitted so
far times the stages left; stages reused by ``--resume`` do not count as fitted). The runner's
one-line reports scroll above it. Without a terminal (a log file, CI) only those lines are
printed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

import psutil
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class StageEvents(Protocol):
    """What a benchmark run reports besides its lines: each stage's start and end."""

    def started(self, seed: int, stage: str, action: str) -> None: ...

    def finished(self, seed: int, stage: str) -> None: ...


class _EtaColumn(ProgressColumn):
    """Time left: the mean duration of the stages fitted so far (stages reused from an earlier
    run take no time and are left out) times the stages left."""

    def render(self, task: Task) -> Text:
        done, total = task.completed, task.total
        fitted = done - task.fields.get("reused", 0)
        if fitted <= 0 or total is None or task.elapsed is None:
            return Text("ETA -:--:--", style="progress.remaining")
        left = task.elapsed / fitted * (total - done)
        return Text(
            f"ETA {time.strftime('%H:%M:%S', time.gmtime(left))}", style="progress.remaining"
        )


class BenchmarkProgress:
    """The live display of one ``ltu benchmark`` invocation (a context manager).

    ``print`` writes a line above the display; :meth:`started`/:meth:`finished` move it on.
    """

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("stages"),
            TimeElapsedColumn(),
            _EtaColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("starting", total=total, reused=0)
        self._reusing = False

    def __enter__(self) -> BenchmarkProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.progress.update(self.task, description="done")
        self.progress.stop()

    def print(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def started(self, seed: int, stage: str, action: str) -> None:
        self._reusing = action == "reusing"
        self.progress.update(self.task, description=f"seed {seed} · {stage}: {action}")

    def finished(self, seed: int, stage: str) -> None:
        if self._reusing:
            reused = self.progress.tasks[self.task].fields["reused"]
            self.progress.update(self.task, reused=reused + 1)
        self.progress.advance(self.task)


def process_wall_time() -> float:
    """Seconds since this process started (imports, set-up and reports included)."""
    return time.time() - psutil.Process().create_time()


def flag_values(args: Sequence[str]) -> dict[str, str]:
    """``--flag value`` and ``--flag=value`` pairs of an ``ltu fit`` argument list."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = str(args[i])
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            values[flag] = value
        elif arg.startswith("--"):
            has_value = i + 1 < len(args) and not str(args[i + 1]).startswith("--")
            values[arg] = str(args[i + 1]) if has_value else ""
            i += has_value
        i += 1
    return values


def override_notices(overrides: Sequence[str], rows: dict[str, Sequence[str]]) -> list[str]:
    """One line per method row whose own overrides set a flag ``--overrides`` also sets: the
    row's value comes last on the ``ltu fit`` line, so it wins."""
    given = flag_values(overrides)
    notices = []
    for key, row in rows.items():
        for flag, value in flag_values(row).items():
            if flag in given and given[flag] != value:
                notices.append(
                    f"notice: {key} sets its own {flag} {value}, which wins over "
                    f"--overrides {flag} {given[flag]} (edit the row in the benchmark config "
                    "to change it)"
                )
    return notices
