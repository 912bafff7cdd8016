"""Units and how rotafx writes numbers and messages: MB and GB (10^6, 10^9 bytes), readable byte counts, index ranges,
an exception's first line (a leaf module)."""

from __future__ import annotations

from typing import Iterable

__all__ = ["MB", "GB", "fmt_bytes", "format_ranges", "first_line"]

MB = 1e6
GB = 1e9


def fmt_bytes(n: float) -> str:
    """Bytes in the largest decimal unit that keeps them readable.

    >>> fmt_bytes(1_712_000_000), fmt_bytes(300_000), fmt_bytes(12)
    ('1.712 GB', '300.000 kB', '12 B')
    """
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.3f} {unit}"
    return f"{n:,.0f} B"


def format_ranges(indices: Iterable[int]) -> str:
    """Sorted indices as runs.

    >>> format_ranges([0, 1, 2, 5]), format_ranges([])
    ('0-2, 5', '')
    """
    xs = sorted(set(indices))
    out: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it says nothing.

    >>> first_line(RuntimeError("gloo: connection closed\\nbacktrace ...")), first_line(KeyError())
    ('gloo: connection closed', 'KeyError')
    """
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
