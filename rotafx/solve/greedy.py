"""The paper's greedy layer aggregation: fill each stage of the chain in order with as many layers as fit."""

from __future__ import annotations

from ..costmodel import CostTables
from ..units import fmt_bytes
from .feasibility import fits

__all__ = ["solve_greedy", "greedy_fill", "explain_infeasible"]


def greedy_fill(tables: CostTables) -> tuple[list[int], int | None]:
    """Fill each stage of the chain in order with as many layers as fit its device, then move on.

    Returns the stages of the layers placed and the first layer that fits on no stage
    left (``None`` when every layer was placed).
    """
    K, L = tables.K, tables.L
    stages: list[int] = []
    s = 0
    for l in range(L):
        # the memory test looks at whole devices, so a device met twice in the chain counts both stages
        while s < K and not fits(tables, stages + [s]):
            s += 1
        if s >= K:
            return stages, l
        stages.append(s)
    return stages, None


def solve_greedy(tables: CostTables) -> list[int] | None:
    """The greedy fill's stage of every layer, or None when the layers run out of stages."""
    stages, stuck = greedy_fill(tables)
    return stages if stuck is None else None


def explain_infeasible(tables: CostTables) -> str:
    """Where the greedy fill runs out, as the tightest reason we can name."""
    stages, stuck = greedy_fill(tables)
    if stuck is None:
        return "no placement satisfies the memory constraints (the solver proved it infeasible)"
    placed = tables.device_memory(stages)
    fill = ", ".join(f"{d} {fmt_bytes(placed[d])}/{fmt_bytes(tables.capacity[d])}" for d in placed)
    return (f"no contiguous placement fits: filling the chain {' -> '.join(tables.topology.chain)} in order, "
            f"layer {stuck} ({tables.profile.layers[stuck].name}) fits on no node left ({fill}). Add memory or nodes, "
            f"or use a smaller dtype or batch")
