"""Link emulation: delay each hop as the topology's links would (serialisation at ``bandwidth_bps`` plus ``latency_ms``).

A hop between two processes crosses one or more topology links (more than one when it
relays through empty chain stages). It is emulated store-and-forward, the way the
estimator prices it: ``Σ bytes × 8 / bandwidth_bps + latency_ms``. A link carries one
message at a time: a message handed to a busy link waits until the previous one has been
serialised (so a bandwidth-bound pipeline is as slow as its link), while the propagation
delay overlaps with the next message (so latency does not cut throughput).

The receiving side applies the delay (:class:`LinkEmulator`): the sender stamps each
message with the wall-clock time it was handed to the link, and the receiver holds it
until it would have arrived. On one machine every process shares the clock; across hosts
the clocks must be synchronised (NTP) for emulation to be meaningful.

Links can also go down (:class:`LinkWindows`): each link's windows, in schedule seconds, and how fast schedule
time runs against the wall clock. A message that would arrive while a link it crosses is out of every window is
lost. This module reads windows as plain data (pairs of seconds, or objects with ``start_s``/``end_s`` such as
:class:`rotafx.orbits.Window`): it imports nothing of the orbits package, so a stage process does not load it.

>>> links = [{"bandwidth_bps": 8e6, "latency_ms": 25.0}]
>>> round(hop_delay_s(links, 1_000_000), 3)   # 1 MB at 8 Mbit/s, plus 25 ms
1.025
"""

from __future__ import annotations

import bisect
import json
import math
import time
from typing import Any, Mapping, Sequence

from ..wire import serialization_ms

__all__ = ["hop_delay_s", "serialization_s", "propagation_s", "LinkEmulator", "LinkWindows"]


def serialization_s(links: Sequence[Mapping[str, Any]], nbytes: int) -> float:
    """Seconds the hop's links take to put ``nbytes`` on the wire, one link after the other."""
    return sum(serialization_ms(nbytes, float(l["bandwidth_bps"])) for l in links) / 1e3


def propagation_s(links: Sequence[Mapping[str, Any]]) -> float:
    """Seconds of one-way latency along the hop's links."""
    return sum(float(l.get("latency_ms", 0.0)) for l in links) / 1e3


def hop_delay_s(links: Sequence[Mapping[str, Any]], nbytes: int) -> float:
    """Seconds one message of ``nbytes`` takes over the hop when the links are idle."""
    return serialization_s(links, nbytes) + propagation_s(links)


class LinkEmulator:
    """The receiving end of one emulated hop: :meth:`deliver` waits until a message would have arrived.

    >>> em = LinkEmulator([{"bandwidth_bps": 1e9, "latency_ms": 0.0}])
    >>> em.arrival(sent_at=100.0, nbytes=125_000_000)   # 1 Gbit at 1 Gbit/s
    101.0
    >>> em.arrival(sent_at=100.0, nbytes=125_000_000)   # queued behind the first message
    102.0
    """

    def __init__(self, links: Sequence[Mapping[str, Any]], *, enabled: bool = True) -> None:
        self.links = [dict(l) for l in links]
        self.enabled = enabled and bool(self.links)
        self._free_at = 0.0  # when the hop's links finish serialising the previous message

    def arrival(self, sent_at: float, nbytes: int) -> float:
        """Wall-clock time (s) at which a message handed to the hop at ``sent_at`` arrives."""
        start = max(sent_at, self._free_at)
        done = start + serialization_s(self.links, nbytes)
        self._free_at = done
        return done + propagation_s(self.links)

    def deliver(self, sent_at: float, nbytes: int) -> float:
        """Sleep until the message has arrived; returns the seconds slept."""
        return self.wait_for(sent_at, nbytes)[1]

    def wait_for(self, sent_at: float, nbytes: int) -> tuple[float, float]:
        """Sleep until the message has arrived; (when it arrived, wall clock; seconds slept). A hop without
        links (or disabled) delivers at once: ``(sent_at, 0.0)``."""
        if not self.enabled:
            return sent_at, 0.0
        at = self.arrival(sent_at, nbytes)
        wait = at - time.time()
        if wait > 0:
            time.sleep(wait)
            return at, wait
        return at, 0.0


MAX_WINDOWS = 100_000  # windows over all links: more is a mistake (or a peer's attempt to stall a stage)
MAX_JSON = 1 << 24  # characters of a windows table read from a peer


