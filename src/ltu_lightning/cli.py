"""The ``ltu`` command (also installed as ``lightning``): one LightningCLI parser with every
subcommand.

``ltu fit|validate|test|predict --config X.yaml`` are LightningCLI's own subcommands, so every
LightningCLI flag works (``--print_config``, ``--model.help ClassifierModule``, ``--trainer.*``).
``ltu evaluate`` takes the same YAML and flags and scores a checkpoint with the protocol's
metrics; ``ltu benchmark`` and ``ltu tune`` run the stages of a benchmark YAML, ``ltu audit``
audits the models a benchmark stored.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import LightningArgumentParser

from ltu_lightning.benchmark.cli import (
    AUDIT_HELP,
    BENCHMARK_HELP,
    TUNE_HELP,
    audit_main,
    benchmark_main,
    build_audit_parser,
    build_parser,
    build_tune_parser,
    tune_main,
)
from ltu_lightning.errors import CLI_ACTIVE, LTUError
from ltu_lightning.evaluation.metrics import avg_gap
from ltu_lightning.evaluation.protocol import evaluate_checkpoint, forgetting_verdict, verdict
from ltu_lightning.modules.base import RunFolderGuard
from ltu_lightning.modules.checkpoints import check_resume_config
from ltu_lightning.runner.lightning import ProjectCLI
from ltu_lightning.tracking import update_wandb_summary
from ltu_lightning.utils.arguments import check_arguments
from ltu_lightning.utils.files import write_json_atomic
from ltu_lightning.utils.run_lock import RunLock

#: LightningCLI's subcommands: they load ``--ckpt_path`` (resume, evaluation) through Lightning
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: subcommands that build no model, data or trainer of their own (their stages do)
TOOL_SUBCOMMANDS: dict[str, tuple[Callable[[], Any], Callable[[Any], None], str]] = {
    "benchmark": (build_parser, benchmark_main, BENCHMARK_HELP),
    "tune": (build_tune_parser, tune_main, TUNE_HELP),
    "audit": (build_audit_parser, audit_main, AUDIT_HELP),
}
EVALUATE_HELP = "Evaluate a checkpoint with the protocol's metrics (UA, RA, TA, MIA, Avg.Gap)."
# tests and notebooks call ``main(args)`` in a process that has its own sys.argv
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


class LTUCLI(ProjectCLI):
    """``ltu``: LightningCLI's subcommands plus ``evaluate`` (the same model, data and trainer
    flags), ``benchmark``, ``tune`` and ``audit`` (their own flags) under one parser."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        subcommands = parser._subcommands_action
        evaluate = self.init_parser(description=EVALUATE_HELP)
        self._add_arguments(evaluate)
        add_evaluate_arguments(evaluate)
        self._subcommand_parsers["evaluate"] = evaluate
        self._subcommand_method_arguments["evaluate"] = []
        subcommands.add_subcommand("evaluate", evaluate, help=EVALUATE_HELP)
        for name, (build, _, help_) in TOOL_SUBCOMMANDS.items():
            subcommands.add_subcommand(name, build(), help=help_)

    @property
    def _tool(self) -> bool:
        return self.config.get("subcommand") in TOOL_SUBCOMMANDS

    # benchmark and tune build their stages themselves: no seed, model, data or trainer here
    def _parse_ckpt_path(self) -> None:
        """Check ``ckpt_path`` (however given) before LightningCLI reads its hyperparameters."""
        subcommand = self.config.get("subcommand")
        if subcommand in TRAINER_SUBCOMMANDS:
            check_resume_config(self.config.get(subcommand))
            super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        if not self._tool:
            super()._set_seed()

    def before_instantiate_classes(self) -> None:
        if not self._tool:
            super().before_instantiate_classes()

    def instantiate_classes(self) -> None:
        if not self._tool:
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand in TOOL_SUBCOMMANDS:
            TOOL_SUBCOMMANDS[subcommand][1](self.config[subcommand])
        elif subcommand == "evaluate":
            self.evaluate()
        else:  # one run at a time per output folder
            with RunLock(self.trainer.default_root_dir, "--trainer.default_root_dir"):
                if subcommand == "fit":  # refused before the loggers make their folders
                    RunFolderGuard.before_fit(
                        self.trainer, self.model, self.config_init.fit.ckpt_path
                    )
                super()._run_subcommand(subcommand)

    def evaluate(self) -> None:
        """``ltu evaluate``: print (and with --output write) the metrics of --ckpt_path."""
        cfg = self.config.evaluate
        metrics = evaluate_checkpoint(
            self.model, self.datamodule, cfg.ckpt_path, seed=cfg.seed_everything or 0
        )
        reference = None
        if cfg.reference:
            try:
                reference = json.loads(Path(cfg.reference).read_text())
            except (OSError, ValueError) as err:
                raise LTUError(
                    f"cannot read reference metrics {cfg.reference!r} ({err}); pass a JSON "
                    "written by ltu evaluate --output"
                ) from err
            metrics["avg_gap"] = avg_gap(metrics, reference)
        for key, value in metrics.items():
            print(f"{key:>22}: {value:.4f}")
        print(verdict(metrics, reference))
        if cfg.output:
            write_json_atomic(cfg.output, metrics)
        self.log_evaluation(metrics)

    def log_evaluation(self, metrics: dict[str, float]) -> None:
        """Send an evaluation to the trainer's loggers as ``eval/<metric>`` (W&B: also the run
        summary, with ``eval/verdict``), with the resolved config as hyperparameters."""
        loggers = self.trainer.loggers
        if not loggers:
            return
        cfg = self.config.evaluate
        self.prepare_run(cfg)
        config = yaml.safe_load(self._parser("evaluate").dump(cfg, skip_none=False))
        scores = {f"eval/{k}": float(v) for k, v in metrics.items()}
        for logger in loggers:
            logger.log_hyperparams(config)
            logger.log_metrics(scores, step=0)
            logger.save()
        update_wandb_summary(loggers, {**scores, "eval/verdict": forgetting_verdict(metrics)})
        for logger in loggers:
            logger.finalize("success")


