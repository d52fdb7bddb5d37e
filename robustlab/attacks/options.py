"""Checks of attack options: a spec such as ``pgd(steps=abc)`` gets one line naming the option, not a traceback."""

from __future__ import annotations

import math
import numbers
from typing import Any

from robustlab.errors import RobustlabError


def whole(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a whole number >= ``minimum`` (``5`` and ``5.0`` pass; ``"5"``, ``True`` and ``5.5`` do not)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or int(value) != value or value < minimum:
        raise RobustlabError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def number(name: str, value: Any, low: float | None = None, high: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``positive``: > 0)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and positive:
        ok = value > 0
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        where = (
            " > 0"
            if positive
            else f" in [{low}, {high}]"
            if high is not None
            else f" >= {low}"
            if low is not None
            else ""
        )
        raise RobustlabError(f"{name} must be a finite number{where}, got {value!r}")
    return float(value)


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool (``True``/``False``, or 1/0)."""
    if value not in (True, False) or not isinstance(value, (bool, int)):
        raise RobustlabError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of ``choices``."""
    if value not in choices:
        raise RobustlabError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def seed(value: Any) -> int:
    """A random seed: a whole number >= 0."""
    return whole("seed", value, minimum=0)


__all__ = ["choice", "flag", "number", "seed", "whole"]
