"""Brute force: every contiguous placement enumerated and scored by the estimator (for tests and small cases)."""

from __future__ import annotations

import itertools
from typing import Iterator

from ..costmodel import CostTables
from ..estimate import evaluate
from ..objective import Objective
from .feasibility import fits

__all__ = ["enumerate_placements", "solve_brute_force"]


def enumerate_placements(L: int, K: int) -> Iterator[list[int]]:
    """Every contiguous placement of L layers on a chain of K stages (stages may be empty).

    >>> list(enumerate_placements(2, 2))
    [[1, 1], [0, 1], [0, 0]]
    """
    for cuts in itertools.combinations_with_replacement(range(L + 1), K - 1):
        out: list[int] = []
        prev = 0
        for s, c in enumerate((*cuts, L)):
            out.extend([s] * (c - prev))
            prev = c
        yield out


def solve_brute_force(tables: CostTables, obj: Objective) -> tuple[list[int] | None, tuple[float, float]]:
    """The best feasible placement by enumeration and its score ``(value, tie-break)``."""
    best: tuple[float, float] = (float("inf"), float("inf"))
    arg = None
    for stages in enumerate_placements(tables.L, tables.K):
        if not fits(tables, stages):
            continue
        sc = obj.score(evaluate(tables, stages).terms())
        tol = 1e-9 * max(1.0, abs(best[0]))
        if sc[0] < best[0] - tol or (abs(sc[0] - best[0]) <= tol and sc[1] < best[1]):
            best, arg = sc, stages
    return arg, best
