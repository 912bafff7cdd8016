"""LatencyEstimator: latency, throughput, bytes and energy of a placement, from the one cost model."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .costmodel import CostTables
from .layers import TensorInfo
from .placement import LayerPlacement, PlacementError
from .profile import ModelProfile
from .topology import Topology
from .units import MB

__all__ = ["Estimate", "GenerationEstimate", "LayerEstimate", "TransferEstimate", "LatencyEstimator", "evaluate"]


@dataclass(frozen=True)
class LayerEstimate:
    """One layer's compute time (ms) on the node that runs it; the first layer of a stage also carries the
    stage's call (``call_ms``, :attr:`~rotafx.costmodel.CostTables.stage_call_ms`), so a stage's layers add up
    to the stage's compute."""

    index: int
    name: str
    node: str
    stage: int
    total_ms: float  # the call included
    call_ms: float = 0.0


@dataclass(frozen=True)
class TransferEstimate:
    """One hop of the request: the tensors that cross a cut, over one link."""

    boundary: int  # the cut: before layer ``boundary``
    src: str
    dst: str
    link_kind: str
    bytes: int
    transfer_ms: float
    propagation_ms: float
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    @property
    def mb(self) -> float:
        return self.bytes / MB


@dataclass(frozen=True)
class Estimate:
    """What one request costs under a placement. Times in ms, bytes in bytes, energy in joules.

    ``total_ms`` is exactly the sum of the compute parts (by node kind), the transfer
    parts (by link kind) and ``propagation_ms``.
    """

    total_ms: float
    compute_ms_by_kind: dict[str, float]
    transfer_ms_by_kind: dict[str, float]
    propagation_ms: float
    by_layer: tuple[LayerEstimate, ...]
    transfers: tuple[TransferEstimate, ...]
    period_ms: float  # the slowest device or link: one request per period when pipelined
    energy_j: float
    bandwidth_bytes: int  # bytes over ground-orbit links (all inter-node links when there are none)
    memory_bytes: dict[str, float]
    stages: tuple[int, ...]
    codec: str | None = None
    figures: dict[str, str] | None = None  # node -> "measured", "calibrated" or "datasheet": where its times come from
    generation: "GenerationEstimate | None" = None  # for a profile made by ModelProfile.for_generation

    # -- the seed's fields ---------------------------------------------------
    @property
    def ground_compute_ms(self) -> float:
        return self.compute_ms_by_kind.get("ground", 0.0)

    @property
    def orbital_compute_ms(self) -> float:
        return self.compute_ms_by_kind.get("orbital", 0.0)

    @property
    def compute_ms(self) -> float:
        return sum(self.compute_ms_by_kind.values())

    @property
    def uplink_ms(self) -> float:
        return self.transfer_ms_by_kind.get("uplink", 0.0)

    @property
    def downlink_ms(self) -> float:
        return self.transfer_ms_by_kind.get("downlink", 0.0)

    @property
    def isl_ms(self) -> float:
        return self.transfer_ms_by_kind.get("isl", 0.0)

    @property
    def ground_link_ms(self) -> float:
        return self.transfer_ms_by_kind.get("ground", 0.0)

    @property
    def transfer_ms(self) -> float:
        return sum(self.transfer_ms_by_kind.values())

    @property
    def throughput_rps(self) -> float:
        """Requests per second when requests are pipelined through the stages."""
        return float("inf") if self.period_ms <= 0 else 1e3 / self.period_ms

    @property
    def transfer_bytes(self) -> int:
        """Bytes sent over every inter-node hop of one request."""
        return sum(t.bytes for t in self.transfers if t.link_kind != "local")

    @property
    def transfer_size_mb(self) -> float:
        return self.transfer_bytes / MB

    def terms(self) -> dict[str, float]:
        """The quantities an objective weighs (:mod:`rotafx.objective`): latency ms, period ms, bandwidth bytes, energy J;
        for generation also ttft, tpot, token_period, generation (ms) and energy_per_token (J)."""
        out = {"latency": self.total_ms, "period": self.period_ms, "bandwidth": float(self.bandwidth_bytes),
               "energy": self.energy_j}
        if self.generation is not None:
            out.update(self.generation.terms())
        return out

    # -- generation (None without a generation profile) ------------------------
    @property
    def ttft_ms(self) -> float | None:
        return None if self.generation is None else self.generation.ttft_ms

    @property
    def tpot_ms(self) -> float | None:
        return None if self.generation is None else self.generation.tpot_ms

    @property
    def tokens_per_s(self) -> float | None:
        return None if self.generation is None else self.generation.tokens_per_s

    @property
    def generation_ms(self) -> float | None:
        return None if self.generation is None else self.generation.generation_ms

    def parts(self) -> dict[str, float]:
        """Every part of ``total_ms`` by name; they add up to it."""
        out = {f"{k}_compute_ms": v for k, v in self.compute_ms_by_kind.items()}
        out.update({f"{k}_transfer_ms": v for k, v in self.transfer_ms_by_kind.items()})
        out["propagation_ms"] = self.propagation_ms
        return out

    def report(self, title: str = "estimate") -> str:
        """A readable breakdown."""
        lines = [f"{title}: {self.total_ms:,.2f} ms per request, {self.throughput_rps:,.2f} requests/s pipelined, "
                 f"{self.energy_j:,.3f} J, {self.transfer_size_mb:,.3f} MB transferred"
                 + (f" (codec {self.codec})" if self.codec else "")]
        kinds = sorted(set((self.figures or {}).values()))
        for k, v in self.compute_ms_by_kind.items():
            lines.append(f"  {k} compute: {v:,.2f} ms" + (f" ({', '.join(kinds)})" if kinds else ""))
        for k, v in self.transfer_ms_by_kind.items():
            lines.append(f"  {k} transfer: {v:,.2f} ms")
        lines.append(f"  propagation: {self.propagation_ms:,.2f} ms")
        for t in self.transfers:
            if t.link_kind == "local":
                continue
            lines.append(f"  cut before layer {t.boundary}: {t.src} -> {t.dst} over {t.link_kind}, "
                         f"{t.bytes / MB:,.3f} MB in {len(t.tensors)} tensor(s), {t.transfer_ms:,.2f} ms + {t.propagation_ms:g} ms")
        if self.generation is not None:
            lines.append(self.generation.report())
        return "\n".join(lines)


