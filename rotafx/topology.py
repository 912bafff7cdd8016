"""Topology: devices, links and the ordered chain of stages a request goes through."""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "Device",
    "Link",
    "Topology",
    "TopologyError",
    "SEED_DEFAULTS",
    "parse_quantity",
    "preset",
    "PRESETS",
]


class TopologyError(ValueError):
    """A topology that cannot be used: the message names the key, the value and the fix."""


# ---------------------------------------------------------------------------
# units

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN_PREFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

# quantity kind -> {unit suffix: factor to the canonical unit}
_UNITS: dict[str, dict[str, float]] = {
    # canonical: FLOP/s
    "flops": {"flops": 1.0, "flop/s": 1.0, "FLOPS": 1.0, "FLOP/s": 1.0, "FLOPs": 1.0},
    # canonical: bits per second
    "bps": {"bps": 1.0, "bit/s": 1.0, "b/s": 1.0, "Bps": 8.0, "B/s": 8.0},
    # canonical: bytes
    "bytes": {"B": 1.0, "bytes": 1.0, "byte": 1.0},
    # canonical: bytes per second
    "Bps": {"B/s": 1.0, "Bps": 1.0, "bytes/s": 1.0},
    # canonical: milliseconds
    "ms": {"ms": 1.0, "s": 1e3, "us": 1e-3, "ns": 1e-6},
    # canonical: watts
    "W": {"W": 1.0},
    # canonical: joules per bit
    "J/bit": {"J/bit": 1.0, "J/b": 1.0},
}

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def parse_quantity(value: Any, kind: str, key: str) -> float:
    """Read a number in the canonical unit of ``kind``, or a string such as ``"100 Mbps"``.

    >>> parse_quantity("100 Mbps", "bps", "uplink_bandwidth")
    100000000.0
    >>> parse_quantity(25, "ms", "ground_orbit_latency_ms")
    25.0
    """
    if isinstance(value, bool):
        raise TopologyError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise TopologyError(f"{key}: expected a number or a string with a unit, got {value!r}")
    m = re.fullmatch(rf"\s*({_NUM})\s*([A-Za-z/]*)\s*", value)
    if not m:
        raise TopologyError(f"{key}: cannot read {value!r} as a quantity (write e.g. '100 Mbps', '25 ms', '80 GB')")
    number, unit = float(m.group(1)), m.group(2)
    table = _UNITS[kind]
    if unit == "":
        return number
    if unit in table:
        return number * table[unit]
    for prefixes in (_BIN_PREFIX, _PREFIX):
        for p, scale in prefixes.items():
            if p and unit.startswith(p) and unit[len(p):] in table:
                return number * scale * table[unit[len(p):]]
    known = ", ".join(sorted(table))
    raise TopologyError(f"{key}: unknown unit {unit!r} in {value!r}; use one of {known} with an optional k/M/G/T prefix")


# ---------------------------------------------------------------------------
# devices and links


@dataclass(frozen=True)
class Device:
    """One machine that can run a stage.

    Units: ``flops`` in FLOP/s, ``memory_bytes`` and ``cache_bytes`` in bytes,
    ``memory_bandwidth`` and ``cache_bandwidth`` in bytes/s, ``power_w`` in watts.
    """

    name: str
    kind: str = "ground"
    flops: float = 100e12
    memory_bytes: float = 80e9
    memory_bandwidth: float = 2e12
    cache_bytes: float = 0.0
    cache_bandwidth: float = 0.0
    power_w: float = 700.0


@dataclass(frozen=True)
class Link:
    """A directed link. ``bandwidth_bps`` in bits/s, ``latency_ms`` one-way in ms, ``energy_per_bit_j`` in J/bit."""

    src: str
    dst: str
    bandwidth_bps: float
    latency_ms: float = 0.0
    energy_per_bit_j: float = 0.0
    kind: str = "link"  # "uplink", "downlink", "isl", "ground", "local" or a user's name


LOCAL = "local"


