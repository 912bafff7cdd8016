"""Objectives: what a placement is scored by, from its Estimate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..estimate import Estimate

__all__ = ["OBJECTIVES", "TERMS", "Objective", "objective"]

OBJECTIVES = ("minimize_latency", "maximize_throughput", "minimize_bandwidth", "minimize_energy", "balance")
# the quantity each single objective minimises (ms, ms per request, bytes, joules)
TERMS = {"minimize_latency": "latency", "maximize_throughput": "period", "minimize_bandwidth": "bandwidth",
         "minimize_energy": "energy"}
DEFAULT_BALANCE = {"latency": 1.0, "period": 1.0, "bandwidth": 1.0, "energy": 1.0}


def terms(est: Estimate) -> dict[str, float]:
    """Every quantity an objective can weigh: latency ms, period ms, bandwidth bytes, energy J."""
    return {"latency": est.total_ms, "period": est.period_ms, "bandwidth": float(est.bandwidth_bytes),
            "energy": est.energy_j}


@dataclass(frozen=True)
class Objective:
    """An objective: a name, and for ``balance`` the weight and normaliser of each term.

    ``score(est)`` is ``(primary, tie_break)``; smaller is better. ``minimize_bandwidth``
    breaks ties by latency; ``balance`` is ``sum(weight * term / norm)``, each term
    normalised by its own optimum.
    """

    name: str
    weights: Mapping[str, float] = field(default_factory=dict)
    norms: Mapping[str, float] = field(default_factory=dict)

    def score(self, est: Estimate) -> tuple[float, float]:
        t = terms(est)
        if self.name == "balance":
            return sum(w * t[k] / self.norms[k] for k, w in self.weights.items() if w), t["latency"]
        primary = t[TERMS[self.name]]
        return primary, (t["latency"] if self.name != "minimize_latency" else 0.0)

    def value(self, est: Estimate) -> float:
        return self.score(est)[0]


def objective(name: str, weights: Mapping[str, float] | None = None) -> Objective:
    """Check an objective name (and balance weights) and build the :class:`Objective`."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    if name != "balance":
        if weights:
            raise ValueError(f"weights are for objective='balance', not {name!r}")
        return Objective(name)
    w = dict(DEFAULT_BALANCE if weights is None else weights)
    aliases = {"throughput": "period", "latency": "latency", "bandwidth": "bandwidth", "energy": "energy", "period": "period"}
    out = {}
    for k, v in w.items():
        if k not in aliases:
            raise ValueError(f"unknown balance weight {k!r}; use latency, throughput, bandwidth, energy")
        if v < 0:
            raise ValueError(f"balance weight {k!r} must be >= 0, got {v}")
        out[aliases[k]] = float(v)
    if not any(out.values()):
        raise ValueError("balance needs at least one positive weight")
    return Objective("balance", out)
