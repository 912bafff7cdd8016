"""Objectives: what a placement is scored by, as a weighted sum of the cost model's terms (a leaf module).

The cost model prices four terms (:data:`TERMS`): ``latency`` (ms per request),
``period`` (ms: the slowest device or link, one request per period when pipelined),
``bandwidth`` (bytes over ground-orbit links) and ``energy`` (J). An objective is a
weighted sum of them, each divided by a norm: ``minimize_latency`` weighs latency
alone, ``balance`` every term it is given, each normalised by its own optimum.
:meth:`Objective.combine` is the one formula, applied to numbers (the estimator),
numpy arrays (the dynamic program) and cvxpy expressions (the MILP) alike.

>>> obj = objective("minimize_energy")
>>> obj.combine({"latency": 5.0, "period": 3.0, "bandwidth": 10.0, "energy": 2.0})
2.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["OBJECTIVES", "GENERATION_OBJECTIVES", "GENERATION_TERMS", "TERMS", "OBJECTIVE_TERM", "NATURAL_UNITS", "DEFAULT_BALANCE", "Objective", "objective"]

GENERATION_OBJECTIVES = ("minimize_ttft", "minimize_tpot", "maximize_tokens_per_s", "minimize_generation_latency",
                         "minimize_energy_per_token")
OBJECTIVES = ("minimize_latency", "maximize_throughput", "minimize_bandwidth", "minimize_energy", "balance",
              *GENERATION_OBJECTIVES)
# token generation (a profile made by ModelProfile.for_generation): ttft ms, tpot ms (a decode step and the token's
# trip back), token_period ms (max(tpot / sequences, the slowest device or link of a decode step): tokens/s is
# batch_size / token_period), generation ms (ttft + (new_tokens - 1) * tpot), energy_per_token J
GENERATION_TERMS = ("ttft", "tpot", "token_period", "generation", "energy_per_token")
TERMS = ("latency", "period", "bandwidth", "energy", *GENERATION_TERMS)
# the term each single objective minimises
OBJECTIVE_TERM = {"minimize_latency": "latency", "maximize_throughput": "period", "minimize_bandwidth": "bandwidth",
                  "minimize_energy": "energy", "minimize_ttft": "ttft", "minimize_tpot": "tpot",
                  "maximize_tokens_per_s": "token_period", "minimize_generation_latency": "generation",
                  "minimize_energy_per_token": "energy_per_token"}
# what a term whose optimum is 0 is divided by in ``balance``: 1 ms, 1 ms, 1 MB, 1 J
NATURAL_UNITS = {"latency": 1.0, "period": 1.0, "bandwidth": 1e6, "energy": 1.0, "ttft": 1.0, "tpot": 1.0,
                 "token_period": 1.0, "generation": 1.0, "energy_per_token": 1.0}
DEFAULT_BALANCE = {"latency": 1.0, "period": 1.0, "bandwidth": 1.0, "energy": 1.0}
_ALIASES = {"throughput": "period", "latency": "latency", "bandwidth": "bandwidth", "energy": "energy",
            "period": "period", "ttft": "ttft", "tpot": "tpot", "tokens_per_s": "token_period",
            "token_period": "token_period", "generation": "generation", "energy_per_token": "energy_per_token"}


@dataclass(frozen=True)
class Objective:
    """An objective: a name, the weight of each term and the norm it is divided by.

    ``score(terms)`` is ``(value, tie_break)``; smaller is better. Every objective but
    ``minimize_latency`` breaks ties by latency.
    """

    name: str
    weights: Mapping[str, float] = field(default_factory=dict)
    norms: Mapping[str, float] = field(default_factory=dict)

    @property
    def bottleneck(self) -> bool:
        """Whether the objective is the period alone (a maximum over devices and links, not a sum)."""
        return self.name == "maximize_throughput"

    @property
    def needed(self) -> set[str]:
        """The terms with a non-zero weight."""
        return {k for k, w in self.weights.items() if w}

    def combine(self, terms: Mapping[str, Any]) -> Any:
        """``sum(weight * term / norm)`` over the weighted terms (numbers, arrays or solver expressions)."""
        return sum(w * terms[k] / self.norms.get(k, 1.0) for k, w in self.weights.items() if w)

    def score(self, terms: Any) -> tuple[float, float]:
        """``(value, tie-break)`` of a placement's terms (a mapping, or an estimate's ``terms()``)."""
        t = terms if isinstance(terms, Mapping) else terms.terms()
        return float(self.combine(t)), (float(t["latency"]) if self.name != "minimize_latency" else 0.0)

    def value(self, terms: Any) -> float:
        """The objective's value of a placement's terms (a mapping, or an estimate's ``terms()``)."""
        return self.score(terms)[0]


def objective(name: str, weights: Mapping[str, float] | None = None) -> Objective:
    """Check an objective name (and balance weights) and build the :class:`Objective` (norms all 1).

    >>> objective("balance", {"latency": 1, "throughput": 2}).weights
    {'latency': 1.0, 'period': 2.0}
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    if name != "balance":
        if weights:
            raise ValueError(f"weights are for objective='balance', not {name!r}")
        return Objective(name, {OBJECTIVE_TERM[name]: 1.0})
    out = {}
    for k, v in dict(DEFAULT_BALANCE if weights is None else weights).items():
        if k not in _ALIASES:
            raise ValueError(f"unknown balance weight {k!r}; use latency, throughput, bandwidth, energy (and, for a "
                             f"generation profile, ttft, tpot, tokens_per_s, generation, energy_per_token)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and v != float("inf")):
            raise ValueError(f"balance weight {k!r} must be a finite number >= 0, got {v!r}; weigh the terms "
                             f"relative to each other, e.g. weights={{'latency': 10, 'energy': 1}}")
        out[_ALIASES[k]] = float(v)
    if not any(out.values()):
        raise ValueError("balance needs at least one positive weight")
    return Objective("balance", out)
