"""A stage as a value: one ``fit`` of one benchmark seed, built and run without a command line.

A :class:`Stage` names its configs (YAML paths or maps, composed in order like repeated
``--config``), the seed and split manifest of its benchmark seed, its output folder and its
overrides (maps, applied last). :meth:`Stage.build` composes them with the project's
LightningCLI parser and builds model, data and trainer once; :meth:`Stage.fit` trains;
:meth:`Stage.evaluate` scores a checkpoint with the protocol's metrics.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from ltu_lightning.errors import LTUError, NonFiniteStepError
from ltu_lightning.evaluation.protocol import evaluate_checkpoint
from ltu_lightning.modules.base import monitored_best_score
from ltu_lightning.runner.lightning import ProjectCLI

#: the trainer callback that lets an unlearning stage replace its own folder's checkpoints
REPLACE_RUN_FOLDER = {"class_path": "RunFolderGuard", "init_args": {"overwrite": True}}

Config = str | Path | Mapping[str, Any]


def nested(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a": {"c": 2}}`` → ``{"a": {"b": 1, "c": 2}}``: dotted keys become levels."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping):
            value = nested(value)
            if isinstance(node.get(leaf), dict):
                value = _merged(node[leaf], value)
        node[leaf] = value
    return out


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merged(out[key], value) if both else value
    return out


@dataclass(frozen=True)
class Stage:
    """One training stage of one benchmark seed (the original, the retrained model, a method)."""

    #: stage YAML paths or maps, composed in order (a later one wins, as with repeated --config)
    configs: tuple[Config, ...]
    #: output folder (``trainer.default_root_dir``): ``checkpoints/``, ``metrics.json``, logs
    root: Path
    seed: int
    #: the benchmark seed's split manifest (written by the first stage, checked by the others)
    manifest: Path
    #: maps applied after the configs and the seed's settings, in order; dotted keys allowed
    overrides: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    #: the model an unlearning stage starts from; None for the original and the retrained model
    original_ckpt: Path | None = None

    def settings(self) -> dict[str, Any]:
        """What the benchmark sets per seed and stage, whatever the configs say."""
        settings: dict[str, Any] = {
            "seed_everything": self.seed,
            "trainer": {
                "default_root_dir": str(self.root),
                "enable_progress_bar": False,
                "enable_model_summary": False,
            },
            "data": {"init_args": {"seed": self.seed, "manifest_path": str(self.manifest)}},
        }
        if self.original_ckpt is not None:
            settings["model"] = {"init_args": {"original_ckpt": str(self.original_ckpt)}}
        return settings

    def compose(self, parser: LightningArgumentParser) -> Namespace:
        """The stage's resolved config: configs, then settings, then overrides, on ``parser``.

        An unlearning stage also gets a ``RunFolderGuard(overwrite=True)`` after the callbacks
        its configs name: the benchmark owns its stage folders and fits them again when asked
        (``ltu benchmark --overwrite``).
        """
        cfg = parser.get_defaults()
        for config in self.configs:
            if isinstance(config, Mapping):
                cfg = parser.parse_object(nested(config), cfg, _skip_validation=True)
                continue
            if not Path(config).is_file():
                raise LTUError(f"stage config {str(config)!r} does not exist; fix its path")
            # what ``--config <path>`` does: a file's own ``config:`` includes resolve next to it
            ActionConfigFile.apply_config(parser, cfg, "config", str(config))
        for layer in (self.settings(), *self.overrides):
            cfg = parser.parse_object(nested(layer), cfg, _skip_validation=True)
        if self.original_ckpt is not None:
            callbacks = [c.as_dict() for c in cfg.trainer.callbacks or []]
            guard = {"trainer": {"callbacks": [*callbacks, REPLACE_RUN_FOLDER]}}
            cfg = parser.parse_object(guard, cfg, _skip_validation=True)
        return parser.parse_object({}, cfg)

    def build(self) -> StageCLI:
        """Model, data and trainer of this stage, built once (nothing runs yet)."""
        return StageCLI(self)

    def fit(self) -> FitResult:
        """Train into ``root``; an earlier attempt's ``checkpoints/`` there is removed first.

        A run stopped by a guard (e.g. a non-finite step) keeps its last good checkpoint: the
        benchmark reports the method from it, flagged, instead of losing the benchmark. Refused
        before its first epoch ended, it has no checkpoint of its own and is reported, flagged,
        from the model it started from. Any other error is raised.
        """
        shutil.rmtree(self.root / "checkpoints", ignore_errors=True)
        with quiet_lightning():
            start = time.perf_counter()
            cli = self.build()
            failure = None
            try:
                cli.prepare_run(cli.config)
                cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            except LTUError as err:
                saved = (self.root / "checkpoints" / "last.ckpt").exists()
                unlearning = self.original_ckpt is not None
                if not unlearning or not (saved or isinstance(err, NonFiniteStepError)):
                    raise
                failure = str(err)
            elapsed = time.perf_counter() - start
        chosen = reported_checkpoint(cli.model, self.root, self.original_ckpt, failure is not None)
        # a stopped run's checkpoint callbacks score epochs it did not stand by
        score = monitored_best_score(cli.trainer) if failure is None else None
        return FitResult(cli, elapsed, score, chosen, failure)

    def evaluate(self, checkpoint: Path, built: StageCLI | None = None) -> dict[str, float]:
        """The protocol's metrics of ``checkpoint`` on this stage's split (built here unless
        ``built``, e.g. a finished fit's, is given)."""
        with quiet_lightning():
            cli = built or self.build()
            return evaluate_checkpoint(cli.model, cli.datamodule, str(checkpoint), seed=self.seed)


class StageCLI(ProjectCLI):
    """The project's LightningCLI, fed a :class:`Stage` instead of command-line arguments."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        super().__init__(run=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = self.stage.compose(parser)


@dataclass
class FitResult:
    """A finished fit: its built stage, wall time, best monitored score, reported checkpoint,
    and why it stopped early (None when it ran to the end)."""

    cli: StageCLI | None
    time_s: float
    best_score: float | None
    checkpoint: Path
    failure: str | None = None


def reported_checkpoint(model: Any, root: Path, original: Path | None, failed: bool) -> Path:
    """The checkpoint a fit is reported from: :func:`selected_checkpoint`, except for a run
    stopped by a guard whose selection so far is the starting model (its ``best.ckpt`` then
    holds the best *epoch*, which the start beat: the start is written over it only when a fit
    ends) or that has no checkpoint of its own: the model it started from, ``original``."""
    chosen = selected_checkpoint(model, root)
    if (
        failed
        and original is not None
        and (getattr(model, "keeps_start", False) or not chosen.exists())
    ):
        return original
    return chosen


def selected_checkpoint(model: Any, root: Path) -> Path:
    """The checkpoint a stage reports: an unlearning run's best epoch by the honest criterion;
    for the original and the retrained model, the end of their recipe (``last.ckpt``), which is
    the model unlearning starts from and the gold standard it is compared with."""
    best = root / "checkpoints" / "best.ckpt"
    if getattr(model, "stop_rule", None) == "criterion" and best.exists():
        return best
    return root / "checkpoints" / "last.ckpt"


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's info lines (GPU available, ...) off while a benchmark's stages run."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in zip(names, levels, strict=True):
            logging.getLogger(n).setLevel(level)
