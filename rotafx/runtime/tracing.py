"""Traces of runs: every stage's compute and every hop of each request as Chrome trace events.

The file is the Trace Event Format that ``torch.profiler`` exports and ``ui.perfetto.dev`` or
``chrome://tracing`` open: ``{"traceEvents": [...], "displayTimeUnit": "ms"}``. Two processes:

* ``measured`` (pid 1): a ``requests`` track with one span per call, one track per stage
  (``stage 1: orbital0 (cuda:1)``) with its compute, and one per link (``link ground0 -> orbital0``)
  with each transfer and each emulated link delay;
* ``estimate`` (pid 2): the same tracks with the cost model's spans for each request, laid end to
  end from the moment the measured request started (what the plan predicts beside what happened).

Each span is a complete event (``"ph": "X"``), times in microseconds from the trace's start, with
``args.request`` the request's number. :meth:`Trace.write` rewrites the whole file (to a temporary
file renamed into place), so the file on disk is complete and valid after every call.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Trace", "Span", "StageTrack", "read_trace", "predicted_spans", "MEASURED", "ESTIMATE", "REQUESTS"]

MEASURED, ESTIMATE = 1, 2
REQUESTS = "requests"
_PROCESS_NAMES = {MEASURED: "measured", ESTIMATE: "estimate"}


@dataclass(frozen=True)
class Span:
    """One span of a trace: ``process`` (``"measured"`` or ``"estimate"``), ``track``, ``name``, ``request`` and
    its times in ms from the trace's start."""

    process: str
    track: str
    name: str
    request: int
    start_ms: float
    end_ms: float

    @property
    def ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class StageTrack:
    """A stage as :func:`predicted_spans` names it: chain index, node, device."""

    index: int
    node: str
    device: Any


def stage_track(index: int, node: str, device: Any) -> str:
    """The track name of a stage: ``stage 1: orbital0 (cuda:1)``."""
    return f"stage {index}: {node} ({device})"


def link_track(src: str, dst: str) -> str:
    """The track name of the link a hop crosses: ``link ground0 -> orbital0``."""
    return f"link {src} -> {dst}"


