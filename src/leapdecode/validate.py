"""One numeric validator for the CLI, the config and the server: finite numbers and ints in a range.

Each error is one line naming the field, the allowed range and a value that works.
"""

from __future__ import annotations

import math
from typing import Any

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


def number(name: str, value: Any, low: float, high: float, *, open_low: bool = False,
           example: float | None = None) -> float:
    """A finite real in [low, high] (or (low, high] with open_low), as float."""
    hint = f" (e.g. {example})" if example is not None else ""
    bracket = "(" if open_low else "["
    expected = f"a finite number in {bracket}{low}, {high}]{hint}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {expected}, got a huge integer") from None
    if not math.isfinite(as_float) or as_float < low or as_float > high or (open_low and as_float == low):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return as_float


def integer(name: str, value: Any, low: int | None = None, high: int | None = None, *,
            example: int | None = None) -> int:
    """An int (not a bool) in [low, high]; an integral float such as 8.0 counts as 8."""
    hint = f" (e.g. {example})" if example is not None else ""
    span = f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer{span}{hint}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        shown = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        raise ValueError(f"{name} must be an integer{span}{hint}, got {shown}")
    return value
