"""A day of requests against a horizon plan, with the cost model: latency and TPOT distributions, energy by node,
requests through orbit or the ground, delayed or rejected when no route exists.

Requests arrive as a Poisson process (``rate_per_s``, from ``seed``: the same seed gives the same
day). A request starts on the route of the interval it is in; the pipeline takes one request per
``period`` of that route (the estimate's ``period_ms``: its slowest stage or link; for generation,
one request per its token period times its new tokens), so requests queue when they arrive faster,
and each request's latency is its wait plus the route's ``total_ms`` (or, for a generation profile,
``generation_ms``, with its TPOT). When no route exists (every way past a down link is down too), a
request waits for the next interval that has one, up to ``max_wait_s``, else it is rejected.
Energy is the route's compute energy per node (its layers' time at the node's power) and the links'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .horizon import HorizonPlan, IntervalPlan

__all__ = ["Served", "Simulation", "simulate", "compute_load"]


@dataclass(frozen=True)
class Served:
    """One request: when it arrived and started (s from the horizon's start), its latency (ms, queueing included),
    its TPOT (ms, generation only), whether its route went through orbit, and its energy by node (J)."""

    arrival_s: float
    start_s: float
    latency_ms: float
    tpot_ms: float
    via_orbit: bool
    energy_j: Mapping[str, float]
    busy_s: Mapping[str, float] = field(default_factory=dict)  # node -> seconds it computes for this request


@dataclass
class Simulation:
    """What :func:`simulate` found: the requests served, how many of them were delayed (they arrived while no
    route existed and waited for one), the rejected ones (arrival times), and each satellite's battery
    over the horizon (from the schedule's power model)."""

    served: list[Served]
    delayed: int
    rejected: list[float]
    horizon_s: float
    seed: int
    battery: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # node -> seconds of compute the requests asked of it while its battery was at its reserve (it could not serve)
    battery_refused_s: dict[str, float] = field(default_factory=dict)

    def quantile(self, what: str, q: float) -> float:
        xs = [getattr(s, what) for s in self.served if math.isfinite(getattr(s, what))]
        return float(np.quantile(xs, q)) if xs else math.nan

    def energy_by_node(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.served:
            for n, j in s.energy_j.items():
                out[n] = out.get(n, 0.0) + j
        return out

    def report(self) -> str:
        n = len(self.served)
        orbit = sum(s.via_orbit for s in self.served)
        lines = [f"simulated {self.horizon_s:,.0f} s (seed {self.seed}): {n + len(self.rejected)} requests, "
                 f"{n} served ({orbit} through orbit, {n - orbit} on the ground), {self.delayed} delayed for a route, "
                 f"{len(self.rejected)} rejected",
                 f"  latency p50 {self.quantile('latency_ms', 0.5):,.1f} ms, p99 {self.quantile('latency_ms', 0.99):,.1f} ms"]
        if any(math.isfinite(s.tpot_ms) for s in self.served):
            lines.append(f"  TPOT p50 {self.quantile('tpot_ms', 0.5):,.2f} ms, p99 {self.quantile('tpot_ms', 0.99):,.2f} ms")
        energy = self.energy_by_node()
        if n:
            lines.append("  energy per request: " + ", ".join(f"{k} {v / n:,.3g} J" for k, v in sorted(energy.items())))
        for name, (_, charge) in self.battery.items():
            short = self.battery_refused_s.get(name, 0.0)
            lines.append(f"  battery {name}: {charge.min():,.1f}-{charge.max():,.1f} Wh over the horizon, under the "
                         f"requests' load" + (f"; at its reserve for {short:,.0f} s of requested compute" if short else ""))
        return "\n".join(lines)


def _costs(p: IntervalPlan) -> tuple[float, float, float, bool, dict[str, float], dict[str, float]]:
    """(service period s, latency ms, TPOT ms, via orbit, energy by node J, compute s by node) of a route."""
    est = p.estimate
    topo = p.condition.topology
    g = est.generation
    period_s = (g.token_period_ms * g.new_tokens if g is not None else est.period_ms) / 1e3
    latency = g.generation_ms if g is not None else est.total_ms
    tpot = g.tpot_ms if g is not None else math.nan
    energy: dict[str, float] = {}
    busy: dict[str, float] = {}
    # the prefill once, and for generation every later token's decode step
    for part, times in ((est, 1), *(((g.decode, g.new_tokens - 1),) if g is not None else ())):
        for le in part.by_layer:
            energy[le.node] = energy.get(le.node, 0.0) + times * le.total_ms * 1e-3 * topo.devices[le.node].power_w
            busy[le.node] = busy.get(le.node, 0.0) + times * le.total_ms * 1e-3
    total = g.energy_per_token_j * g.batch_size * g.new_tokens if g is not None else est.energy_j
    links = total - sum(energy.values())
    if links > 1e-12:
        energy["links"] = links
    via_orbit = any(topo.devices[topo.chain[s]].kind == "orbital" for s in set(est.stages))
    return period_s, latency, tpot, via_orbit, energy, busy


def simulate(plan: HorizonPlan, *, rate_per_s: float, seed: int = 0, max_wait_s: float = 600.0,
             schedule: Any = None) -> Simulation:
    """Run a Poisson arrival trace of ``rate_per_s`` over the plan's horizon (see the module docstring).

    ``schedule`` (optional) adds each powered node's battery over the horizon to the result, drained by the
    compute the served requests ask of it (:func:`compute_load`) on top of its idle draw, charged in sunlight.
    """
    if not (isinstance(rate_per_s, (int, float)) and rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise ValueError(f"rotafx: rate_per_s must be a positive number of requests per second, got {rate_per_s!r}")
    if not (max_wait_s >= 0):
        raise ValueError(f"rotafx: max_wait_s must be >= 0 seconds, got {max_wait_s!r}")
    rng = np.random.default_rng(seed)
    horizon = plan.horizon_s
    arrivals, t = [], 0.0
    while True:
        t += float(rng.exponential(1.0 / rate_per_s))
        if t >= horizon:
            break
        arrivals.append(t)
    spans = sorted(((iv.start_s, iv.end_s, p) for p in plan.plans for iv in p.condition.intervals),
                   key=lambda x: x[0])
    starts = np.array([a for a, _, _ in spans])
    costs = {id(p): _costs(p) for p in plan.plans if p.stages is not None}
    served, rejected, delayed = [], [], 0
    free_at = 0.0  # when the pipeline takes its next request
    for a in arrivals:
        waits = spans[int(np.searchsorted(starts, a, side="right")) - 1][2].stages is None  # no route on arrival
        begin = max(a, free_at)
        i = int(np.searchsorted(starts, begin, side="right")) - 1
        while i < len(spans) and spans[i][2].stages is None:  # no route now: wait for the next interval with one
            i += 1
        if i >= len(spans) or max(begin, spans[i][0]) - a > max_wait_s:
            rejected.append(a)
            continue
        begin = max(begin, spans[i][0])
        delayed += waits
        period_s, latency, tpot, orbit, energy, busy = costs[id(spans[i][2])]
        free_at = begin + period_s
        served.append(Served(a, begin, 1e3 * (begin - a) + latency, tpot, orbit, energy, busy))
    battery, refused = {}, {}
    if schedule is not None:
        for name in schedule.power:
            load = compute_load(served, name, horizon, BATTERY_STEP_S)
            times, charge, may = schedule.battery(name, BATTERY_STEP_S, load=load)
            battery[name] = (times, charge)
            refused[name] = float(BATTERY_STEP_S * load[~may].sum())
    return Simulation(served, delayed, rejected, horizon, seed, battery, refused)


BATTERY_STEP_S = 10.0


def compute_load(served: Any, node: str, horizon_s: float, step_s: float) -> np.ndarray:
    """The fraction of each ``step_s`` step of the battery's time grid (``0, step_s, ...`` up to past the horizon)
    that ``node`` computes for the requests ``served``: each request's compute there from its start, or from when
    the node finished the one before, one after another (work past the grid's end is not counted).

    >>> s = [Served(0.0, 5.0, 0.0, 0.0, True, {}, {"sat": 25.0})]
    >>> compute_load(s, "sat", 40.0, 10.0).tolist()
    [0.5, 1.0, 1.0, 0.0, 0.0]
    """
    n = len(np.arange(0.0, horizon_s + step_s, step_s))
    load = np.zeros(n)
    free = 0.0
    for r in served:
        t = r.busy_s.get(node, 0.0)
        if t <= 0:
            continue
        a = max(r.start_s, free)
        b = free = a + t
        for i in range(int(a // step_s), min(int(math.ceil(b / step_s)), n)):
            lo, hi = i * step_s, (i + 1) * step_s
            load[i] += (min(b, hi) - max(a, lo)) / step_s
    return np.minimum(load, 1.0)
