"""Pictures of a plan (matplotlib Figures, object-oriented API, no pyplot state); matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..estimate import Estimate
from ..profile import ModelProfile
from ..topology import Topology
from .data import AXES, breakdown_data, day_data, placement_data, timeline_data, tradeoffs_data

__all__ = ["placement", "breakdown", "timeline", "tradeoffs", "day", "save"]

_KIND_COLOR = {"ground": "#4c72b0", "orbital": "#dd8452", "uplink": "#55a868", "downlink": "#c44e52",
               "isl": "#8172b3", "link": "#937860", "propagation": "#bbbbbb", "token return": "#da8bc3",
               "ground compute": "#4c72b0", "orbital compute": "#dd8452", "ground transfer": "#937860",
               "uplink transfer": "#55a868", "downlink transfer": "#c44e52", "isl transfer": "#8172b3",
               "sunlight": "#f2c14e", "eclipse": "#555555", "no route": "#bbbbbb", "rejected": "#c44e52",
               "delayed": "#8172b3"}
_MEM = (("weights", "#4c72b0"), ("KV cache", "#dd8452"), ("activations", "#55a868"))


def _new_figure(width: float, height: float) -> Any:
    """A Figure on its own Agg canvas (no pyplot), or the install hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("rotafx: plotting needs matplotlib: pip install rotafx[plot]") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _color(name: str, i: int) -> str:
    return _KIND_COLOR.get(name, f"C{i % 10}")


def placement(partition_or_estimate: Any, topology: Topology | Mapping[str, Any] | str | None = None,
              profile: ModelProfile | None = None, *, title: str | None = None, skip_empty: bool = False) -> Any:
    """The chain left to right: each node's layers, its memory (weights / KV cache / activations) against
    its capacity, and each hop's bytes and ms.

    Args:
        partition_or_estimate: a :class:`~rotafx.Partition`, or an :class:`~rotafx.Estimate` with
            ``topology`` and ``profile``.
        title: the figure's title (default: the request's latency).
        skip_empty: leave out stages that hold no layer (else drawn grey).
    Returns:
        a ``matplotlib.figure.Figure``.
    Raises:
        ImportError: matplotlib is missing (``pip install rotafx[plot]``).

    >>> from rotafx import ModelProfile, PartitionOptimizer
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> fig = placement(PartitionOptimizer(solver="dp").optimize(prof, "seed"))
    >>> len(fig.axes)
    2
    """
    data = placement_data(partition_or_estimate, topology, profile)
    nodes = [n for n in data.nodes if not (skip_empty and n.empty)]
    pos = {n.stage: i for i, n in enumerate(nodes)}
    fig = _new_figure(max(8.0, 2.3 * len(nodes)), 6.5)
    chain, mem = fig.subplots(2, 1, height_ratios=[1.1, 1.0])
    chain.set_xlim(-0.5, len(nodes) - 0.5)
    chain.set_ylim(0, 1)
    chain.axis("off")
    for i, n in enumerate(nodes):
        face = "#eeeeee" if n.empty else _color(n.kind, i)
        chain.add_patch(_box(i, face, n.empty))
        chain.text(i, 0.84, f"{n.node}\n({n.kind})", ha="center", va="center", fontsize=9, weight="bold",
                   color="#888888" if n.empty else "black", gid=f"node:{n.node}")
        chain.text(i, 0.52, n.label, ha="center", va="center", fontsize=7.5,
                   color="#888888" if n.empty else "black", gid=f"layers:{n.node}")
    for j, ln in enumerate(data.links):
        a, b = pos.get(ln.src_stage), pos.get(ln.dst_stage)
        if a is None or b is None:
            continue
        y = 0.22 if j % 2 == 0 or abs(b - a) <= 1 else 0.06
        chain.annotate("", xy=(b - 0.36 * _sign(b - a), y + 0.1), xytext=(a + 0.36 * _sign(b - a), y + 0.1),
                       arrowprops={"arrowstyle": "->", "color": _color(ln.kind, j)})
        chain.text((a + b) / 2, y, ln.label, ha="center", va="center", fontsize=7,
                   bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": _color(ln.kind, j)},
                   gid=f"link:{ln.src}->{ln.dst}")
    x = range(len(nodes))
    bottom = [0.0] * len(nodes)
    for (label, color), attr in zip(_MEM, ("weights_bytes", "kv_bytes", "activation_bytes")):
        h = [getattr(n, attr) / 1e9 for n in nodes]
        mem.bar(x, h, 0.55, bottom=bottom, label=label, color=color, gid=label)
        bottom = [u + v for u, v in zip(bottom, h)]
    mem.scatter(x, [n.capacity_bytes / 1e9 for n in nodes], marker="_", s=1800, color="black", zorder=3,
                label="capacity")
    mem.set_xticks(list(x), [n.node for n in nodes], fontsize=8)
    mem.set_ylabel("memory (GB)")
    mem.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=0.3)
    fig.suptitle(title or f"placement: {data.total_ms:,.1f} ms per request", fontsize=11)
    return fig


