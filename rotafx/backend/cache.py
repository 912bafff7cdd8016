"""Caches of the backend: the plans it made (``rotafx.last_plan()``), and solved placements by the costs of a graph."""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

__all__ = ["RecentPlans", "SolvedPlacements", "PLANS", "SOLVED"]

T = TypeVar("T")


class RecentPlans(Generic[T]):
    """The most recent plans, oldest first (at most ``size`` are kept)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._plans: list[T] = []

    def add(self, plan: T) -> None:
        self._plans.append(plan)
        del self._plans[:-self.size]

    def last(self) -> T | None:
        return self._plans[-1] if self._plans else None

    def all(self) -> list[T]:
        return list(self._plans)


class SolvedPlacements:
    """Partitions solved before, by (costs of the graph, planning options): a recompiled graph with the
    same costs reuses its placement. Each hit is a copy the caller owns (``move_layer`` changes a partition)."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._solved: dict[tuple, Any] = {}

    def get(self, key: tuple, profile: Any) -> Any | None:
        """The partition solved for ``key``, as a copy on ``profile``; ``None`` when none was."""
        solved = self._solved.get(key)
        return None if solved is None else dataclasses.replace(solved, profile=profile, _moves={})

    def put(self, key: tuple, partition: Any) -> None:
        self._solved[key] = dataclasses.replace(partition, _moves={}, validation=None)
        while len(self._solved) > self.size:
            del self._solved[next(iter(self._solved))]


PLANS: RecentPlans[Any] = RecentPlans()
SOLVED = SolvedPlacements()
