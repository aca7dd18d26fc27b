"""Small validators shared by the baseline defenses (one-line ArgumentError messages).

Numbers may arrive as strings: YAML 1.1 reads ``1e-5`` (no dot) as a string, and so does
``--defense-param delta=1e-5``; they are accepted when they parse as a number.
"""
from __future__ import annotations

from typing import Any

from ..errors import ArgumentError


def number(where: str, key: str, value: Any, allow_none: bool = False) -> float | None:
    """``value`` as a float (int / float / numeric string); ``None`` passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ArgumentError(f"{where}: {key} must be a number, got {value!r}")


def integer(where: str, key: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low`` (an integral float or numeric string is accepted)."""
    v = None
    if isinstance(value, int) and not isinstance(value, bool):
        v = value
    elif isinstance(value, (float, str)) and not isinstance(value, bool):
        try:
            f = float(value)
            if f.is_integer():
                v = int(f)
        except ValueError:
            pass
    if v is None or v < low:
        raise ArgumentError(f"{where}: {key} must be an integer >= {low}, got {value!r}")
    return v
