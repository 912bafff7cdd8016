"""Deadline: the wall-clock end of one ``optimize()`` call, which every step that may take long reads."""

from __future__ import annotations

import math
import time
from typing import Any

__all__ = ["Deadline", "clock", "check_time_limit"]


def clock() -> float:
    """Seconds on the monotonic clock every deadline reads (tests replace it to play out a slow machine)."""
    return time.perf_counter()


class Deadline:
    """``seconds`` from now: :meth:`left` is what remains of them (negative once they are spent).

    >>> d = Deadline(60)
    >>> 59 < d.left() <= 60
    True
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.end = clock() + self.seconds

    def left(self) -> float:
        """Seconds until the deadline (negative after it)."""
        return self.end - clock()

    def spent(self) -> float:
        """Seconds since the deadline was set."""
        return self.seconds - self.left()


def check_time_limit(value: Any, name: str = "time_limit") -> float:
    """``value`` as seconds: a positive, finite int or float (not a bool, not a string).

    Raises:
        ValueError: naming ``name``, the value and the fix.

    >>> check_time_limit(5)
    5.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = f" (a string: write {name}={value.strip()})" if isinstance(value, str) and _is_number(value) else ""
        raise ValueError(f"{name} must be a number of seconds, like {name}=60; got {value!r}{hint}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds (the wall-clock bound of optimize(), "
                         f"like {name}=60); got {value!r}")
    return float(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