@dataclass(frozen=True)
class GenerationEstimate:
    """What generating tokens costs under a placement (times in ms, energy in J).

    ``ttft_ms``: the prompt's forward pass over the chain (the request's ``total_ms``).
    ``tpot_ms``: one decode step over the chain (``decode.total_ms``) plus ``return_ms``, the
    sampled token's trip from the chain's last node back to its first. ``token_period_ms``:
    ``max(tpot_ms / sequences, the slowest device or link of a decode step)``: with several
    sequences in flight, decode steps pipeline; ``tokens_per_s = batch_size * 1000 / token_period_ms``.
    ``generation_ms = ttft_ms + (new_tokens - 1) * tpot_ms``; ``energy_per_token_j``: the request's
    energy over its ``batch_size * new_tokens`` tokens. ``kv_bytes``: the KV cache each node holds.
    """

    prompt_len: int
    new_tokens: int
    batch_size: int
    sequences: int
    ttft_ms: float
    tpot_ms: float
    token_period_ms: float
    generation_ms: float
    energy_per_token_j: float
    return_ms: float
    decode: Estimate
    kv_bytes: dict[str, float]

    @property
    def tokens_per_s(self) -> float:
        return float("inf") if self.token_period_ms <= 0 else 1e3 * self.batch_size / self.token_period_ms

    def terms(self) -> dict[str, float]:
        return {"ttft": self.ttft_ms, "tpot": self.tpot_ms, "token_period": self.token_period_ms,
                "generation": self.generation_ms, "energy_per_token": self.energy_per_token_j}

    def report(self) -> str:
        d = self.decode
        lines = [f"generation ({self.prompt_len} prompt + {self.new_tokens} new tokens, batch {self.batch_size}, "
                 f"{self.sequences} in flight): TTFT {self.ttft_ms:,.2f} ms, TPOT {self.tpot_ms:,.2f} ms, "
                 f"{self.tokens_per_s:,.2f} tokens/s, {self.generation_ms:,.1f} ms in all, "
                 f"{self.energy_per_token_j:,.4g} J per token",
                 f"  decode step: compute {d.compute_ms:,.3f} ms, transfer {d.transfer_ms:,.3f} ms, propagation "
                 f"{d.propagation_ms:,.2f} ms, token back to the first node {self.return_ms:,.2f} ms"]
        if any(self.kv_bytes.values()):
            lines.append("  KV cache: " + ", ".join(f"{n} {b / MB:,.1f} MB" for n, b in self.kv_bytes.items() if b))
        return "\n".join(lines)


