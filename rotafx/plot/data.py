"""The data behind each picture, as plain dataclasses, built from estimates without drawing."""

from __future__ import annotations

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
           "TradeoffPoint", "TradeoffData", "placement_data", "breakdown_data", "timeline_data", "tradeoffs_data"]


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

