"""The mixed-integer program over cut positions, in cvxpy, solved by HiGHS.

Variables: ``y[l, b] = 1`` when layer ``l`` runs in a stage ``<= b`` (b = 0..K-2).
Contiguity holds by construction (``y`` non-increasing in ``l``, non-decreasing in ``b``);
``x[l, s] = y[l, s] - y[l, s-1]`` is the stage of each layer and
``z[p, b] = y[p-1, b] - y[p, b]`` the one-hot cut position of boundary ``b``, so every
cost (compute per layer and stage, bytes per cut position and link) is linear.
A bypass (skip an empty run of stages) is one binary ``u``: its hops are switched on
or off with big-M bounds. Memory: for each device and each of its layers, its stages'
weights plus that layer's live-activation peak fit its capacity; a weight several layers read
(a tied embedding) is counted once per device, through a variable bounded below by each of
its readers' placement on that device.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..costmodel import CostTables
from ..objective import Objective
from .feasibility import fits

__all__ = ["solve_milp", "MilpResult"]


@dataclass(frozen=True)
class MilpResult:
    """What HiGHS answered: the stage of every layer (``None`` without a plan), the status, the objective value,
    the dual bound, the relative gap and the seconds it took.

    ``status``: ``"optimal"``; ``"time_limit"`` (a plan, not proven optimal);
    ``"time_limit_no_solution"`` (the limit came before any plan); ``"infeasible"``;
    ``"error: ..."`` (the solver's own message).
    """

    stages: list[int] | None
    status: str
    value: float
    bound: float
    gap: float
    seconds: float


def _build(tables: CostTables, capacity_margin: float = 0.0):  # type: ignore[no-untyped-def]
    import cvxpy as cp

    L, K = tables.L, tables.K
    topo = tables.topology
    Y = cp.Variable((L, K - 1), boolean=True) if K > 1 else None
    cons = []
    if Y is not None:
        if L > 1:
            cons.append(Y[1:, :] <= Y[:-1, :])
        if K > 2:
            cons.append(Y[:, :-1] <= Y[:, 1:])
        # empty slices confuse cvxpy's stacking, so the middle pieces are added only when present
        X = cp.hstack([Y[:, :1], *([Y[:, 1:] - Y[:, :-1]] if K > 2 else []), 1 - Y[:, -1:]])
        Z = cp.vstack([1 - Y[:1, :], *([Y[:-1, :] - Y[1:, :]] if L > 1 else []), Y[-1:, :]])
    else:
        X = np.ones((L, 1))
        Z = None
    # memory, each row in units of the device's capacity (coefficients of order 1, which a tight MIP
    # tolerance can be held to); ``room`` keeps a fraction of it free
    room = 1.0 - capacity_margin
    for dev, ss in tables.device_stages.items():
        on = sum(X[:, s] for s in ss)
        cap = tables.capacity[dev]
        if cap <= 0:  # no memory (or no cache) at all: it runs nothing
            cons.append(on == 0)
        elif tables.memory_rule == "sum":
            cons.append((tables.sum_bytes / cap) @ on <= room)
        else:
            held = 0
            for b, readers in tables.shared:  # held[j] >= 1 when the device runs any reader of shared weight j
                h = cp.Variable(nonneg=True)
                cons.append(h >= on[list(readers)])
                held = held + (b / cap) * h
            cons.append((tables.own_weight_bytes / cap) @ on + held + cp.multiply(tables.peak_bytes / cap, on) <= room)
    # bypass switches
    U = {}
    for i, (f, g) in enumerate(topo.bypasses):
        u = cp.Variable(boolean=True)
        used = cp.sum(X[:, f:g + 1])
        cons += [used <= L * u, used >= u]
        U[i] = u
    return Y, X, Z, U, cons


def _route_hops(tables: CostTables, Z, U, cons, term: str) -> list:  # type: ignore[no-untyped-def]
    """What each possible hop of the route adds to ``term`` (the cost model's :func:`~rotafx.costmodel.hop_coefficients`
    times the bytes of the cut it carries), each a pair ``(variable part, constant part)``; a hop that a bypass
    switches off is bounded with big-M and its constant multiplied by the switch."""
    import cvxpy as cp

    topo = tables.topology
    by = tables.boundary_bytes
    in_bypass = {b: i for i, (f, g) in enumerate(topo.bypasses) for b in range(f - 1, g + 1)}
    out = []
    for b, link in enumerate(tables.links):
        per_byte, const = tables.hop_coefficients(link)[term]
        coef = per_byte * by
        if b in in_bypass:
            u = U[in_bypass[b]]
            h = cp.Variable(nonneg=True)
            cons.append(h >= coef @ Z[:, b] - float(coef.max(initial=0.0)) * (1 - u))
            out.append((h, const * u))
        else:
            out.append((coef @ Z[:, b], const))
    for i, ((f, g), link) in enumerate(zip(topo.bypasses, tables.bypass_links)):
        per_byte, const = tables.hop_coefficients(link)[term]
        coef = per_byte * by
        h = cp.Variable(nonneg=True)
        cons.append(h >= coef @ Z[:, f - 1] - float(coef.max(initial=0.0)) * U[i])
        out.append((h, const * (1 - U[i])))
    return out


def _terms(tables: CostTables, X, Z, U, cons, needed: set[str]):  # type: ignore[no-untyped-def]
    """The cvxpy expression of each needed objective term: the cost model's stage terms over ``X`` plus the route's hops."""
    import cvxpy as cp

    out = {}
    for term in needed - {"period"}:
        stage = cp.sum(cp.multiply(tables.stage_terms[term], X))
        hops = sum(h + c for h, c in _route_hops(tables, Z, U, cons, term)) if Z is not None else 0
        out[term] = stage + hops
    if "period" in needed:  # the slowest device or link: a bound above every one of them
        T = cp.Variable(nonneg=True)
        for dev, ss in tables.device_stages.items():
            cons.append(T >= sum(tables.stage_terms["latency"][:, s] @ X[:, s] for s in ss))
        if Z is not None:
            cons.extend(T >= h for h, _ in _route_hops(tables, Z, U, cons, "period"))
        out["period"] = T
    return out


def solve_milp(tables: CostTables, obj: Objective, *, time_limit: float = 60.0, verbose: bool = False,
               cutoff: float | None = None, presolve: bool = True, capacity_margin: float = 0.0) -> MilpResult:
    """Solve ``obj`` exactly (or to the time limit). ``cutoff``: a known feasible value (upper bound).

    ``minimize_bandwidth`` is solved in two phases: the fewest bytes, then the lowest
    latency among plans with those bytes.
    """
    import cvxpy as cp  # imported here, not at start-up: it costs seconds and only the MILP needs it

    t0 = time.perf_counter()
    Y, X, Z, U, cons = _build(tables, capacity_margin)
    needed = obj.needed | ({"latency"} if obj.name == "minimize_bandwidth" else set())
    T = _terms(tables, X, Z, U, cons, needed)
    expr = obj.combine(T)
    if Y is None:  # a single stage: nothing to decide but whether it fits
        if fits(tables, [0] * tables.L):
            return MilpResult([0] * tables.L, "optimal", float("nan"), float("nan"), 0.0, time.perf_counter() - t0)
        return MilpResult(None, "infeasible", float("inf"), float("inf"), float("nan"), time.perf_counter() - t0)
    extra = [expr <= cutoff * (1 + 1e-7) + 1e-9] if cutoff is not None and np.isfinite(cutoff) else []
    res = _solve(cp.Problem(cp.Minimize(expr), cons + extra), time_limit, verbose, presolve)
    status, value, bound, gap = res
    if obj.name == "minimize_bandwidth" and status in ("optimal", "time_limit") and Y.value is not None:
        first = np.round(Y.value)
        left = max(1.0, time_limit - (time.perf_counter() - t0))
        res2 = _solve(cp.Problem(cp.Minimize(T["latency"]), cons + [expr <= value + 0.5]), left, verbose, presolve)
        if res2[0] not in ("optimal", "time_limit") or Y.value is None:
            Y.value = first
        else:
            status = "optimal" if (status == "optimal" and res2[0] == "optimal") else "time_limit"
    stages = None
    if status in ("optimal", "time_limit") and Y.value is not None:
        y = np.round(Y.value).astype(int)
        stages = [int(tables.K - 1 - y[l].sum()) for l in range(tables.L)]
    return MilpResult(stages, status, value, bound, gap, time.perf_counter() - t0)


@functools.cache
def _silence_highs_banner() -> None:
    """HiGHS writes a copyright banner to the C stdout the first time a solver object is made in a
    process, whatever the options: make that first one here with the process's stdout on /dev/null."""
    import highspy

    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no file descriptor 1 to point elsewhere: let it print
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve(prob: Any, time_limit: float, verbose: bool, presolve: bool = True) -> tuple[str, float, float, float]:
    import cvxpy as cp

    if not verbose:
        _silence_highs_banner()
    try:
        # HiGHS's defaults are made for objectives of order 1 and more: with its MIP feasibility tolerance (1e-6)
        # objectives of order 1e-2 (joules of a small model) came back "optimal" at three times the optimum, and
        # its absolute gap (1e-6) accepts any plan within 1e-6 J of the bound (tests/test_solve.py). Tighter
        # than 1e-7 is worse again: at 1e-8 and 1e-9 a 50-layer, 8-device chain came back suboptimal or
        # "infeasible" (benchmarks/solver.py's instance), so 1e-7, and the optimizer checks every answer
        prob.solve(solver=cp.HIGHS, time_limit=float(time_limit), verbose=verbose, mip_rel_gap=1e-9,
                   mip_abs_gap=1e-12, mip_feasibility_tolerance=1e-7, **({} if presolve else {"presolve": "off"}))
    except cp.error.SolverError as e:
        return "error: " + str(e).splitlines()[0], float("nan"), float("nan"), float("nan")
    info = prob.solver_stats.extra_stats if prob.solver_stats is not None else None
    gap = float(getattr(info, "mip_gap", 0.0) or 0.0) if info is not None else 0.0
    bound = float(getattr(info, "mip_dual_bound", float("nan"))) if info is not None else float("nan")
    if prob.status == cp.OPTIMAL:
        return "optimal", float(prob.value), bound, max(0.0, gap if gap < 1e20 else 0.0)
    # HiGHS may stop on its limit before it has any feasible point (primal_solution_status 2 = feasible)
    has_incumbent = info is not None and int(getattr(info, "primal_solution_status", 0)) == 2
    if prob.status == cp.USER_LIMIT and has_incumbent and prob.value is not None and np.isfinite(prob.value):
        return "time_limit", float(prob.value), bound, gap
    if prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        return "infeasible", float("inf"), float("inf"), float("nan")
    if prob.status == cp.USER_LIMIT:
        return "time_limit_no_solution", float("nan"), bound, float("nan")
    return f"error: {prob.status}", float("nan"), float("nan"), float("nan")
