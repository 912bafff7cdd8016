"""PartitionOptimizer and the Partition it returns."""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..costmodel import CostTables
from ..estimate import Estimate, evaluate
from ..placement import GB, LayerPlacement, Validation, fmt_bytes, format_ranges
from ..profile import ModelProfile
from ..topology import Topology
from .dp import dp_applies, range_memory, solve_dp
from .greedy import fits, solve_greedy
from .milp import MilpResult, solve_milp
from .objective import TERMS, Objective, objective, terms

__all__ = ["PartitionOptimizer", "Partition", "InfeasibleError", "SOLVERS"]

log = logging.getLogger("rotafx")
SOLVERS = ("milp", "dp", "greedy")


class InfeasibleError(ValueError):
    """No placement fits: the message gives the tightest reason with its numbers."""


@dataclass
class Partition:
    """A placement chosen by the optimizer, with its estimate and how sure the solver is.

    ``stages[l]`` is the chain stage of layer ``l``; ``nodes[l]`` its node.
    ``status`` is ``"optimal"`` (proven, gap ``gap``), ``"time_limit"`` (best found, not
    proven), ``"heuristic"`` (greedy) or ``"manual"`` (after :meth:`move_layer`).
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
        self.status, self.gap, self.solver = "manual", math.nan, "manual"
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
        lines = [f"partition of {self.profile.name} for {self.objective.name} (solver {self.solver}: {self.status}{gap}, "
                 f"{self.solve_seconds:.2f} s)", self.table(), f"cut points: {self.cut_points}",
                 self.estimate.report("estimate")]
        if self.baseline is not None:
            fits_note = "" if self.baseline_objective_value is not None else " (does NOT fit its memory)"
            lines.append(self.baseline.report(f"all on the input node {self.topology.chain[0]}{fits_note}"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


class PartitionOptimizer:
    """Finds the placement of layers on a topology's chain that minimises an objective.

    ``solver``: ``"milp"`` (default; cvxpy + HiGHS, proven optimal or the best found
    within ``time_limit`` seconds), ``"dp"`` (exact dynamic program on chains whose
    devices appear once) or ``"greedy"`` (the paper's layer aggregation). ``api_key`` is
    accepted and ignored: everything runs locally.

    >>> from rotafx import ModelProfile, PartitionOptimizer
    >>> # a large input and a large output: the ends stay on the ground, which holds two layers
    >>> profile = ModelProfile.from_layers([{"name": f"l{i}", "params": 10**6, "flops": 1e9,
    ...                                      "activation_bytes": 10**6 if i == 5 else 10**4} for i in range(6)],
    ...                                    input_bytes=10**5)
    >>> topology = {"ground_nodes": 1, "orbital_nodes": 1, "ground_flops": 2e12, "orbital_flops": 1e12,
    ...             "uplink_bandwidth": 1e6, "downlink_bandwidth": 1e6, "isl_bandwidth": 1e9,
    ...             "ground_memory": 6e6}
    >>> part = PartitionOptimizer().optimize(model=profile, topology=topology)
    >>> part.status, part.ground_layers, part.orbital_layers
    ('optimal', [0, 5], [1, 2, 3, 4])
    """

    def __init__(self, api_key: str | None = None, *, solver: str = "milp", time_limit: float = 60.0,
                 verbose: bool = False, codec: str | None = None, memory_rule: str = "liveness") -> None:
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
        if not time_limit > 0:
            raise ValueError(f"time_limit must be positive seconds, got {time_limit!r}")
        self.api_key = api_key  # accepted for the seed's samples; unused
        self.solver = solver
        self.time_limit = float(time_limit)
        self.verbose = verbose
        self.codec = codec
        self.memory_rule = memory_rule

    def optimize(self, model: ModelProfile, topology: Topology | Mapping[str, Any] | str,
                 objective: str = "minimize_latency", *, weights: Mapping[str, float] | None = None) -> Partition:
        """Place ``model`` (a :class:`ModelProfile`) on ``topology`` for ``objective``.

        Objectives: ``minimize_latency`` (ms per request), ``maximize_throughput`` (the
        slowest device or link), ``minimize_bandwidth`` (bytes over ground-orbit links,
        ties broken by latency), ``minimize_energy`` (J), ``balance`` (``weights`` over
        latency, throughput, bandwidth and energy, each divided by its own optimum).
        Raises :class:`InfeasibleError` when nothing fits.
        """
        if not isinstance(model, ModelProfile):
            raise TypeError(f"model must be a ModelProfile (ModelProfile.from_pytorch(model)), got {type(model).__name__}")
        topo = Topology.coerce(topology)
        tables = CostTables(model, topo, codec=self.codec, memory_rule=self.memory_rule)
        diagnose_infeasible(tables)
        t0 = time.perf_counter()
        obj = objective_for(objective, weights, tables, self)
        stages, status, gap, value = self._solve(tables, obj)
        if stages is None:
            raise InfeasibleError(explain_infeasible(tables))
        stages = fewer_cuts(tables, obj, stages)
        est = evaluate(tables, stages)
        base = evaluate(tables, [0] * tables.L)
        base_ok = fits(tables, [0] * tables.L)
        part = Partition(profile=model, topology=topo, objective=obj, stages=tuple(stages), estimate=est,
                         objective_value=obj.value(est), status=status, gap=gap, solver=self.solver,
                         solve_seconds=time.perf_counter() - t0, baseline=base,
                         baseline_objective_value=obj.value(base) if base_ok else None,
                         codec=self.codec, memory_rule=self.memory_rule)
        log.info("rotafx: %s for %s: %s in %.2f s\n%s", model.name, obj.name, status, part.solve_seconds, part.table())
        return part

    def _solve(self, tables: CostTables, obj: Objective) -> tuple[list[int] | None, str, float, float]:
        if self.solver == "greedy":
            st = solve_greedy(tables)
            return st, "heuristic", math.nan, (obj.value(evaluate(tables, st)) if st else math.inf)
        if self.solver == "dp":
            st, v = solve_dp(tables, obj)
            return st, "optimal", 0.0, v
        # milp. Where the DP is exact its plan is the cutoff, and the answer if HiGHS proves nothing
        # better (its presolve can call a badly scaled model with a cutoff infeasible); otherwise
        # greedy's plan is only a fallback for a time limit, never taken as proof.
        exact = dp_applies(tables, obj) is None
        seed = solve_dp(tables, obj)[0] if exact else solve_greedy(tables)
        seed_value = obj.value(evaluate(tables, seed)) if seed is not None else math.inf
        cutoff = seed_value if exact and seed is not None else None
        t0 = time.perf_counter()

        def run(**kw: Any) -> tuple[MilpResult, list[int] | None, float]:
            """Solve (within what is left of the time limit); the plan only if it fits, and its value."""
            left = max(1.0, self.time_limit - (time.perf_counter() - t0))
            res = solve_milp(tables, obj, time_limit=left, verbose=self.verbose, **kw)
            stages = res.stages if res.stages is not None and fits(tables, res.stages) else None  # never one that does not fit
            return res, stages, obj.value(evaluate(tables, stages)) if stages is not None else math.inf

        res, stages, value = run(cutoff=cutoff)
        if res.stages is not None and stages is None:
            # over a capacity by less than HiGHS's feasibility tolerance: solve again with that much room kept free
            res, stages, value = run(cutoff=cutoff, capacity_margin=1e-6)
        if res.status in ("optimal", "infeasible") and not exact and value > seed_value * (1 + 1e-9) + 1e-12:
            # a "proven" optimum worse than a plan we hold, or "infeasible" while we hold a plan that fits: the
            # solver is wrong (HiGHS's MIP presolve and tolerances have had such bugs, see pyproject.toml and
            # milp.py); solve again without presolve, and never call the worse plan optimal
            log.warning("rotafx: HiGHS answered %s (%.6g), but greedy's plan is worth %.6g; solving again with "
                        "presolve off", res.status, value, seed_value)
            res, stages, value = run(presolve=False)
            if value > seed_value * (1 + 1e-9) + 1e-12:
                return seed, "heuristic", math.nan, seed_value
        if seed is not None and (stages is None or value > seed_value * (1 + 1e-9) + 1e-12):
            if exact:  # the DP's plan is optimal by construction
                return seed, "optimal", 0.0, seed_value
            # a time limit, or a solver error: the plan we hold, not proven
            return seed, ("time_limit" if res.status.startswith("time_limit") else "heuristic"), math.nan, seed_value
        if stages is None:
            return None, res.status, math.nan, math.inf
        return stages, res.status, res.gap, value


def fewer_cuts(tables: CostTables, obj: Objective, stages: list[int]) -> list[int]:
    """Among equally good plans prefer fewer cuts: merge a stage into its neighbour while the
    plan still fits and its score (objective, then latency) gets no worse."""
    best = list(stages)
    score = obj.score(evaluate(tables, best))
    improved = True
    while improved:
        improved = False
        used = sorted(set(best))
        for a, b in zip(used, used[1:]):
            for src, dst in ((a, b), (b, a)):
                trial = [dst if s == src else s for s in best]
                if not fits(tables, trial):
                    continue
                sc = obj.score(evaluate(tables, trial))
                tol = 1e-9 * max(1.0, abs(score[0]))
                if sc[0] <= score[0] + tol and sc[1] <= score[1] + 1e-9 * max(1.0, abs(score[1])):
                    best, score, improved = trial, sc, True
                    break
            if improved:
                break
    return best


# what a term whose optimum is 0 is divided by in ``balance``: 1 ms, 1 ms, 1 MB, 1 J
NATURAL_UNITS = {"latency": 1.0, "period": 1.0, "bandwidth": 1e6, "energy": 1.0}


def objective_for(name: str, weights: Mapping[str, float] | None, tables: CostTables,
                  opt: PartitionOptimizer) -> Objective:
    """Build the objective; ``balance`` first solves each weighted term alone to normalise it."""
    obj = objective(name, weights)
    if obj.name != "balance":
        return obj
    norms = {}
    base = terms(evaluate(tables, [0] * tables.L))
    single = {v: k for k, v in TERMS.items()}
    sub = PartitionOptimizer(solver=opt.solver if opt.solver != "greedy" else "milp", time_limit=opt.time_limit,
                             codec=opt.codec, memory_rule=opt.memory_rule)
    for term, w in obj.weights.items():
        if not w:
            continue
        alone = objective(single[term])
        # the exact DP gives each term's optimum in milliseconds where it applies; else the MILP
        st = solve_dp(tables, alone)[0] if dp_applies(tables, alone) is None else sub._solve(tables, alone)[0]
        best = terms(evaluate(tables, st))[term] if st is not None else base[term]
        # a term whose optimum is 0 (no bytes sent) is normalised by one natural unit of it
        norms[term] = best if best > 0 else NATURAL_UNITS[term]
    return Objective("balance", obj.weights, norms)


def diagnose_infeasible(tables: CostTables) -> None:
    """Raise :class:`InfeasibleError` for the plain reasons: one layer or all weights too large."""
    caps = tables.capacity
    largest_dev = max(caps, key=lambda d: caps[d])
    largest = caps[largest_dev]
    prof = tables.profile
    mem = range_memory(tables)
    for l in range(tables.L):
        need = mem[l, l + 1]
        if need > largest:
            layer = prof.layers[l]
            raise InfeasibleError(
                f"layer {l} ({layer.name}) needs {fmt_bytes(need)} alone (weights {fmt_bytes(layer.weight_bytes)}, "
                f"peak activations and workspace {fmt_bytes(layer.peak_bytes)}) but the largest node, {largest_dev}, "
                f"holds {fmt_bytes(largest)} ({tables.topology.capacity}); it is {fmt_bytes((need - largest))} too large. "
                f"Give nodes more memory, profile with a smaller dtype (dtype=torch.float16) or a smaller batch, "
                f"or split the layer into smaller modules")
    total_w = tables.total_weight_bytes
    total_cap = sum(caps.values())
    if total_w > total_cap:
        raise InfeasibleError(
            f"the model's weights need {fmt_bytes(total_w)} but all nodes together hold {fmt_bytes(total_cap)} "
            f"({', '.join(f'{d} {fmt_bytes(c)}' for d, c in caps.items())}); short by {fmt_bytes((total_w - total_cap))}")


def explain_infeasible(tables: CostTables) -> str:
    """Where the paper's greedy fill runs out, as the tightest reason we can name."""
    prof = tables.profile
    stages: list[int] = []
    s = 0
    for l in range(tables.L):
        while s < tables.K and not fits(tables, stages + [s]):
            s += 1
        if s >= tables.K:
            placed = tables.device_memory(stages)
            fill = ", ".join(f"{d} {fmt_bytes(placed[d])}/{fmt_bytes(tables.capacity[d])}" for d in placed)
            return (f"no contiguous placement fits: filling the chain {' -> '.join(tables.topology.chain)} in order, "
                    f"layer {l} ({prof.layers[l].name}) fits on no node left ({fill}). Add memory or nodes, "
                    f"or use a smaller dtype or batch")
        stages.append(s)
    return "no placement satisfies the memory constraints (the solver proved it infeasible)"


