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

>>> links = [{"bandwidth_bps": 8e6, "latency_ms": 25.0}]
>>> round(hop_delay_s(links, 1_000_000), 3)   # 1 MB at 8 Mbit/s, plus 25 ms
1.025
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..wire import serialization_ms

__all__ = ["hop_delay_s", "serialization_s", "propagation_s", "LinkEmulator"]


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
        if not self.enabled:
            return 0.0
        wait = self.arrival(sent_at, nbytes) - time.time()
        if wait > 0:
            time.sleep(wait)
            return wait
        return 0.0
