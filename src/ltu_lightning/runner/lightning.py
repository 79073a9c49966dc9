"""The project's LightningCLI: every stage (``ltu fit`` or a benchmark's) is built by it."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import NoReturn

import lightning as L
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

import ltu_lightning.data  # noqa: F401
import ltu_lightning.modules  # noqa: F401  (registers the modules for short class names)
import ltu_lightning.networks  # noqa: F401
from ltu_lightning import quiet
from ltu_lightning.callbacks import LoggerSaveConfigCallback, SelectionSummary
from ltu_lightning.modules.checkpoints import local_ckpt_path

_LITERAL = re.compile(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_GIVEN = re.compile(r"Given value: (.*)")
_NESTED = re.compile(r"NestedArg\(key='(.*?)', val='(.*?)'\)")


def one_line_parse_error(message: str) -> str:
    """jsonargparse's nested parse error as one line: the flag it concerns, the innermost reason
    (the ``None`` branch of an optional value left out), and the value given; a misspelt choice
    names the choices."""
    keys = _PARSER_KEY.findall(message)
    flag = ""
    if keys:
        flag = f"--{keys[0]}" + (f".init_args.{keys[-1]}" if len(keys) > 1 else "")
    literal = _LITERAL.search(message)
    if literal:
        choices, value = literal.groups()
        return f"{flag or 'a choice'}: {value.strip()!r} is not one of {choices}"
    lines = [line.strip(" -") for line in message.splitlines() if line.strip(" -")]
    match = _GIVEN.search(message)
    given = match.group(1).strip() if match else ""
    nested = _NESTED.search(given)
    if nested and keys:  # --model.init_args.<key> <val>
        flag, given = f"--{keys[0]}.init_args.{nested.group(1)}", nested.group(2)
    skip = (
        "Given value",
        "Subtypes:",
        "Errors:",
        "Parser key",
        "Does not validate",
        "Problem with",
    )
    reasons = [line for line in lines if not line.startswith(skip) and "NoneType" not in line]
    if not flag or not reasons:
        return lines[0] if lines else message
    return f"{flag}: {reasons[0]}" + (f" (given {given!r})" if given else "")


class OneLineErrors:
    """A jsonargparse parser mixin: a parse error is one line (no usage dump), exit code 2."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # an inner parse: the caller handles the exception
            super().error(message, ex)  # type: ignore[misc]
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"error: {one_line_parse_error(message)} (see {prog} --help)\n")
        raise SystemExit(2)


class ProjectArgumentParser(OneLineErrors, LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line (no usage dump), exit code 2."""


class ToolArgumentParser(OneLineErrors, ArgumentParser):
    """The parser of ``ltu benchmark``, ``tune`` and ``audit``: one-line errors, exit code 2."""


class ProjectCLI(LightningCLI):
    """LightningCLI with the project's defaults: any LightningModule/DataModule by class path;
    the resolved config goes to every logger and the selected epoch's metrics to W&B's summary."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # the resolved config reaches every logger (LoggerSaveConfigCallback); Lightning's own
        # autolog of the module's and data module's hparams would add them again as flat keys
        kwargs.setdefault(
            "trainer_defaults", {"callbacks": [SelectionSummary()], "enable_autolog_hparams": False}
        )
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", ProjectArgumentParser)
        quiet.install()
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """A logger whose ``save_dir`` is null writes under ``trainer.default_root_dir``, so that
        one flag moves a whole run. A set ``WANDB_MODE`` decides W&B's mode: ``WandbLogger``'s
        ``offline: true`` (the default of configs/logger/wandb.yaml) would override it."""
        trainer = self._get(self.config, "trainer")
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for spec in loggers:
            if not isinstance(spec, Namespace) or not isinstance(spec.get("init_args"), Namespace):
                continue
            init = spec.init_args
            if "save_dir" in init and init.save_dir is None and init.get("dir") is None:
                init.save_dir = trainer.default_root_dir or os.getcwd()
            module, _, name = spec.class_path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            if issubclass(cls, WandbLogger) and "WANDB_MODE" in os.environ:
                init.offline = False

    # ``--ckpt_path last|best``: Lightning looks for them among the trainer's own checkpoint
    # callbacks before the module's (``configure_callbacks``) exist, so it finds nothing and
    # starts from scratch. Our stages write both under ``<default_root_dir>/checkpoints/``.
    def _resolve_ckpt_keyword(self) -> None:
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") in ("last", "best"):
            path = local_ckpt_path(config["ckpt_path"], self.trainer.default_root_dir)
            config["ckpt_path"] = str(path)

    def prepare_run(self, config: Namespace) -> None:
        """Before the trainer runs: W&B loggers ready to start quietly (:mod:`ltu_lightning.quiet`),
        and, with ``WANDB_MODE`` set, the mode it decided recorded as the logger's ``offline``
        in the config that config.yaml and the loggers receive."""
        quiet.hide_version_number(self.trainer)
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                quiet.prepare_wandb_logger(logger)
        mode = os.environ.get("WANDB_MODE")
        specs = config.trainer.logger
        for spec in specs if isinstance(specs, list) else [specs]:
            if (
                mode
                and isinstance(spec, Namespace)
                and isinstance(spec.get("init_args"), Namespace)
            ):
                if "offline" in spec.init_args and spec.class_path.endswith("WandbLogger"):
                    spec.init_args.offline = mode in ("offline", "dryrun")

    def _before_trainer_run(self) -> None:
        self.prepare_run(self.config[self.subcommand])
        self._resolve_ckpt_keyword()

    before_fit = before_validate = before_test = before_predict = _before_trainer_run
