"""Topology: devices, links and the ordered chain of stages a request goes through."""

from __future__ import annotations

import json
import math
import re
import reprlib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

__all__ = [
    "Device",
    "Link",
    "LinkGroup",
    "LinkTable",
    "Topology",
    "TopologyError",
    "SEED_DEFAULTS",
    "parse_quantity",
    "preset",
    "PRESETS",
]


class TopologyError(ValueError):
    """A topology that cannot be used: the message names the key, the value and the fix."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 8, 8


def _show(value: Any) -> str:
    """``repr(value)`` for an error message: short, and safe for values nested deeper than repr can go."""
    return _REPR.repr(value)


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
        number = float(value)
    elif not isinstance(value, str):
        raise TopologyError(f"{key}: expected a number or a string with a unit, got {_show(value)}")
    else:
        number = _parse_with_unit(value, kind, key)
    if not math.isfinite(number):
        raise TopologyError(f"{key}: must be a finite number, got {_show(value)} (an infinite latency or bandwidth, or "
                            f"NaN, would make every estimate infinite or NaN)")
    return number


def _parse_with_unit(value: str, kind: str, key: str) -> float:
    """A string such as ``"100 Mbps"`` in the canonical unit of ``kind``."""
    m = re.fullmatch(rf"\s*({_NUM})\s*([A-Za-z/]*)\s*", value)
    if not m:
        raise TopologyError(f"{key}: cannot read {_show(value)} as a quantity (write e.g. '100 Mbps', '25 ms', '80 GB')")
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
    raise TopologyError(f"{key}: unknown unit {unit!r} in {_show(value)}; use one of {known} with an optional "
                        f"k/M/G/T prefix")


def _quantity(value: Any, kind: str, key: str, positive: bool) -> float:
    """:func:`parse_quantity`, then the sign: ``positive`` (> 0) or zero or more."""
    q = parse_quantity(value, kind, key)
    if q < 0 or (positive and q == 0):
        need = "positive" if positive else "zero or positive"
        raise TopologyError(f"{key} must be {need} ({_UNIT_NAMES[kind]}), got {_show(value)}")
    return q


def _name(value: Any, key: str) -> str:
    """A device name: a non-empty string (a whole number is read as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise TopologyError(f"{key} must be a device name (a non-empty string), got {_show(value)}")
    return value


def _flag(value: Any, key: str) -> bool:
    """A yes/no option: true or false, not a string that looks like one."""
    if not isinstance(value, bool):
        raise TopologyError(f"{key} must be true or false (a boolean, not a string or a number), got {_show(value)}")
    return value


# ---------------------------------------------------------------------------
# devices and links


@dataclass(frozen=True)
class Device:
    """One machine that can run a stage.

    Units: ``flops`` in FLOP/s, ``memory_bytes`` and ``cache_bytes`` in bytes,
    ``memory_bandwidth`` and ``cache_bandwidth`` in bytes/s, ``power_w`` in watts.
    ``calibration``: what the device measured (:class:`rotafx.calibrate.Calibration`); the
    cost model then prices each op by its measured rate and launch cost instead of the
    datasheet roofline (``flops``, ``memory_bandwidth``).
    """

    name: str
    kind: str = "ground"
    flops: float = 100e12
    memory_bytes: float = 80e9
    memory_bandwidth: float = 2e12
    cache_bytes: float = 0.0
    cache_bandwidth: float = 0.0
    power_w: float = 700.0
    calibration: Any = field(default=None, hash=False)

    @property
    def figures(self) -> str:
        """Where its compute times come from: ``"calibrated"`` (measured) or ``"datasheet"`` (its peak figures)."""
        return "calibrated" if self.calibration is not None else "datasheet"


@dataclass(frozen=True)
class Link:
    """A directed link. ``bandwidth_bps`` in bits/s, ``latency_ms`` one-way in ms, ``energy_per_bit_j`` in J/bit.

    ``message_ms``: what each message costs the transport beyond its bytes (packing, the send and the receive
    between processes; ``rotafx calibrate --processes`` measures it on a host): it adds to the hop's latency
    and keeps the link busy, like serialisation.
    """

    src: str
    dst: str
    bandwidth_bps: float
    latency_ms: float = 0.0
    energy_per_bit_j: float = 0.0
    kind: str = "link"  # "uplink", "downlink", "isl", "ground", "local" or a user's name
    message_ms: float = 0.0


LOCAL = "local"


@dataclass(frozen=True)
class LinkGroup:
    """Alike links from every device of ``srcs`` to every other device of ``dsts`` (the seed's uplinks from
    each ground node to each satellite, say), held as one object and made one by one when looked up."""

    srcs: tuple[str, ...]
    dsts: tuple[str, ...]
    bandwidth_bps: float
    latency_ms: float = 0.0
    energy_per_bit_j: float = 0.0
    kind: str = "link"
    message_ms: float = 0.0
    _src_set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _dst_set: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_src_set", frozenset(self.srcs))
        object.__setattr__(self, "_dst_set", frozenset(self.dsts))

    def joins(self, src: str, dst: str) -> bool:
        """Whether the group has a link from ``src`` to ``dst``."""
        return src != dst and src in self._src_set and dst in self._dst_set

    def link(self, src: str, dst: str) -> Link:
        """The group's link from ``src`` to ``dst`` (which it :meth:`joins`)."""
        return Link(src, dst, self.bandwidth_bps, self.latency_ms, self.energy_per_bit_j, self.kind, self.message_ms)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Every ``(src, dst)`` the group joins."""
        return ((a, b) for a in self.srcs for b in self.dsts if a != b)

    def count(self) -> int:
        """How many links the group stands for."""
        return len(self._src_set) * len(self._dst_set) - len(self._src_set & self._dst_set)

    def sample(self) -> Link | None:
        """One of its links (to check the figures they share), or None when it joins no pair."""
        return next((self.link(a, b) for a, b in self.pairs()), None)

    def overlaps(self, other: "LinkGroup") -> bool:
        """Whether some pair is in both groups."""
        return bool(self._src_set & other._src_set) and bool(self._dst_set & other._dst_set)


class LinkTable(Mapping[tuple[str, str], Link]):
    """The links of a topology, ``(src, dst) -> Link``: links written one by one, then groups of alike links
    (:class:`LinkGroup`), made when looked up. A link written out wins over a group; among groups, the first.

    The seed's dict joins every pair of nodes; as four groups its table holds four objects, not n² links
    (10,000 satellites: 10⁸ pairs), so a topology is as large as what its user wrote.

    >>> t = LinkTable(groups=[LinkGroup(("g0", "g1"), ("s0", "s1", "s2"), 1e8, 25.0, kind="uplink")])
    >>> len(t), t["g1", "s2"].kind, ("s2", "g1") in t
    (6, 'uplink', False)
    """

    def __init__(self, links: Mapping[tuple[str, str], Link] | None = None, groups: Sequence[LinkGroup] = ()) -> None:
        self.explicit: dict[tuple[str, str], Link] = dict(links or {})
        self.groups: tuple[LinkGroup, ...] = tuple(g for g in groups if g.count())
        self._disjoint = all(not a.overlaps(b) for i, a in enumerate(self.groups) for b in self.groups[i + 1:])

    def __getitem__(self, key: tuple[str, str]) -> Link:
        link = self.explicit.get(key)
        if link is not None:
            return link
        src, dst = key
        for g in self.groups:
            if g.joins(src, dst):
                return g.link(src, dst)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if key in self.explicit:
            return True
        return isinstance(key, tuple) and len(key) == 2 and any(g.joins(*key) for g in self.groups)

    def _covered_before(self, i: int, key: tuple[str, str]) -> bool:
        return key in self.explicit or any(g.joins(*key) for g in self.groups[:i])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        yield from self.explicit
        for i, g in enumerate(self.groups):
            for key in g.pairs():
                if not self._covered_before(i, key):
                    yield key

    def __len__(self) -> int:
        if not self._disjoint:
            return sum(1 for _ in self)
        shadowed = sum(1 for key in self.explicit if any(g.joins(*key) for g in self.groups))
        return len(self.explicit) + sum(g.count() for g in self.groups) - shadowed

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LinkTable) and self.explicit == other.explicit and self.groups == other.groups:
            return True
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # every figure it holds, as long as what its user wrote (a plan cache keys on the topology's repr)
        return f"LinkTable({self.explicit!r}, groups={self.groups!r})"

    def held(self) -> list[Link | LinkGroup]:
        """The objects the table holds: its written links and its groups (what its size grows with)."""
        return [*self.explicit.values(), *self.groups]

    def samples(self) -> Iterator[Link]:
        """Every written link and one link of each group: every set of figures the table holds."""
        yield from self.explicit.values()
        for g in self.groups:
            sample = g.sample()
            if sample is not None:
                yield sample


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
    links: Mapping[tuple[str, str], Link]  # a dict, or a LinkTable that makes grouped links when asked
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
                raise TopologyError(f"chain names device {name!r}, which is not among the devices "
                                    f"{_show(sorted(self.devices))}")
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
        for l in (self.links.samples() if isinstance(self.links, LinkTable) else self.links.values()):
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
        """Read a topology from a JSON, YAML or TOML file (the seed's keys or the general form).

        Args:
            path: the file; its suffix (``.json``, ``.yaml``/``.yml``, ``.toml``) says how to read it.

        Returns:
            The :class:`Topology` it describes.

        Raises:
            TopologyError: naming the file and what is wrong with it: missing, a directory, unreadable,
                empty, not text, not valid in its format (with the parser's first line), nested too
                deeply, not a mapping, or a topology that :meth:`from_dict` refuses (its message).

        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "seed.json"
        >>> _ = f.write_text(json.dumps(PRESETS["seed"]))
        >>> Topology.load(f).chain
        ('ground0', 'orbital0', 'orbital1', 'orbital2', 'orbital3', 'ground1')
        """
        p = Path(path)
        where = f"topology file {str(p)!r}"
        if not p.exists():
            raise TopologyError(f"{where} does not exist (presets: {', '.join(PRESETS)})")
        if p.is_dir():
            raise TopologyError(f"{where} is a directory; give a JSON, YAML or TOML file (or a preset: "
                                f"{', '.join(PRESETS)})")
        suffix = p.suffix.lower()
        readers = {".json": json.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load, ".toml": tomllib.loads}
        if suffix not in readers:
            raise TopologyError(f"{where}: unknown suffix {suffix!r}; use .json, .yaml or .toml")
        fmt = suffix[1:].upper().replace("YML", "YAML")
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise TopologyError(f"{where} cannot be read: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TopologyError(f"{where} is not UTF-8 text (byte {e.start} is {raw[e.start]:#04x}); write the "
                                f"topology as {fmt} text") from None
        if "\x00" in text:
            raise TopologyError(f"{where} holds binary data (a NUL byte at {text.index(chr(0))}); write the topology as "
                                f"{fmt} text")
        if not text.strip():
            raise TopologyError(f"{where} is empty; write the seed's keys or devices/links/chain in {fmt}")
        try:
            data = readers[suffix](text)
        except RecursionError:
            raise TopologyError(f"{where} nests its values too deeply to read as {fmt}; a topology is a mapping "
                                f"of keys to numbers, strings and short lists") from None
        except (ValueError, yaml.YAMLError) as e:  # JSON and TOML errors are ValueErrors
            raise TopologyError(f"{where} is not valid {fmt}: {_parse_error(e)}") from None
        if not isinstance(data, Mapping):
            raise TopologyError(f"{where} must hold a mapping at the top level (the seed's keys, or devices/links/"
                                f"chain), not a {type(data).__name__}")
        try:
            return cls.from_dict(_calibrations_beside(data, p.parent))
        except TopologyError as e:
            raise TopologyError(f"{where}: {e}") from None
        except RecursionError:
            raise TopologyError(f"{where} nests its values too deeply; a topology is a mapping of keys to numbers, "
                                f"strings and short lists") from None

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
                            "cache_bandwidth": d.cache_bandwidth, "power": d.power_w,
                            **({"calibration": d.calibration.to_dict()} if d.calibration is not None else {})})
        table = self.links if isinstance(self.links, LinkTable) else LinkTable(self.links)
        links: list[dict[str, Any]] = [
            {"src": l.src, "dst": l.dst, "kind": l.kind, "bandwidth": l.bandwidth_bps, "latency_ms": l.latency_ms,
             "energy_per_bit": l.energy_per_bit_j, "bidirectional": False,
             **({"message_ms": l.message_ms} if l.message_ms else {})} for l in table.explicit.values()]
        links += [{"src": list(g.srcs), "dst": list(g.dsts), "kind": g.kind, "bandwidth": g.bandwidth_bps,
                   "latency_ms": g.latency_ms, "energy_per_bit": g.energy_per_bit_j, "bidirectional": False,
                   **({"message_ms": g.message_ms} if g.message_ms else {})} for g in table.groups]
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

    def link_kinds(self) -> set[str]:
        """The kinds of link this topology has (``"uplink"``, ``"isl"``, ...), without listing its links."""
        if isinstance(self.links, LinkTable):
            return {l.kind for l in self.links.samples()}
        return {l.kind for l in self.links.values()}

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


def _parse_error(e: Exception) -> str:
    """The parser's complaint on one line, with where it is (YAML puts the position on later lines)."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
        return f"{e.problem or e.context} (line {mark.line + 1}, column {mark.column + 1})"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fmt_bps(bps: float) -> str:
    if math.isinf(bps):
        return "inf"
    for unit, scale in (("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6), ("kbps", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g} {unit}"
    return f"{bps:g} bps"


def _check_device(d: Device) -> None:
    """Every figure of a device a finite number: its speed, memory and power positive, its cache zero or more."""
    for key in ("flops", "memory_bytes", "memory_bandwidth", "power_w", "cache_bytes", "cache_bandwidth"):
        _check_figure(f"device {d.name!r}", key, getattr(d, key), positive=key not in ("cache_bytes", "cache_bandwidth"))


def _check_link(l: Link) -> None:
    """Every figure of a link a finite number: its bandwidth positive, its latency and energy zero or more."""
    for key in ("bandwidth_bps", "latency_ms", "energy_per_bit_j", "message_ms"):
        _check_figure(f"link {l.src!r} -> {l.dst!r} ({l.kind})", key, getattr(l, key), positive=key == "bandwidth_bps")


def _check_figure(owner: str, key: str, v: Any, positive: bool) -> None:
    """A figure of a device or link built by hand: a finite number, positive or zero or more."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        need = "a finite positive number" if positive else "a finite number, zero or more"
        raise TopologyError(f"{owner}: {key} must be {need}, got {_show(v)}")


def _capacity(value: Any) -> str:
    """The capacity rule: ``"memory"`` or ``"cache"``."""
    if value not in ("memory", "cache") or not isinstance(value, str):
        raise TopologyError(f"capacity must be 'memory' or 'cache' (what each stage must fit), got {_show(value)}")
    return value


def _unknown_keys(data: Mapping[Any, Any], known: set[str]) -> list[str]:
    """The keys of ``data`` not in ``known``, shown as written (keys of any type: YAML reads ``1:`` as a number)."""
    return sorted((_show(k) for k in data if k not in known))


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
# the figures that must be positive (the others may be 0: a latency, a cache, an energy per bit)
_SEED_POSITIVE = {"ground_flops", "orbital_flops", "uplink_bandwidth", "downlink_bandwidth", "isl_bandwidth",
                  "ground_bandwidth", "ground_memory", "orbital_memory", "ground_memory_bandwidth",
                  "orbital_memory_bandwidth", "ground_power_w", "orbital_power_w"}


def _from_seed(data: Mapping[str, Any]) -> Topology:
    known = {k for k, _, _ in SEED_KEYS}
    unknown = _unknown_keys(data, known)
    if unknown:
        raise TopologyError(
            f"unknown topology key(s) {', '.join(unknown)}; the seed's keys are "
            f"{[k for k, _, d in SEED_KEYS if d is None and k != 'output_node']}, "
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
                raise TopologyError(f"{key} must be a whole number of nodes >= 0, got {_show(raw)}")
            v[key] = raw
        elif key == "capacity":
            v[key] = _capacity(raw)
        elif unit == "name":
            v[key] = _name(raw, key)
        else:
            v[key] = _quantity(raw, unit, key, positive=key in _SEED_POSITIVE)
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
            raise TopologyError(f"{key} is {name!r}, which is not a ground node of this topology (ground0 .. "
                                f"ground{len(grounds) - 1})")

    # every pair of nodes is joined, by four kinds of link: four groups, not n² links
    prop = v["ground_orbit_latency_ms"]
    g, o = tuple(grounds), tuple(orbitals)
    links = LinkTable(groups=[
        LinkGroup(g, o, v["uplink_bandwidth"], prop, v["uplink_energy_per_bit"], "uplink"),
        LinkGroup(o, g, v["downlink_bandwidth"], prop, v["downlink_energy_per_bit"], "downlink"),
        LinkGroup(g, g, v["ground_bandwidth"], v["ground_latency_ms"], v["ground_energy_per_bit"], "ground"),
        LinkGroup(o, o, v["isl_bandwidth"], v["isl_latency_ms"], v["isl_energy_per_bit"], "isl"),
    ])

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
              "energy_per_bit": "J/bit", "energy_per_bit_j": "J/bit", "message_ms": "ms"}


_GENERAL_KEYS = {"devices", "links", "chain", "bypasses", "capacity"}


def _calibration(value: Any, where: str) -> Any:
    """A device's calibration: a file path (JSON/YAML) or the mapping ``Calibration.to_dict`` writes."""
    from .calibrate import Calibration, CalibrationError

    try:
        if isinstance(value, Calibration):
            return value
        if isinstance(value, (str, Path)):
            return Calibration.load(value)
        if isinstance(value, Mapping):
            return Calibration.from_dict(value, where=f"rotafx: {where}")
    except CalibrationError as e:
        raise TopologyError(f"{where}: {str(e).removeprefix('rotafx: ')}") from None
    raise TopologyError(f"{where} must be a calibration file (written by `rotafx calibrate -o FILE`) or its mapping, "
                        f"got {_show(value)}")


def _calibrations_beside(data: Mapping[str, Any], base: Path) -> Mapping[str, Any]:
    """``data`` with each device's relative calibration path read from beside the topology file."""
    devices = data.get("devices") if isinstance(data, Mapping) else None
    rows = devices.values() if isinstance(devices, Mapping) else devices if isinstance(devices, list) else []
    if not any(isinstance(r, Mapping) and isinstance(r.get("calibration"), str) for r in rows):
        return data

    def fix(r: Any) -> Any:
        if isinstance(r, Mapping) and isinstance(r.get("calibration"), str) and not Path(r["calibration"]).is_absolute():
            return {**r, "calibration": str(base / r["calibration"])}
        return r
    fixed = {k: fix(v) for k, v in devices.items()} if isinstance(devices, Mapping) else [fix(r) for r in devices]
    return {**data, "devices": fixed}


_DEVICE_POSITIVE = {"flops", "memory", "memory_bytes", "memory_bandwidth", "power", "power_w"}


def _from_general(data: Mapping[str, Any]) -> Topology:
    unknown = _unknown_keys(data, _GENERAL_KEYS)
    if unknown:
        raise TopologyError(f"unknown topology key(s) {', '.join(unknown)}; the general form takes "
                            f"{sorted(_GENERAL_KEYS)}")
    raw_devices = data["devices"]
    if isinstance(raw_devices, Mapping):
        if not all(isinstance(v, Mapping) for v in raw_devices.values()):
            raise TopologyError("devices: a mapping of device name -> {flops: ..., memory: ...} was expected, got "
                                f"{_show(raw_devices)}")
        raw_devices = [{"name": k, **dict(val)} for k, val in raw_devices.items()]
    devices: dict[str, Device] = {}
    for i, rd in enumerate(_list_of_mappings(raw_devices, "devices", "{name: gpu, flops: 989 TFLOPS, memory: 80 GB}")):
        if "name" not in rd:
            raise TopologyError(f"devices[{i}] has no 'name'")
        name = _name(rd["name"], f"devices[{i}].name")
        count = rd.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            digits = isinstance(count, str) and count.strip().isdigit()
            hint = f" (a string: write count: {count.strip()})" if digits else ""
            raise TopologyError(f"device {name!r}: count must be a whole number >= 1 (how many such devices, named "
                                f"{name}0, {name}1, ...), got {_show(count)}{hint}")
        kind = rd.get("kind", "ground")
        if not isinstance(kind, str):
            raise TopologyError(f"device {name!r}: kind must be a name such as ground, orbital or gpu, got "
                                f"{_show(kind)}")
        kw: dict[str, Any] = {"kind": kind}
        if rd.get("calibration") is not None:
            kw["calibration"] = _calibration(rd["calibration"], f"device {name!r}.calibration")
        for key, val in rd.items():
            if key in ("name", "kind", "count", "calibration"):
                continue
            if key not in _DEVICE_KEYS:
                raise TopologyError(f"device {name!r}: unknown key {_show(key)}; known: {sorted(_DEVICE_KEYS)} "
                                    f"(+ name, kind, count)")
            q = _quantity(val, _DEVICE_KEYS[key], f"device {name!r}.{key}", positive=key in _DEVICE_POSITIVE)
            field_name = {"memory": "memory_bytes", "cache": "cache_bytes", "power": "power_w"}.get(key, key)
            kw[field_name] = q
        cal = kw.get("calibration")
        if cal is not None:  # measured figures stand in for the datasheet's where none is given
            if "flops" not in kw and cal.peak_flops(next(iter(cal.matmul), "float32")):
                kw["flops"] = cal.peak_flops(next(iter(cal.matmul), "float32"))
            kw.setdefault("memory_bandwidth", cal.bandwidth_Bps)
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

    explicit: dict[tuple[str, str], Link] = {}
    groups: list[LinkGroup] = []
    example = "{src: gpu0, dst: gpu1, bandwidth: 100 Gbps}"
    for i, rl in enumerate(_list_of_mappings(data.get("links", []), "links", example)):
        for end in ("src", "dst"):
            if end not in rl:
                raise TopologyError(f"links[{i}] is missing {end!r} (a device name, or a list of them); e.g. {example}")
        src, dst = (_link_end(rl[end], f"links[{i}].{end}", devices) for end in ("src", "dst"))
        where = f"links[{i}] ({_show(rl['src'])} -> {_show(rl['dst'])})"
        kw = {}
        for key, val in rl.items():
            if key in ("src", "dst", "kind", "bidirectional"):
                continue
            if key not in _LINK_KEYS:
                raise TopologyError(f"{where}: unknown key {_show(key)}; known: {sorted(_LINK_KEYS)} (+ src, dst, kind, "
                                    f"bidirectional)")
            q = _quantity(val, _LINK_KEYS[key], f"{where}: {key}", positive=key in ("bandwidth", "bandwidth_bps"))
            kw[{"bandwidth": "bandwidth_bps", "latency": "latency_ms", "energy_per_bit": "energy_per_bit_j"}.get(key, key)] = q
        if "bandwidth_bps" not in kw:
            raise TopologyError(f"{where} is missing 'bandwidth' (bits per second)")
        kind = rl.get("kind", "link")
        if not isinstance(kind, str):
            raise TopologyError(f"links[{i}].kind must be a name such as uplink, isl or nvlink, got {_show(kind)}")
        both = _flag(rl.get("bidirectional", True), f"links[{i}].bidirectional")
        if isinstance(src, str) and isinstance(dst, str):
            explicit[(src, dst)] = Link(src, dst, kind=kind, **kw)
            if both and (dst, src) not in explicit:
                explicit[(dst, src)] = Link(dst, src, kind=kind, **kw)
        else:  # every pair: one group, made link by link when looked up
            srcs, dsts = (src,) if isinstance(src, str) else src, (dst,) if isinstance(dst, str) else dst
            groups.append(LinkGroup(srcs, dsts, kind=kind, **kw))
            if both:
                groups.append(LinkGroup(dsts, srcs, kind=kind, **kw))

    raw_chain = data.get("chain", list(devices))
    if isinstance(raw_chain, (str, bytes)) or not isinstance(raw_chain, (list, tuple)):
        raise TopologyError(f"chain must be a list of device names (e.g. [gpu0, gpu1]), got {_show(raw_chain)}")
    chain = tuple(_name(n, f"chain[{i}]") for i, n in enumerate(raw_chain))
    bypasses = tuple(_bypass(i, b) for i, b in enumerate(_list(data.get("bypasses", ()), "bypasses", "[1, 4]")))
    return Topology(devices=devices, chain=chain, links=LinkTable(explicit, groups), bypasses=bypasses,
                    capacity=_capacity(data.get("capacity", "memory")), source=dict(data))


def _link_end(value: Any, key: str, devices: Mapping[str, Device]) -> str | tuple[str, ...]:
    """A link's ``src`` or ``dst``: a device name, or a non-empty list of them (every pair: a group of links)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise TopologyError(f"{key} is an empty list; give a device name or a list of device names")
        names: str | tuple[str, ...] = tuple(_name(v, f"{key}[{j}]") for j, v in enumerate(value))
    else:
        names = _name(value, key)
    for end in ((names,) if isinstance(names, str) else names):
        if end not in devices:
            raise TopologyError(f"{key} names device {end!r}, which is not among the devices "
                                f"{_show(sorted(devices))}")
    return names


def _list(value: Any, key: str, example: str) -> list[Any]:
    """``value`` as a list, or a TopologyError naming ``key`` and showing what a good value looks like."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise TopologyError(f"{key} must be a list, like {key}: [{example}]; got {_show(value)}")
    return list(value)


def _list_of_mappings(value: Any, key: str, example: str) -> list[Mapping[str, Any]]:
    items = _list(value, key, example)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TopologyError(f"{key}[{i}] must be a mapping, like {example}; got {_show(item)}")
    return items


def _bypass(i: int, value: Any) -> tuple[int, int]:
    """One bypass: ``[first, last]`` chain indices of the stages it may skip."""
    if (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise TopologyError(f"bypasses[{i}] must be [first, last], the chain indices of the inner stages it may "
                            f"skip when they are empty (e.g. [1, 4]), not device names; got {_show(value)}")
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
