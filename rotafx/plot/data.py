"""The data behind each picture, as plain dataclasses, built from estimates without drawing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..costmodel import CostTables
from ..estimate import Estimate
from ..profile import ModelProfile
from ..solve import PartitionOptimizer
from ..topology import Topology
from ..units import fmt_bytes

__all__ = ["NodeBar", "LinkLabel", "PlacementData", "BreakdownBar", "BreakdownData", "Span", "TimelineData",
           "TradeoffPoint", "TradeoffData", "RouteSpan", "RequestPoint", "DayData", "placement_data", "breakdown_data",
           "timeline_data", "tradeoffs_data", "day_data"]


@dataclass(frozen=True)
class NodeBar:
    """One chain stage: its node, its layer range and the memory its device holds (bytes)."""

    stage: int
    node: str
    kind: str
    layers: tuple[int, ...]
    first_name: str | None
    last_name: str | None
    weights_bytes: float
    kv_bytes: float
    activation_bytes: float
    capacity_bytes: float

    @property
    def empty(self) -> bool:
        return not self.layers

    @property
    def used_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes + self.activation_bytes

    @property
    def label(self) -> str:
        """``"layers 6-23: layers.5 .. layers.22"`` (1-based positions, then the first and last names)."""
        if not self.layers:
            return "empty"
        a, b = self.layers[0], self.layers[-1]
        where = f"layer {a + 1}" if a == b else f"layers {a + 1}-{b + 1}"
        return f"{where}:\n{self.first_name}" + ("" if a == b else f" ..\n{self.last_name}")


@dataclass(frozen=True)
class LinkLabel:
    """One hop of the request between chain stages: bytes, serialisation ms and propagation ms."""

    src_stage: int
    dst_stage: int
    src: str
    dst: str
    kind: str
    bytes: int
    transfer_ms: float
    propagation_ms: float

    @property
    def label(self) -> str:
        return f"{self.kind}\n{fmt_bytes(self.bytes)}\n{self.transfer_ms:,.2f} + {self.propagation_ms:g} ms"


@dataclass(frozen=True)
class PlacementData:
    """What :func:`rotafx.plot.placement` draws."""

    nodes: tuple[NodeBar, ...]
    links: tuple[LinkLabel, ...]
    total_ms: float


@dataclass(frozen=True)
class BreakdownBar:
    """One placement's bar: its parts (ms) by name, bottom to top, adding up to ``total_ms``."""

    label: str
    parts: dict[str, float]
    total_ms: float


@dataclass(frozen=True)
class BreakdownData:
    """What :func:`rotafx.plot.breakdown` draws: the request (or TTFT) and, for generation, the decode step (TPOT)."""

    bars: tuple[BreakdownBar, ...]
    decode_bars: tuple[BreakdownBar, ...] | None


@dataclass(frozen=True)
class Span:
    """A track's busy interval for one request (or decode step): ``start_ms``..``end_ms``."""

    track: str
    request: int
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class TimelineData:
    """What :func:`rotafx.plot.timeline` draws: the tracks top to bottom and the estimated (and measured) spans."""

    tracks: tuple[str, ...]
    spans: tuple[Span, ...]
    measured: tuple[Span, ...]
    phase: str
    done_ms: tuple[float, ...]  # when each request's output reaches the chain's last node (propagation included)

    @property
    def end_ms(self) -> float:
        """When the last request is done."""
        return self.done_ms[-1]


@dataclass(frozen=True)
class TradeoffPoint:
    """One proven-optimal plan of the sweep: the weights it was solved for and its two figures."""

    weights: dict[str, float]
    x: float
    y: float
    stages: tuple[int, ...]
    partition: Any = None


@dataclass(frozen=True)
class TradeoffData:
    """What :func:`rotafx.plot.tradeoffs` draws: the non-dominated points (by ``x``) and the chosen plan's."""

    x: str
    y: str
    points: tuple[TradeoffPoint, ...]
    chosen: tuple[float, float] | None


# -- placement ---------------------------------------------------------------------------------------------------