def add_evaluate_arguments(parser: LightningArgumentParser) -> None:
    """``ltu evaluate``'s own flags, next to the model, data and trainer ones."""
    parser.add_argument(
        "--ckpt_path",
        type=str | None,
        default=None,
        help="checkpoint to evaluate (default: the model's initial weights)",
    )
    parser.add_argument(
        "--reference",
        type=str | None,
        default=None,
        help="metrics JSON of the retrained model, for Avg.Gap",
    )
    parser.add_argument(
        "--output", type=str | None, default=None, help="write the metrics JSON here"
    )


def run(args: list[str]) -> None:
    """Parse ``args`` with the ``ltu`` parser and run the subcommand, with safe checkpoint
    loading for LightningCLI's subcommands."""
    check_arguments(args[1:])
    if args and args[0] in TRAINER_SUBCOMMANDS:
        # Lightning hands weights_only=None to torch.load, which unpickles URLs (and files under
        # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) with arbitrary code: default to True, a later
        # ``--weights_only false`` (or config key) still wins.
        args = [args[0], "--weights_only", "true", *args[1:]]
    LTUCLI(args=args)
    _close_process_group()


def _close_process_group() -> None:
    """Destroy the default process group a multi-process run leaves behind (Lightning keeps it
    for later trainer calls), so the process ends through PyTorch's shutdown path instead of
    tearing the group's threads down in the interpreter's exit, which can abort."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
    token = CLI_ACTIVE.set(True)  # errors name CLI flags
    try:
        run(sys.argv[1:] if argv is None else argv)
    except Exception as err:
        user_error = _user_error(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        CLI_ACTIVE.reset(token)


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