@dataclass(frozen=True)
class Topology:
    """An ordered chain of stages over named devices, and the links between them.

    A request enters at ``chain[0]`` and its output is wanted at ``chain[-1]``;
    stage ``i`` runs on device ``chain[i]``; a stage may stay empty, in which case
    the activations are relayed through it, unless a *bypass* link skips a run of
    empty stages (the ground-to-ground link when no orbital node is used).
    The same device may appear more than once in the chain (the ground node at
    both ends); its memory then holds all of its stages at once.

    Build one from the seed's dict with :meth:`from_dict`, from a file with
    :meth:`load`, or by name with :func:`preset`.
    """

    devices: Mapping[str, Device]
    chain: tuple[str, ...]
    links: Mapping[tuple[str, str], Link]
    # (first, last) chain indices of a run of stages that may be skipped when all empty
    bypasses: tuple[tuple[int, int], ...] = ()
    capacity: str = "memory"  # "memory" or "cache": which capacity a stage must fit
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- construction ------------------------------------------------------
    def __post_init__(self) -> None:
        if not self.chain:
            raise TopologyError("the chain of stages is empty; give at least one device")
        for name in self.chain:
            if name not in self.devices:
                raise TopologyError(f"chain names device {name!r}, which is not among the devices {sorted(self.devices)}")
        for a, b in zip(self.chain, self.chain[1:]):
            self.link(a, b)  # raises when missing
        for first, last in self.bypasses:
            if not (0 < first <= last < len(self.chain) - 1):
                raise TopologyError(f"bypass ({first}, {last}) must skip inner stages of a chain of {len(self.chain)}")
            self.link(self.chain[first - 1], self.chain[last + 1])
        if self.capacity not in ("memory", "cache"):
            raise TopologyError(f"capacity must be 'memory' or 'cache', got {self.capacity!r}")
        for d in self.devices.values():
            _check_device(d)
        for l in self.links.values():
            _check_link(l)

    @classmethod
    def coerce(cls, topology: "Topology | Mapping[str, Any] | str | Path") -> "Topology":
        """Accept a Topology, the seed's dict, a general-form dict, a preset name or a file path."""
        if isinstance(topology, Topology):
            return topology
        if isinstance(topology, Mapping):
            return cls.from_dict(topology)
        if isinstance(topology, (str, Path)):
            if str(topology) in PRESETS:
                return preset(str(topology))
            return cls.load(topology)
        raise TopologyError(f"cannot read a topology from {type(topology).__name__}; give a dict, a file path or a preset name ({', '.join(PRESETS)})")

    @classmethod
    def load(cls, path: str | Path) -> "Topology":
        """Read a topology from a JSON, YAML or TOML file (the seed's keys or the general form)."""
        p = Path(path)
        if not p.exists():
            raise TopologyError(f"topology file {str(p)!r} does not exist (presets: {', '.join(PRESETS)})")
        suffix = p.suffix.lower()
        readers = {".json": json.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load, ".toml": tomllib.loads}
        if suffix not in readers:
            raise TopologyError(f"topology file {str(p)!r}: unknown suffix {suffix!r}; use .json, .yaml or .toml")
        try:
            data = readers[suffix](p.read_text())
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:  # JSON and TOML errors are ValueErrors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TopologyError(f"topology file {str(p)!r} is not valid {suffix[1:].upper()}: {first}") from None
        if not isinstance(data, Mapping):
            raise TopologyError(f"topology file {str(p)!r} must hold a mapping at the top level")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Topology":
        """Build from the seed's dict (``ground_nodes`` ...) or the general form (``devices``, ``links``)."""
        if not isinstance(data, Mapping):
            raise TopologyError(f"a topology is a mapping (the seed's keys, or devices/links/chain), got {type(data).__name__}")
        if "devices" in data:
            return _from_general(data)
        return _from_seed(data)

    def to_dict(self) -> dict[str, Any]:
        """The general form of this topology (``Topology.from_dict`` reads it back equal).

        >>> t = preset("seed")
        >>> Topology.from_dict(t.to_dict()) == t
        True
        """
        devices = []
        for d in self.devices.values():
            devices.append({"name": d.name, "kind": d.kind, "flops": d.flops, "memory": d.memory_bytes,
                            "memory_bandwidth": d.memory_bandwidth, "cache": d.cache_bytes,
                            "cache_bandwidth": d.cache_bandwidth, "power": d.power_w})
        links = [{"src": l.src, "dst": l.dst, "kind": l.kind, "bandwidth": l.bandwidth_bps, "latency_ms": l.latency_ms,
                  "energy_per_bit": l.energy_per_bit_j, "bidirectional": False} for l in self.links.values()]
        return {"devices": devices, "links": links, "chain": list(self.chain),
                "bypasses": [list(b) for b in self.bypasses], "capacity": self.capacity}

    # -- queries -----------------------------------------------------------
    def link(self, src: str, dst: str) -> Link:
        """The link from ``src`` to ``dst``; a device talks to itself for free."""
        if src == dst:
            return Link(src, dst, math.inf, 0.0, 0.0, LOCAL)
        try:
            return self.links[(src, dst)]
        except KeyError:
            raise TopologyError(
                f"no link from {src!r} to {dst!r}; add it under 'links' with bandwidth_bps and latency_ms"
            ) from None

    def stage_device(self, stage: int) -> Device:
        """The device that runs chain stage ``stage``."""
        return self.devices[self.chain[stage]]

    def capacity_bytes(self, device: Device) -> float:
        """The bytes a device offers to its stages under this topology's capacity rule."""
        return device.cache_bytes if self.capacity == "cache" else device.memory_bytes

    def with_capacity(self, capacity: str) -> "Topology":
        """The same topology with another capacity rule ('memory' or 'cache')."""
        return replace(self, capacity=capacity)

    @property
    def num_stages(self) -> int:
        return len(self.chain)

    def stages_of_kind(self, kind: str) -> list[int]:
        return [i for i, n in enumerate(self.chain) if self.devices[n].kind == kind]

    def describe(self) -> str:
        """A short readable description of the chain."""
        parts = []
        for i, name in enumerate(self.chain):
            d = self.devices[name]
            cap = self.capacity_bytes(d)
            parts.append(f"  stage {i}: {name} ({d.kind}, {d.flops / 1e12:g} TFLOP/s, {self.capacity} {cap / 1e9:g} GB)")
            if i + 1 < len(self.chain):
                l = self.link(name, self.chain[i + 1])
                parts.append(f"     -> {l.kind} {_fmt_bps(l.bandwidth_bps)}, {l.latency_ms:g} ms")
        for first, last in self.bypasses:
            l = self.link(self.chain[first - 1], self.chain[last + 1])
            parts.append(f"  bypass of stages {first}..{last} when empty: {l.kind} {_fmt_bps(l.bandwidth_bps)}, {l.latency_ms:g} ms")
        return "\n".join(parts)