def _resolve(what: Any, topology: Topology | Mapping[str, Any] | str | None, profile: ModelProfile | None,
             ) -> tuple[Estimate, Topology, ModelProfile, str, str | None]:
    """A Partition, or an Estimate with its topology and profile, as (estimate, topology, profile, rule, codec)."""
    if isinstance(what, Estimate):
        if topology is None or profile is None:
            raise ValueError("rotafx: an Estimate is drawn with its topology and profile: pass topology= and profile= "
                             "(or pass the Partition, which carries both)")
        return what, Topology.coerce(topology), profile, "liveness", what.codec
    if hasattr(what, "estimate") and hasattr(what, "topology") and hasattr(what, "profile"):
        return (what.estimate, what.topology, what.profile, getattr(what, "memory_rule", "liveness"),
                getattr(what, "codec", None))
    raise TypeError(f"rotafx: placement() draws a Partition or an Estimate, got {type(what).__name__}; pass "
                    f"PartitionOptimizer().optimize(...) or LatencyEstimator(topology).estimate(placement)")


def placement_data(partition_or_estimate: Any, topology: Topology | Mapping[str, Any] | str | None = None,
                   profile: ModelProfile | None = None) -> PlacementData:
    """The chain's stages with their layers and memory (weights, KV cache, activations) and each hop's figures.

    Args:
        partition_or_estimate: a :class:`~rotafx.Partition`, or an :class:`~rotafx.Estimate` with
            ``topology`` and ``profile``.
    Returns:
        :class:`PlacementData`; each device's three parts add up to ``CostTables.device_memory``.
    Raises:
        ValueError: an Estimate without its topology or profile.

    >>> from rotafx import ModelProfile, PartitionOptimizer
    >>> prof = ModelProfile.from_layers([{"name": f"l{i}", "params": 10, "flops": 1e6, "activation_bytes": 10}
    ...                                  for i in range(3)])
    >>> part = PartitionOptimizer(solver="dp").optimize(prof, "seed")
    >>> [n.node for n in placement_data(part).nodes if not n.empty]
    ['ground0']
    """
    est, topo, prof, rule, codec = _resolve(partition_or_estimate, topology, profile)
    tables = CostTables(prof, topo, codec=codec, memory_rule=rule)
    stages = est.stages
    nodes = []
    for s, name in enumerate(topo.chain):
        layers = tuple(l for l, st in enumerate(stages) if st == s)
        held = [l for l, st in enumerate(stages) if st in tables.device_stages[name]]  # the device's layers
        total = est.memory_bytes.get(name, tables.layers_memory(held))
        kv = float(sum(tables.kv_bytes[l] for l in held))
        act = float(max(tables.peak_bytes[l] for l in held)) if held and rule != "sum" else 0.0
        nodes.append(NodeBar(s, name, topo.devices[name].kind, layers,
                             prof.layers[layers[0]].name if layers else None,
                             prof.layers[layers[-1]].name if layers else None,
                             total - kv - act, kv, act, float(tables.capacity[name])))
    links = []
    for t in est.transfers:
        if t.link_kind == "local":
            continue
        a = _stage_of(topo, t.src, stages, t.boundary, before=True)
        b = _stage_of(topo, t.dst, stages, t.boundary, before=False)
        links.append(LinkLabel(a, b, t.src, t.dst, t.link_kind, t.bytes, t.transfer_ms, t.propagation_ms))
    return PlacementData(tuple(nodes), tuple(links), est.total_ms)


def _stage_of(topo: Topology, node: str, stages: Sequence[int], boundary: int, before: bool) -> int:
    """The chain stage of ``node`` on the hop at ``boundary`` (a device may appear twice in the chain)."""
    options = [i for i, n in enumerate(topo.chain) if n == node]
    if len(options) == 1:
        return options[0]
    near = stages[boundary - 1] if before and boundary > 0 else (stages[boundary] if boundary < len(stages) else
                                                                   len(topo.chain) - 1)
    return min(options, key=lambda i: abs(i - near))


# -- breakdown ---------------------------------------------------------------------------------------------------

def _bar(label: str, est: Estimate, extra: Mapping[str, float] | None = None) -> BreakdownBar:
    parts = {k.removesuffix("_ms").replace("_", " "): v for k, v in est.parts().items()}
    parts.update(extra or {})
    return BreakdownBar(label, parts, est.total_ms + sum((extra or {}).values()))


