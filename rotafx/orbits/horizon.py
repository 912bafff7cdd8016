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

:meth:`HorizonPlan.routes` lists the distinct routes a plan uses (plus a ground-only fallback where the
ground holds the layers), each checked against the resident layers, and :func:`export_routes` writes
each as a plan directory for :meth:`rotafx.runtime.distributed.Failover.from_horizon` to serve.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..backend.options import Config
from ..backend.partition import PartitionSource
from ..backend.plan import plan_graph
from ..costmodel import CostTables, route
from ..estimate import Estimate, evaluate
from ..frontends.pytorch import as_args
from ..frontends.pytorch import trace as trace_model
from ..objective import objective as make_objective
from ..plan.schema import PlanSpec
from ..plan.write import export_pipeline
from ..profile import ModelProfile
from ..runtime.distributed.failover import ROUTE_DIR
from ..solve.deadline import Deadline
from ..solve.feasibility import InfeasibleError, fits
from ..topology import Link, LinkTable, Topology
from ..units import format_ranges
from .geometry import OrbitError
from .schedule import Interval, Schedule

__all__ = ["HorizonPlan", "HorizonRoute", "IntervalPlan", "Condition", "plan_horizon", "conditions", "export_routes"]


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
            lines.append(f"  {share}: {_describe(c.topology.chain, p.stages)}, {p.value:,.4g}")
        return "\n".join(lines)

    def routes(self, *, ground_fallback: bool = True) -> tuple["HorizonRoute", ...]:
        """The distinct routes the plan uses, the one serving the most time first, and a ground-only fallback last.

        Conditions with the same placement (the chain stage of every layer) share one route, which serves all
        their intervals (its ``topology``: the figures of the condition among them that lasts longest). With
        ``ground_fallback``, when no route runs on ground nodes only and the ground holds every layer, a route
        that does is added (``fallback=True``, no intervals of its own): each layer on the first ground node
        along the chain, not before the previous layer's, that holds it, the orbital stages between them
        passed by a bypass (a route that would still cross a link to orbit is not a fallback, and none is added).

        Args:
            ground_fallback: add the ground-only route where the resident layers allow it.

        Returns:
            The routes, in order of preference by time served; every one uses only layers resident on its nodes.

        Raises:
            ValueError: a route runs a layer on a node whose ``resident`` does not hold it (naming the node, the
                layers and the route), or on a stage its condition leaves empty, or its stages are not one
                non-decreasing chain stage per layer.

        >>> # plan = plan_horizon(profile, topology, schedule, objective="minimize_energy")
        >>> # [(r.describe(), r.seconds) for r in plan.routes()]
        >>> # [('ground0[0-1] -> orbital0[2-4]', 600.0), ('ground0[0-4]', 400.0)]
        """
        groups: dict[tuple[int, ...], list[IntervalPlan]] = {}
        for p in self.plans:
            if p.stages is not None:
                groups.setdefault(tuple(int(s) for s in p.stages), []).append(p)
        found = []
        for stages, ps in groups.items():
            longest = max(ps, key=lambda p: p.condition.seconds)
            ivs = tuple(sorted((iv for p in ps for iv in p.condition.intervals), key=lambda iv: iv.start_s))
            r = HorizonRoute(stages, longest.condition.topology, ivs)
            for p in ps:
                _check_route(r, p.condition.empty, self.resident)
            found.append(r)
        found.sort(key=lambda r: (-r.seconds, r.intervals[0].start_s if r.intervals else math.inf))
        if ground_fallback and found and not any(r.on_ground for r in found):
            spare = _ground_route(found[0].topology, self.resident, len(found[0].stages))
            if spare is not None:
                _check_route(spare, frozenset(), self.resident)
                found.append(spare)
        return tuple(found)


