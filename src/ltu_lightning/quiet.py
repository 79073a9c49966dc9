"""The one place where the project silences third-party output, each line with its reason.

Everything else a run prints is either the project's own output or a warning that asks the user
to act. What is silenced here carries no information for a user of this project:

- Lightning's "💡 Tip" lines advertise ``litlogger`` and ``litmodels`` on every fit.
- "The following callbacks returned in ``LightningModule.configure_callbacks`` will override
  existing callbacks passed to Trainer: ModelCheckpoint": every stage module brings its own
  ``ModelCheckpoint`` (its monitor, ``best.ckpt``/``last.ckpt``) in place of the Trainer's
  default one, by design. Any other replaced callback type is still reported.
- torch's ``FutureWarning`` "``isinstance(treespec, LeafSpec)`` is deprecated" is raised inside
  ``lightning/pytorch/utilities/_pytree.py``; no project code uses ``LeafSpec``.
- torch's ``FutureWarning`` "``torch.distributed.nn.functional.all_gather`` is deprecated" comes
  from Lightning's own ``LightningModule.all_gather`` under DDP (which the unlearning modules use
  to validate on every process's outputs), not from a torch call of the project.
- The progress bar's ``v_num`` (the logger's version: ``0.000`` for TensorBoard's ``version_0``,
  the last characters of a W&B run id) names the run folder the user already chose.
- Lightning's ``WandbLogger`` always hands ``anonymous`` to ``wandb.init`` (as ``None`` when not
  asked for), which wandb answers with "The anonymous setting has no effect"; and a ``save_dir``
  that does not exist yet makes wandb warn "git root … does not exist" (it looks for a git
  repository there). :func:`prepare_wandb_logger` removes both causes before the run starts.
- In ``ltu benchmark`` (inside :func:`quiet_wandb`) each stage's W&B run is started silent: the
  ~30 lines of wandb's console output per stage would bury the benchmark's progress display.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: (message regex, category) of the Python warnings silenced; reasons in the module docstring
SILENCED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", FutureWarning),
)
#: starts of the Lightning info lines silenced (logger ``lightning.pytorch.utilities.rank_zero``)
SILENCED_LOG_LINES: tuple[str, ...] = (
    "💡 Tip:",
    "The following callbacks returned in `LightningModule.configure_callbacks` will override "
    "existing callbacks passed to Trainer: ModelCheckpoint\n",
)
LIGHTNING_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)

_wandb_silent = False


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage() + "\n"
        return not message.startswith(SILENCED_LOG_LINES)


_FILTER = _DropLines()


def install() -> None:
    """Install the filters of this module (idempotent: a second call changes nothing)."""
    for message, category in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)


def hide_version_number(trainer: Any) -> None:
    """Drop ``v_num`` from the trainer's progress bar (whichever bar it is)."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if bar is None or getattr(bar.get_metrics, "_hides_version", False):
        return

    @functools.wraps(bar.get_metrics)
    def get_metrics(*args: Any, **kwargs: Any) -> dict[str, Any]:
        items = original(*args, **kwargs)
        items.pop("v_num", None)
        return items

    original = bar.get_metrics
    get_metrics._hides_version = True  # type: ignore[attr-defined]
    bar.get_metrics = get_metrics


def prepare_wandb_logger(logger: Any) -> None:
    """Before a ``WandbLogger`` starts its run: create its ``save_dir``, drop the ``anonymous``
    argument Lightning passes unasked, and start the run silent inside :func:`quiet_wandb`."""
    init = getattr(logger, "_wandb_init", None)
    if init is None or getattr(logger, "_experiment", None) is not None:
        return
    if init.get("anonymous") is None:
        init.pop("anonymous", None)
    if init.get("dir"):
        Path(init["dir"]).mkdir(parents=True, exist_ok=True)
    if _wandb_silent:
        import wandb

        settings = init.get("settings")
        if settings is None:
            init["settings"] = wandb.Settings(silent=True)
        elif isinstance(settings, dict):
            init["settings"] = {"silent": True, **settings}


@contextlib.contextmanager
def quiet_wandb() -> Iterator[None]:
    """W&B runs started inside print nothing to the console (their files are unchanged)."""
    global _wandb_silent
    before, _wandb_silent = _wandb_silent, True
    try:
        yield
    finally:
        _wandb_silent = before