def _time(v: Any, name: str) -> float:
    """A time read from a plan (input from others): a finite number >= 0, else ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number of ms >= 0, got {v!r}")
    return float(v)


def estimate_from_dict(d: Mapping[str, Any]) -> Estimate:
    """The :class:`Estimate` a plan's ``plan.json`` keeps (``estimate``), without what it does not keep (the
    tensors of each hop, the generation figures); for pictures and reports of a plan directory.

    Raises:
        ValueError: the mapping lacks a figure an estimate needs, naming it.
    """
    try:
        parts = {str(k): float(v) for k, v in d["parts"].items()}
        by_layer = tuple(LayerEstimate(int(r["index"]), str(r["name"]), str(r["node"]), int(r["stage"]),
                                       _time(r["ms"], "ms"), _time(r.get("call_ms", 0.0), "call_ms"))
                         for r in d["by_layer"])
        transfers = tuple(TransferEstimate(int(t["boundary"]), str(t["src"]), str(t["dst"]), str(t["link_kind"]),
                                           int(t["bytes"]), float(t["transfer_ms"]), float(t["propagation_ms"]))
                          for t in d["transfers"])
        return Estimate(
            total_ms=float(d["total_ms"]),
            compute_ms_by_kind={k[:-len("_compute_ms")]: v for k, v in parts.items() if k.endswith("_compute_ms")},
            transfer_ms_by_kind={k[:-len("_transfer_ms")]: v for k, v in parts.items() if k.endswith("_transfer_ms")},
            propagation_ms=float(d["propagation_ms"]), by_layer=by_layer, transfers=transfers,
            period_ms=float(d["period_ms"]), energy_j=float(d["energy_j"]),
            bandwidth_bytes=int(d.get("bandwidth_bytes", d.get("transfer_bytes", 0))),
            memory_bytes={str(k): float(v) for k, v in (d.get("memory_bytes") or {}).items()},
            stages=tuple(l.stage for l in by_layer), codec=d.get("codec"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"rotafx: the plan's estimate cannot be read back: {type(e).__name__} {e}; export the plan "
                         f"again with this rotafx") from None


def evaluate(tables: CostTables, stages: Sequence[int]) -> Estimate:
    """Price a placement given as the chain stage of every layer (non-decreasing).

    Each layer adds ``tables.stage_terms``, each stage that runs any layer its ``tables.call_terms``
    once, and each hop of the route its ``tables.hop_coefficients``: the coefficients the DP and the
    MILP optimise.
    """
    topo, prof = tables.topology, tables.profile
    try:
        stages = tuple(_stage_index(s) for s in stages)
    except TypeError:
        raise PlacementError(f"rotafx: stages must be integers (the chain stage of each layer), got "
                             f"{list(stages)[:8]}") from None
    if len(stages) != tables.L:
        raise PlacementError(f"rotafx: placement covers {len(stages)} layers, the profile has {tables.L}")
    bad = [(l, s) for l, s in enumerate(stages) if not 0 <= s < len(topo.chain)]
    if bad:
        raise PlacementError(f"rotafx: layer {bad[0][0]} is on stage {bad[0][1]}" + (f" ({len(bad)} layers out of range)" if len(bad) > 1 else "")
                             + f", but the chain has stages 0..{len(topo.chain) - 1} ({' -> '.join(topo.chain)})")
    if any(b < a for a, b in zip(stages, stages[1:])):
        raise PlacementError("rotafx: placement must follow the chain in layer order (stages non-decreasing)")
    compute_by_kind: dict[str, float] = {}
    by_layer = []
    busy_ms: dict[str, float] = {}
    energy = 0.0
    for l, s in enumerate(stages):
        name = topo.chain[s]
        first = l == 0 or stages[l - 1] != s  # a stage's code is called once, when its first layer starts
        call = float(tables.call_terms["latency"][s]) if first else 0.0
        t = float(tables.stage_terms["latency"][l, s]) + call
        kind = topo.devices[name].kind
        compute_by_kind[kind] = compute_by_kind.get(kind, 0.0) + t
        busy_ms[name] = busy_ms.get(name, 0.0) + t
        energy += float(tables.stage_terms["energy"][l, s]) + (float(tables.call_terms["energy"][s]) if first else 0.0)
        by_layer.append(LayerEstimate(l, prof.layers[l].name, name, s, t, call))
    cuts = tables.cut_positions(stages)
    transfer_by_kind: dict[str, float] = {}
    transfers = []
    prop = 0.0
    bw_bytes = 0.0
    link_busy = 0.0
    for b, link in tables.route(stages).hops:
        p = cuts[b]
        nbytes = int(tables.boundary_bytes[p])
        co = tables.hop_coefficients(link)
        t = co["period"][0] * nbytes + co["period"][1]  # serialisation and each message's fixed cost: busy time
        transfer_by_kind[link.kind] = transfer_by_kind.get(link.kind, 0.0) + t
        prop += co["latency"][1] - co["period"][1]
        energy += co["energy"][0] * nbytes
        bw_bytes += co["bandwidth"][0] * nbytes
        link_busy = max(link_busy, t)
        transfers.append(TransferEstimate(p, link.src, link.dst, link.kind, nbytes, t, link.latency_ms,
                                          tuple(prof.boundaries[p])))
    total = sum(compute_by_kind.values()) + sum(transfer_by_kind.values()) + prop
    period = max([link_busy, *busy_ms.values()])
    est = Estimate(total_ms=total, compute_ms_by_kind=compute_by_kind, transfer_ms_by_kind=transfer_by_kind,
                   propagation_ms=prop, by_layer=tuple(by_layer), transfers=tuple(transfers), period_ms=period,
                   energy_j=energy, bandwidth_bytes=int(bw_bytes), memory_bytes=tables.device_memory(stages),
                   stages=stages, codec=tables.codec,
                   figures={topo.chain[s]: tables.figures[s] for s in dict.fromkeys(stages)})
    if tables.decode is None:
        return est
    return replace(est, generation=_generation(tables, est, evaluate(tables.decode, stages)))


def _generation(tables: CostTables, prefill: Estimate, step: Estimate) -> GenerationEstimate:
    """The generation figures from the prefill's and one decode step's estimates (the formulas of
    :meth:`CostTables._mix`, the terms the solvers optimise)."""
    gen = tables.generation
    n, rows = gen.new_tokens, gen.batch_size * gen.new_tokens
    tpot = step.total_ms + tables.return_ms
    kv: dict[str, float] = {}
    for l, s in enumerate(prefill.stages):
        kv[tables.topology.chain[s]] = kv.get(tables.topology.chain[s], 0.0) + float(tables.kv_bytes[l])
    return GenerationEstimate(
        prompt_len=gen.prompt_len, new_tokens=n, batch_size=gen.batch_size, sequences=gen.sequences,
        ttft_ms=prefill.total_ms, tpot_ms=tpot,
        token_period_ms=max(tpot / gen.sequences, step.period_ms, tables.return_period_ms),
        generation_ms=prefill.total_ms + (n - 1) * tpot,
        energy_per_token_j=(prefill.energy_j + (n - 1) * (step.energy_j + tables.return_j)) / rows,
        return_ms=tables.return_ms, decode=step, kv_bytes=kv)


def _stage_index(s: Any) -> int:
    """A stage as an int (Python or numpy); a bool, a float or a string raises ``TypeError``."""
    if isinstance(s, bool):
        raise TypeError(s)
    return operator.index(s)


class LatencyEstimator:
    """Predicts the latency, throughput, bytes and energy of a placement or partition.

    >>> from rotafx import LatencyEstimator, LayerPlacement, ModelProfile
    >>> profile = ModelProfile.from_layers([{"name": f"l{i}", "params": 1000, "flops": 1e9,
    ...                                      "activation_bytes": 1000} for i in range(4)])
    >>> topology = {"ground_nodes": 1, "orbital_nodes": 1, "ground_flops": 1e12, "orbital_flops": 1e12,
    ...             "uplink_bandwidth": 1e6, "downlink_bandwidth": 1e6, "isl_bandwidth": 1e9}
    >>> placement = LayerPlacement().assign_ground([0, 1, 2, 3])
    >>> round(LatencyEstimator(topology).estimate(placement, profile).total_ms, 3)
    4.0
    """

    def __init__(self, topology: Topology | Mapping[str, Any] | str, *, codec: str | None = None,
                 memory_rule: str = "liveness") -> None:
        self.topology = Topology.coerce(topology)
        self.codec = codec
        self.memory_rule = memory_rule
        self._tables: CostTables | None = None

    def tables(self, profile: ModelProfile) -> CostTables:
        """The cost tables for ``profile`` on this topology (cached for the last profile)."""
        if self._tables is None or self._tables.profile is not profile:
            self._tables = CostTables(profile, self.topology, codec=self.codec, memory_rule=self.memory_rule)
        return self._tables

    def estimate(self, placement: Any, profile: ModelProfile | None = None) -> Estimate:
        """Estimate a :class:`~rotafx.LayerPlacement`, a :class:`~rotafx.Partition` or a list of stages.

        A partition carries its profile; a placement uses the profile it was validated
        with unless ``profile`` is given.
        """
        if hasattr(placement, "stages") and hasattr(placement, "profile") and not isinstance(placement, LayerPlacement):
            profile = profile or placement.profile
            stages = placement.stages
        elif isinstance(placement, LayerPlacement):
            profile = profile or placement.profile
            if profile is None:
                raise ValueError("this placement has no profile: call estimate(placement, profile) or placement.validate(profile, topology) first")
            stages = placement.stages(profile, self.topology)
        else:
            if profile is None:
                raise ValueError("estimate(stages, profile) needs the profile")
            stages = list(placement)
        return evaluate(self.tables(profile), stages)
