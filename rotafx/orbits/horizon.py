"""Plans over a horizon: which layers each node holds, and the route of each interval through the nodes that hold them.

Weights are resident: uploading tens of GB to a satellite takes most of an hour, so the layers a
node holds are chosen once for the horizon (a layer may be held by a ground node and an orbital
node at once, within their memories). The topology changes between the intervals of a
:class:`~rotafx.orbits.Schedule` (links up and down, their figures, nodes without power); in each
interval a request takes a contiguous route through the chain, each layer on a node that holds
it, each stage's node up, and every hop it crosses up. A hop that is down, or a node that may not
compute, must sit inside a run of stages the topology can *bypass* (the ground-to-ground link past
the orbital nodes), and then that whole run is skipped.

:func:`plan_horizon` solves it exactly as one mixed-integer program (cvxpy, HiGHS): the residency
``r[l, node]``, and for each distinct condition of the horizon (intervals with the same links,
figures and nodes are solved once, weighted by their total time) the placement variables and
costs of the cost model's own MILP (:mod:`rotafx.solve.milp`), with ``x[l, s] <= r[l, chain[s]]``
and the node's memory holding its resident layers. The objective is the cost model's objective
averaged over the served time (``aggregate="mean"``) or its worst interval (``"worst"``). An
interval with no route whatever the residency (the only way past a down uplink is a bypass, and
it is down too) is reported as unserved; every other interval must be served.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..costmodel import CostTables
from ..estimate import Estimate, evaluate
from ..objective import objective as make_objective
from ..profile import ModelProfile
from ..solve.deadline import Deadline
from ..solve.feasibility import InfeasibleError, fits
from ..topology import Link, LinkTable, Topology
from ..units import format_ranges
from .geometry import OrbitError
from .schedule import Interval, Schedule

__all__ = ["HorizonPlan", "IntervalPlan", "Condition", "plan_horizon", "conditions"]


@dataclass(frozen=True)
class Condition:
    """What the topology is during some intervals: its figures (``topology``), the chain stages that must stay
    empty (a node without power, or the run past a down hop), and the intervals it holds in."""

    topology: Topology | None  # None: no route at all
    empty: frozenset[int]
    intervals: tuple[Interval, ...]
    why: str = ""  # why there is no route

    @property
    def seconds(self) -> float:
        return sum(iv.duration_s for iv in self.intervals)


@dataclass(frozen=True)
class IntervalPlan:
    """The route of one condition: the chain stage of every layer and its estimate (``None`` when unserved)."""

    condition: Condition
    stages: tuple[int, ...] | None
    estimate: Estimate | None
    value: float


@dataclass(frozen=True)
class HorizonPlan:
    """The resident layers of each node and the route of each condition of the horizon."""

    resident: Mapping[str, tuple[int, ...]]
    plans: tuple[IntervalPlan, ...]
    objective: str
    aggregate: str
    value: float
    status: str
    horizon_s: float
    moved_gb: float = 0.0  # weights the nodes receive, against ``previous``

    @property
    def served_s(self) -> float:
        return sum(p.condition.seconds for p in self.plans if p.stages is not None)

    def route_at(self, t: float) -> IntervalPlan:
        """The plan of the interval that holds ``t`` seconds."""
        for p in self.plans:
            if any(iv.start_s <= t < iv.end_s for iv in p.condition.intervals):
                return p
        raise OrbitError(f"rotafx: {t} s is outside the horizon (0..{self.horizon_s:g} s)")

    def report(self) -> str:
        lines = [f"horizon plan for {self.objective} ({self.aggregate} over the served time: {self.value:,.4g}; "
                 f"{self.status}), {self.served_s / self.horizon_s:.1%} of {self.horizon_s:,.0f} s served",
                 "resident layers: " + ", ".join(f"{n} {format_ranges(ls) or '-'}" for n, ls in self.resident.items())]
        for p in sorted(self.plans, key=lambda p: -p.condition.seconds):
            c = p.condition
            share = f"{c.seconds:,.0f} s in {len(c.intervals)} interval(s)"
            if p.stages is None:
                lines.append(f"  {share}: no route ({c.why})")
                continue
            nodes = c.topology.chain
            used = sorted(set(p.stages))
            lines.append(f"  {share}: " + " -> ".join(f"{nodes[s]}[{format_ranges([l for l, x in enumerate(p.stages) if x == s])}]"
                                                   for s in used) + f", {p.value:,.4g}")
        return "\n".join(lines)


def _with_links(topology: Topology, figures: Mapping[tuple[str, str], tuple[float | None, float | None]]) -> Topology:
    """The topology with these links' bandwidth and latency replaced (``None``: as they are)."""
    over = {}
    for (a, b), (bw, lat) in figures.items():
        try:
            base = topology.link(a, b)
        except Exception:  # noqa: BLE001 - a scheduled link the topology does not have changes nothing it uses
            continue
        over[(a, b)] = dataclasses.replace(base, bandwidth_bps=base.bandwidth_bps if bw is None else bw,
                                           latency_ms=base.latency_ms if lat is None else lat)
    if not over:
        return topology
    if isinstance(topology.links, LinkTable):
        links: Any = LinkTable({**topology.links.explicit, **over}, topology.links.groups)
    else:
        links = {**topology.links, **over}
    return dataclasses.replace(topology, links=links)


