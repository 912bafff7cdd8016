"""PartitionOptimizer: choose a solver, solve, check the answer against a plan held, and return a :class:`Partition`."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

from ..costmodel import CostTables
from ..estimate import evaluate
from ..objective import NATURAL_UNITS, OBJECTIVE_TERM, Objective, objective
from ..profile import ModelProfile
from ..topology import Topology
from .dp import dp_applies, solve_dp
from .feasibility import InfeasibleError, diagnose_infeasible, fits
from .greedy import explain_infeasible, solve_greedy
from .milp import MilpResult, solve_milp
from .partition import Partition

__all__ = ["PartitionOptimizer", "SOLVERS", "fewer_cuts", "objective_for"]

log = logging.getLogger("rotafx")
SOLVERS = ("milp", "dp", "greedy")


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


def objective_for(name: str, weights: Mapping[str, float] | None, tables: CostTables,
                  opt: PartitionOptimizer) -> Objective:
    """Build the objective; ``balance`` first solves each weighted term alone to normalise it."""
    obj = objective(name, weights)
    if obj.name != "balance":
        return obj
    norms = {}
    base = evaluate(tables, [0] * tables.L).terms()
    single = {v: k for k, v in OBJECTIVE_TERM.items()}
    sub = PartitionOptimizer(solver=opt.solver if opt.solver != "greedy" else "milp", time_limit=opt.time_limit,
                             codec=opt.codec, memory_rule=opt.memory_rule)
    for term, w in obj.weights.items():
        if not w:
            continue
        alone = objective(single[term])
        # the exact DP gives each term's optimum in milliseconds where it applies; else the MILP
        st = solve_dp(tables, alone)[0] if dp_applies(tables, alone) is None else sub._solve(tables, alone)[0]
        best = evaluate(tables, st).terms()[term] if st is not None else base[term]
        # a term whose optimum is 0 (no bytes sent) is normalised by one natural unit of it
        norms[term] = best if best > 0 else NATURAL_UNITS[term]
    return Objective("balance", obj.weights, norms)