def _sign(v: float) -> float:
    return 1.0 if v >= 0 else -1.0


def _box(i: int, face: str, empty: bool) -> Any:
    from matplotlib.patches import FancyBboxPatch
    return FancyBboxPatch((i - 0.4, 0.36), 0.8, 0.6, boxstyle="round,pad=0.01", fc=face, alpha=0.35,
                          ec="#aaaaaa" if empty else "black", ls="--" if empty else "-")


def breakdown(estimates: Mapping[str, Estimate] | Estimate, *, title: str | None = None) -> Any:
    """Stacked bars of each estimate's parts (compute by node kind, transfer by link kind, propagation), one
    bar per placement; for generation estimates a second panel: the decode step and the token's trip back (TPOT).

    Args:
        estimates: an :class:`~rotafx.Estimate` or several by name.
        title: the figure's title.
    Returns:
        a ``matplotlib.figure.Figure``.
    Raises:
        TypeError: something else than estimates. ImportError: matplotlib is missing.

    >>> from rotafx import LatencyEstimator, ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> len(breakdown({"ground": LatencyEstimator("seed").estimate([0], prof)}).axes)
    1
    """
    data = breakdown_data(estimates)
    panels = [("TTFT (prefill)" if data.decode_bars else "per request", data.bars)]
    if data.decode_bars:
        panels.append(("TPOT (decode step + token return)", data.decode_bars))
    fig = _new_figure(max(6.0, 1.6 * len(data.bars)) * len(panels), 4.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = list(dict.fromkeys(k for _, bars in panels for b in bars for k in b.parts))
    for ax, (label, bars) in zip(axes, panels):
        bottom = [0.0] * len(bars)
        for i, part in enumerate(names):
            h = [b.parts.get(part, 0.0) for b in bars]
            ax.bar(range(len(bars)), h, 0.6, bottom=bottom, label=part, color=_color(part, i), gid=part)
            bottom = [u + v for u, v in zip(bottom, h)]
        for i, b in enumerate(bars):
            ax.text(i, b.total_ms, f"{b.total_ms:,.1f} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(bars)), [b.label for b in bars], fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.12)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title)
    return fig


def timeline(estimate: Estimate, requests: int = 4, *, phase: str = "request",
             measured: Sequence[tuple[str, int, float, float]] = (), title: str | None = None) -> Any:
    """A Gantt chart of ``requests`` pipelined requests (or decode steps) on each stage and link.

    Args:
        estimate: an :class:`~rotafx.Estimate`.
        requests: how many requests (decode steps).
        phase: ``"request"`` or ``"decode"`` (a generation estimate's decode steps).
        measured: spans ``(track, request, start_ms, end_ms)`` of a measured run, drawn hatched under
            the estimate's on the same track (see :func:`rotafx.plot.timeline_data`).
    Returns:
        a ``matplotlib.figure.Figure``.
    Raises:
        ValueError: see :func:`rotafx.plot.timeline_data`. ImportError: matplotlib is missing.

    >>> from rotafx import LatencyEstimator, ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> len(timeline(LatencyEstimator("seed").estimate([0], prof), 2).axes)
    1
    """
    data = timeline_data(estimate, requests, phase=phase, measured=measured)
    row = {t: i for i, t in enumerate(data.tracks)}
    fig = _new_figure(10.0, 1.2 + 0.45 * len(data.tracks))
    ax = fig.subplots()
    for s in data.spans:
        ax.broken_barh([(s.start_ms, s.end_ms - s.start_ms)], (row[s.track] - 0.35, 0.7 if not data.measured
                                                              else 0.4), color=f"C{s.request % 10}",
                       gid=f"span:{s.track}:{s.request}")
    for s in data.measured:
        ax.broken_barh([(s.start_ms, s.end_ms - s.start_ms)], (row[s.track] + 0.05, 0.3), facecolor="none",
                       edgecolor=f"C{s.request % 10}", hatch="///", gid=f"measured:{s.track}:{s.request}")
    ax.set_yticks(range(len(data.tracks)), list(data.tracks), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    what = "decode steps" if phase == "decode" else "requests"
    ax.set_title(title or f"{requests} {what} pipelined: {data.end_ms:,.1f} ms"
                 + (" (hatched: measured)" if data.measured else ""), fontsize=10)
    return fig


def tradeoffs(profile: ModelProfile, topology: Topology | Mapping[str, Any] | str, x: str = "latency",
              y: str = "energy", points: int = 7, *, chosen: Any = None, solver: str = "dp",
              title: str | None = None) -> Any:
    """The Pareto front of two terms over proven-optimal ``balance`` plans (see :func:`rotafx.plot.tradeoffs_data`).

    Args:
        profile, topology, x, y, points, solver: as :func:`rotafx.plot.tradeoffs_data`.
        chosen: a :class:`~rotafx.Partition` marked with a star.
    Returns:
        a ``matplotlib.figure.Figure``.
    Raises:
        ValueError: an unknown term. ImportError: matplotlib is missing.

    >>> from rotafx import ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> len(tradeoffs(prof, "seed", points=2).axes)
    1
    """
    data = tradeoffs_data(profile, topology, x, y, points, chosen=chosen, solver=solver)
    fig = _new_figure(7.0, 5.0)
    ax = fig.subplots()
    ax.plot([p.x for p in data.points], [p.y for p in data.points], "o-", color="C0", label="optimal plans",
            gid="front")
    if data.chosen is not None:
        ax.plot(*data.chosen, "*", ms=16, color="C3", label="chosen plan", gid="chosen")
    ax.set_xlabel(AXES[x])
    ax.set_ylabel(AXES[y])
    ax.legend(fontsize=8)
    ax.set_title(title or f"{AXES[y]} vs {AXES[x]}: the Pareto front", fontsize=10)
    return fig


_DAY_PANELS = ("windows and sunlight", "route", "battery (Wh)", "per request")


def day(simulation: Any, schedule: Any = None, plan: Any = None, ax: Sequence[Any] | None = None, *,
        title: str | None = None) -> Any:
    """A simulated day in four panels over the same time axis (hours): each satellite's sunlight and each link's
    contact windows, the route in force (ground only or through which satellites), each battery's charge (Wh),
    and each served request's TPOT (or latency, without generation) coloured by ground or orbit, with the
    rejected (and, given the plan, delayed) arrivals marked.

    Args:
        simulation: a :class:`~rotafx.orbits.simulate.Simulation`.
        schedule, plan: the day's :class:`~rotafx.orbits.Schedule` and
            :class:`~rotafx.orbits.horizon.HorizonPlan` (see :func:`rotafx.plot.day_data`); a panel
            without its data says so.
        ax: four matplotlib Axes to draw into (top to bottom), else a new figure.
    Returns:
        a ``matplotlib.figure.Figure``.
    Raises:
        TypeError, ValueError: see :func:`rotafx.plot.day_data`; ``ax`` not four Axes. ImportError: matplotlib.

    >>> from rotafx.orbits.simulate import Served, Simulation
    >>> sim = Simulation([Served(5.0, 5.0, 120.0, float("nan"), False, {})], 0, [], 3600.0, 0)
    >>> len(day(sim).axes)
    4
    """
    data = day_data(simulation, schedule, plan)
    rows = data.rows
    labels = list(dict.fromkeys(r.label for r in data.routes))  # one row per distinct route
    if ax is None:
        fig = _new_figure(11.0, 5.5 + 0.3 * (len(rows) + len(labels)))
        axes = fig.subplots(4, 1, sharex=True, height_ratios=[max(1.0, 0.45 * len(rows)),
                                                               max(0.7, 0.4 * len(labels)), 1.2, 1.6])
    else:
        axes = list(ax)
        if len(axes) != 4:
            raise ValueError(f"rotafx: day() draws four panels ({', '.join(_DAY_PANELS)}); ax= must be four Axes, "
                             f"got {len(axes)}")
        fig = axes[0].figure
    h = 1 / 3600.0
    win, route, bat, req = axes
    for i, (label, parts) in enumerate(rows):
        for kind, spans in parts:
            win.broken_barh([(a * h, (b - a) * h) for a, b in spans], (i - 0.35, 0.7),
                            color=_color(kind, i), lw=0, gid=f"{kind}:{label}", label=kind)
    win.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    win.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    _legend_once(win)
    for r in data.routes:
        i = labels.index(r.label)
        kind = "no route" if r.nodes is None else "orbital" if r.via_orbit else "ground"
        route.broken_barh([(r.start_s * h, (r.end_s - r.start_s) * h)], (i - 0.35, 0.7), color=_color(kind, i),
                          lw=0, gid=f"route:{r.label}")
    route.set_yticks(range(len(labels)), labels, fontsize=7)
    route.set_ylim(max(len(labels), 1) - 0.5, -0.5)
    for i, (name, (times, charge)) in enumerate(data.battery.items()):
        bat.plot(times * h, charge, color=f"C{i % 10}", lw=1.2, label=name, gid=f"battery:{name}")
    bat.set_ylabel("charge (Wh)", fontsize=8)
    if data.battery:
        bat.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for orbit, kind in ((False, "ground"), (True, "orbital")):
        pts = [p for p in data.requests if p.via_orbit == orbit]
        if pts:
            req.scatter([p.arrival_s * h for p in pts], [p.value_ms for p in pts], s=6, color=_color(kind, 0),
                        label=f"{'through orbit' if orbit else 'ground'} ({len(pts)})", gid=f"requests:{kind}")
    marks = req.get_xaxis_transform()  # x in hours, y in the panel's height
    for what, times, y in (("rejected", data.rejected, 0.96), ("delayed", data.delayed, 0.9)):
        if times:
            req.scatter([t * h for t in times], [y] * len(times), marker="x" if what == "rejected" else "|",
                        s=14, color=_color(what, 0), transform=marks, label=f"{what} ({len(times)})", gid=what)
    req.set_ylabel("TPOT (ms)" if data.metric == "tpot_ms" else "latency (ms)", fontsize=8)
    if data.requests and data.metric == "latency_ms" and min(p.value_ms for p in data.requests) > 0 and (
            max(p.value_ms for p in data.requests) > 100 * min(p.value_ms for p in data.requests)):
        req.set_yscale("log")  # a wait for a route dwarfs the route's own latency
    if data.requests or data.rejected or data.delayed:
        req.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    req.margins(y=0.15)  # room for the marks along the top
    req.set_xlabel("time (hours)")
    req.set_xlim(0, data.horizon_s * h)
    missing = {win: None if rows else "no schedule given" if schedule is None else "no scheduled link or sunlight",
               route: None if data.routes else "no plan given",
               bat: None if data.battery else "no battery in the schedule",
               req: None if data.requests or data.rejected else "no request"}
    for a, name in zip(axes, _DAY_PANELS):
        a.set_title(name, fontsize=9, loc="left")
        if missing[a]:
            a.text(0.5, 0.5, missing[a], transform=a.transAxes, ha="center", va="center", fontsize=8,
                   color="#888888")
            a.set_yticks([])
    n = len(data.requests)
    orbit = sum(p.via_orbit for p in data.requests)
    fig.suptitle(title or f"{data.horizon_s * h:,.3g} h simulated: {n} served ({orbit} through orbit), "
                          f"{data.delayed_count} delayed, {len(data.rejected)} rejected", fontsize=10)
    return fig


def _legend_once(ax: Any) -> None:
    """A legend of the panel's kinds, each once."""
    handles, names = ax.get_legend_handles_labels()
    keep = dict(zip(names, handles))
    if keep:
        ax.legend(list(keep.values()), list(keep), fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def save(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as PNG or SVG, by the path's suffix.

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: where, ending in ``.png`` or ``.svg`` (an SVG keeps its labels as text).
    Returns:
        the path written.
    Raises:
        ValueError: another suffix.

    >>> import tempfile, os
    >>> from rotafx import LatencyEstimator, ModelProfile
    >>> prof = ModelProfile.from_layers([{"name": "l0", "params": 10, "flops": 1e9, "activation_bytes": 10}])
    >>> out = save(breakdown(LatencyEstimator("seed").estimate([0], prof)), os.path.join(tempfile.mkdtemp(), "b.svg"))
    >>> out.suffix
    '.svg'
    """
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"rotafx: save() writes .png or .svg, not {p.suffix or 'a path without a suffix'!r} "
                         f"({p}); name the file e.g. {p.with_suffix('.png').name}")
    import matplotlib

    p.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # an SVG's labels stay text: searchable, checkable
        fig.savefig(p, format=fmt, dpi=fig.dpi)
    return p