def conditions(topology: Topology, schedule: Schedule, step_s: float = 10.0) -> list[Condition]:
    """The distinct conditions of the horizon: the schedule's intervals grouped by what they change."""
    chain = topology.chain
    scheduled = set(schedule.windows)
    groups: dict[tuple, list[Interval]] = {}
    meta: dict[tuple, tuple[Any, frozenset[int], str]] = {}
    for iv in schedule.intervals(topology.devices, step_s):
        down_hops = [b for b in range(len(chain) - 1) if (chain[b], chain[b + 1]) in scheduled
                     and (chain[b], chain[b + 1]) not in iv.links]
        dead = [s for s, n in enumerate(chain) if n not in iv.available]
        empty: set[int] = set()
        why = ""
        for b in down_hops:  # a down hop b (stage b -> b + 1) is passed only by a bypass around it
            run = next(((f, g) for f, g in topology.bypasses if f - 1 <= b <= g), None)
            if run is None:
                why = f"the link {chain[b]} -> {chain[b + 1]} is down and no bypass goes around it"
                break
            empty.update(range(run[0], run[1] + 1))
        for s in dead:
            run = next(((f, g) for f, g in topology.bypasses if f <= s <= g), None)
            if run is None:
                why = why or f"{chain[s]} may not compute (battery) and no bypass goes around it"
                break
            empty.update(range(run[0], run[1] + 1))
        for f, g in topology.bypasses:
            if empty.issuperset(range(f, g + 1)):
                a, b = chain[f - 1], chain[g + 1]
                if (a, b) in scheduled and (a, b) not in iv.links:
                    why = why or f"the bypass {a} -> {b} is down too"
        # the figures of links that reach a skipped stage cannot matter: not part of what the condition is
        skipped = {chain[s] for s in empty} - {chain[s] for s in range(len(chain)) if s not in empty}
        figures = tuple(sorted((k, (w.bandwidth_bps, w.latency_ms)) for k, w in iv.links.items()
                               if not set(k) & skipped))
        key = (figures, frozenset(empty), why)
        groups.setdefault(key, []).append(iv)
        meta[key] = (dict(figures), frozenset(empty), why)
    out = []
    for key, ivs in groups.items():
        figs, empty, why = meta[key]
        out.append(Condition(None if why else _with_links(topology, figs), empty, tuple(ivs), why))
    return out


def _restricted_best(tables: CostTables, obj: Any, empty: frozenset[int], allowed: np.ndarray,
                     chain: Sequence[str], index: Mapping[str, int]) -> tuple[list[int] | None, float]:
    """The best placement by enumeration with ``empty`` stages empty and layer ``l`` only where ``allowed``."""
    from ..solve.brute_force import enumerate_placements

    best, arg = (math.inf, math.inf), None
    for stages in enumerate_placements(tables.L, tables.K):
        if any(s in empty or not allowed[l, index[chain[s]]] for l, s in enumerate(stages)):
            continue
        if not fits(tables, stages):
            continue
        sc = obj.score(evaluate(tables, stages).terms())
        if sc < best:
            best, arg = sc, stages
    return arg, best[0]


