"""Time in a topology: when each link is up (and how fast), when each orbital node may compute.

A :class:`Schedule` holds, over a horizon of ``horizon_s`` seconds from ``start``:

* per link ``(src, dst)``, its **windows**: ``Window(start_s, end_s, bandwidth_bps, latency_ms)``;
  a link with no entry is always up at its topology figures, one with an entry is up only inside
  its windows;
* per device, its **power**: a :class:`Power` model (battery, solar panel, compute and idle draw)
  and the sunlit spans of its orbit, from which :meth:`Schedule.available` says when it may
  compute (in sunlight, or in eclipse while its battery stays above the reserve).

:func:`contact_windows` computes a satellite's windows over a ground station from their
geometry (elevation above the station's minimum), :func:`sunlight` its sunlit spans;
:meth:`Schedule.intervals` cuts the horizon into the pieces where nothing changes, each with the
links that are up and the devices that may compute: what a horizon planner solves once each.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .geometry import (SPEED_OF_LIGHT_KM_S, GroundStation, OrbitError, Satellite, elevation_deg, julian,
                       slant_range_km, sun_direction, sunlit)

__all__ = ["Window", "Power", "Interval", "Schedule", "contact_windows", "sunlight", "parse_time"]


def parse_time(value: Any, what: str) -> _dt.datetime:
    """A UTC instant from a timezone-aware ``datetime`` or an ISO-8601 string with a zone (``...Z``)."""
    if isinstance(value, _dt.datetime):
        t = value
    elif isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise OrbitError(f"rotafx: {what} {value!r} is not an ISO-8601 time; write e.g. '2026-12-03T00:00:00Z'") from None
    else:
        raise OrbitError(f"rotafx: {what} must be a datetime or an ISO-8601 string, got {type(value).__name__}")
    if t.tzinfo is None:
        raise OrbitError(f"rotafx: {what} {value!r} has no timezone; add 'Z' (UTC) or an offset")
    return t.astimezone(_dt.timezone.utc)


@dataclass(frozen=True)
class Window:
    """A span ``[start_s, end_s)`` (seconds from the schedule's start) in which a link is up, at ``bandwidth_bps``
    with ``latency_ms`` one way (``None``: the topology's figures)."""

    start_s: float
    end_s: float
    bandwidth_bps: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s) and self.end_s > self.start_s):
            raise OrbitError(f"rotafx: a window must end after it starts, got {self.start_s} s to {self.end_s} s")
        for key in ("bandwidth_bps", "latency_ms"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and (v > 0 if key == "bandwidth_bps" else v >= 0)):
                raise OrbitError(f"rotafx: window {self.start_s:g}-{self.end_s:g} s: {key} must be a finite number "
                                 f"{'> 0' if key == 'bandwidth_bps' else '>= 0'}, got {v!r}")

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Power:
    """A node on a battery: ``battery_wh`` capacity, ``solar_w`` from its panels in sunlight, ``compute_w`` drawn
    while it computes and ``idle_w`` otherwise; it stops computing when the charge would fall below
    ``reserve`` (a fraction of the capacity) and starts again once sunlit. ``charge`` is the fraction at the start."""

    battery_wh: float
    solar_w: float
    compute_w: float
    idle_w: float = 0.0
    reserve: float = 0.2
    charge: float = 1.0

    def __post_init__(self) -> None:
        for key in ("battery_wh", "solar_w", "compute_w", "idle_w"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise OrbitError(f"rotafx: power {key} must be a finite number of watts (hours) >= 0, got {v!r}")
        for key in ("reserve", "charge"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise OrbitError(f"rotafx: power {key} is a fraction of the battery, 0..1, got {v!r}")


@dataclass(frozen=True)
class Interval:
    """A piece ``[start_s, end_s)`` of the horizon where nothing changes: the links up (with their figures) and
    the devices that may compute."""

    start_s: float
    end_s: float
    links: Mapping[tuple[str, str], Window]
    available: frozenset[str]

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _spans(times: np.ndarray, flags: np.ndarray, refine: Any, tol_s: float) -> list[tuple[float, float]]:
    """The spans where ``flags`` holds, each edge refined by bisection of ``refine(t) -> bool`` to ``tol_s``."""
    out = []
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    start = float(times[0]) if flags[0] else None

    def edge(a: float, b: float, rising: bool) -> float:
        while b - a > tol_s:
            m = 0.5 * (a + b)
            if refine(m) == rising:
                b = m
            else:
                a = m
        return 0.5 * (a + b)

    for i in edges:
        a, b = float(times[i]), float(times[i + 1])
        if not flags[i]:  # rising
            start = edge(a, b, True)
        else:
            out.append((start, edge(a, b, False)))
            start = None
    if start is not None:
        out.append((start, float(times[-1])))
    return out


def contact_windows(sat: Satellite, station: GroundStation, start: Any, horizon_s: float, *,
                    bandwidth_bps: float | None = None, step_s: float = 10.0, tol_s: float = 0.1) -> list[Window]:
    """The spans in which ``sat`` is above ``station``'s minimum elevation, over ``horizon_s`` from ``start``.

    Each window's ``latency_ms`` is the light time over the slant range at the pass's highest point
    (a lower bound for the pass: the range at the minimum elevation is longer); ``bandwidth_bps`` is
    given (or left to the topology). Found on a grid of ``step_s`` and refined by bisection to ``tol_s``.
    """
    t0 = parse_time(start, "start")
    if not (horizon_s > 0 and math.isfinite(horizon_s)):
        raise OrbitError(f"rotafx: horizon_s must be a positive number of seconds, got {horizon_s!r}")
    grid = np.arange(0.0, horizon_s + step_s, step_s)
    grid[-1] = min(grid[-1], horizon_s)
    elev = lambda ts: elevation_deg(station, sat.positions(t0, ts), t0, ts)  # noqa: E731
    up = elev(grid) >= station.min_elevation_deg
    windows = []
    for a, b in _spans(grid, up, lambda t: bool(elev(np.array([t]))[0] >= station.min_elevation_deg), tol_s):
        ts = np.linspace(a, b, 64)
        rng = slant_range_km(station, sat.positions(t0, ts), t0, ts)
        windows.append(Window(a, b, bandwidth_bps, 1e3 * float(rng.min()) / SPEED_OF_LIGHT_KM_S))
    return windows


def sunlight(sat: Satellite, start: Any, horizon_s: float, *, step_s: float = 10.0,
             tol_s: float = 0.1) -> list[tuple[float, float]]:
    """The spans ``(start_s, end_s)`` in which ``sat`` is outside Earth's shadow."""
    t0 = parse_time(start, "start")
    grid = np.arange(0.0, horizon_s + step_s, step_s)
    grid[-1] = min(grid[-1], horizon_s)

    def lit(ts: np.ndarray) -> np.ndarray:
        return sunlit(sat.positions(t0, ts), sun_direction(*julian(t0, ts)))

    return _spans(grid, lit(grid), lambda t: bool(lit(np.array([t]))[0]), tol_s)


def _written(data: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """The links' windows and the devices' power and sunlit spans a schedule dict writes out."""
    windows: dict[tuple[str, str], list[Window]] = {}
    for i, link in enumerate(data.get("links", [])):
        if not isinstance(link, Mapping) or "src" not in link or "dst" not in link:
            raise OrbitError(f"rotafx: schedule links[{i}] must name its src and dst, got {link!r}")
        windows[(str(link["src"]), str(link["dst"]))] = [
            _window(w, f"schedule links[{i}] ({link['src']} -> {link['dst']}) windows[{j}]")
            for j, w in enumerate(link.get("windows", []))]
    power, lit = {}, {}
    for name, d in (data.get("devices") or {}).items():
        if not isinstance(d, Mapping):
            raise OrbitError(f"rotafx: schedule devices.{name} must be a mapping with power and sunlit")
        if "power" in d:
            try:
                power[name] = Power(**d["power"])
            except TypeError as e:
                raise OrbitError(f"rotafx: schedule devices.{name}.power: {e}; its keys are battery_wh, "
                                 f"solar_w, compute_w, idle_w, reserve, charge") from None
        if "sunlit" in d:
            lit[name] = [(float(a), float(b)) for a, b in d["sunlit"]]
    return windows, power, lit


def _satellite(name: str, spec: Any) -> Satellite:
    """A satellite node from ``{"tle": [line1, line2]}`` or a circular orbit ``{"altitude_km", "inclination_deg",
    "raan_deg", "phase_deg"}``."""
    if isinstance(spec, Mapping) and "tle" in spec:
        lines = spec["tle"]
        if not (isinstance(lines, (list, tuple)) and len(lines) == 2 and all(isinstance(x, str) for x in lines)):
            raise OrbitError(f"rotafx: schedule satellites.{name}.tle must be its two lines, got {lines!r}")
        return Satellite(name, lines[0], lines[1])
    keys = {"altitude_km", "inclination_deg", "raan_deg", "phase_deg"}
    if not isinstance(spec, Mapping) or not {"altitude_km", "inclination_deg"} <= set(spec) or set(spec) - keys:
        raise OrbitError(f"rotafx: schedule satellites.{name} must be {{'tle': [line1, line2]}} or a circular orbit "
                         f"with {', '.join(sorted(keys))} (altitude_km and inclination_deg required), got {spec!r}")
    return Satellite.circular(name, float(spec["altitude_km"]), float(spec["inclination_deg"]),
                              raan_deg=float(spec.get("raan_deg", 0.0)), phase_deg=float(spec.get("phase_deg", 0.0)))


def _station(name: str, spec: Any) -> GroundStation:
    keys = {"lat_deg", "lon_deg", "height_km", "min_elevation_deg"}
    if not isinstance(spec, Mapping) or not {"lat_deg", "lon_deg"} <= set(spec) or set(spec) - keys:
        raise OrbitError(f"rotafx: schedule stations.{name} must have lat_deg and lon_deg (and height_km, "
                         f"min_elevation_deg), got {spec!r}")
    return GroundStation(name, **{k: float(v) for k, v in spec.items()})


def _window(w: Any, where: str) -> Window:
    if not isinstance(w, Mapping) or "start_s" not in w or "end_s" not in w:
        raise OrbitError(f"rotafx: {where} must have start_s and end_s (seconds from the start), got {w!r}")
    unknown = sorted(set(w) - {"start_s", "end_s", "bandwidth_bps", "latency_ms"})
    if unknown:
        raise OrbitError(f"rotafx: {where}: unknown key(s) {unknown}; a window has start_s, end_s, bandwidth_bps, "
                         f"latency_ms")
    try:
        return Window(**{k: float(v) for k, v in w.items()})
    except (TypeError, ValueError):
        raise OrbitError(f"rotafx: {where}: every figure must be a number, got {w!r}") from None


def _inside(spans: Sequence[tuple[float, float]], t: float) -> bool:
    return any(a <= t < b for a, b in spans)


@dataclass
class Schedule:
    """Link windows and power over a horizon (see the module docstring)."""

    start: _dt.datetime
    horizon_s: float
    windows: dict[tuple[str, str], list[Window]] = field(default_factory=dict)
    power: dict[str, Power] = field(default_factory=dict)
    sunlit: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.start = parse_time(self.start, "start")
        if not (isinstance(self.horizon_s, (int, float)) and self.horizon_s > 0 and math.isfinite(self.horizon_s)):
            raise OrbitError(f"rotafx: horizon_s must be a positive number of seconds, got {self.horizon_s!r}")
        for link, ws in self.windows.items():
            ws.sort(key=lambda w: w.start_s)
            for a, b in zip(ws, ws[1:]):
                if b.start_s < a.end_s:
                    raise OrbitError(f"rotafx: link {link[0]} -> {link[1]}: windows {a.start_s:g}-{a.end_s:g} s and "
                                     f"{b.start_s:g}-{b.end_s:g} s overlap; merge them or give one bandwidth")
        for name in self.power:
            if name not in self.sunlit:
                raise OrbitError(f"rotafx: device {name!r} has a power model but no sunlit spans; compute them with "
                                 f"sunlight(sat, start, horizon_s) or give 'sunlit': [[start_s, end_s], ...]")

    @classmethod
    def from_orbits(cls, start: Any, horizon_s: float, *, satellites: Mapping[str, Satellite],
                    stations: Mapping[str, GroundStation], uplink_bps: float | None = None,
                    downlink_bps: float | None = None, power: Mapping[str, Power] | None = None,
                    step_s: float = 10.0) -> "Schedule":
        """The schedule of topology nodes that are satellites and ground stations: for every station node and
        satellite node, the uplink and downlink windows of their passes, and each satellite's sunlit spans.

        Args:
            satellites, stations: topology node name -> its orbit / its site.
            uplink_bps, downlink_bps: the links' bandwidth in a window (``None``: the topology's).
            power: satellite node -> its battery model.
        """
        windows: dict[tuple[str, str], list[Window]] = {}
        for g, station in stations.items():
            for s, sat in satellites.items():
                ws = contact_windows(sat, station, start, horizon_s, step_s=step_s)
                windows[(g, s)] = [Window(w.start_s, w.end_s, uplink_bps, w.latency_ms) for w in ws]
                windows[(s, g)] = [Window(w.start_s, w.end_s, downlink_bps, w.latency_ms) for w in ws]
        lit = {s: sunlight(sat, start, horizon_s, step_s=step_s) for s, sat in satellites.items()}
        return cls(start, horizon_s, windows=windows, power=dict(power or {}), sunlit=lit)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Schedule":
        """A schedule written out: ``{"start": "2026-12-03T00:00:00Z", "horizon_s": 86400, "links": [{"src": ...,
        "dst": ..., "windows": [{"start_s": 0, "end_s": 300, "bandwidth_bps": 1e8, "latency_ms": 3}]}],
        "devices": {"orbital0": {"power": {"battery_wh": ..., "solar_w": ..., "compute_w": ...},
        "sunlit": [[0, 3600]]}}}``."""
        if not isinstance(data, Mapping):
            raise OrbitError(f"rotafx: a schedule is a mapping with start, horizon_s, links, devices; got "
                             f"{type(data).__name__}")
        keys = ("start", "horizon_s", "links", "devices", "satellites", "stations", "uplink_bps", "downlink_bps")
        unknown = sorted(set(data) - set(keys))
        if unknown or "start" not in data or "horizon_s" not in data:
            raise OrbitError(f"rotafx: schedule: {'unknown key(s) ' + str(unknown) if unknown else 'start and horizon_s are required'}"
                             f"; its keys are {', '.join(keys)}")
        if "satellites" in data or "stations" in data:  # windows and sunlight from the orbits, the rest as written
            orbits = cls.from_orbits(data["start"], float(data["horizon_s"]),
                                     satellites={str(k): _satellite(str(k), v) for k, v in (data.get("satellites") or {}).items()},
                                     stations={str(k): _station(str(k), v) for k, v in (data.get("stations") or {}).items()},
                                     uplink_bps=data.get("uplink_bps"), downlink_bps=data.get("downlink_bps"))
            windows, power, lit = _written(data)
            return cls(orbits.start, orbits.horizon_s, windows={**orbits.windows, **windows}, power=power,
                       sunlit={**orbits.sunlit, **lit})
        windows, power, lit = _written(data)
        return cls(data["start"], float(data["horizon_s"]), windows=windows, power=power, sunlit=lit)

    def link_up(self, src: str, dst: str, t: float) -> Window | None:
        """The window of ``src -> dst`` at ``t`` (a window without figures for a link that is always up), else None."""
        ws = self.windows.get((src, dst))
        if ws is None:
            return Window(0.0, self.horizon_s)
        i = bisect.bisect_right([w.start_s for w in ws], t) - 1
        return ws[i] if i >= 0 and t < ws[i].end_s else None

    def battery(self, name: str, step_s: float = 10.0,
                load: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times, battery charge (Wh) and whether the node may compute: for a node that computes whenever it may,
        or, with ``load`` (the fraction of each step the node computes, one per time), for that load: the node
        draws ``idle_w`` plus ``(compute_w - idle_w)`` times its load, and may compute while that keeps the
        charge above the reserve (a step that would go below it draws ``idle_w`` only and may not compute)."""
        p = self.power[name]
        spans = self.sunlit[name]
        times = np.arange(0.0, self.horizon_s + step_s, step_s)
        charge = np.empty_like(times)
        may = np.empty(times.shape, dtype=bool)
        level, computing = p.charge * p.battery_wh, True
        floor = p.reserve * p.battery_wh
        if load is not None:
            for i, t in enumerate(times):
                sun = p.solar_w if _inside(spans, t) else 0.0
                busy = min(max(float(load[i]), 0.0), 1.0) if i < len(load) else 0.0
                next_level = level + (sun - p.idle_w - (p.compute_w - p.idle_w) * busy) * step_s / 3600.0
                charge[i], may[i] = level, next_level >= floor or busy == 0.0
                if not may[i]:
                    next_level = level + (sun - p.idle_w) * step_s / 3600.0
                level = min(max(next_level, 0.0), p.battery_wh)
            return times, charge, may
        for i, t in enumerate(times):
            lit = _inside(spans, t)
            if not computing and lit:
                computing = True  # back in sunlight: compute again
            draw = p.compute_w if computing else p.idle_w
            next_level = level + ((p.solar_w if lit else 0.0) - draw) * step_s / 3600.0
            if computing and next_level < floor:
                computing, draw = False, p.idle_w
                next_level = level + ((p.solar_w if lit else 0.0) - draw) * step_s / 3600.0
            charge[i], may[i] = level, computing
            level = min(max(next_level, 0.0), p.battery_wh)
        return times, charge, may

    def available_spans(self, name: str, step_s: float = 10.0) -> list[tuple[float, float]]:
        """When the node may compute (every moment for a node without a power model)."""
        if name not in self.power:
            return [(0.0, self.horizon_s)]
        times, _, may = self.battery(name, step_s)
        out, start = [], None
        for t, m in zip(times, may):
            if m and start is None:
                start = float(t)
            elif not m and start is not None:
                out.append((start, float(t)))
                start = None
        if start is not None:
            out.append((start, self.horizon_s))
        return out

    def intervals(self, devices: Iterable[str], step_s: float = 10.0) -> list[Interval]:
        """The horizon cut where any window opens or closes or any node's availability changes."""
        devices = list(devices)
        avail = {d: self.available_spans(d, step_s) for d in devices}
        cuts = {0.0, float(self.horizon_s)}
        for ws in self.windows.values():
            cuts.update(t for w in ws for t in (w.start_s, w.end_s) if 0 < t < self.horizon_s)
        for spans in avail.values():
            cuts.update(t for a, b in spans for t in (a, b) if 0 < t < self.horizon_s)
        edges = sorted(cuts)
        out = []
        for a, b in zip(edges, edges[1:]):
            mid = 0.5 * (a + b)
            links = {k: w for k in self.windows if (w := self.link_up(*k, mid)) is not None}
            out.append(Interval(a, b, links, frozenset(d for d in devices if _inside(avail[d], mid))))
        return out
