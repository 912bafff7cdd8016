"""A trace's timeline (``rotafx plot timeline run.json``) and a plan directory's pictures, without the model.

A trace written by rotafx (:mod:`rotafx.runtime.tracing`) holds what happened (``measured``) and what
the plan predicted (``estimate``) on the same tracks; :func:`trace_timeline` draws both on one time
axis, one row per track. A plan directory keeps its topology, its estimate and its layers' names, not
the profile: :func:`plan_figures` rebuilds what the pictures need from ``plan.json`` (each node's
memory is the plan's total for it, without the split into weights, KV cache and activations).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..estimate import Estimate, estimate_from_dict
from ..profile import ModelProfile
from ..topology import Topology

__all__ = ["trace_timeline", "plan_figures"]


def trace_timeline(spans: Sequence[Any], *, title: str | None = None, requests: int | None = None) -> Any:
    """One row per track of the trace: measured spans solid, the estimate's hatched under them, on one ms axis.

    Args:
        spans: :func:`rotafx.runtime.tracing.read_trace`'s spans.
        requests: draw only the first this many requests (all by default).

    Raises:
        ValueError: no span to draw.
    """
    from .figures import _new_figure

    spans = [s for s in spans if requests is None or 0 <= s.request < requests]
    if not spans:
        raise ValueError("rotafx: the trace has no spans to draw (was anything run while it was recording?)")
    tracks = list(dict.fromkeys(s.track for s in sorted(spans, key=lambda s: (s.track != "requests", s.start_ms))))
    row = {t: i for i, t in enumerate(tracks)}
    fig = _new_figure(10, 0.45 * len(tracks) + 1.5)
    ax = fig.add_subplot()
    t0 = min(s.start_ms for s in spans)
    for s in spans:
        measured = s.process == "measured"
        ax.broken_barh([(s.start_ms - t0, max(s.ms, 1e-6))], (row[s.track] - (0.4 if measured else 0.05), 0.35),
                       facecolor=f"C{s.request % 10}" if measured else "none", edgecolor=f"C{s.request % 10}",
                       hatch=None if measured else "///", gid=f"{s.process}:{s.track}:{s.request}")
    ax.set_yticks(range(len(tracks)), tracks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first span (ms)")
    ax.set_title(title or "trace: measured (solid) and the estimate (hatched), colour by request")
    return fig


def plan_figures(plan_dir: str | os.PathLike[str]) -> tuple[Estimate, Topology, ModelProfile]:
    """What the pictures need from a plan directory: its estimate, its topology and a profile of its layers'
    names (each node's memory is the plan's total for it)."""
    from ..plan.schema import read_plan

    spec = read_plan(plan_dir)
    est = estimate_from_dict(spec.estimate or {})
    names = (spec.partition or {}).get("layers") or [l.name for l in est.by_layer]
    profile = ModelProfile.from_layers([{"name": str(n)} for n in names], name=(spec.meta or {}).get("model") or "plan")
    return est, Topology.from_dict(spec.topology), profile


def _is_trace(path: Path) -> bool:
    return path.is_file() and path.suffix == ".json" and path.name != "plan.json"
