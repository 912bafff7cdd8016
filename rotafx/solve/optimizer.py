"""PartitionOptimizer: choose a solver, solve, check the answer against a plan held, and return a :class:`Partition`."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, NamedTuple

from ..costmodel import CostTables
from ..estimate import evaluate
from ..objective import GENERATION_TERMS, NATURAL_UNITS, OBJECTIVE_TERM, Objective, objective
from ..profile import ModelProfile
from ..topology import Topology
from .deadline import Deadline, check_time_limit
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

    ``solver``: ``"milp"`` (default; cvxpy + HiGHS, proven optimal or the best plan held
    when ``time_limit`` seconds of wall time, model building included, run out), ``"dp"`` (exact dynamic program on chains whose
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
        self.api_key = api_key  # accepted for the seed's samples; unused
        self.solver = solver
        self.time_limit = check_time_limit(time_limit)
        self.verbose = verbose
        self.codec = codec
        self.memory_rule = memory_rule

    def optimize(self, model: ModelProfile, topology: Topology | Mapping[str, Any] | str,
                 objective: str = "minimize_latency", *, weights: Mapping[str, float] | None = None) -> Partition:
        """Place ``model`` (a :class:`ModelProfile`) on ``topology`` for ``objective``.

        Objectives: ``minimize_latency`` (ms per request), ``maximize_throughput`` (the
        slowest device or link), ``minimize_bandwidth`` (bytes over ground-orbit links,
        ties broken by latency), ``minimize_energy`` (J), ``balance`` (``weights`` over
        latency, throughput, bandwidth and energy, each divided by its own optimum); and, for a
        profile made by :meth:`ModelProfile.for_generation`, ``minimize_ttft``, ``minimize_tpot``,
        ``maximize_tokens_per_s``, ``minimize_generation_latency`` and ``minimize_energy_per_token``
        (every memory check then holds each layer's KV cache at the longest context).

        ``time_limit`` bounds the whole call in wall time: the MILP is built only when it can be
        built and solved in what is left, HiGHS gets only the rest, and the plan held when the
        time runs out is returned: the DP's, ``status="optimal"``, where the DP is exact, else
        greedy's, ``status="time_limit"``; ``method`` says which algorithm gave the plan.

        Raises:
            InfeasibleError: nothing fits.
            ValueError: an unknown objective or a bad balance weight.
        """
        deadline = Deadline(self.time_limit)
        if not isinstance(model, ModelProfile):
            raise TypeError(f"model must be a ModelProfile (ModelProfile.from_pytorch(model)), got {type(model).__name__}")
        topo = Topology.coerce(topology)
        tables = CostTables(model, topo, codec=self.codec, memory_rule=self.memory_rule)
        diagnose_infeasible(tables)
        obj, proven = objective_for(objective, weights, tables, self, deadline)
        answer = self._solve(tables, obj, deadline)
        if answer.stages is None:
            raise InfeasibleError(explain_infeasible(tables))
        stages = fewer_cuts(tables, obj, answer.stages, deadline)
        status = answer.status if proven or answer.status != "optimal" else "time_limit"
        est = evaluate(tables, stages)
        base = evaluate(tables, [0] * tables.L)
        base_ok = fits(tables, [0] * tables.L)
        part = Partition(profile=model, topology=topo, objective=obj, stages=tuple(stages), estimate=est,
                         objective_value=obj.value(est), status=status,
                         gap=answer.gap if status == answer.status else math.nan,
                         solver=self.solver, solve_seconds=deadline.spent(), baseline=base,
                         baseline_objective_value=obj.value(base) if base_ok else None,
                         codec=self.codec, memory_rule=self.memory_rule, method=answer.method)
        log.info("rotafx: %s for %s: %s (%s) in %.2f s\n%s", model.name, obj.name, status, answer.method,
                 part.solve_seconds, part.table())
        return part

    def _solve(self, tables: CostTables, obj: Objective, deadline: Deadline) -> "_Answer":
        if self.solver == "greedy":
            st = solve_greedy(tables)
            return _Answer(st, "heuristic", math.nan, (obj.value(evaluate(tables, st)) if st else math.inf), "greedy")
        if self.solver == "dp":
            st, v = solve_dp(tables, obj)
            return _Answer(st, "optimal", 0.0, v, "dp")
        # milp. Where the DP is exact its plan is the cutoff, and the answer if HiGHS proves nothing
        # better (its presolve can call a badly scaled model with a cutoff infeasible); otherwise
        # greedy's plan is only a fallback for a time limit, never taken as proof.
        exact = dp_applies(tables, obj) is None
        seed = solve_dp(tables, obj)[0] if exact else solve_greedy(tables)
        held = "dp" if exact else "greedy"
        before = deadline.left()
        seed_value = obj.value(evaluate(tables, seed)) if seed is not None else math.inf
        # kept for what follows the solver: merging stages, the plan's estimate and the baseline (a few evaluations)
        reserve = 8 * (before - deadline.left())
        cutoff = seed_value if exact and seed is not None else None

        def run(**kw: Any) -> tuple[MilpResult, list[int] | None, float]:
            """Solve in what is left of the time limit; the plan only if it fits, and its value."""
            left = deadline.left() - reserve
            if left <= 0:
                return MilpResult(None, "time_limit_not_built", math.nan, math.nan, math.nan, 0.0), None, math.inf
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
                status = "time_limit" if res.status.startswith("time_limit") else "heuristic"
                return _Answer(seed, status, math.nan, seed_value, held)
        if res.status == "time_limit_not_built":
            log.info("rotafx: the MILP (%d layers x %d stages) cannot be built and solved in the %.3g s left of "
                     "time_limit=%g; returning the %s plan", tables.L, tables.K, deadline.left(), self.time_limit, held)
        if seed is not None and (stages is None or value > seed_value * (1 + 1e-9) + 1e-12):
            if exact:  # the DP's plan is optimal by construction
                return _Answer(seed, "optimal", 0.0, seed_value, held)
            # a time limit, or a solver error: the plan we hold, not proven
            return _Answer(seed, ("time_limit" if res.status.startswith("time_limit") else "heuristic"), math.nan,
                           seed_value, held)
        if stages is None:
            return _Answer(None, res.status, math.nan, math.inf, "milp")
        return _Answer(stages, res.status, res.gap, value, "milp")


class _Answer(NamedTuple):
    """A solver's plan (stage of every layer, or None), its status, gap, value and the algorithm that gave it."""

    stages: list[int] | None
    status: str
    gap: float
    value: float
    method: str


def fewer_cuts(tables: CostTables, obj: Objective, stages: list[int], deadline: Deadline | None = None) -> list[int]:
    """Among equally good plans prefer fewer cuts: merge a stage into its neighbour while the
    plan still fits and its score (objective, then latency) gets no worse (until ``deadline``)."""
    best = list(stages)
    score = obj.score(evaluate(tables, best))
    improved = True
    while improved and (deadline is None or deadline.left() > 0):
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
                  opt: PartitionOptimizer, deadline: Deadline | None = None) -> tuple[Objective, bool]:
    """Build the objective, and whether it is exact: ``balance`` first solves each weighted term alone to
    normalise it, and a norm from a plan the time limit left unproven makes the objective itself approximate."""
    obj = objective(name, weights)
    wanted = sorted(obj.needed & set(GENERATION_TERMS))
    if wanted and tables.generation is None:
        raise ValueError(f"objective {name!r}" + (f" (weights {wanted})" if obj.name == "balance" else "")
                         + f" is about token generation, but {tables.profile.name!r} was profiled for one forward pass; "
                         f"profile it with ModelProfile.for_generation(model, prompt_len=..., new_tokens=...)")
    if obj.name != "balance":
        return obj, True
    deadline = deadline or Deadline(opt.time_limit)
    norms = {}
    proven = True
    base = evaluate(tables, [0] * tables.L).terms()
    single = {v: k for k, v in OBJECTIVE_TERM.items()}
    sub = PartitionOptimizer(solver=opt.solver if opt.solver != "greedy" else "milp", time_limit=opt.time_limit,
                             codec=opt.codec, memory_rule=opt.memory_rule)
    for term, w in obj.weights.items():
        if not w:
            continue
        alone = objective(single[term])
        # the exact DP gives each term's optimum in milliseconds where it applies; else the MILP, in the time left
        if dp_applies(tables, alone) is None:
            st = solve_dp(tables, alone)[0]
        else:
            answer = sub._solve(tables, alone, deadline)
            st, proven = answer.stages, proven and answer.status == "optimal"
        best = evaluate(tables, st).terms()[term] if st is not None else base[term]
        # a term whose optimum is 0 (no bytes sent) is normalised by one natural unit of it
        norms[term] = best if best > 0 else NATURAL_UNITS[term]
    return Objective("balance", obj.weights, norms), proven
