"""The ``ltu`` command: LightningCLI in subclass mode, plus ``evaluate`` and ``benchmark``.

``ltu fit|validate|test|predict --config X.yaml`` are LightningCLI's own subcommands, so every
LightningCLI flag works (``--print_config``, ``--model.help ClassifierModule``, ``--trainer.*``).
``ltu evaluate`` and ``ltu benchmark`` use the same YAML and the same ``--help``.
"""

from __future__ import annotations

import sys
import warnings

import lightning as L
from lightning.pytorch.cli import LightningCLI

import ltu_lightning.data  # noqa: F401
import ltu_lightning.models  # noqa: F401
import ltu_lightning.modules  # noqa: F401  (registers the modules for short class names)
from ltu_lightning.errors import LTUError

EXTRA_SUBCOMMANDS = ("evaluate", "benchmark")
# ``evaluate``/``benchmark`` hand LightningCLI their own argument lists on purpose.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


class LTUCLI(LightningCLI):
    """LightningCLI with the project's defaults: any LightningModule/DataModule by class path."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(L.LightningModule, L.LightningDataModule, *args, **kwargs)


def run(args: list[str], from_argv: bool = False) -> None:
    """Dispatch to ``evaluate``/``benchmark`` or LightningCLI (``args=None`` reads sys.argv)."""
    if args and args[0] in EXTRA_SUBCOMMANDS:
        if args[0] == "evaluate":
            from ltu_lightning.evaluation.cli import evaluate_main

            evaluate_main(args[1:])
        else:
            from ltu_lightning.benchmark.cli import benchmark_main

            benchmark_main(args[1:])
        return
    LTUCLI(args=None if from_argv else args)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ltu`` console script: user errors become one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    try:
        run(args, from_argv=argv is None)
    except LTUError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
