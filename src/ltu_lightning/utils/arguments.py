"""Checks of raw command-line arguments that jsonargparse would report as a page of parser
internals: a config file that is not valid YAML, and a number that is not finite."""

from __future__ import annotations

from pathlib import Path

import yaml

from ltu_lightning.errors import LTUError

CONFIG_FLAGS = ("--config", "-c")
NOT_FINITE = ("nan", "inf", "infinity", ".nan", ".inf")


def check_config_file(path: str) -> None:
    """Refuse a config file with a YAML syntax error, naming the file, line and column."""
    p = Path(path)
    if not p.is_file():
        return  # jsonargparse says so in one line
    try:
        yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise LTUError(
            f"config file {str(p)!r} is not valid YAML ({problem}{where}); fix the file"
        ) from err


def check_arguments(args: list[str]) -> None:
    """One-line errors for ``--config <bad YAML>`` and ``--<option> nan|inf``."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag in CONFIG_FLAGS:
            check_config_file(value)
        elif flag.startswith("--") and value.strip().lower().lstrip("+-") in NOT_FINITE:
            raise LTUError(
                f"{flag} {value} is not a finite number; give a finite value such as 0.01"
            )
