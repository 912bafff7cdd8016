"""The mixed-integer program over cut positions, in cvxpy, solved by HiGHS.

Variables: ``y[l, b] = 1`` when layer ``l`` runs in a stage ``<= b`` (b = 0..K-2).
Contiguity holds by construction (``y`` non-increasing in ``l``, non-decreasing in ``b``);
``x[l, s] = y[l, s] - y[l, s-1]`` is the stage of each layer and
``z[p, b] = y[p-1, b] - y[p, b]`` the one-hot cut position of boundary ``b``, so every
cost (compute per layer and stage, bytes per cut position and link) is linear.
A bypass (skip an empty run of stages) is one binary ``u``: its hops are switched on
or off with big-M bounds; a stage whose call has a fixed cost has a binary ``v`` of the same kind (1 when
it runs any layer), which pays that cost once. Memory: for each device and each of its layers, its stages'
weights plus that layer's live-activation peak fit its capacity; a weight several layers read
(a tied embedding) is counted once per device, through a variable bounded below by each of
its readers' placement on that device.

The model's size is linear in layers x stages (:func:`model_size` counts it before anything is
built), and :func:`solve_milp` keeps to a wall-clock limit: building and compiling the model count
against it, a model estimated not to fit it is not built, and HiGHS gets only what is left.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..costmodel import CostTables
from ..objective import Objective
from .deadline import Deadline
from .feasibility import fits

__all__ = ["solve_milp", "MilpResult", "model_size", "build_seconds"]


@dataclass(frozen=True)
class MilpResult:
    """What HiGHS answered: the stage of every layer (``None`` without a plan), the status, the objective value,
    the dual bound, the relative gap and the seconds it took.

    ``status``: ``"optimal"``; ``"time_limit"`` (a plan, not proven optimal);
    ``"time_limit_no_solution"`` (the limit came before any plan); ``"time_limit_not_built"`` (the model
    could not have been built and solved within the limit, so it was not built); ``"infeasible"``;
    ``"error: ..."`` (the solver's own message).
    """

    stages: list[int] | None
    status: str
    value: float
    bound: float
    gap: float
    seconds: float


def _build(tables: CostTables, capacity_margin: float = 0.0):  # type: ignore[no-untyped-def]
    """The variables and constraints (``K >= 2``): the columns ``Y[b]``, the stage columns ``XC[s]``, the cut
    columns ``ZC[b]``, the bypass switches ``U`` and the constraints.

    Each stage and cut column is built from one boundary's own variable: a column sliced out of a
    stacked matrix carries the whole stack's linear map through cvxpy, which made the model quadratic
    in the stages, and each layer's memory row names the device's weights through one variable (written
    out, L rows of L weights made it quadratic in the layers: 1,000 layers on 16 stages took 25 s and
    3.7 GB to compile, 0.2 s and 0.5 GB now)."""
    import cvxpy as cp

    L, K = tables.L, tables.K
    topo = tables.topology
    # one variable per chain boundary: Y[b][l] = 1 when layer l runs in a stage <= b
    Y = [cp.Variable(L, boolean=True) for _ in range(K - 1)]
    cons = []
    for b, y in enumerate(Y):
        if L > 1:
            cons.append(y[1:] <= y[:-1])
        if b + 1 < K - 1:
            cons.append(y <= Y[b + 1])
    XC = [Y[0], *(Y[s] - Y[s - 1] for s in range(1, K - 1)), 1 - Y[-1]]
    # empty slices confuse cvxpy's stacking, so the middle piece is added only when present
    ZC = [cp.hstack([1 - y[:1], *([y[:-1] - y[1:]] if L > 1 else []), y[-1:]]) for y in Y]
    # memory, each row in units of the device's capacity (coefficients of order 1, which a tight MIP
    # tolerance can be held to); ``room`` keeps a fraction of it free
    room = 1.0 - capacity_margin
    for dev, ss in tables.device_stages.items():
        on = _total([XC[s] for s in ss])
        cap = tables.capacity[dev]
        if cap <= 0:  # no memory (or no cache) at all: it runs nothing
            cons.append(on == 0)
        elif tables.memory_rule == "sum":
            cons.append((tables.sum_bytes / cap) @ on <= room)
        else:
            held = []
            for b, readers in tables.shared:  # held[j] >= 1 when the device runs any reader of shared weight j
                h = cp.Variable(nonneg=True)
                cons.append(h >= on[list(readers)])
                held.append((b / cap) * h)
            w = cp.Variable()  # the weights the device holds, each once
            cons.append(w == (tables.own_weight_bytes / cap) @ on + _total(held))
            cons.append(w + cp.multiply(tables.peak_bytes / cap, on) <= room)
    # bypass switches
    U = {}
    for i, (f, g) in enumerate(topo.bypasses):
        u = cp.Variable(boolean=True)
        used = cp.sum(Y[g] - Y[f - 1])  # the layers in stages f..g (0 < f <= g < K - 1)
        cons += [used <= L * u, used >= u]
        U[i] = u
    return Y, XC, ZC, U, cons


def _total(terms: list[Any]) -> Any:
    """The sum of cvxpy expressions (or numbers) as one node: Python's ``sum`` nests them, and cvxpy flattens each
    nested sum again, quadratic in the number of terms (one per stage or hop)."""
    import cvxpy as cp

    if not terms:
        return 0.0
    if len(terms) == 1:
        return terms[0]
    if all(getattr(t, "ndim", 0) == 0 for t in terms):
        return cp.sum(cp.hstack(terms))
    return functools.reduce(lambda a, b: a + b, terms)  # vectors (a device's few stages)


def _route_hops(tables: CostTables, ZC, U, cons, term: str) -> list:  # type: ignore[no-untyped-def]
    """What each possible hop of the route adds to ``term`` (the cost model's :meth:`~rotafx.costmodel.CostTables.hop_terms`
    at the cut it carries), each a pair ``(variable part, constant part)``; a hop that a bypass
    switches off is bounded with big-M and its constant multiplied by the switch."""
    import cvxpy as cp

    topo = tables.topology
    in_bypass = {b: i for i, (f, g) in enumerate(topo.bypasses) for b in range(f - 1, g + 1)}
    out = []
    for b, link in enumerate(tables.links):
        coef, const = tables.hop_terms(link)[term]
        if b in in_bypass:
            u = U[in_bypass[b]]
            h = cp.Variable(nonneg=True)
            cons.append(h >= coef @ ZC[b] - float(coef.max(initial=0.0)) * (1 - u))
            out.append((h, const * u))
        else:
            out.append((coef @ ZC[b], const))
    for i, ((f, g), link) in enumerate(zip(topo.bypasses, tables.bypass_links)):
        coef, const = tables.hop_terms(link)[term]
        h = cp.Variable(nonneg=True)
        cons.append(h >= coef @ ZC[f - 1] - float(coef.max(initial=0.0)) * U[i])
        out.append((h, const * (1 - U[i])))
    return out


def _stage_used(tables: CostTables, XC, cons) -> dict[int, Any]:  # type: ignore[no-untyped-def]
    """For each stage whose call has a fixed cost (:attr:`~rotafx.costmodel.CostTables.call_terms`), one binary
    ``v``, 1 when the stage runs any layer (bounded as a bypass's ``u``): the cost is paid once per used stage.
    Only its lower bound is needed: a minimum takes ``v = 0`` on an empty stage, as the cost is positive."""
    import cvxpy as cp

    V = {}
    for s, x in enumerate(XC):
        if any(c[s] for c in tables.call_terms.values()):
            v = cp.Variable(boolean=True)
            cons.append(cp.sum(x) <= tables.L * v)  # x: the layers on stage s
            V[s] = v
    return V


def _terms(tables: CostTables, XC, ZC, U, cons, needed: set[str]):  # type: ignore[no-untyped-def]
    """The cvxpy expression of each needed objective term: the cost model's stage terms over ``XC`` and the call
    of each used stage, plus the route's hops plus what every plan adds (the generated token's trip back)."""
    import cvxpy as cp

    out = {}
    V = _stage_used(tables, XC, cons)
    additive = needed - {"period", "token_period"}
    if "token_period" in needed:
        additive.add("tpot")
    for term in additive:
        stage = [tables.stage_terms[term][:, s] @ x for s, x in enumerate(XC)]
        stage += [tables.call_terms[term][s] * v for s, v in V.items()]
        hops = [piece for h, c in _route_hops(tables, ZC, U, cons, term) for piece in (h, c)]
        out[term] = _total(stage + hops + [tables.constants.get(term, 0.0)])
    for term, busy in (("period", "latency"), ("token_period", "token_period")):
        if term not in needed:
            continue
        # the slowest device or link: a bound above every one of them
        T = cp.Variable(nonneg=True)
        for dev, ss in tables.device_stages.items():
            cons.append(T >= _total([tables.stage_terms[busy][:, s] @ XC[s] for s in ss]
                                    + [tables.call_terms[busy][s] * V[s] for s in ss if s in V]))
        cons.extend(T >= h + c for h, c in _route_hops(tables, ZC, U, cons, term))  # c: a message's fixed cost
        if term == "token_period":  # several sequences in flight: no faster than one token per TPOT each
            cons += [T >= tables.return_period_ms, T >= out["tpot"] / tables.generation.sequences]
        out[term] = T
    return out


SECONDS_PER_NONZERO = 2e-6
SECONDS_PER_CONSTRAINT = 2.5e-3
BUILD_OVERHEAD_S = 0.05  # a model of any size: cvxpy's fixed costs, HiGHS's setup
IMPORT_S = 2.0  # importing cvxpy the first time in a process (about 1 s there)
# HiGHS looks at its clock between presolve passes and search steps, so it returns after its limit by up to
# one of them: 0.03-0.25 s on 1,000 layers x 16 stages (150,000 nonzeros) alone on the 2-core machine, up to
# 1 s with another job on it (one presolve pass); it gets its limit less this much
HIGHS_OVERRUN_S = 0.1
HIGHS_OVERRUN_PER_NONZERO = 3e-6
_slowdown = [1.0]  # the last large compilation's time over its estimate, when over 1


def model_size(tables: CostTables, obj: Objective) -> tuple[int, int]:
    """``(nonzeros, constraints)`` of the MILP for ``obj``, counted from the tables without building it: what the
    time to build and compile the model grows with (nonzeros about ``2·L·K`` per objective term and memory row
    set, constraints about 6 per stage). The count follows :func:`_build` and :func:`_terms`; a test holds it
    to cvxpy's own count."""
    L, K = tables.L, tables.K
    if K < 2:
        return 0, 0
    topo = tables.topology
    nb = len(topo.bypasses)
    nnz = (K - 1) * 2 * max(L - 1, 0) + max(K - 2, 0) * 2 * L  # y non-increasing in l, non-decreasing in b
    rows = (K - 1 if L > 1 else 0) + max(K - 2, 0)

    def on_nnz(ss: list[int]) -> int:
        """Nonzeros per layer of a device's ``on`` (its stages' columns summed; adjacent stages cancel)."""
        coef: dict[int, int] = {}
        for s in ss:
            if s <= K - 2:
                coef[s] = coef.get(s, 0) + 1
            if s >= 1:
                coef[s - 1] = coef.get(s - 1, 0) - 1
        return max(1, sum(1 for c in coef.values() if c))

    n_shared = len(tables.shared)
    shared_rows = sum(len(r) for _, r in tables.shared)
    for ss in tables.device_stages.values():
        k = on_nnz(ss)
        if tables.memory_rule == "sum" or tables.capacity[topo.chain[ss[0]]] <= 0:
            nnz, rows = nnz + L * k, rows + 1
        else:
            nnz += shared_rows * (1 + k) + (L * k + 1 + n_shared) + L * (1 + k)
            rows += n_shared + 2
    nnz, rows = nnz + nb * 2 * (2 * L + 1), rows + 2 * nb
    needed = obj.needed | ({"latency"} if obj.name == "minimize_bandwidth" else set())
    big_m = sum(g - f + 2 for f, g in topo.bypasses) + nb  # hops a bypass switches, each a row per term
    additive = len(needed - {"period", "token_period"} | ({"tpot"} if "token_period" in needed else set()))
    nnz, rows = nnz + additive * big_m * (L + 3), rows + additive * big_m
    nnz += L * (K - 1)  # the objective itself (all its terms on the same variables)
    called = [s for s in range(K) if any(c[s] for c in tables.call_terms.values())]  # _stage_used's binaries
    nnz += sum(L * on_nnz([s]) + 1 + 2 for s in called)  # a row each; in the objective and the cutoff
    rows += len(called)
    for _ in needed & {"period", "token_period"}:
        nnz += sum(L * on_nnz(ss) + 1 for ss in tables.device_stages.values()) + (K - 1 + nb) * (L + 3)
        nnz += len(called)
        rows += len(tables.device_stages) + (K - 1 + nb) + big_m
    return nnz + L * (K - 1), rows + 1  # and the cutoff row: the objective again


def build_seconds(tables: CostTables, obj: Objective) -> float:
    """A cautious estimate of the seconds from nothing to HiGHS's start: import cvxpy (once), build, compile."""
    first = 0.0 if "cvxpy" in sys.modules else IMPORT_S
    return first + _compile_estimate(*model_size(tables, obj)) * _slowdown[0]


def _compile_estimate(nnz: int, rows: int) -> float:
    return BUILD_OVERHEAD_S + SECONDS_PER_NONZERO * nnz + SECONDS_PER_CONSTRAINT * rows


def solve_milp(tables: CostTables, obj: Objective, *, time_limit: float = 60.0, verbose: bool = False,
               cutoff: float | None = None, presolve: bool = True, capacity_margin: float = 0.0) -> MilpResult:
    """Solve ``obj`` exactly, or as well as ``time_limit`` seconds of wall time allow.

    Args:
        tables: the cost tables of a profile on a topology.
        obj: the objective.
        time_limit: wall seconds for the whole call: building the model, cvxpy's compilation and HiGHS.
            A model that :func:`build_seconds` says cannot be built within it is not built
            (status ``"time_limit_not_built"``); HiGHS gets only what is left after compilation.
        verbose: HiGHS's log.
        cutoff: a known feasible value (an upper bound on the optimum).
        presolve: HiGHS's presolve (off to check a suspicious answer).
        capacity_margin: the fraction of every capacity kept free.

    Returns:
        A :class:`MilpResult`.

    ``minimize_bandwidth`` is solved in two phases: the fewest bytes, then the lowest
    latency among plans with those bytes (when time is left for it; else ``"time_limit"``).
    """
    deadline = Deadline(time_limit)
    if tables.K == 1:  # a single stage: nothing to decide but whether it fits
        if fits(tables, [0] * tables.L):
            return MilpResult([0] * tables.L, "optimal", float("nan"), float("nan"), 0.0, deadline.spent())
        return MilpResult(None, "infeasible", float("inf"), float("inf"), float("nan"), deadline.spent())
    if build_seconds(tables, obj) >= deadline.left():
        return MilpResult(None, "time_limit_not_built", float("nan"), float("nan"), float("nan"), deadline.spent())
    import cvxpy as cp  # imported here, not at start-up: it costs seconds and only the MILP needs it

    Y, XC, ZC, U, cons = _build(tables, capacity_margin)
    needed = obj.needed | ({"latency"} if obj.name == "minimize_bandwidth" else set())
    T = _terms(tables, XC, ZC, U, cons, needed)
    expr = obj.combine(T)
    extra = [expr <= cutoff * (1 + 1e-7) + 1e-9] if cutoff is not None and np.isfinite(cutoff) else []
    status, value, bound, gap = _solve(cp.Problem(cp.Minimize(expr), cons + extra), deadline, verbose, presolve)
    if obj.name == "minimize_bandwidth" and status in ("optimal", "time_limit") and _values(Y) is not None:
        first = _values(Y)
        status2 = _solve(cp.Problem(cp.Minimize(T["latency"]), cons + [expr <= value + 0.5]), deadline, verbose,
                         presolve)[0]
        if status2 not in ("optimal", "time_limit") or _values(Y) is None:
            for y, v in zip(Y, first.T):  # the first phase's plan: the fewest bytes, ties not broken
                y.value = v
            status = "time_limit" if status2.startswith("time_limit") else status
        else:
            status = "optimal" if (status == "optimal" and status2 == "optimal") else "time_limit"
    stages = None
    ys = _values(Y)
    if status in ("optimal", "time_limit") and ys is not None:
        y = ys.astype(int)
        stages = [int(tables.K - 1 - y[l].sum()) for l in range(tables.L)]
    return MilpResult(stages, status, value, bound, gap, deadline.spent())


def _values(Y: list[Any]) -> np.ndarray | None:
    """``y[l, b]`` rounded, or None before a solution."""
    if any(y.value is None for y in Y):
        return None
    return np.round(np.column_stack([y.value for y in Y]))


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


def _solve(prob: Any, deadline: Deadline, verbose: bool, presolve: bool = True) -> tuple[str, float, float, float]:
    """Compile ``prob`` for HiGHS and solve it in what is left before ``deadline``: ``(status, value, bound, gap)``."""
    import cvxpy as cp

    if not verbose:
        _silence_highs_banner()
    # HiGHS's defaults are made for objectives of order 1 and more: with its MIP feasibility tolerance (1e-6)
    # objectives of order 1e-2 (joules of a small model) came back "optimal" at three times the optimum, and
    # its absolute gap (1e-6) accepts any plan within 1e-6 J of the bound (tests/test_solve.py). Tighter
    # than 1e-7 is worse again: at 1e-8 and 1e-9 a 50-layer, 8-device chain came back suboptimal or
    # "infeasible" (benchmarks/solver.py's instance), so 1e-7, and the optimizer checks every answer
    opts: dict[str, Any] = {"mip_rel_gap": 1e-9, "mip_abs_gap": 1e-12, "mip_feasibility_tolerance": 1e-7,
                            **({} if presolve else {"presolve": "off"})}
    try:
        # compiled first, then solved in the time left: cvxpy's compilation counts against the limit
        before = deadline.left()
        data, chain, inverse = prob.get_problem_data(cp.HIGHS, verbose=verbose, solver_opts=opts)
        nnz = data["A"].nnz + int(np.count_nonzero(data["c"]))
        predicted = _compile_estimate(nnz, len(prob.constraints))
        if predicted > 0.2:  # large enough that the fixed costs do not dominate: how fast this machine compiles
            _slowdown[0] = max(1.0, (before - deadline.left()) / predicted)
        left = deadline.left()
        left -= min(0.3 * left, HIGHS_OVERRUN_S + HIGHS_OVERRUN_PER_NONZERO * nnz)
        if left <= 0:
            return "time_limit_no_solution", float("nan"), float("nan"), float("nan")
        opts["time_limit"] = float(left)
        prob.unpack_results(chain.solve_via_data(prob, data, False, verbose, opts), chain, inverse)
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