class LinkWindows:
    """When each link is up, ``[start_s, end_s)`` in schedule seconds, and ``time_scale`` schedule seconds per wall
    second. A link not listed is always up; a link listed with no windows is always down.

    Args:
        windows: ``(src, dst) -> [(start_s, end_s), ...]`` (pairs, or objects with ``start_s`` and ``end_s`` such as
            :class:`rotafx.orbits.Window`); each window a finite span that ends after it starts, the windows of one
            link not overlapping (touching is fine).
        time_scale: schedule seconds per wall-clock second (600: ten schedule minutes a second).

    Raises:
        ValueError: a malformed entry, named (a key that is not a pair of node names, a window that ends before it
            starts or is not finite, two windows of a link that overlap, a time scale that is not a positive number,
            more than 100,000 windows).

    >>> w = LinkWindows({("ground0", "orbital0"): [(0.0, 300.0), (900.0, 1200.0)]}, time_scale=600)
    >>> w.up("ground0", "orbital0", 299.9), w.up("ground0", "orbital0", 300.0), w.up("orbital0", "ground1", 5.0)
    (True, False, True)
    >>> w.down([{"src": "ground0", "dst": "orbital0"}], 600.0)
    ['ground0 -> orbital0']
    >>> LinkWindows.from_json(w.to_json()) == w
    True
    """

    def __init__(self, windows: Mapping[Any, Sequence[Any]], time_scale: float = 1.0) -> None:
        if not isinstance(windows, Mapping):
            raise ValueError(f"rotafx: link windows must map (src, dst) to a list of (start_s, end_s), got "
                             f"{type(windows).__name__}")
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or \
                not (math.isfinite(time_scale) and time_scale > 0):
            raise ValueError(f"rotafx: time_scale must be a positive number of schedule seconds per second, got "
                             f"{time_scale!r}")
        self.time_scale = float(time_scale)
        self.windows: dict[tuple[str, str], tuple[tuple[float, float], ...]] = {}
        total = 0
        for key, ws in windows.items():
            if not (isinstance(key, (tuple, list)) and len(key) == 2 and all(isinstance(k, str) and k for k in key)):
                raise ValueError(f"rotafx: a link of the windows is a (src, dst) pair of node names, got {key!r}")
            link = f"{key[0]} -> {key[1]}"
            if isinstance(ws, (str, bytes)) or not isinstance(ws, Sequence):
                raise ValueError(f"rotafx: link {link}: its windows must be a list of (start_s, end_s), got {ws!r}")
            total += len(ws)
            if total > MAX_WINDOWS:
                raise ValueError(f"rotafx: more than {MAX_WINDOWS:,} link windows; give the windows of the "
                                 f"schedule's horizon only")
            spans = sorted(_span(link, w) for w in ws)
            for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise ValueError(f"rotafx: link {link}: windows {a0:g}-{a1:g} s and {b0:g}-{b1:g} s overlap")
            self.windows[(key[0], key[1])] = tuple(spans)
        self._starts = {k: [a for a, _ in v] for k, v in self.windows.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkWindows) and (self.windows, self.time_scale) == (other.windows, other.time_scale)

    def __repr__(self) -> str:
        return f"LinkWindows({len(self.windows)} link(s), time_scale={self.time_scale:g})"

    def up(self, src: str, dst: str, t: float) -> bool:
        """Whether ``src -> dst`` is in a window at schedule time ``t`` (a link not listed always is)."""
        spans = self.windows.get((src, dst))
        if spans is None:
            return True
        i = bisect.bisect_right(self._starts[(src, dst)], t) - 1
        return i >= 0 and t < spans[i][1]

    def down(self, links: Sequence[Mapping[str, Any]], t: float) -> list[str]:
        """The links of ``links`` (a hop's, as ``plan.json`` lists them) out of every window at ``t``: ``"src -> dst"``."""
        return [f"{l.get('src')} -> {l.get('dst')}" for l in links
                if not self.up(str(l.get("src")), str(l.get("dst")), t)]

    def to_json(self) -> str:
        """The table as JSON (what the driver puts in its store for the stages)."""
        return json.dumps({"time_scale": self.time_scale,
                           "links": [[a, b, [list(w) for w in ws]] for (a, b), ws in self.windows.items()]})

    @classmethod
    def from_json(cls, text: str) -> "LinkWindows":
        """A table :meth:`to_json` wrote, from a peer: checked as the constructor checks its arguments (ValueError)."""
        if not isinstance(text, str) or len(text) > MAX_JSON:
            raise ValueError("rotafx: a link windows table must be JSON text of at most 16 MiB")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ValueError("rotafx: a link windows table is not JSON") from None
        if not (isinstance(data, dict) and set(data) == {"time_scale", "links"} and isinstance(data["links"], list)
                and all(isinstance(e, list) and len(e) == 3 for e in data["links"])):
            raise ValueError("rotafx: a link windows table must be {\"time_scale\": s, \"links\": [[src, dst, "
                             "[[start_s, end_s], ...]], ...]}")
        table: dict[Any, Sequence[Any]] = {}
        for a, b, ws in data["links"]:
            if (a, b) in table:
                raise ValueError(f"rotafx: a link windows table lists {a} -> {b} twice")
            table[(a, b)] = ws
        return cls(table, data["time_scale"])


def _span(link: str, w: Any) -> tuple[float, float]:
    """One window as ``(start_s, end_s)``: a pair of numbers, or an object with ``start_s``/``end_s``."""
    if hasattr(w, "start_s") and hasattr(w, "end_s"):
        pair: Any = (w.start_s, w.end_s)
    else:
        pair = w
    ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) for x in pair))
    if not ok or not pair[1] > pair[0]:
        raise ValueError(f"rotafx: link {link}: a window is (start_s, end_s), finite seconds that end after they "
                         f"start, got {w!r}")
    return float(pair[0]), float(pair[1])