def _fmt_bps(bps: float) -> str:
    if math.isinf(bps):
        return "inf"
    for unit, scale in (("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bps"


def _check_device(d: Device) -> None:
    for key in ("flops", "memory_bytes", "memory_bandwidth", "power_w"):
        v = getattr(d, key)
        if not (v > 0) or math.isnan(v):
            raise TopologyError(f"device {d.name!r}: {key} must be positive, got {v!r}")
    for key in ("cache_bytes", "cache_bandwidth"):
        v = getattr(d, key)
        if v < 0 or math.isnan(v):
            raise TopologyError(f"device {d.name!r}: {key} must be zero or positive, got {v!r}")


def _check_link(l: Link) -> None:
    if not (l.bandwidth_bps > 0) or math.isnan(l.bandwidth_bps):
        raise TopologyError(f"link {l.src!r} -> {l.dst!r} ({l.kind}): bandwidth must be positive bits/s, got {l.bandwidth_bps!r}")
    if l.latency_ms < 0 or math.isnan(l.latency_ms):
        raise TopologyError(f"link {l.src!r} -> {l.dst!r} ({l.kind}): latency_ms must be zero or positive, got {l.latency_ms!r}")
    if l.energy_per_bit_j < 0:
        raise TopologyError(f"link {l.src!r} -> {l.dst!r} ({l.kind}): energy_per_bit_j must be zero or positive, got {l.energy_per_bit_j!r}")


# ---------------------------------------------------------------------------
# the seed's dict

# (key, unit kind, default or None when required). Units are the canonical ones of parse_quantity.
SEED_KEYS: tuple[tuple[str, str, Any], ...] = (
    ("ground_nodes", "count", None),
    ("orbital_nodes", "count", None),
    ("ground_flops", "flops", None),
    ("orbital_flops", "flops", None),
    ("uplink_bandwidth", "bps", None),
    ("downlink_bandwidth", "bps", None),
    ("isl_bandwidth", "bps", None),
    ("ground_orbit_latency_ms", "ms", 25.0),
    ("isl_latency_ms", "ms", 0.0),
    ("ground_bandwidth", "bps", 100e9),
    ("ground_latency_ms", "ms", 1.0),
    ("ground_memory", "bytes", 80e9),
    ("orbital_memory", "bytes", 32e9),
    ("ground_cache", "bytes", 0.0),
    ("orbital_cache", "bytes", 0.0),
    ("ground_memory_bandwidth", "Bps", 2.0e12),
    ("orbital_memory_bandwidth", "Bps", 1.0e12),
    ("ground_cache_bandwidth", "Bps", 0.0),
    ("orbital_cache_bandwidth", "Bps", 0.0),
    ("ground_power_w", "W", 700.0),
    ("orbital_power_w", "W", 300.0),
    ("uplink_energy_per_bit", "J/bit", 1e-8),
    ("downlink_energy_per_bit", "J/bit", 1e-8),
    ("isl_energy_per_bit", "J/bit", 1e-9),
    ("ground_energy_per_bit", "J/bit", 1e-10),
    ("input_node", "name", "ground0"),
    ("output_node", "name", None),  # default: the last ground node
    ("capacity", "name", "memory"),
)

SEED_DEFAULTS: dict[str, Any] = {k: d for k, _, d in SEED_KEYS if d is not None}


def _from_seed(data: Mapping[str, Any]) -> Topology:
    known = {k for k, _, _ in SEED_KEYS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise TopologyError(
            f"unknown topology key(s) {unknown}; the seed's keys are {[k for k, _, d in SEED_KEYS if d is None]}, "
            f"with optional {sorted(SEED_DEFAULTS) + ['output_node']}, or give the general form with 'devices' and 'links'"
        )
    v: dict[str, Any] = {}
    for key, unit, default in SEED_KEYS:
        if key not in data or data[key] is None:
            if default is None and key != "output_node":
                raise TopologyError(f"topology is missing {key!r} (unit: {_UNIT_NAMES[unit]})")
            v[key] = default
            continue
        raw = data[key]
        if unit == "count":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise TopologyError(f"{key} must be a whole number of nodes >= 0, got {raw!r}")
            v[key] = raw
        elif unit == "name":
            v[key] = str(raw)
        else:
            q = parse_quantity(raw, unit, key)
            if q < 0 or math.isnan(q):
                raise TopologyError(f"{key} must not be negative, got {raw!r}")
            v[key] = q
    for key in ("ground_flops", "orbital_flops", "uplink_bandwidth", "downlink_bandwidth", "isl_bandwidth",
                "ground_bandwidth", "ground_memory", "orbital_memory", "ground_memory_bandwidth",
                "orbital_memory_bandwidth", "ground_power_w", "orbital_power_w"):
        if v[key] <= 0:
            raise TopologyError(f"{key} must be positive, got {data.get(key, v[key])!r}")
    if v["ground_nodes"] < 1:
        raise TopologyError(
            f"ground_nodes is {v['ground_nodes']}: the input arrives at a ground node and the output is wanted at one; use at least 1"
        )

    devices: dict[str, Device] = {}
    for kind, count in (("ground", v["ground_nodes"]), ("orbital", v["orbital_nodes"])):
        for i in range(count):
            devices[f"{kind}{i}"] = Device(
                name=f"{kind}{i}",
                kind=kind,
                flops=v[f"{kind}_flops"],
                memory_bytes=v[f"{kind}_memory"],
                memory_bandwidth=v[f"{kind}_memory_bandwidth"],
                cache_bytes=v[f"{kind}_cache"],
                cache_bandwidth=v[f"{kind}_cache_bandwidth"] or v[f"{kind}_memory_bandwidth"],
                power_w=v[f"{kind}_power_w"],
            )
    grounds = [n for n in devices if devices[n].kind == "ground"]
    orbitals = [n for n in devices if devices[n].kind == "orbital"]
    src = v["input_node"]
    dst = v["output_node"] or grounds[-1]
    for key, name in (("input_node", src), ("output_node", dst)):
        if name not in grounds:
            raise TopologyError(f"{key} is {name!r}, which is not a ground node of this topology ({', '.join(grounds)})")

    links: dict[tuple[str, str], Link] = {}
    prop = v["ground_orbit_latency_ms"]
    for g in grounds:
        for o in orbitals:
            links[(g, o)] = Link(g, o, v["uplink_bandwidth"], prop, v["uplink_energy_per_bit"], "uplink")
            links[(o, g)] = Link(o, g, v["downlink_bandwidth"], prop, v["downlink_energy_per_bit"], "downlink")
        for g2 in grounds:
            if g2 != g:
                links[(g, g2)] = Link(g, g2, v["ground_bandwidth"], v["ground_latency_ms"], v["ground_energy_per_bit"], "ground")
    for a in orbitals:
        for b in orbitals:
            if a != b:
                links[(a, b)] = Link(a, b, v["isl_bandwidth"], v["isl_latency_ms"], v["isl_energy_per_bit"], "isl")

    chain = (src, *orbitals, dst)
    bypasses = ((1, len(orbitals)),) if orbitals else ()
    return Topology(devices=devices, chain=chain, links=links, bypasses=bypasses,
                    capacity=v["capacity"], source=dict(data))


_UNIT_NAMES = {"count": "nodes", "flops": "FLOP/s", "bps": "bits per second", "bytes": "bytes", "Bps": "bytes per second",
               "ms": "milliseconds", "W": "watts", "J/bit": "joules per bit", "name": "a node name"}


# ---------------------------------------------------------------------------
# the general form

_DEVICE_KEYS = {
    "flops": "flops", "memory": "bytes", "memory_bytes": "bytes", "cache": "bytes", "cache_bytes": "bytes",
    "memory_bandwidth": "Bps", "cache_bandwidth": "Bps", "power": "W", "power_w": "W",
}
_LINK_KEYS = {"bandwidth": "bps", "bandwidth_bps": "bps", "latency_ms": "ms", "latency": "ms",
              "energy_per_bit": "J/bit", "energy_per_bit_j": "J/bit"}


_GENERAL_KEYS = {"devices", "links", "chain", "bypasses", "capacity"}


def _from_general(data: Mapping[str, Any]) -> Topology:
    unknown = sorted(set(data) - _GENERAL_KEYS)
    if unknown:
        raise TopologyError(f"unknown topology key(s) {unknown}; the general form takes {sorted(_GENERAL_KEYS)}")
    raw_devices = data["devices"]
    if isinstance(raw_devices, Mapping):
        if not all(isinstance(v, Mapping) for v in raw_devices.values()):
            raise TopologyError("devices: a mapping of device name -> {flops: ..., memory: ...} was expected, got "
                                f"{raw_devices!r}")
        raw_devices = [{"name": k, **dict(val)} for k, val in raw_devices.items()]
    devices: dict[str, Device] = {}
    for i, rd in enumerate(_list_of_mappings(raw_devices, "devices", "{name: gpu, flops: 989 TFLOPS, memory: 80 GB}")):
        if "name" not in rd:
            raise TopologyError(f"devices[{i}] has no 'name'")
        name = str(rd["name"])
        count = rd.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TopologyError(f"device {name!r}: count must be a whole number >= 1, got {count!r}")
        kw: dict[str, Any] = {"kind": str(rd.get("kind", "ground"))}
        for key, val in rd.items():
            if key in ("name", "kind", "count"):
                continue
            if key not in _DEVICE_KEYS:
                raise TopologyError(f"device {name!r}: unknown key {key!r}; known: {sorted(_DEVICE_KEYS)} (+ name, kind, count)")
            q = parse_quantity(val, _DEVICE_KEYS[key], f"device {name!r}.{key}")
            field_name = {"memory": "memory_bytes", "cache": "cache_bytes", "power": "power_w"}.get(key, key)
            kw[field_name] = q
        if "flops" not in kw or "memory_bytes" not in kw:
            missing = [k for k in ("flops", "memory") if {"flops": "flops", "memory": "memory_bytes"}[k] not in kw]
            raise TopologyError(f"device {name!r} is missing {missing} (flops in FLOP/s, memory in bytes)")
        if kw.get("cache_bytes", 0) > 0 and not kw.get("cache_bandwidth"):
            kw["cache_bandwidth"] = kw.get("memory_bandwidth", Device.memory_bandwidth)
        names = [name] if count == 1 else [f"{name}{j}" for j in range(count)]
        for n in names:
            if n in devices:
                raise TopologyError(f"device name {n!r} is used twice")
            devices[n] = Device(name=n, **kw)

    links: dict[tuple[str, str], Link] = {}
    for i, rl in enumerate(_list_of_mappings(data.get("links", []), "links", "{src: gpu0, dst: gpu1, bandwidth: 100 Gbps}")):
        try:
            src, dst = str(rl["src"]), str(rl["dst"])
        except KeyError as e:
            raise TopologyError(f"links[{i}] is missing {e.args[0]!r}") from None
        for end in (src, dst):
            if end not in devices:
                raise TopologyError(f"links[{i}] names device {end!r}, which is not among the devices {sorted(devices)}")
        kw = {}
        for key, val in rl.items():
            if key in ("src", "dst", "kind", "bidirectional"):
                continue
            if key not in _LINK_KEYS:
                raise TopologyError(f"links[{i}] ({src} -> {dst}): unknown key {key!r}; known: {sorted(_LINK_KEYS)}")
            q = parse_quantity(val, _LINK_KEYS[key], f"links[{i}].{key}")
            kw[{"bandwidth": "bandwidth_bps", "latency": "latency_ms", "energy_per_bit": "energy_per_bit_j"}.get(key, key)] = q
        if "bandwidth_bps" not in kw:
            raise TopologyError(f"links[{i}] ({src} -> {dst}) is missing 'bandwidth' (bits per second)")
        kind = str(rl.get("kind", "link"))
        links[(src, dst)] = Link(src, dst, kind=kind, **kw)
        if rl.get("bidirectional", True) and (dst, src) not in links:
            links[(dst, src)] = Link(dst, src, kind=kind, **kw)

    raw_chain = data.get("chain", list(devices))
    if isinstance(raw_chain, (str, bytes)) or not isinstance(raw_chain, (list, tuple)):
        raise TopologyError(f"chain must be a list of device names (e.g. [gpu0, gpu1]), got {raw_chain!r}")
    chain = tuple(str(n) for n in raw_chain)
    bypasses = tuple(_bypass(i, b) for i, b in enumerate(_list(data.get("bypasses", ()), "bypasses", "[1, 4]")))
    return Topology(devices=devices, chain=chain, links=links, bypasses=bypasses,  # type: ignore[arg-type]
                    capacity=str(data.get("capacity", "memory")), source=dict(data))


def _list(value: Any, key: str, example: str) -> list[Any]:
    """``value`` as a list, or a TopologyError naming ``key`` and showing what a good value looks like."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise TopologyError(f"{key} must be a list, like {key}: [{example}]; got {value!r}")
    return list(value)


def _list_of_mappings(value: Any, key: str, example: str) -> list[Mapping[str, Any]]:
    items = _list(value, key, example)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TopologyError(f"{key}[{i}] must be a mapping, like {example}; got {item!r}")
    return items


def _bypass(i: int, value: Any) -> tuple[int, int]:
    """One bypass: ``[first, last]`` chain indices of the stages it may skip."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise TopologyError(f"bypasses[{i}] must be [first, last], the chain indices of the inner stages it may "
                            f"skip when they are empty (e.g. [1, 4]); got {value!r}")
    return int(value[0]), int(value[1])


# ---------------------------------------------------------------------------
# presets

def _h100_cache_chain(n: int = 16) -> dict[str, Any]:
    """n H100s in a chain over NVLink, each stage held in its 50 MB of L2 (the paper's setting)."""
    return {
        "devices": [{"name": "h100_", "count": n, "kind": "gpu", "flops": "989 TFLOPS", "memory": "80 GB",
                     "cache": "50 MB", "memory_bandwidth": "3.35 TB/s", "cache_bandwidth": "12 TB/s", "power": "700 W"}],
        "links": [{"src": f"h100_{i}", "dst": f"h100_{i + 1}", "bandwidth": "3.6 Tbps", "latency_ms": 0.002,
                   "energy_per_bit": 1e-11, "kind": "nvlink"} for i in range(n - 1)],
        "chain": [f"h100_{i}" for i in range(n)],
        "capacity": "cache",
    }


PRESETS: dict[str, dict[str, Any]] = {
    # the seed's Partition Optimizer topology
    "seed": {
        "ground_nodes": 2, "orbital_nodes": 4, "ground_flops": 100e12, "orbital_flops": 20e12,
        "uplink_bandwidth": 100e6, "downlink_bandwidth": 500e6, "isl_bandwidth": 10e9, "ground_orbit_latency_ms": 25,
    },
    # the seed's LLaMA-70B example topology
    "seed-llama70b": {
        "ground_nodes": 3, "orbital_nodes": 5, "ground_flops": 200e12, "orbital_flops": 50e12,
        "uplink_bandwidth": 200e6, "downlink_bandwidth": 1e9, "isl_bandwidth": 25e9,
    },
    "h100x16-l2": _h100_cache_chain(16),
}


def preset(name: str) -> Topology:
    """A named topology: ``seed``, ``seed-llama70b`` or ``h100x16-l2``."""
    if name not in PRESETS:
        raise TopologyError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return Topology.from_dict(PRESETS[name])