def breakdown_data(estimates: Mapping[str, Estimate] | Estimate) -> BreakdownData:
    """The parts of each estimate (compute by node kind, transfer by link kind, propagation), in ms.

    Args:
        estimates: one :class:`~rotafx.Estimate` or several by name (one bar each).
    Returns:
        :class:`BreakdownData`; with generation estimates, ``decode_bars`` holds each decode step's
        parts and the token's trip back (``token return``), adding up to TPOT.
    Raises:
        TypeError: something else than estimates.

    >>> from rotafx import LatencyEstimator, ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> est = LatencyEstimator("seed").estimate([0], prof)
    >>> breakdown_data(est).bars[0].total_ms == est.total_ms
    True
    """
    named = {"estimate": estimates} if isinstance(estimates, Estimate) else dict(estimates)
    for k, e in named.items():
        if not isinstance(e, Estimate):
            raise TypeError(f"rotafx: breakdown() draws Estimates; {k!r} is a {type(e).__name__} "
                            f"(pass partition.estimate or LatencyEstimator(topology).estimate(placement))")
    if not named:
        raise ValueError("rotafx: breakdown() needs at least one estimate")
    bars = tuple(_bar(k, e) for k, e in named.items())
    decode = None
    if all(e.generation is not None for e in named.values()):
        decode = tuple(_bar(k, e.generation.decode, {"token return": e.generation.return_ms})
                       for k, e in named.items())
    return BreakdownData(bars, decode)


# -- timeline ----------------------------------------------------------------------------------------------------

def _tracks(est: Estimate, topo_chain: Sequence[str] | None = None) -> list[tuple[str, float, float]]:
    """The request's path as (track, busy ms, delay ms after it): each used stage, then each hop, in order."""
    first: dict[int, int] = {}
    busy: dict[int, float] = {}
    for le in est.by_layer:
        first.setdefault(le.stage, le.index)
        busy[le.stage] = busy.get(le.stage, 0.0) + le.total_ms
    names = {le.stage: le.node for le in est.by_layer}
    items = [(first[s], 1, i, f"{names[s]} (stage {s})", busy[s], 0.0) for i, s in enumerate(first)]
    items += [(t.boundary, 0, i, f"{t.src} -> {t.dst} ({t.link_kind})", t.transfer_ms, t.propagation_ms)
              for i, t in enumerate(est.transfers) if t.link_kind != "local" or t.transfer_ms]
    return [(name, b, d) for _, _, _, name, b, d in sorted(items)]


def timeline_data(estimate: Estimate, requests: int = 4, *, phase: str = "request",
                  measured: Sequence[tuple[str, int, float, float]] = ()) -> TimelineData:
    """Spans of ``requests`` pipelined requests (or decode steps) on each stage and link.

    A track starts request ``r`` when it has finished ``r - 1`` and received ``r`` (the pipeline
    recurrence ``start[k][r] = max(end[k][r-1], end[k-1][r] + delay[k-1])``). With ``phase="decode"``
    the tracks run the decode step, and a sequence's next step waits for its token's trip back
    (``token return``); sequences (the profile's ``sequences``) interleave.

    Args:
        estimate: an :class:`~rotafx.Estimate`.
        requests: how many requests (decode steps), at least 1.
        phase: ``"request"`` (the request, or a generation's prefill) or ``"decode"``.
        measured: measured spans ``(track, request, start_ms, end_ms)`` to draw beside the estimate;
            a track is named as in :attr:`TimelineData.tracks` (others are added below).
    Returns:
        :class:`TimelineData`.
    Raises:
        ValueError: ``requests < 1``, an unknown phase, decode without a generation estimate, or a bad span.

    >>> from rotafx import LatencyEstimator, ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> est = LatencyEstimator("seed").estimate([0], prof)
    >>> round(timeline_data(est, 3).end_ms, 6) == round(est.total_ms + 2 * est.period_ms, 6)
    True
    """
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise ValueError(f"rotafx: requests must be a positive integer, got {requests!r}")
    if phase not in ("request", "decode"):
        raise ValueError(f"rotafx: phase must be 'request' or 'decode', got {phase!r}")
    spans_in = tuple(_span(m) for m in measured)
    est, back, seqs = estimate, None, 1
    if phase == "decode":
        if estimate.generation is None:
            raise ValueError("rotafx: phase='decode' needs a generation estimate: profile the model with "
                             "ModelProfile.for_generation(...)")
        est, seqs = estimate.generation.decode, estimate.generation.sequences
        back = estimate.generation.return_ms
    tracks = _tracks(est)
    if back is not None:
        tracks.append(("token return", back, 0.0))
    end = [[0.0] * requests for _ in tracks]
    spans, done = [], []
    for r in range(requests):
        ready = 0.0 if back is None or r < seqs else end[-1][r - seqs]
        for k, (name, busy, delay) in enumerate(tracks):
            start = max(ready, end[k][r - 1] if r else 0.0)
            end[k][r] = start + busy
            spans.append(Span(name, r, start, start + busy))
            ready = end[k][r] + delay
        done.append(ready if back is None else end[-1][r])
    names = [n for n, _, _ in tracks]
    names += [n for n in dict.fromkeys(s.track for s in spans_in) if n not in names]
    return TimelineData(tuple(names), tuple(spans), spans_in, phase, tuple(done))