@dataclass(frozen=True)
class HorizonRoute:
    """One distinct route of a :class:`HorizonPlan`: the chain stage of every layer on ``topology``, and the
    intervals where it is the plan's route (none for the ground-only ``fallback``)."""

    stages: tuple[int, ...]
    topology: Topology
    intervals: tuple[Interval, ...]
    fallback: bool = False

    @property
    def seconds(self) -> float:
        """Schedule seconds the plan serves on this route."""
        return sum(iv.duration_s for iv in self.intervals)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The nodes that run layers, in chain order."""
        return tuple(self.topology.chain[s] for s in sorted(set(self.stages)))

    @property
    def layers(self) -> dict[str, tuple[int, ...]]:
        """The layers each node of :attr:`nodes` runs."""
        out: dict[str, list[int]] = {}
        for l, s in enumerate(self.stages):
            out.setdefault(self.topology.chain[s], []).append(l)
        return {n: tuple(ls) for n, ls in out.items()}

    @property
    def on_ground(self) -> bool:
        """Whether the route runs on ground nodes only and crosses only links between them."""
        kind = {n: d.kind for n, d in self.topology.devices.items()}
        return all(kind[n] == "ground" for n in self.nodes) and all(
            kind[link.src] == "ground" and kind[link.dst] == "ground" for _, link in route(self.topology, self.stages).hops)

    def serves(self, t: float) -> bool:
        """Whether the plan names this route at schedule time ``t``."""
        return any(iv.start_s <= t < iv.end_s for iv in self.intervals)

    def describe(self) -> str:
        """``ground0[0-1] -> orbital0[2-4]``: each node and its layers, along the chain."""
        return _describe(self.topology.chain, self.stages)


def _describe(chain: Sequence[str], stages: Sequence[int]) -> str:
    """Each used stage's node and its layers, along the chain."""
    return " -> ".join(f"{chain[s]}[{format_ranges([l for l, x in enumerate(stages) if x == s])}]"
                       for s in sorted(set(stages)))


def _when(r: HorizonRoute) -> str:
    """Where a route serves, for an error message."""
    if not r.intervals:
        return "the ground-only fallback"
    ivs = ", ".join(f"{iv.start_s:g}-{iv.end_s:g} s" for iv in r.intervals[:3]) + (", ..." if len(r.intervals) > 3 else "")
    return f"the route {r.describe()} (serving {ivs})"


def _check_route(r: HorizonRoute, empty: frozenset[int], resident: Mapping[str, Sequence[int]]) -> None:
    """A route is one chain stage per layer, in order, off the stages its condition leaves empty, and every layer on
    a node that holds it."""
    K = len(r.topology.chain)
    if not r.stages or any(not 0 <= s < K for s in r.stages) or any(b < a for a, b in zip(r.stages, r.stages[1:])):
        raise ValueError(f"rotafx: {_when(r)} gives stages {list(r.stages)[:12]}; a route is one chain stage in "
                         f"0..{K - 1} per layer, non-decreasing: give a plan plan_horizon made")
    if set(r.stages) & empty:
        raise ValueError(f"rotafx: {_when(r)} runs layers on {sorted(r.topology.chain[s] for s in set(r.stages) & empty)}, "
                         f"which its interval leaves empty (no power, or past a link that is down); re-plan with "
                         f"plan_horizon")
    for node, layers in r.layers.items():
        missing = sorted(set(layers) - set(resident.get(node, ())))
        if missing:
            held = format_ranges(sorted(resident.get(node, ()))) or "nothing"
            raise ValueError(f"rotafx: {_when(r)} runs layer(s) {format_ranges(missing)} on {node}, which holds "
                             f"{held} (resident[{node!r}]); every route must use layers resident on its nodes: "
                             f"re-plan with plan_horizon, or add the layers to resident")


def _ground_route(topology: Topology, resident: Mapping[str, Sequence[int]], L: int) -> HorizonRoute | None:
    """The ground-only fallback: each layer on the first ground stage along the chain (not before the previous
    layer's) that holds it; ``None`` when the ground does not hold every layer in such an order, or the route
    would cross a link to orbit. (The earliest choice finds such a route whenever one exists.)"""
    chain = topology.chain
    ground = [s for s, n in enumerate(chain) if topology.devices[n].kind == "ground"]
    stages: list[int] = []
    at = 0
    for l in range(L):
        s = next((s for s in ground if s >= at and l in resident.get(chain[s], ())), None)
        if s is None:
            return None
        stages.append(s)
        at = s
    r = HorizonRoute(tuple(stages), topology, (), fallback=True)
    return r if r.on_ground else None


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


