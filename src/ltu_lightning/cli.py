"""The ``ltu`` command (also installed as ``lightning``): LightningCLI in subclass mode, plus
``evaluate`` and ``benchmark``.

``ltu fit|validate|test|predict --config X.yaml`` are LightningCLI's own subcommands, so every
LightningCLI flag works (``--print_config``, ``--model.help ClassifierModule``, ``--trainer.*``).
``ltu evaluate`` and ``ltu benchmark`` use the same YAML and the same ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger

import ltu_lightning.data  # noqa: F401
import ltu_lightning.modules  # noqa: F401  (registers the modules for short class names)
import ltu_lightning.networks  # noqa: F401
from ltu_lightning import quiet
from ltu_lightning.callbacks import LoggerSaveConfigCallback, SelectionSummary
from ltu_lightning.errors import LTUError
from ltu_lightning.modules.checkpoints import load_checkpoint

EXTRA_SUBCOMMANDS = ("evaluate", "benchmark")
#: LightningCLI's subcommands: they load ``--ckpt_path`` (resume, evaluation) through Lightning
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: ``--ckpt_path`` values Lightning resolves itself (``registry:<name>`` included)
CKPT_PATH_KEYWORDS = ("last", "best", "hpc", "registry")
# ``evaluate``/``benchmark`` hand LightningCLI their own argument lists on purpose.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


class LTUCLI(LightningCLI):
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
        keyword = config.get("ckpt_path")
        if keyword not in ("last", "best"):
            return
        path = Path(self.trainer.default_root_dir) / "checkpoints" / f"{keyword}.ckpt"
        if not path.is_file():
            raise LTUError(
                f"--ckpt_path {keyword}: there is no {path}; give the path of a checkpoint, or "
                f"the --trainer.default_root_dir of the run that wrote it"
            )
        load_checkpoint(path)  # the same safe read as for an explicit path
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


def run(args: list[str]) -> None:
    """Dispatch to ``evaluate``/``benchmark`` or LightningCLI, with safe checkpoint loading."""
    if args and args[0] in EXTRA_SUBCOMMANDS:
        if args[0] == "evaluate":
            from ltu_lightning.evaluation.cli import evaluate_main

            evaluate_main(args[1:])
        else:
            from ltu_lightning.benchmark.cli import benchmark_main

            benchmark_main(args[1:])
        return
    if args and args[0] in TRAINER_SUBCOMMANDS:
        # Lightning hands weights_only=None to torch.load, which unpickles URLs (and files under
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) with arbitrary code: default to True, a later
        # ``--weights_only false`` (or config key) still wins.
        args = [args[0], "--weights_only", "true", *args[1:]]
        check_ckpt_path(args[1:])
    LTUCLI(args=args)
    _close_process_group()


def _close_process_group() -> None:
    """Destroy the default process group a multi-process run leaves behind (Lightning keeps it
    for later trainer calls), so the process ends through PyTorch's shutdown path instead of
    tearing the group's threads down in the interpreter's exit, which can abort."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_ckpt_path(args: list[str]) -> None:
    """Read a ``--ckpt_path`` file the safe way before Lightning does, so that a missing,
    truncated or code-carrying checkpoint is one clear error instead of a traceback."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--ckpt_path")
    parser.add_argument("--weights_only")
    try:
        given, _ = parser.parse_known_args(args)
    except argparse.ArgumentError:
        return  # e.g. a --ckpt_path without a value: LightningCLI's parser says so
    path = given.ckpt_path
    if not path or str(given.weights_only).lower() == "false":
        return
    if path.split(":")[0] in CKPT_PATH_KEYWORDS or "://" in path:
        return  # resolved by Lightning itself
    load_checkpoint(path)


def _user_error(err: BaseException | None) -> LTUError | None:
    """The LTUError behind ``err``: jsonargparse and Lightning re-raise it wrapped (``from``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LTUError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ltu`` console script: user errors become one line and exit code 2."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


#: the distribution whose ``lightning`` console script :func:`lightning_main` is
DISTRIBUTION = "ltu-lightning"


def other_lightning_commands() -> list[str]:
    """Installed distributions other than this one that declare a ``lightning`` command."""
    from importlib.metadata import entry_points

    return sorted(
        {
            ep.dist.name if ep.dist is not None else ep.value
            for ep in entry_points(group="console_scripts", name="lightning")
            if ep.dist is None or ep.dist.name.lower().replace("_", "-") != DISTRIBUTION
        }
    )


def lightning_main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lightning`` console script: the same CLI as ``ltu``
    (``lightning fit --config ...``), unless another installed distribution declares a
    ``lightning`` command too: then it refuses, so that neither silently replaces the other."""
    others = other_lightning_commands()
    if others:
        print(
            f"error: the lightning command is also provided by {', '.join(others)}; "
            "run this project's CLI as ltu (e.g. ltu fit --config ...) instead",
            file=sys.stderr,
        )
        raise SystemExit(2)
    main(argv)


if __name__ == "__main__":
    main()