def plan_horizon(profile: ModelProfile, topology: Topology | Mapping[str, Any] | str, schedule: Schedule, *,
                 objective: str = "minimize_latency", aggregate: str = "mean", codec: str | None = None,
                 memory_rule: str = "liveness", time_limit: float = 60.0, step_s: float = 10.0,
                 previous: Mapping[str, Sequence[int]] | None = None, move_cost_per_gb: float = 0.0) -> HorizonPlan:
    """The resident layers of each node and the best route of every interval, exact (see the module docstring).

    Args:
        profile: the model (a one-pass or a generation profile).
        topology: the chain; the schedule's links and nodes name its devices.
        schedule: link windows and power over the horizon.
        objective: any objective of the optimizer but ``balance`` (its weights are the optimizer's).
        aggregate: ``"mean"`` (the objective averaged over the served time) or ``"worst"`` (its worst interval).
        time_limit: wall seconds for the solve.
        previous: the layers each node holds now (the last horizon's ``resident``); with ``move_cost_per_gb``,
            every GB of weights a node must receive adds that much to the objective (in its units: ms, J, ...),
            so the plan changes what is uploaded only where it pays.

    Raises:
        InfeasibleError: no residency serves every interval that has a route (naming the intervals), or
            nothing is ever served.
    """
    import cvxpy as cp

    from ..solve.milp import _build, _solve, _terms

    if aggregate not in ("mean", "worst"):
        raise ValueError(f"rotafx: aggregate must be 'mean' or 'worst', got {aggregate!r}")
    topo = Topology.coerce(topology)
    obj = make_objective(objective)
    deadline = Deadline(time_limit)
    conds = conditions(topo, schedule, step_s)
    served = [c for c in conds if c.topology is not None]
    if not served:
        raise InfeasibleError(f"rotafx: no interval of the horizon has a route: {conds[0].why}")
    nodes = list(dict.fromkeys(topo.chain))
    index = {n: i for i, n in enumerate(nodes)}
    base = CostTables(profile, topo, codec=codec, memory_rule=memory_rule)
    L = base.L
    R = cp.Variable((L, len(nodes)), boolean=True)
    cons: list[Any] = []
    # every node holds its resident layers (and the largest live activations among them)
    for n, i in index.items():
        cap = base.capacity[n]
        if cap <= 0:
            cons.append(R[:, i] == 0)
            continue
        held = []
        for b, readers in base.shared:
            h = cp.Variable(nonneg=True)
            cons.append(h >= R[list(readers), i])
            held.append((b / cap) * h)
        w = (base.own_weight_bytes / cap) @ R[:, i] + (cp.sum(cp.hstack(held)) if held else 0)
        cons.append(w + cp.multiply(base.peak_bytes / cap, R[:, i]) <= 1)
    total = sum(c.seconds for c in served)
    values, layouts = [], []
    worst = cp.Variable()
    for c in served:
        tables = CostTables(profile, c.topology, codec=codec, memory_rule=memory_rule)
        Y, XC, ZC, U, cc = _build(tables)
        cons += cc
        for s, x in enumerate(XC):
            cons.append(x == 0 if s in c.empty else x <= R[:, index[topo.chain[s]]])
        value = obj.combine(_terms(tables, XC, ZC, U, cons, obj.needed))
        values.append(value)
        layouts.append((tables, Y))
        if aggregate == "worst":
            cons.append(worst >= value)
    expr = worst if aggregate == "worst" else cp.sum(cp.hstack([(c.seconds / total) * v
                                                                 for c, v in zip(served, values)]))
    move = _moved_gb(profile, nodes, previous)
    if move_cost_per_gb and move.any():
        expr = expr + move_cost_per_gb * cp.sum(cp.multiply(move, R))
    status, value, _, _ = _solve(cp.Problem(cp.Minimize(expr), cons), deadline, False)
    if status == "infeasible":
        raise InfeasibleError(
            f"rotafx: no set of resident layers serves every interval that has a route ({len(served)} condition(s), "
            f"{total:,.0f} s): the nodes' memory cannot hold layers for each of them; give the ground nodes room for "
            f"the whole model, or more memory in orbit")
    if status not in ("optimal", "time_limit") or R.value is None:
        raise InfeasibleError(f"rotafx: the horizon plan has no answer: {status}")
    plans = []
    for c, (tables, Y), v in zip(served, layouts, values):
        y = np.round(np.column_stack([yy.value for yy in Y])).astype(int)
        stages = tuple(int(tables.K - 1 - y[l].sum()) for l in range(L))
        est = evaluate(tables, stages)
        plans.append(IntervalPlan(c, stages, est, obj.value(est.terms())))
    # a node holds what some route runs on it (the solver may leave spare layers where memory allows: costless to
    # it, an upload to the node)
    used: dict[str, set[int]] = {n: set() for n in nodes}
    for p in plans:
        for l, st in enumerate(p.stages):
            used[topo.chain[st]].add(l)
    resident = {n: tuple(sorted(used[n])) for n in nodes}
    plans += [IntervalPlan(c, None, None, math.nan) for c in conds if c.topology is None]
    moved = float(sum(move[l, index[n]] for n, ls in resident.items() for l in ls))
    return HorizonPlan(resident=resident, plans=tuple(plans), objective=obj.name, aggregate=aggregate,
                       value=float(value), status=status, horizon_s=float(schedule.horizon_s), moved_gb=moved)


