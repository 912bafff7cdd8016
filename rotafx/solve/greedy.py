"""The paper's greedy layer aggregation, and brute-force enumeration for small cases."""

from __future__ import annotations

import itertools
from typing import Iterator

from ..costmodel import CostTables
from ..estimate import evaluate
from .objective import Objective

__all__ = ["solve_greedy", "enumerate_placements", "solve_brute_force", "fits"]


def fits(tables: CostTables, stages: list[int]) -> bool:
    """Whether every device holds its stages, with the same memory rule as the MILP and DP."""
    mem = tables.device_memory(stages)
    return all(mem[d] <= tables.capacity[d] * (1 + 1e-12) for d in mem)


def solve_greedy(tables: CostTables) -> list[int] | None:
    """Fill each stage of the chain in order with as many layers as fit its device, then move on.

    Returns the stage of every layer, or None when the layers run out of stages.
    """
    K, L = tables.K, tables.L
    stages: list[int] = []
    s = 0
    for _ in range(L):
        # the memory test looks at whole devices, so a device met twice in the chain counts both stages
        while s < K and not fits(tables, stages + [s]):
            s += 1
        if s >= K:
            return None
        stages.append(s)
    return stages


def enumerate_placements(L: int, K: int) -> Iterator[list[int]]:
    """Every contiguous placement of L layers on a chain of K stages (stages may be empty)."""
    for cuts in itertools.combinations_with_replacement(range(L + 1), K - 1):
        out: list[int] = []
        prev = 0
        for s, c in enumerate((*cuts, L)):
            out.extend([s] * (c - prev))
            prev = c
        yield out


def solve_brute_force(tables: CostTables, obj: Objective) -> tuple[list[int] | None, tuple[float, float]]:
    """The best feasible placement by enumeration, scored by the estimator (for tests and small cases)."""
    best: tuple[float, float] = (float("inf"), float("inf"))
    arg = None
    for stages in enumerate_placements(tables.L, tables.K):
        if not fits(tables, stages):
            continue
        sc = obj.score(evaluate(tables, stages))
        if sc[0] < best[0] - 1e-9 * max(1.0, abs(best[0])) or (abs(sc[0] - best[0]) <= 1e-9 * max(1.0, abs(best[0])) and sc[1] < best[1]):
            best, arg = sc, stages
    return arg, best
