"""Argument checks: one style of message, ``<name> must be <condition>; got <value>``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ltu_lightning.errors import LTUError


def check_choice(name: str, value: object, allowed: Sequence[object]) -> None:
    """Raise an :class:`LTUError` naming ``value`` and the allowed values unless it is one."""
    if value not in allowed:
        raise LTUError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def check_range(
    name: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Raise an :class:`LTUError` unless ``low <= value <= high`` (``low < value`` when
    ``low_open``) and, with ``integer``, ``value`` is an ``int``. NaN is always refused."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    inside = (low < value if low_open else low <= value) and value <= high
    if inside and (is_int or not integer):
        return
    kind = "an integer " if integer else ""
    if math.isinf(high):
        bound = f"{'>' if low_open else '>='} {low:g}"
    else:
        bound = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    raise LTUError(f"{name} must be {kind}{bound}; got {value!r}")