def _moved_gb(profile: ModelProfile, nodes: Sequence[str], previous: Mapping[str, Sequence[int]] | None) -> np.ndarray:
    """``[layer, node]``: GB of weights a node would receive to hold the layer (0 where it holds it already)."""
    gb = np.array([l.weight_bytes for l in profile.layers], dtype=float)[:, None] / 1e9
    out = np.repeat(gb, len(nodes), axis=1)
    if previous is None:
        return np.zeros_like(out)
    unknown = sorted(set(previous) - set(nodes))
    if unknown:
        raise ValueError(f"rotafx: previous names {unknown}, not nodes of the chain ({', '.join(nodes)})")
    for n, layers in previous.items():
        for l in layers:
            if not (isinstance(l, int) and 0 <= l < profile.num_layers):
                raise ValueError(f"rotafx: previous[{n!r}] holds layer {l!r}; layers are 0..{profile.num_layers - 1}")
            out[l, nodes.index(n)] = 0.0
    return out


def brute_force_horizon(profile: ModelProfile, topology: Topology | Mapping[str, Any] | str, schedule: Schedule, *,
                        objective: str = "minimize_latency", aggregate: str = "mean", step_s: float = 10.0,
                        previous: Mapping[str, Sequence[int]] | None = None,
                        move_cost_per_gb: float = 0.0) -> tuple[dict[str, tuple[int, ...]] | None, float]:
    """Every residency enumerated (``2 ** (layers x nodes)``: tiny cases only), each condition's best route by
    enumeration; the best residency and its value. For tests."""
    import itertools

    topo = Topology.coerce(topology)
    obj = make_objective(objective)
    conds = [c for c in conditions(topo, schedule, step_s) if c.topology is not None]
    nodes = list(dict.fromkeys(topo.chain))
    index = {n: i for i, n in enumerate(nodes)}
    base = CostTables(profile, topo)
    tables = [CostTables(profile, c.topology) for c in conds]
    total = sum(c.seconds for c in conds)
    move = _moved_gb(profile, nodes, previous)
    best, arg = math.inf, None
    for bits in itertools.product((0, 1), repeat=base.L * len(nodes)):
        allowed = np.array(bits, dtype=bool).reshape(base.L, len(nodes))
        if any(base.layers_memory(list(np.flatnonzero(allowed[:, i]))) > base.capacity[n] * (1 + 1e-12)
               for n, i in index.items()):
            continue
        vals = []
        for c, t in zip(conds, tables):
            _, v = _restricted_best(t, obj, c.empty, allowed, topo.chain, index)
            vals.append(v)
        if not all(math.isfinite(v) for v in vals):
            continue
        agg = max(vals) if aggregate == "worst" else sum(c.seconds / total * v for c, v in zip(conds, vals))
        agg += move_cost_per_gb * float((move * allowed).sum())
        if agg < best - 1e-9 * max(1.0, abs(best) if math.isfinite(best) else 1.0):
            best, arg = agg, {n: tuple(int(l) for l in np.flatnonzero(allowed[:, i])) for n, i in index.items()}
    return arg, best