def _span(m: Any) -> Span:
    """A measured span from ``(track, request, start_ms, end_ms)``."""
    try:
        track, r, a, b = m
        out = Span(str(track), int(r), float(a), float(b))
    except (TypeError, ValueError):
        raise ValueError(f"rotafx: a measured span is (track, request, start_ms, end_ms), got {m!r}") from None
    if not out.end_ms >= out.start_ms:
        raise ValueError(f"rotafx: measured span {m!r} ends before it starts; give start_ms <= end_ms")
    return out


# -- trade-offs --------------------------------------------------------------------------------------------------

AXES = {"latency": "latency (ms)", "period": "period (ms)", "bandwidth": "ground-orbit bytes (MB)",
        "energy": "energy (J)", "ttft": "TTFT (ms)", "tpot": "TPOT (ms)", "tokens_per_s": "tokens/s",
        "token_period": "token period (ms)", "generation": "generation (ms)", "energy_per_token": "J per token"}


def _figure(est: Estimate, axis: str) -> float:
    """The drawn value of ``axis`` (bandwidth in MB, tokens/s as is)."""
    if axis == "tokens_per_s":
        return float(est.tokens_per_s)
    return est.terms()[axis] / (1e6 if axis == "bandwidth" else 1.0)


def _minimized(p: TradeoffPoint, x: str, y: str) -> tuple[float, float]:
    return (-p.x if x == "tokens_per_s" else p.x), (-p.y if y == "tokens_per_s" else p.y)


