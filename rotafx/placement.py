"""LayerPlacement: place layers on ground, orbital or named nodes by hand, and check the placement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from typing import Any, Iterable, Mapping, Sequence

from .costmodel import CostTables
from .profile import ModelProfile
from .topology import Topology
from .units import fmt_bytes, format_ranges

__all__ = ["LayerPlacement", "Validation", "PlacementError", "memory_issues"]


class PlacementError(ValueError):
    """A placement that cannot run on the topology; the message lists every issue."""


@dataclass(frozen=True)
class Validation:
    """The verdict of :meth:`LayerPlacement.validate`: ``is_valid`` and one sentence per issue."""

    is_valid: bool
    issues: list[str]
    stages: tuple[int, ...] | None = None
    memory_bytes: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.is_valid


class LayerPlacement:
    """Layers assigned by hand to ``"ground"``, ``"orbital"`` or a named node.

    Layers are given by index or by name. Layers on ``"orbital"`` without a node name
    are split into contiguous groups of (as nearly as possible) equal layer counts over
    the orbital nodes in chain order; name a node to control it exactly.

    >>> placement = LayerPlacement()
    >>> placement.assign_ground(layers=[0, 1]).assign_orbital(layers=range(2, 4)).assignments
    {0: 'ground', 1: 'ground', 2: 'orbital', 3: 'orbital'}
    """

    def __init__(self, assignments: Mapping[int | str, str] | None = None) -> None:
        self._entries: list[tuple[int | str, str]] = []
        self.profile: ModelProfile | None = None
        for k, v in (assignments or {}).items():
            self.assign([k], v)

    # -- building ----------------------------------------------------------
    def assign(self, layers: Iterable[int | str] | int | str, node: str) -> "LayerPlacement":
        """Assign layers to a node name (``"orbital2"``) or a node kind (``"ground"``, ``"orbital"``)."""
        if not isinstance(node, str) or not node:
            raise PlacementError(f"rotafx: a node is a name ('orbital2') or a kind ('ground', 'orbital'), got {node!r}")
        if isinstance(layers, (int, str)):
            layers = [layers]
        if not isinstance(layers, Iterable):
            raise PlacementError(f"rotafx: layers to assign to {node!r} are indices or names (a list, a range or one), "
                                 f"got {layers!r}")
        layers = list(layers)
        for l in layers:
            if isinstance(l, bool) or not isinstance(l, (int, str)):
                raise PlacementError(f"rotafx: a layer is an index or a name, got {l!r} (assigned to {node!r})")
        self._entries.extend((l, node) for l in layers)
        return self

    def assign_ground(self, layers: Iterable[int | str] | int | str) -> "LayerPlacement":
        """Run these layers on a ground node."""
        return self.assign(layers, "ground")

    def assign_orbital(self, layers: Iterable[int | str] | int | str) -> "LayerPlacement":
        """Run these layers on orbital nodes."""
        return self.assign(layers, "orbital")

    @property
    def assignments(self) -> dict[int | str, str]:
        """The last assignment of every layer key, in the order given."""
        return {k: v for k, v in self._entries}

    @classmethod
    def from_stages(cls, stages: Sequence[int]) -> "LayerPlacement":
        """A placement that puts layer ``l`` on the node of chain stage ``stages[l]``."""
        p = cls()
        for l, s in enumerate(stages):
            p._entries.append((l, f"@stage{s}"))
        return p

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, Any]) -> "LayerPlacement":
        """Read ``"ground:0-4,orbital:5-74,ground:75-79"`` or ``{"ground": [0, 1], "orbital": "2-9"}``."""
        p = cls()
        if isinstance(spec, str):
            items = [part.split(":", 1) for part in spec.split(";") if part.strip()] if ";" in spec else _split_spec(spec)
            for item in items:
                if len(item) != 2:
                    raise PlacementError(f"rotafx: cannot read {item[0].strip()!r} in placement {spec!r}: write node:layers, "
                                         f"e.g. 'ground:0-4;orbital:5-74;ground:75-79'")
                p.assign(_parse_range(item[1]), item[0].strip())
            return p
        if not isinstance(spec, Mapping):
            raise PlacementError(f"rotafx: a placement is a string ('ground:0-4,orbital:5-74,ground:75-79') or a mapping "
                                 f"{{node: layers}}, got {type(spec).__name__}")
        for node, rng in spec.items():
            if isinstance(rng, str):
                p.assign(_parse_range(rng), str(node))
            elif isinstance(rng, int) and not isinstance(rng, bool):
                p.assign([rng], str(node))
            elif isinstance(rng, (list, tuple)):
                p.assign(list(rng), str(node))
            else:
                raise PlacementError(f"rotafx: the layers of node {node!r} must be a range ('0-4'), a list of indices or "
                                     f"names, or one index; got {rng!r}")
        return p

    # -- resolving ---------------------------------------------------------
    def resolve(self, profile: ModelProfile, topology: Topology) -> tuple[list[int | None], list[str]]:
        """The chain stage of every layer (``None`` where it cannot be placed) and the issues found."""
        issues: list[str] = []
        target: dict[int, str] = {}
        dup: dict[int, list[str]] = {}
        out_of_range: list[int] = []
        unknown: list[str] = []
        for key, node in self._entries:
            if isinstance(key, int) and not -profile.num_layers <= key < profile.num_layers:
                out_of_range.append(key)
                continue
            try:
                idx = profile.layer_index(key)
            except KeyError:
                unknown.append(str(key))
                continue
            if idx in target:
                dup.setdefault(idx, [target[idx]]).append(node)
            target[idx] = node
        if out_of_range:
            issues.append(f"layer(s) {_few(format_ranges(out_of_range).split(', '))} are out of range: the model has "
                          f"{profile.num_layers} layers (0..{profile.num_layers - 1})")
        if unknown:
            close = [l.name for l in profile.layers if any(k in l.name for k in unknown)][:5]
            issues.append(f"no layer named {_few([repr(k) for k in dict.fromkeys(unknown)])}"
                          + (f"; did you mean {close}?" if close else f"; layers are named {_few([l.name for l in profile.layers])}"))
        for idx, nodes in sorted(dup.items())[:3]:
            issues.append(f"layer {idx} ({profile.layers[idx].name}) is assigned {len(nodes)} times: to {', '.join(nodes)}")
        if len(dup) > 3:
            issues.append(f"... and {len(dup) - 3} more layers assigned more than once "
                          f"(layers {format_ranges(sorted(dup)[3:])})")
        missing = [l for l in range(profile.num_layers) if l not in target]
        if missing:
            names = ", ".join(profile.layers[l].name for l in missing[:4]) + (", ..." if len(missing) > 4 else "")
            issues.append(f"layer(s) {_few(format_ranges(missing).split(', '), 8)} ({names}) are not assigned to any node")

        kinds = {d.kind for d in topology.devices.values()}
        stages: list[int | None] = [None] * profile.num_layers
        current = 0
        l = 0
        while l < profile.num_layers:
            node = target.get(l)
            if node is None:
                l += 1
                continue
            run_end = l
            while run_end + 1 < profile.num_layers and target.get(run_end + 1) == node:
                run_end += 1
            run = list(range(l, run_end + 1))
            if node.startswith("@stage"):
                num = node[6:]
                if not num.isdigit() or int(num) >= len(topology.chain):
                    issues.append(f"layer(s) {format_ranges(run)} are assigned to {node!r}, but the topology's chain has "
                                  f"stages @stage0..@stage{len(topology.chain) - 1} ({' -> '.join(topology.chain)})")
                    l = run_end + 1
                    continue
                cands = [int(num)]
            elif node in topology.devices:
                cands = [s for s, n in enumerate(topology.chain) if n == node]
                if not cands:
                    issues.append(f"node {node!r} (layers {format_ranges(run)}) is not in the chain {' -> '.join(topology.chain)}")
            elif node in kinds:
                cands = topology.stages_of_kind(node)
            else:
                count_key = f"{node}_nodes"
                hint = f" (the topology has {count_key}=0)" if node in ("ground", "orbital") else ""
                issues.append(f"layer(s) {format_ranges(run)} are assigned to {node!r}, but the topology has no such node or "
                              f"node kind{hint}; nodes are {', '.join(topology.chain)}")
                l = run_end + 1
                continue
            ahead = [s for s in cands if s >= current]
            if not ahead:
                prev = max((i for i in range(l) if stages[i] is not None), default=None)
                where = f"layer {prev} runs on {topology.chain[stages[prev]]}" if prev is not None else "earlier layers"  # type: ignore[index]
                issues.append(f"layer {l} ({profile.layers[l].name}) goes back to {node} after {where}: a request moves along "
                              f"{' -> '.join(topology.chain)} and cannot return to an earlier node")
                l = run_end + 1
                continue
            # a run of layers on a node kind spreads over that kind's nodes still ahead, except on the ground,
            # where the input and output live
            if node in kinds and node not in topology.devices and len(ahead) > 1 and node != "ground":
                # split the run evenly over the nodes of that kind still ahead
                k = min(len(ahead), len(run))  # never leave a node empty between two used ones
                for j, layer in enumerate(run):
                    stages[layer] = ahead[j * k // len(run)]
            else:
                for layer in run:
                    stages[layer] = ahead[0]
            current = stages[run[-1]]  # type: ignore[assignment]
            l = run_end + 1
        return stages, issues

    def stages(self, profile: ModelProfile, topology: Topology | Mapping[str, Any] | str) -> list[int]:
        """The chain stage of every layer; raises :class:`PlacementError` listing the issues if invalid."""
        topo = Topology.coerce(topology)
        stages, issues = self.resolve(profile, topo)
        if issues:
            raise PlacementError("invalid placement:\n  " + "\n  ".join(issues))
        return [int(s) for s in stages]  # type: ignore[arg-type]

    def validate(self, profile: ModelProfile, topology: Topology | Mapping[str, Any] | str, *,
                 memory_rule: str = "liveness") -> Validation:
        """Check the placement: every layer exactly once, indices in range, the chain's order,
        and each node's memory (``memory_rule="liveness"`` or the paper's ``"sum"``).

        Remembers ``profile`` so that ``LatencyEstimator.estimate(placement)`` can use it.
        """
        topo = Topology.coerce(topology)
        self.profile = profile
        stages, issues = self.resolve(profile, topo)
        memory: dict[str, float] = {}
        if not any(s is None for s in stages):
            tables = CostTables(profile, topo, memory_rule=memory_rule)
            memory = tables.device_memory([int(s) for s in stages])  # type: ignore[arg-type]
            issues += memory_issues(tables, [int(s) for s in stages])  # type: ignore[arg-type]
        ok = not issues
        return Validation(ok, issues, tuple(int(s) for s in stages) if ok else None, memory)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        groups: dict[str, list[int]] = {}
        for k, v in self._entries:
            groups.setdefault(v, []).append(k if isinstance(k, int) else -1)
        return "LayerPlacement(" + ", ".join(f"{v}: {format_ranges(x for x in ks if x >= 0)}" for v, ks in groups.items()) + ")"


def memory_issues(tables: CostTables, stages: Sequence[int], cache_bytes: Sequence[float] | None = None) -> list[str]:
    """One sentence per device whose memory (or cache) the placement exceeds.

    ``cache_bytes[l]``: bytes of layer ``l``'s weights that are a KV cache held as buffers (a static-cache
    decoder's), named as KV cache with the generation profile's own (``tables.kv_bytes``).
    """
    issues = []
    topo = tables.topology
    held = np.asarray(tables.kv_bytes, dtype=float) + (np.asarray(cache_bytes, dtype=float) if cache_bytes is not None
                                                         else 0.0)
    for name, need in tables.device_memory(stages).items():
        cap = tables.capacity[name]
        if need <= cap:
            continue
        layers = [l for l, s in enumerate(stages) if topo.chain[s] == name]
        kv = float(sum(held[l] for l in layers))
        if tables.memory_rule == "sum":
            how = "sum of weights + activations + workspace of each layer (rule 'sum')" + (
                f", of which the KV cache is {fmt_bytes(kv)}" if kv else "")
        else:
            w = need - max(tables.peak_bytes[l] for l in layers)
            workload = f" ({_kv_workload(tables)})" if tables.generation is not None else ""
            how = (f"weights {fmt_bytes(w - kv)} + " + (f"KV cache {fmt_bytes(kv)}{workload} + " if kv else "")
                   + f"peak live activations and workspace {fmt_bytes(need - w)} (rule 'liveness')")
        issues.append(f"{name} holds layer(s) {format_ranges(layers)} and needs {fmt_bytes(need)}: {how}; "
                      f"its {topo.capacity} is {fmt_bytes(cap)}, exceeded by {fmt_bytes(need - cap)}")
    return issues


def _kv_workload(tables: CostTables) -> str:
    gen = tables.generation
    rows = f"{gen.batch_size} x {gen.sequences} sequences" if gen.sequences > 1 else f"{gen.batch_size} sequence(s)"
    return f"{rows} at {gen.context_len} tokens: fewer tokens, a smaller batch or more memory shrink it"


def _few(items: Sequence[str], n: int = 4) -> str:
    """At most ``n`` items, then how many more."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _split_spec(spec: str) -> list[list[str]]:
    # "ground:0-4,orbital:5-74,ground:75-79": commas separate node groups, ranges may hold '+'
    out: list[list[str]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            out.append(part.split(":", 1))
        elif out:
            out[-1][1] += "+" + part
        else:
            raise PlacementError(f"rotafx: cannot read placement {spec!r}; write e.g. 'ground:0-4,orbital:5-74,ground:75-79'")
    return out


def _parse_range(text: str) -> list[int | str]:
    out: list[int | str] = []
    for part in text.replace("+", " ").replace(",", " ").split():
        if "-" in part and all(x.strip().isdigit() for x in part.split("-", 1)):
            a, b = (int(x) for x in part.split("-", 1))
            if b < a:
                raise PlacementError(f"rotafx: layer range {part!r} runs backwards; write {b}-{a}")
            out.extend(range(a, b + 1))
        elif part.isdigit():
            out.append(int(part))
        else:
            out.append(part)
    return out
