"""Setting checks that fail at config time with one line: the setting's name, what is allowed, what was given.

Every class a config builds (algorithms, the data module, the evaluation, envs) checks its settings
with these, so that a mistake reads the same wherever it is made. Fields are named as the user
writes them in a config (``model.omega``, ``data.n_envs``, ``data.env_kwargs.n_agents``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

INF = float("inf")


def check_range(field: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` is a number in the interval."""
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{field} must be in {interval}, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ValueError(f"{field} must be in {interval}, got {value!r}")


def check_positive_int(field: str, value: Any) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{field}: unknown value {value!r}; allowed values: {', '.join(map(str, allowed))}")
