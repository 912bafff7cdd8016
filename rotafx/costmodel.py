"""The one cost model: compute time, transfer time, routes, energy, memory and the terms objectives weigh.

Every figure rotafx prints, and every figure its solvers optimise, comes from here:
the estimator prices a placement with :class:`CostTables` and :func:`route`, the DP and
the MILP build their coefficients from the same tables and from :func:`hop_coefficients`,
so the estimator and the solvers cannot disagree.

* compute time of an op on a device: the roofline ``max(flops / device.flops,
  bytes_moved / bandwidth)``, with bandwidth the device's memory bandwidth, or its
  cache bandwidth when the topology's capacity rule is ``"cache"`` (the stage then
  lives in cache); a layer's time is the sum over its ops; a calibrated device prices each op by
  its measurements instead (:meth:`rotafx.calibrate.Calibration.op_time_s`), as compiled code when
  the profile is marked ``compiled`` and the device measured compiled code;
* a stage's call: a fixed cost each stage that runs any layer pays once per forward pass, whatever
  its layers (:attr:`CostTables.stage_call_ms`): calling inductor-compiled code, or an exported program;
* a transfer: ``bytes * 8 / bandwidth_bps`` (:func:`rotafx.wire.serialization_ms`) plus
  the link's one-way latency; compressed transfers (codec ``fp16``, ``bf16``, ``int8``)
  send floating tensors at 2, 2 or 1 bytes per element (:func:`rotafx.wire.wire_bytes`);
* the route: every chain link, except that a bypassable run of empty stages is crossed
  by its bypass link (:func:`route`);
* energy: busy time x device power, plus bits x link energy per bit;
* memory of a device: its stages' weights (each once) + the largest live-activation
  peak among their layers (``rule="liveness"``), or the paper's plain sum
  ``sum(weight + activation + buffer)`` (``rule="sum"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .profile import ModelProfile
from .topology import Link, Topology, TopologyError
from .wire import CODECS, check_codec, serialization_ms

__all__ = ["CostTables", "Route", "route", "token_return", "transfer_ms", "link_energy_j", "hop_coefficients", "MEMORY_RULES"]

MEMORY_RULES = ("liveness", "sum")


def _float_dtype(profile: ModelProfile) -> str:
    """The dtype floating tensors run at: the one they were priced at, else the model's own (its first floating
    tensor between layers), else float32."""
    if profile.dtype is not None:
        return str(profile.dtype).replace("torch.", "")
    for layer in profile.layers:
        for t in layer.outputs:
            if t.floating and t.dtype:
                return str(t.dtype).replace("torch.", "")
    return "float32"


def _measured_on(profile: ModelProfile, topology: Topology) -> Any:
    """The calibration, among the topology's devices, of the device the profile's layers were timed on (or None)."""
    if profile.measured_on is None or profile.measured_ms is None:
        return None
    device, _, host = profile.measured_on.partition("@")
    for d in topology.devices.values():
        cal = d.calibration
        if cal is not None and cal.device == device and cal.machine.get("host", host) == host:
            return cal
    return None


def _compute_ms(profile: ModelProfile, topology: Topology) -> tuple[np.ndarray, list[str]]:
    """``ms[l, s]``: layer ``l`` on the device of chain stage ``s``; and per stage, where its times come from
    (``"measured"``, ``"calibrated"`` or ``"datasheet"``)."""
    L, K = profile.num_layers, topology.num_stages
    cache = topology.capacity == "cache"
    out = np.zeros((L, K))
    figures: list[str] = []
    dtype = _float_dtype(profile)
    source = _measured_on(profile, topology)
    compiled = profile.compiled
    for s, name in enumerate(topology.chain):
        d = topology.devices[name]
        bw = (d.cache_bandwidth or d.memory_bandwidth) if cache else d.memory_bandwidth
        cal = d.calibration
        same = cal is not None and source is not None and source is cal
        for l, layer in enumerate(profile.layers):
            if cal is None:  # the datasheet roofline
                out[l, s] = 1e3 * sum(max(f / d.flops, b / bw) for f, b in layer.work)
            elif layer.measured_ms is not None and same:
                out[l, s] = layer.measured_ms
            elif layer.measured_ms is not None and source is not None:  # measured elsewhere: scaled by both
                here, there = (c.layer_time_s(layer, dtype, compiled, profile.runs_as) for c in (cal, source))
                out[l, s] = layer.measured_ms * (here / there if there > 0 else 1.0)
            else:
                out[l, s] = 1e3 * cal.layer_time_s(layer, dtype, compiled, profile.runs_as)
        figures.append("datasheet" if cal is None else
                       "measured" if source is not None and profile.measured_ms is not None else
                       "calibrated, compiled" if compiled and cal.compiled else "calibrated")
    return out, figures


def _stage_call_ms(profile: ModelProfile, topology: Topology) -> np.ndarray:
    """``ms[s]``: the fixed cost of one call of chain stage ``s``'s code on its device: a call of inductor-compiled
    code (:attr:`~rotafx.calibrate.Calibration.compiled_call_s`) for a profile marked ``compiled`` on a device that
    measured compiled code, else an exported program's call (``program_call_s``) for a profile that runs as one;
    0 on a datasheet device and for modules or an fx graph run eagerly."""
    out = np.zeros(topology.num_stages)
    for s, name in enumerate(topology.chain):
        cal = topology.devices[name].calibration
        if cal is None:
            continue
        if profile.compiled and cal.compiled:
            out[s] = 1e3 * cal.compiled_call_s
        elif profile.runs_as == "program":
            out[s] = 1e3 * cal.program_call_s
    return out


def token_return(topology: Topology) -> tuple[Link, ...]:
    """The links a sampled token takes from the chain's last node back to its first (which embeds it): the
    direct link when the topology has one, else the chain walked backwards; none when the chain is one node.

    Raises:
        TopologyError: no way back (no direct link, and some chain link has no reverse).
    """
    first, last = topology.chain[0], topology.chain[-1]
    if first == last:
        return ()
    try:
        return (topology.link(last, first),)
    except TopologyError:
        pass
    try:
        return tuple(topology.link(b, a) for a, b in reversed(list(zip(topology.chain, topology.chain[1:]))) if a != b)
    except TopologyError:
        raise TopologyError(f"rotafx: a generated token must go back from {last!r} (the end of the chain) to {first!r} "
                            f"(which embeds it), but the topology has no link {last!r} -> {first!r} and the chain has "
                            f"no reverse links; add a link from {last!r} to {first!r} under 'links'") from None


def transfer_ms(nbytes: float, link: Link) -> float:
    """Serialisation time of ``nbytes`` on ``link`` in ms (latency not included)."""
    return serialization_ms(nbytes, link.bandwidth_bps)


def link_energy_j(nbytes: float, link: Link) -> float:
    """Joules to send ``nbytes`` over ``link``."""
    return nbytes * 8.0 * link.energy_per_bit_j


def hop_coefficients(link: Link, counts_for_bandwidth: bool) -> dict[str, tuple[float, float]]:
    """What one hop over ``link`` adds to each objective term, as ``(per byte, constant)``: a hop of ``b``
    bytes costs ``per_byte * b + constant`` (latency in ms, period in ms, bandwidth in bytes, energy in J)."""
    per_byte_ms = transfer_ms(1.0, link)
    msg = link.message_ms  # each message's fixed cost to the transport: on the way, and keeping the link busy
    return {"latency": (per_byte_ms, link.latency_ms + msg), "period": (per_byte_ms, msg),
            "bandwidth": (1.0 if counts_for_bandwidth else 0.0, 0.0), "energy": (link_energy_j(1.0, link), 0.0)}


@dataclass(frozen=True)
class Route:
    """The links a request takes, given which stages are empty.

    ``hops[i] = (b, link)``: the link leaves chain stage ``b``, and the bytes it carries
    are those of the cut after chain stage ``b``.
    """

    hops: tuple[tuple[int, Link], ...]


def route(topology: Topology, stages: Sequence[int]) -> Route:
    """The links a request crosses under a placement (``stages[l]``: the chain stage of layer ``l``):
    every chain link, except that a bypassable run of empty stages is replaced by its bypass link.

    >>> from rotafx import preset
    >>> topo = preset("seed")
    >>> [(b, l.kind) for b, l in route(topo, [0, 0, 5]).hops]   # the orbital stages 1-4 empty: the ground link
    [(0, 'ground')]
    """
    K = topology.num_stages
    used = set(int(s) for s in stages)
    bypass_at = {f - 1: g for f, g in topology.bypasses}
    hops: list[tuple[int, Link]] = []
    b = 0
    while b < K - 1:
        g = bypass_at.get(b)
        if g is not None and not used.intersection(range(b + 1, g + 1)):
            hops.append((b, topology.link(topology.chain[b], topology.chain[g + 1])))
            b = g + 1
        else:
            hops.append((b, topology.link(topology.chain[b], topology.chain[b + 1])))
            b += 1
    return Route(tuple(hops))


class CostTables:
    """Per-layer, per-stage and per-boundary figures of one profile on one topology.

    Times are in milliseconds, energy in joules, bytes in bytes.

    ``compute_ms[l, s]``: layer ``l`` on the device of stage ``s``;
    ``stage_terms[term][l, s]``: what layer ``l`` on stage ``s`` adds to each additive
    objective term (latency ms, energy J, bandwidth bytes);
    ``stage_call_ms[s]``: the fixed cost of one call of stage ``s``'s code, paid once per forward
    pass by a stage that runs any layer; ``call_terms[term][s]``: what it adds to each term (the
    stage's period includes it; a generation term mixes the prefill's and the decode step's calls);
    ``boundary_bytes[p]``: bytes crossing the boundary before layer ``p`` (0..L);
    ``links[b]``: the chain link from stage ``b`` to ``b + 1``; ``bypass_links[i]``: the
    link of the topology's bypass ``i``.
    """

    def __init__(self, profile: ModelProfile, topology: Topology, *, codec: str | None = None,
                 memory_rule: str = "liveness") -> None:
        if memory_rule not in MEMORY_RULES:
            raise ValueError(f"memory rule must be one of {MEMORY_RULES}, got {memory_rule!r}")
        self.profile = profile
        self.topology = topology
        self.codec = check_codec(codec)
        self.memory_rule = memory_rule
        L, K = profile.num_layers, topology.num_stages
        self.L, self.K = L, K
        cache = topology.capacity == "cache"
        self.compute_ms, self.figures = _compute_ms(profile, topology)  # figures: per stage, where times come from
        self.power_w = np.array([topology.devices[n].power_w for n in topology.chain])
        self.stage_terms = {"latency": self.compute_ms, "energy": self.compute_ms * 1e-3 * self.power_w[None, :],
                            "bandwidth": np.zeros((L, K))}
        self.stage_call_ms = _stage_call_ms(profile, topology)
        self.call_terms = {"latency": self.stage_call_ms, "energy": self.stage_call_ms * 1e-3 * self.power_w,
                           "bandwidth": np.zeros(K)}
        self.boundary_bytes = np.array([profile.boundary_bytes(p, self.codec) for p in range(L + 1)], dtype=float)
        # token generation: the decode step's own tables, the KV cache held per layer, and each generation term
        # as a mix of the prefill's and the decode step's (see _MIX)
        self.generation = profile.generation if profile.decode is not None else None
        self.decode: CostTables | None = None
        self.kv_bytes = np.zeros(L)
        self.constants: dict[str, float] = {}  # what a term adds whatever the placement (the token's trip back)
        self.returns: tuple[Link, ...] = ()
        self.return_ms = self.return_j = self.return_period_ms = 0.0
        if self.generation is not None:
            gen = self.generation
            decode = profile.decode  # runs as the prefill does (a profile marked compiled: its decode step too)
            if (profile.compiled and not decode.compiled) or decode.runs_as != profile.runs_as:
                decode = dataclasses.replace(decode, compiled=profile.compiled or decode.compiled,
                                             runs_as=profile.runs_as)
            self.decode = CostTables(decode, topology, codec=codec, memory_rule=memory_rule)
            self.kv_bytes = np.array([l.kv_bytes_per_token for l in profile.layers], dtype=float) * gen.kv_rows \
                * gen.context_len
            self.returns = token_return(topology)
            token_bytes = 8.0 * gen.batch_size  # one int64 id per sequence of the batch
            # the sampled token's trip back to the first node, after every decode step: ms, J, and its slowest link
            self.return_ms = sum(transfer_ms(token_bytes, l) + l.latency_ms for l in self.returns)
            self.return_j = sum(link_energy_j(token_bytes, l) for l in self.returns)
            self.return_period_ms = max((transfer_ms(token_bytes, l) for l in self.returns), default=0.0)
            for term, (base, wp, wd) in self._mix().items():
                base = "latency" if base == "period" else base  # a device's period is its busy time
                prefill = self.stage_terms[base] if wp else 0.0
                dec = self.decode.stage_terms[base] if wd else 0.0
                self.stage_terms[term] = wp * prefill + wd * dec
                self.call_terms[term] = wp * self.call_terms[base] + wd * self.decode.call_terms[base]
            n, rows = gen.new_tokens, gen.batch_size * gen.new_tokens
            self.constants = {"tpot": self.return_ms, "generation": (n - 1) * self.return_ms,
                              "energy_per_token": (n - 1) * self.return_j / rows,
                              "ttft": 0.0, "token_period": 0.0}
        self.links = [topology.link(a, b) for a, b in zip(topology.chain, topology.chain[1:])]
        self.weight_bytes = np.array([l.weight_bytes for l in profile.layers], dtype=float)
        # a weight read by several layers (a tied embedding) is held once by a device that runs any of them:
        # shared = [(bytes, readers)], and own_weight_bytes[l] = the bytes of the weights only layer l reads
        readers: dict[str, list[int]] = {}
        for l, layer in enumerate(profile.layers):
            for w in dict.fromkeys(layer.weight_names):
                readers.setdefault(w, []).append(l)
        self.shared = [(float(profile.weights[w][1]), tuple(ls)) for w, ls in readers.items()
                       if len(ls) > 1 and w in profile.weights]
        self.own_weight_bytes = self.weight_bytes.copy()
        for b, ls in self.shared:
            self.own_weight_bytes[list(ls)] -= b
        self.own_weight_bytes += self.kv_bytes  # a layer's KV cache is its stage's state, like its own weights
        self.peak_bytes = np.array([l.peak_bytes for l in profile.layers], dtype=float)
        self.sum_bytes = np.array([l.size_bytes for l in profile.layers], dtype=float) + self.kv_bytes
        if self.decode is not None:  # a decode step's live activations may peak elsewhere (rarely higher)
            self.peak_bytes = np.maximum(self.peak_bytes, self.decode.peak_bytes)
        # devices and the stages they run (a device may run several stages of the chain)
        self.device_stages: dict[str, list[int]] = {}
        for s, name in enumerate(topology.chain):
            self.device_stages.setdefault(name, []).append(s)
        self.capacity = {n: topology.capacity_bytes(topology.devices[n]) for n in self.device_stages}
        self.bypass_links = [topology.link(topology.chain[f - 1], topology.chain[g + 1]) for f, g in topology.bypasses]
        # the kinds, not every link: the seed's dict joins every pair of nodes (links made when looked up)
        ground_orbit = topology.link_kinds() & {"uplink", "downlink"}
        self.bandwidth_kinds = ("uplink", "downlink") if ground_orbit else None

    @property
    def total_weight_bytes(self) -> float:
        """What all devices together must hold at least: every weight once (each layer's, under the sum rule)."""
        if self.memory_rule == "sum":
            return float(self.weight_bytes.sum())
        return float(self.own_weight_bytes.sum()) + sum(b for b, _ in self.shared)

    # -- transfers -----------------------------------------------------------
    def hop_coefficients(self, link: Link) -> dict[str, tuple[float, float]]:
        """:func:`hop_coefficients` of ``link`` under this topology's bandwidth rule, plus, with a codec, the time
        its calibrated ends take to encode and decode (per wire byte; 0 for a datasheet end)."""
        co = hop_coefficients(link, self.counts_for_bandwidth(link))
        codec_ms = self._codec_ms_per_wire_byte(link)
        if codec_ms:
            co["latency"] = (co["latency"][0] + codec_ms, co["latency"][1])
            co["period"] = (co["period"][0] + codec_ms, co["period"][1])
        return co

    def _mix(self) -> dict[str, tuple[str, float, float]]:
        """Each generation term as ``(base term, weight of the prefill, weight of one decode step)``."""
        gen = self.generation
        if gen is None:
            return {}
        n, rows = gen.new_tokens, gen.batch_size * gen.new_tokens
        return {"ttft": ("latency", 1.0, 0.0), "tpot": ("latency", 0.0, 1.0), "token_period": ("period", 0.0, 1.0),
                "generation": ("latency", 1.0, n - 1.0), "energy_per_token": ("energy", 1.0 / rows, (n - 1.0) / rows)}

    def hop_terms(self, link: Link) -> dict[str, tuple[np.ndarray, float]]:
        """What one hop over ``link`` adds to each term, for every cut position ``p`` (the hop then carries the
        tensors of boundary ``p``): ``(per-position array, constant)``; the one formula the estimator, the DP
        and the MILP all use."""
        co = self.hop_coefficients(link)
        out = {term: (per_byte * self.boundary_bytes, const) for term, (per_byte, const) in co.items()}
        if self.decode is not None:
            dec = self.decode.hop_coefficients(link)
            for term, (base, wp, wd) in self._mix().items():
                out[term] = (wp * co[base][0] * self.boundary_bytes + wd * dec[base][0] * self.decode.boundary_bytes,
                             (wp + wd) * co[base][1])
        return out

    def _codec_ms_per_wire_byte(self, link: Link) -> float:
        if self.codec is None:
            return 0.0

        devices = self.topology.devices
        src, dst = devices.get(link.src), devices.get(link.dst)
        enc = src.calibration.codecs.get(self.codec) if src is not None and src.calibration is not None else None
        dec = dst.calibration.codecs.get(self.codec) if dst is not None and dst.calibration is not None else None
        itemsize = getattr(getattr(torch, _float_dtype(self.profile), None), "itemsize", 4)
        if CODECS[self.codec].itemsize >= itemsize:  # the codec does not compress these activations: not applied
            return 0.0
        ratio = itemsize / CODECS[self.codec].itemsize  # activation bytes per wire byte
        return 1e3 * ratio * ((enc or {}).get("encode_s_per_byte", 0.0) + (dec or {}).get("decode_s_per_byte", 0.0))

    def counts_for_bandwidth(self, link: Link) -> bool:
        """Whether bytes on this link count towards the ``minimize_bandwidth`` objective."""
        if link.kind == "local":
            return False
        return self.bandwidth_kinds is None or link.kind in self.bandwidth_kinds

    # -- placements ----------------------------------------------------------
    def cut_positions(self, stages: Sequence[int]) -> list[int]:
        """``p[b]``: how many layers run in stages ``<= b``, for each chain boundary b."""
        counts = np.bincount(np.asarray(stages, dtype=int), minlength=self.K)
        return [int(x) for x in np.cumsum(counts)[:-1]]

    def route(self, stages: Sequence[int]) -> Route:
        """:func:`route` on this table's topology."""
        return route(self.topology, stages)

    def device_memory(self, stages: Sequence[int]) -> dict[str, float]:
        """Bytes each device must hold."""
        out: dict[str, float] = {}
        for name, ss in self.device_stages.items():
            layers = [l for l, s in enumerate(stages) if s in ss]
            out[name] = self.layers_memory(layers)
        return out

    def layers_memory(self, layers: Sequence[int]) -> float:
        """Bytes a device needs to run ``layers`` under this table's memory rule (the liveness rule
        counts a weight read by several of them once; the paper's sum counts each layer's size)."""
        if not layers:
            return 0.0
        if self.memory_rule == "sum":
            return float(sum(self.sum_bytes[l] for l in layers))
        held = set(layers)
        weights = float(sum(self.own_weight_bytes[l] for l in layers))
        weights += sum(b for b, ls in self.shared if held.intersection(ls))
        return weights + float(max(self.peak_bytes[l] for l in layers))
