"""Partition: a placement chosen by the optimizer, with its estimate and how sure the solver is; adjustable by hand."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from ..costmodel import CostTables
from ..estimate import Estimate, evaluate
from ..objective import Objective
from ..placement import LayerPlacement, Validation
from ..profile import ModelProfile
from ..topology import Topology
from ..units import GB, format_ranges

__all__ = ["Partition"]


@dataclass
class Partition:
    """A placement chosen by the optimizer, with its estimate and how sure the solver is.

    ``stages[l]`` is the chain stage of layer ``l``; ``nodes[l]`` its node.
    ``status`` is ``"optimal"`` (proven, gap ``gap``), ``"time_limit"`` (best found, not
    proven), ``"heuristic"`` (greedy) or ``"manual"`` (after :meth:`move_layer`).
    ``solver`` is the solver asked for; ``method`` the algorithm whose plan this is: ``"milp"``,
    ``"dp"`` (exact: its plan is optimal), ``"greedy"`` or ``"manual"`` (the MILP's time limit may
    leave the DP's or greedy's plan as the answer). ``solve_seconds``: the whole ``optimize()`` call.
    """

    profile: ModelProfile
    topology: Topology
    objective: Objective
    stages: tuple[int, ...]
    estimate: Estimate
    objective_value: float
    status: str
    gap: float
    solver: str
    solve_seconds: float
    baseline: Estimate | None = None  # every layer on the input node (all-ground)
    baseline_objective_value: float | None = None
    codec: str | None = None
    memory_rule: str = "liveness"
    validation: Validation | None = None
    method: str = "milp"
    _moves: dict[int, str] = field(default_factory=dict, repr=False)

    # -- the seed's fields ---------------------------------------------------
    @property
    def nodes(self) -> list[str]:
        return [self.topology.chain[s] for s in self.stages]

    @property
    def cut_points(self) -> list[int]:
        """The first layer of every stage after the first non-empty one: where the model is cut."""
        return [l for l in range(1, len(self.stages)) if self.stages[l] != self.stages[l - 1]]

    def layers_of_kind(self, kind: str) -> list[int]:
        return [l for l, s in enumerate(self.stages) if self.topology.stage_device(s).kind == kind]

    @property
    def ground_layers(self) -> list[int]:
        return self.layers_of_kind("ground")

    @property
    def orbital_layers(self) -> list[int]:
        return self.layers_of_kind("orbital")

    @property
    def estimated_latency_ms(self) -> float:
        return self.estimate.total_ms

    @property
    def transfer_size_mb(self) -> float:
        """MB sent between nodes for one request (every hop of the route)."""
        return self.estimate.transfer_size_mb

    @property
    def is_optimal(self) -> bool:
        return self.status == "optimal"

    # -- adjusting -------------------------------------------------------------
    def placement(self) -> LayerPlacement:
        """The partition as a :class:`LayerPlacement` (one named node per layer), with any moves applied."""
        p = LayerPlacement()
        for l, s in enumerate(self.stages):
            p.assign([l], self._moves.get(l, f"@stage{s}"))
        return p

    def move_layer(self, layer: int | str, to: str) -> "Partition":
        """Move one layer to a node or node kind; call :meth:`recalculate` to re-check and re-estimate."""
        self._moves[self.profile.layer_index(layer)] = to
        return self

    def recalculate(self) -> Validation:
        """Re-validate with the moves applied; when valid, update stages and estimate.

        An invalid move is reported in ``validation.issues`` (and as a warning), and the
        previous stages and estimate are kept.
        """
        placement = self.placement()
        v = placement.validate(self.profile, self.topology, memory_rule=self.memory_rule)
        self.validation = v
        if not v.is_valid:
            warnings.warn("rotafx: the adjusted partition is not valid:\n  " + "\n  ".join(v.issues), stacklevel=2)
            return v
        tables = CostTables(self.profile, self.topology, codec=self.codec, memory_rule=self.memory_rule)
        self.stages = tuple(v.stages or ())
        self.estimate = evaluate(tables, self.stages)
        self.objective_value = self.objective.value(self.estimate)
        self.status, self.gap, self.solver, self.method = "manual", math.nan, "manual", "manual"
        self._moves.clear()
        return v

    # -- display ---------------------------------------------------------------
    def table(self) -> str:
        """Contiguous runs of layers with their node, time and memory."""
        rows = [f"{'layers':<14} {'node':<12} {'names':<34} {'compute ms':>11} {'memory GB':>10}"]
        est = self.estimate
        l = 0
        L = len(self.stages)
        while l < L:
            e = l
            while e + 1 < L and self.stages[e + 1] == self.stages[l]:
                e += 1
            node = self.topology.chain[self.stages[l]]
            names = self.profile.layers[l].name + (f" .. {self.profile.layers[e].name}" if e > l else "")
            ms = sum(b.total_ms for b in est.by_layer[l:e + 1])
            rows.append(f"{format_ranges(range(l, e + 1)):<14} {node:<12} {names[:34]:<34} {ms:>11.2f} "
                        f"{est.memory_bytes.get(node, 0) / GB:>10.3f}")
            l = e + 1
        return "\n".join(rows)

    def report(self) -> str:
        gap = "" if math.isnan(self.gap) else f", gap {self.gap:.2%}"
        how = "" if self.method == self.solver else f", the {self.method} plan"
        lines = [f"partition of {self.profile.name} for {self.objective.name} (solver {self.solver}: {self.status}{gap}"
                 f"{how}, {self.solve_seconds:.2f} s)", self.table(), f"cut points: {self.cut_points}",
                 self.estimate.report("estimate")]
        if self.baseline is not None:
            fits_note = "" if self.baseline_objective_value is not None else " (does NOT fit its memory)"
            lines.append(self.baseline.report(f"all on the input node {self.topology.chain[0]}{fits_note}"))
        return "\n".join(lines)

    def plot(self, **options: Any) -> Any:
        """The placement picture (:func:`rotafx.plot.placement`): a ``matplotlib.figure.Figure`` (needs
        ``pip install rotafx[plot]``)."""
        import importlib

        # the pictures sit above the solvers (they draw what the solvers give): loaded when asked, not imported
        return importlib.import_module("rotafx.plot").placement(self, **options)

    def __str__(self) -> str:
        return self.report()