def export_routes(model: torch.nn.Module, example_inputs: Any, plan: HorizonPlan, *,
                  directory: str | os.PathLike[str], devices: Any = None, codec: str | None = None,
                  routes: Sequence[HorizonRoute] | None = None, overwrite: bool = False,
                  max_context: int | None = None) -> tuple[PlanSpec, ...]:
    """Write every route of ``plan`` (:meth:`HorizonPlan.routes`) as a plan directory, ``directory/route{i}``.

    Route ``i`` is exported as placed (no solver: the chain stage of every layer as the horizon plan gives it, on
    its condition's topology), so that :meth:`rotafx.runtime.distributed.Failover.from_horizon` can serve them.

    Args:
        model: the model ``plan`` was made for (its profile's layers are the traced model's).
        example_inputs: the inputs it was profiled with; they fix every shape of the plans.
        plan: what :func:`plan_horizon` returned.
        directory: the folder to write the routes into.
        devices: the torch device of each node (as :func:`rotafx.partition` takes it).
        codec: the codec the plan was made with.
        routes: the routes to write (default ``plan.routes()``).
        overwrite: replace route directories already there.
        max_context: also write each route's prefill and decode programs for this many tokens per sequence (a
            causal LM, as :func:`rotafx.export` does), so that ``Failover.from_horizon(...).generate`` and
            ``rotafx.generate`` can run them.

    Returns:
        The written plans, route ``i`` at ``i``.

    Raises:
        ValueError: ``directory`` is empty, or the plan's routes place a different number of layers than the
            traced model has; ``plan.routes()``'s errors.
        PlanError: as :func:`rotafx.export_pipeline` (a ``max_context`` over the model's positions).
        GenerationError: ``max_context`` for a model that has no static-cache decoder.

    >>> # plan = plan_horizon(ModelProfile.from_pytorch(model, (x,)), topology, schedule)
    >>> # export_routes(model, (x,), plan, directory="routes", devices="cpu")   # routes/route0, routes/route1, ...
    """
    if not isinstance(directory, (str, os.PathLike)) or not str(os.fspath(directory)).strip():
        raise ValueError(f"rotafx: directory must name the folder to write the routes into, got {directory!r}")
    found = tuple(plan.routes() if routes is None else routes)
    if not found:
        raise ValueError("rotafx: the horizon plan has no route to export (no interval is served)")
    args = as_args(example_inputs)
    out = []
    for i, r in enumerate(found):
        traced = trace_model(model, args)  # once per route: annotate and rewrite take the graph they are given
        if traced.mutated:
            raise ValueError(f"rotafx: {type(model).__name__} writes to {list(traced.mutated)} in forward() (batch norm "
                             f"in training mode?); call model.eval() before exporting its routes")
        options = {"topology": r.topology, "devices": devices, "codec": codec}
        cfg = Config.make({"inner": "eager", **options})
        pm = plan_graph(traced.graph_module, traced.weights, traced.params, traced.values, cfg,
                        name=type(model).__name__, in_spec=traced.in_spec, out_spec=traced.out_spec,
                        assignment=lambda profile, r=r: _stages_for(profile, r)).module
        # what the generation programs are built from, as rotafx.partition keeps it: the model and the options (the
        # programs are placed where the route's pipeline holds each weight, so the route's cut)
        pm.__dict__["source"] = PartitionSource(model, options, args, {})
        out.append(export_pipeline(pm, args, path=Path(directory) / ROUTE_DIR.format(i), overwrite=overwrite,
                                   model_name=type(model).__name__, max_context=max_context))
    return tuple(out)


def _stages_for(profile: ModelProfile, r: HorizonRoute) -> tuple[int, ...]:
    """The route's stages, for a traced graph with as many layers as the horizon plan's profile."""
    if profile.num_layers != len(r.stages):
        raise ValueError(f"rotafx: the horizon plan places {len(r.stages)} layers but {profile.name} traced with these "
                         f"example inputs has {profile.num_layers}; plan it on ModelProfile.from_pytorch(model, "
                         f"example_inputs) with the same inputs")
    return r.stages