class Trace:
    """Chrome trace events of a pipeline's requests, written whole to ``path`` after each request.

    >>> import tempfile, json, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.json"
    >>> t = Trace(p)
    >>> r = t.begin()
    >>> t.span("stage 0: cpu0 (cpu)", "compute", r, t.now(), t.now())
    >>> t.end(r)
    >>> sorted({e["ph"] for e in json.loads(p.read_text())["traceEvents"]})
    ['M', 'X']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"rotafx: trace {str(self.path)!r} is a directory; name the .json file to write")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._t0 = time.perf_counter()
        self._events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}}
            for pid, name in _PROCESS_NAMES.items()]
        self._tids: dict[tuple[int, str], int] = {}
        self._starts: dict[int, float] = {}
        self.requests = 0
        self.write()  # an empty, valid trace from the start

    def now(self) -> float:
        """Seconds since the trace began."""
        return time.perf_counter() - self._t0

    def _tid(self, pid: int, track: str) -> int:
        key = (pid, track)
        if key not in self._tids:
            tid = self._tids[key] = len(self._tids) + 1
            self._events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": track}})
            self._events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                                 "args": {"sort_index": tid}})
        return self._tids[key]

    def begin(self) -> int:
        """Start a request; its number."""
        r = self.requests
        self.requests += 1
        self._starts[r] = self.now()
        return r

    def span(self, track: str, name: str, request: int, start_s: float, end_s: float, *, process: int = MEASURED,
             **args: Any) -> None:
        """Record a span of ``request`` on ``track`` (times in seconds since the trace began)."""
        self._events.append({"name": name, "cat": _PROCESS_NAMES[process], "ph": "X", "pid": process,
                             "tid": self._tid(process, track), "ts": round(1e6 * start_s, 3),
                             "dur": round(1e6 * max(end_s - start_s, 0.0), 3), "args": {"request": request, **args}})

    def end(self, request: int, predicted: Sequence[tuple[str, str, float]] = (), *, end_s: float | None = None,
            kind: str = "request", write: bool = True) -> None:
        """Close ``request`` (its span ``"{kind} {request}"`` on the ``requests`` track, up to ``end_s`` or now;
        ``kind``: ``request``, or a generation step's program, ``prefill`` or ``decode``), lay the ``predicted``
        spans ``(track, name, ms)`` end to end from its start on the estimate's tracks, and write the file (unless
        ``write`` is false: a caller closing many requests at once writes once, with :meth:`write`)."""
        start = self._starts.pop(request)
        label = f"{kind} {request}"
        self.span(REQUESTS, label, request, start, self.now() if end_s is None else end_s)
        t = start
        for track, name, ms in predicted:
            if not math.isfinite(ms) or ms <= 0:
                continue
            self.span(track, name, request, t, t + ms / 1e3, process=ESTIMATE)
            t += ms / 1e3
        self.span(REQUESTS, label, request, start, t, process=ESTIMATE)
        if write:
            self.write()

    def write(self) -> None:
        """Write every event so far to ``path`` (a temporary file renamed into place: never half a file)."""
        doc = {"traceEvents": self._events, "displayTimeUnit": "ms",
               "otherData": {"producer": "rotafx", "processes": _PROCESS_NAMES}}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def predicted_spans(estimate: Any, stages: Sequence[Any]) -> list[tuple[str, str, float]]:
    """The cost model's spans ``(track, name, ms)`` of one request, in the order it runs them: each stage's
    compute where its first layer is, each hop at the cut it crosses (before the layer after the cut).

    ``estimate``: an :class:`~rotafx.estimate.Estimate` or a plan's ``estimate`` dict; ``stages``: objects
    with ``.index`` (chain stage), ``.node`` and ``.device``: the stages that run.
    """
    track = {st.index: stage_track(st.index, st.node, st.device) for st in stages}
    first: dict[int, int] = {}
    ms: dict[int, float] = {}
    if isinstance(estimate, dict):  # a plan.json's estimate
        layers = [(int(r["index"]), int(r["stage"]), float(r["ms"])) for r in estimate.get("by_layer", [])]
        hops = [(int(h["boundary"]), h["src"], h["dst"], int(h["bytes"]), float(h["transfer_ms"]) +
                 float(h["propagation_ms"])) for h in estimate.get("transfers", [])]
    else:
        layers = [(le.index, le.stage, le.total_ms) for le in estimate.by_layer]
        hops = [(h.boundary, h.src, h.dst, h.bytes, h.transfer_ms + h.propagation_ms) for h in estimate.transfers]
    for index, stage, t in layers:
        first.setdefault(stage, index)
        ms[stage] = ms.get(stage, 0.0) + t
    events = [(first[s], 1, track.get(s, f"stage {s}"), "compute", ms[s]) for s in first]
    events += [(b, 0, link_track(src, dst), f"transfer {n:,} B", t) for b, src, dst, n, t in hops]
    return [(t, name, v) for _, _, t, name, v in sorted(events, key=lambda e: (e[0], e[1]))]


def read_trace(path: str | os.PathLike[str]) -> list[Span]:
    """The spans of a trace file written by rotafx (or any Chrome trace with complete events), in time order.

    Raises:
        ValueError: the file is not JSON, or not a trace (no ``traceEvents`` list), naming the file.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"rotafx: trace {str(p)!r} is not JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if not isinstance(events, list):
        raise ValueError(f"rotafx: {str(p)!r} is not a Chrome trace: it has no 'traceEvents' list")
    processes = {e.get("pid"): e.get("args", {}).get("name") for e in events
                 if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e.get("pid"), e.get("tid")): e.get("args", {}).get("name") for e in events
               if isinstance(e, dict) and e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = []
    for e in events:
        if not isinstance(e, dict) or e.get("ph") != "X":
            continue
        try:
            start, dur = float(e["ts"]) / 1e3, float(e.get("dur", 0.0)) / 1e3
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"rotafx: trace {str(p)!r} has a span without a numeric 'ts'/'dur': {str(e)[:120]}") from None
        pid, tid = e.get("pid"), e.get("tid")
        args = e.get("args") if isinstance(e.get("args"), dict) else {}
        spans.append(Span(process=str(processes.get(pid, pid)), track=str(threads.get((pid, tid), tid)),
                          name=str(e.get("name", "")), request=int(args.get("request", -1)), start_ms=start,
                          end_ms=start + dur))
    return sorted(spans, key=lambda s: (s.start_ms, s.end_ms))