def tradeoffs_data(profile: ModelProfile, topology: Topology | Mapping[str, Any] | str, x: str = "latency",
                   y: str = "energy", points: int = 7, *, chosen: Any = None, solver: str = "dp",
                   time_limit: float = 30.0) -> TradeoffData:
    """The Pareto front of ``x`` and ``y``, traced by solving ``balance`` with weights ``(1 - a, a)``.

    Each weight pair is solved to proven optimality (plans not proven optimal are left out), and a
    plan another point beats on both figures, or equals, is dropped.

    Args:
        profile: the model's :class:`~rotafx.ModelProfile` (a generation profile for ttft, tpot, tokens_per_s ...).
        topology: a :class:`~rotafx.Topology`, its dict or a preset name.
        x, y: two of ``latency``, ``period``, ``bandwidth`` (MB over ground-orbit links), ``energy``,
            ``ttft``, ``tpot``, ``tokens_per_s``, ``token_period``, ``generation``, ``energy_per_token``.
        points: how many weight pairs to solve (at least 2).
        chosen: a :class:`~rotafx.Partition` to mark.
        solver: the optimizer's solver (``"dp"`` where the chain's devices appear once, else ``"milp"``).
    Returns:
        :class:`TradeoffData`, points sorted by ``x``.
    Raises:
        ValueError: an unknown axis, the same axis twice, or ``points < 2``.

    >>> from rotafx import ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": f"l{i}", "params": 10, "flops": 1e9, "activation_bytes": 10}
    ...                                  for i in range(3)])
    >>> len(tradeoffs_data(prof, "seed", points=3).points) >= 1
    True
    """
    for name, axis in (("x", x), ("y", y)):
        if axis not in AXES:
            raise ValueError(f"rotafx: tradeoffs {name}={axis!r} is not a term; use one of {', '.join(AXES)}")
    if x == y or {x, y} == {"tokens_per_s", "token_period"}:
        raise ValueError(f"rotafx: tradeoffs needs two different terms, got x={x!r} and y={y!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"rotafx: points must be an integer >= 2 (weight pairs to solve), got {points!r}")
    opt = PartitionOptimizer(solver=solver, time_limit=time_limit)
    found: list[TradeoffPoint] = []
    for a in np.linspace(0.0, 1.0, points):
        w = {x: float(1 - a), y: float(a)}
        part = opt.optimize(profile, topology, "balance", weights={k: v for k, v in w.items() if v} or w)
        if part.status != "optimal":
            continue
        found.append(TradeoffPoint(w, _figure(part.estimate, x), _figure(part.estimate, y), part.stages, part))
    front = [p for p in found if not any(_dominates(q, p, x, y) for q in found if q is not p)]
    unique = list({_minimized(p, x, y): p for p in front}.values())
    unique.sort(key=lambda p: p.x)
    mark = None if chosen is None else (_figure(chosen.estimate, x), _figure(chosen.estimate, y))
    return TradeoffData(x, y, tuple(unique), mark)


def _dominates(q: TradeoffPoint, p: TradeoffPoint, x: str, y: str) -> bool:
    """Whether ``q`` is at least as good as ``p`` on both and better on one (relative tolerance 1e-9)."""
    a, b = _minimized(q, x, y), _minimized(p, x, y)
    tol = [1e-9 * max(1.0, abs(v)) for v in b]
    le = all(u <= v + t for u, v, t in zip(a, b, tol))
    lt = any(u < v - t for u, v, t in zip(a, b, tol))
    return le and lt



# -- a simulated day ---------------------------------------------------------------------------------------------

Spans = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class RouteSpan:
    """One interval of a horizon plan: ``start_s``..``end_s`` and the nodes its route computes on, in chain order
    (``None``: no route in that interval)."""

    start_s: float
    end_s: float
    nodes: tuple[str, ...] | None
    via_orbit: bool

    @property
    def label(self) -> str:
        """``"ground0 -> orbital0 -> ground1 (orbit)"``, ``"ground0 (ground only)"`` or ``"no route"``."""
        if self.nodes is None:
            return "no route"
        return " -> ".join(self.nodes) + (" (orbit)" if self.via_orbit else " (ground only)")


@dataclass(frozen=True)
class RequestPoint:
    """A served request: its arrival (s from the horizon's start), its latency or TPOT (ms) and its route's kind."""

    arrival_s: float
    value_ms: float
    via_orbit: bool


@dataclass(frozen=True)
class DayData:
    """What :func:`rotafx.plot.day` draws, in seconds from the horizon's start (the figure shows hours).

    ``windows``: each scheduled link's contact windows; ``sunlit`` and ``eclipse``: each satellite's
    spans in and out of sunlight; ``routes``: each interval of the plan; ``battery``: each battery's
    times (s) and charge (Wh); ``requests``: the served requests with ``metric`` (``"tpot_ms"`` for a
    generation profile, else ``"latency_ms"``); ``rejected``: rejected arrivals; ``delayed``: the
    arrivals of requests that waited for a route (known with the plan; ``delayed_count`` always)."""

    horizon_s: float
    satellites: tuple[str, ...]
    windows: dict[tuple[str, str], Spans]
    sunlit: dict[str, Spans]
    eclipse: dict[str, Spans]
    routes: tuple[RouteSpan, ...]
    battery: dict[str, tuple[np.ndarray, np.ndarray]]
    metric: str
    requests: tuple[RequestPoint, ...]
    rejected: tuple[float, ...]
    delayed: tuple[float, ...]
    delayed_count: int

    @property
    def rows(self) -> tuple[tuple[str, tuple[tuple[str, Spans], ...]], ...]:
        """The windows panel top to bottom, ``(label, ((kind, spans), ...))``: each satellite's sunlight row
        (``sunlight`` and ``eclipse`` spans) then its links not drawn yet, then the links between other nodes."""
        sats = set(self.satellites)

        def kind(src: str, dst: str) -> str:
            return "isl" if {src, dst} <= sats else "uplink" if dst in sats else "downlink" if src in sats else "link"

        out, drawn = [], set()
        for s in self.satellites:
            if s in self.sunlit:
                out.append((f"{s} sunlight", (("sunlight", self.sunlit[s]), ("eclipse", self.eclipse[s]))))
            for link in self.windows:
                if s in link and link not in drawn:
                    drawn.add(link)
                    out.append((f"{link[0]} -> {link[1]}", ((kind(*link), self.windows[link]),)))
        out += [(f"{a} -> {b}", ((kind(a, b), ws),)) for (a, b), ws in self.windows.items() if (a, b) not in drawn]
        return tuple(out)


def _complement(spans: Sequence[tuple[float, float]], horizon_s: float) -> Spans:
    """The parts of ``[0, horizon_s]`` outside ``spans`` (sorted, not overlapping)."""
    out, t = [], 0.0
    for a, b in sorted(spans):
        if a > t:
            out.append((t, a))
        t = max(t, b)
    if t < horizon_s:
        out.append((t, horizon_s))
    return tuple(out)


def _routes(plan: Any) -> tuple[RouteSpan, ...]:
    """Each interval of a horizon plan with the nodes its route computes on."""
    out = []
    for p in plan.plans:
        nodes, orbit = None, False
        if p.stages is not None:
            topo = p.condition.topology
            nodes = tuple(topo.chain[s] for s in sorted(set(p.stages)))
            orbit = any(topo.devices[n].kind == "orbital" for n in nodes)
        out += [RouteSpan(iv.start_s, iv.end_s, nodes, orbit) for iv in p.condition.intervals]
    return tuple(sorted(out, key=lambda r: r.start_s))


def day_data(simulation: Any, schedule: Any = None, plan: Any = None) -> DayData:
    """A simulated day as plain data: contact windows, sunlight, each interval's route, batteries and requests.

    Args:
        simulation: a :class:`~rotafx.orbits.simulate.Simulation` (``simulate(plan, ..., schedule=sched)``
            carries the batteries).
        schedule: its :class:`~rotafx.orbits.Schedule` (windows, sunlight; batteries the simulation lacks).
        plan: its :class:`~rotafx.orbits.horizon.HorizonPlan` (the routes, and which requests were delayed).
    Returns:
        :class:`DayData`.
    Raises:
        TypeError: not a Simulation. ValueError: a schedule or plan of another horizon.

    >>> from rotafx.orbits.simulate import Served, Simulation
    >>> sim = Simulation([Served(5.0, 5.0, 120.0, float("nan"), True, {})], 0, [9.0], 60.0, 0)
    >>> d = day_data(sim)
    >>> d.metric, d.requests[0].value_ms, d.rejected
    ('latency_ms', 120.0, (9.0,))
    """
    if not all(hasattr(simulation, k) for k in ("served", "rejected", "delayed", "horizon_s", "battery")):
        raise TypeError(f"rotafx: day() draws a Simulation, got {type(simulation).__name__}; pass "
                        f"rotafx.orbits.simulate.simulate(plan, rate_per_s=..., schedule=schedule)")
    horizon = float(simulation.horizon_s)
    for what, other in (("schedule", schedule), ("plan", plan)):
        if other is not None and not math.isclose(float(other.horizon_s), horizon, rel_tol=1e-9, abs_tol=1e-6):
            raise ValueError(f"rotafx: the {what} covers {other.horizon_s:g} s but the simulation {horizon:g} s; pass "
                             f"the {what} the day was simulated with")
    battery = {k: (np.asarray(t, float), np.asarray(c, float)) for k, (t, c) in simulation.battery.items()}
    windows: dict[tuple[str, str], Spans] = {}
    sunlit: dict[str, Spans] = {}
    sats = list(battery)
    if schedule is not None:
        windows = {k: tuple((w.start_s, w.end_s) for w in ws) for k, ws in schedule.windows.items()}
        sunlit = {k: tuple((float(a), float(b)) for a, b in v) for k, v in schedule.sunlit.items()}
        for name in schedule.power:
            if name not in battery:
                times, charge, _ = schedule.battery(name)
                battery[name] = (times, charge)
        sats += [*schedule.sunlit, *schedule.power]
    routes = _routes(plan) if plan is not None else ()
    if plan is not None:
        sats += [n for p in plan.plans if p.condition.topology is not None
                 for n, d in p.condition.topology.devices.items() if d.kind == "orbital"]
    satellites = tuple(n for n in dict.fromkeys(sats) if n in sunlit or n in battery
                       or any(n in link for link in windows))
    served = simulation.served
    metric = "tpot_ms" if any(math.isfinite(s.tpot_ms) for s in served) else "latency_ms"
    requests = tuple(RequestPoint(s.arrival_s, getattr(s, metric), s.via_orbit) for s in served)
    delayed: tuple[float, ...] = ()
    if plan is not None:
        delayed = tuple(s.arrival_s for s in served if plan.route_at(s.arrival_s).stages is None)
    return DayData(horizon, satellites, windows, sunlit, {k: _complement(v, horizon) for k, v in sunlit.items()},
                   routes, battery, metric, requests, tuple(simulation.rejected), delayed, int(simulation.delayed))
