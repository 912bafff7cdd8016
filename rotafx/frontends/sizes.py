"""Sizes a user gives a frontend (a batch, a sequence length, a dimension, a byte or FLOP count), checked in one place."""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

from ..layers import ProfileError

__all__ = ["positive_int", "dimensions", "count"]


def positive_int(value: Any, what: str, fix: str = "") -> int:
    """``value`` as an ``int`` >= 1; a bool, a float, a string or anything below 1 raises :class:`ProfileError`.

    ``what`` names the argument in the message, ``fix`` says what to pass instead.

    >>> positive_int(8, "batch_size")
    8
    >>> positive_int(0, "batch_size")
    Traceback (most recent call last):
    ...
    rotafx.layers.ProfileError: rotafx: batch_size must be a positive integer, got 0
    """
    n = _index(value)
    if n is None or n < 1:
        raise ProfileError(f"rotafx: {what} must be a positive integer, got {value!r}{'; ' + fix if fix else ''}")
    return n


def dimensions(shape: Any, what: str) -> tuple[int, ...]:
    """A shape given by a user: a sequence of positive integers (``what`` names it in the error).

    >>> dimensions([2, 8], "input 'x'")
    (2, 8)
    """
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise ProfileError(f"rotafx: {what} must be a shape (a tuple of positive integers such as (1, 128)), "
                           f"got {shape!r}")
    return tuple(positive_int(d, f"{what} axis {axis}") for axis, d in enumerate(shape))


def count(value: Any, what: str, *, whole: bool = True) -> int:
    """A count a user writes by hand (parameters, FLOPs, bytes): a finite number >= 0, as an ``int``.

    ``whole=True`` (parameters, bytes) refuses a fraction; ``whole=False`` (FLOPs) rounds it.

    >>> count(1e9, "flops"), count(2.4, "flops", whole=False)
    (1000000000, 2)
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) or _index(value) is not None
    if not ok or not (value >= 0 and math.isfinite(value)):  # NaN fails >= 0
        raise ProfileError(f"rotafx: {what} must be a finite number >= 0, got {value!r}")
    if whole and value != int(value):
        raise ProfileError(f"rotafx: {what} must be a whole number, got {value!r}")
    return int(round(value))


def _index(value: Any) -> int | None:
    """An integer (Python or numpy, not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
