"""Export: write a partitioned model as a plan directory (``plan.json`` + one ``torch.export`` program per stage) and load it back.

A plan directory holds everything a node needs, without the model's Python code::

    plan/
      plan.json        schema "rotafx-plan" version 1: topology, objective, partition, estimate,
                       the values (every tensor that enters, crosses or leaves a stage), the stages
                       (inputs, outputs, device, file, sha256) and the hops (what each process sends
                       to the next one, in order, with or without the codec)
      stage0.pt2       torch.export.save of stage 0 (its weights inside)
      stage1.pt2       ...

Values travel along the chain: a tensor made by stage ``a`` and read by stage ``c > a + 1`` is
*relayed* through the stages between them (the estimator prices every chain link the same way),
so each process only talks to its neighbours. The first process receives the model's inputs from
the driver and the last one sends the model's outputs back.

The codec (``plan["codec"]``) applies exactly where the in-process runtime applies it: to a
value that goes from the stage that made it (or, for a model input, the first stage that read
it) to a later stage that reads it. Model outputs travel as they are.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import operator
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten, treespec_dumps, treespec_loads

from .ops import CODECS, _compresses, check_codec, move_value, transfer_value

__all__ = ["export", "export_pipeline", "load", "read_plan", "PlanError", "PlanSpec", "StageSpec", "HopSpec",
           "TensorSpec", "WireEntry", "LoadedStage", "LoadedPipeline", "SCHEMA_VERSION", "FORMAT", "PLAN_FILE"]

FORMAT = "rotafx-plan"
SCHEMA_VERSION = 1
PLAN_FILE = "plan.json"
DRIVER = -1  # the position of the driver in a hop's ``src`` (it also receives the last hop)

_transfer = torch.ops.rotafx.transfer.default


class PlanError(ValueError):
    """A plan directory that cannot be written or loaded; the message names the file and the mismatch."""


# ---------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor (static: a plan runs at the shapes it was exported with)."""

    shape: tuple[int, ...]
    dtype: str  # "float32", "int64", ...

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls(tuple(int(s) for s in t.shape), str(t.dtype).removeprefix("torch."))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize

    def matches(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and tuple(t.shape) == self.shape and t.dtype == self.torch_dtype

    def describe(self) -> str:
        return f"{self.dtype}{list(self.shape)}"

    def wire(self, codec: str | None) -> list["TensorSpec"]:
        """What this tensor travels as under ``codec``: the payload, and for int8 one fp32 scale per row."""
        if not _compresses(torch.empty((), dtype=self.torch_dtype), codec):
            return [self]
        payload = TensorSpec(self.shape, str(CODECS[codec]).removeprefix("torch."))  # type: ignore[index]
        if codec != "int8":
            return [payload]
        scale_shape = self.shape[:-1] + (1,) if self.shape else ()
        return [payload, TensorSpec(scale_shape, "float32")]


@dataclass(frozen=True)
class WireEntry:
    """One value in one hop's message: ``encoded`` when the plan's codec applies to it on this hop."""

    value: str
    encoded: bool


@dataclass(frozen=True)
class HopSpec:
    """Hop ``index``: from process ``src`` (``-1``: the driver) to process ``dst`` (``n``: back to the driver).

    ``links`` are the topology links the hop crosses (several when it relays through
    empty chain stages), each ``{src, dst, kind, bandwidth_bps, latency_ms}``.
    """

    index: int
    src: int
    dst: int
    entries: tuple[WireEntry, ...]
    links: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class StageSpec:
    """One stage of a plan: where it runs, what it reads and writes, and its program file."""

    index: int  # position among the plan's stages (0 .. n-1): ``rotafx serve --stage index``
    chain_index: int  # position in the topology's chain
    node: str
    kind: str
    device: str  # the torch device it was exported on
    file: str
    sha256: str
    inputs: tuple[str, ...]  # value ids, in the order the program takes them
    outputs: tuple[str, ...]  # value ids, in the order the program returns them
    weights: tuple[str, ...] = ()
    weight_bytes: int = 0


@dataclass
class PlanSpec:
    """``plan.json``, read back: the schema as typed objects, plus the directory it came from."""

    codec: str | None
    values: dict[str, TensorSpec]
    inputs: tuple[str, ...]  # the model's flat inputs (value ids)
    outputs: tuple[str, ...]  # the model's flat outputs (value ids)
    in_spec: TreeSpec | None
    out_spec: TreeSpec | None
    stages: list[StageSpec]
    hops: list[HopSpec]
    topology: dict[str, Any]
    objective: str
    partition: dict[str, Any]
    estimate: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def entry_specs(self, hop: HopSpec) -> list[TensorSpec]:
        """The tensors of a hop's message, in order (an encoded value may be two: payload and scale)."""
        out: list[TensorSpec] = []
        for e in hop.entries:
            spec = self.values[e.value]
            out.extend(spec.wire(self.codec) if e.encoded else [spec])
        return out

    def hop_bytes(self, hop: HopSpec) -> int:
        """Bytes of a hop's tensors (the payload the links carry, without the header)."""
        return sum(s.nbytes for s in self.entry_specs(hop))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta,
            "codec": self.codec,
            "objective": self.objective,
            "topology": self.topology,
            "partition": self.partition,
            "estimate": self.estimate,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "in_spec": treespec_dumps(self.in_spec) if self.in_spec is not None else None,
            "out_spec": treespec_dumps(self.out_spec) if self.out_spec is not None else None,
            "values": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.values.items()},
            "stages": [{
                "index": s.index, "chain_index": s.chain_index, "node": s.node, "kind": s.kind, "device": s.device,
                "file": s.file, "sha256": s.sha256, "inputs": list(s.inputs), "outputs": list(s.outputs),
                "receives": _entries_json(self.hops[s.index].entries), "sends": _entries_json(self.hops[s.index + 1].entries),
                "weights": list(s.weights), "weight_bytes": s.weight_bytes,
            } for s in self.stages],
            "hops": [{"index": h.index, "src": h.src, "dst": h.dst, "entries": _entries_json(h.entries),
                      "bytes": self.hop_bytes(h), "links": [dict(l) for l in h.links]} for h in self.hops],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path | None = None) -> "PlanSpec":
        where = f"{path / PLAN_FILE}" if path is not None else PLAN_FILE
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise PlanError(f"rotafx: {where} is not a rotafx plan (its 'format' is {data.get('format') if isinstance(data, Mapping) else None!r}, "
                            f"expected {FORMAT!r})")
        version = data.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise PlanError(f"rotafx: {where} has schema_version {version!r}; expected an integer >= 1")
        if version > SCHEMA_VERSION:
            raise PlanError(f"rotafx: {where} was written with plan schema version {version}, but this rotafx "
                            f"({_version()}) reads versions up to {SCHEMA_VERSION}; upgrade rotafx on this node "
                            f"(pip install -U rotafx) or export the plan again with this version")
        try:
            values = {k: TensorSpec(tuple(int(x) for x in v["shape"]), str(v["dtype"])) for k, v in data["values"].items()}
            for k, v in values.items():
                if not isinstance(getattr(torch, v.dtype, None), torch.dtype):
                    raise PlanError(f"rotafx: {where}: value {k!r} has unknown dtype {v.dtype!r}")
            stages = [StageSpec(index=int(s["index"]), chain_index=int(s["chain_index"]), node=str(s["node"]),
                                kind=str(s.get("kind", "")), device=str(s["device"]), file=str(s["file"]),
                                sha256=str(s["sha256"]), inputs=tuple(s["inputs"]), outputs=tuple(s["outputs"]),
                                weights=tuple(s.get("weights", ())), weight_bytes=int(s.get("weight_bytes", 0)))
                      for s in data["stages"]]
            hops = [HopSpec(index=int(h["index"]), src=int(h["src"]), dst=int(h["dst"]),
                            entries=tuple(WireEntry(str(e["value"]), bool(e["encoded"])) for e in h["entries"]),
                            links=tuple(dict(l) for l in h.get("links", ())))
                    for h in data["hops"]]
            spec = cls(codec=check_codec(data.get("codec")), values=values, inputs=tuple(data["inputs"]),
                       outputs=tuple(data["outputs"]),
                       in_spec=treespec_loads(data["in_spec"]) if data.get("in_spec") else None,
                       out_spec=treespec_loads(data["out_spec"]) if data.get("out_spec") else None,
                       stages=stages, hops=hops, topology=dict(data.get("topology") or {}),
                       objective=str(data.get("objective", "")), partition=dict(data.get("partition") or {}),
                       estimate=dict(data.get("estimate") or {}), meta=dict(data.get("meta") or {}), path=path)
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"rotafx: {where} is malformed: {type(e).__name__}: {e}") from None
        spec._check(where)
        return spec

    def _check(self, where: str) -> None:
        """Internal consistency: stage indices, hops around every stage, every referenced value known."""
        n = len(self.stages)
        if n < 1:
            raise PlanError(f"rotafx: {where} lists no stages")
        if [s.index for s in self.stages] != list(range(n)):
            raise PlanError(f"rotafx: {where}: stage indices are {[s.index for s in self.stages]}, expected 0..{n - 1}")
        if [(h.index, h.src, h.dst) for h in self.hops] != [(k, k - 1, k) for k in range(n + 1)]:
            raise PlanError(f"rotafx: {where}: expected {n + 1} hops driver -> stage 0 -> ... -> stage {n - 1} -> driver")
        names = set(self.values)
        refs = [*self.inputs, *self.outputs, *(v for s in self.stages for v in (*s.inputs, *s.outputs)),
                *(e.value for h in self.hops for e in h.entries)]
        unknown = sorted(set(refs) - names)
        if unknown:
            raise PlanError(f"rotafx: {where} refers to values {unknown} that are not listed under 'values'")

    def topology_object(self) -> Any:
        """The plan's :class:`~rotafx.Topology`."""
        from .topology import Topology

        return Topology.from_dict(self.topology)


def _entries_json(entries: Sequence[WireEntry]) -> list[dict[str, Any]]:
    return [{"value": e.value, "encoded": e.encoded} for e in entries]


def _version() -> str:
    import sys

    return f"rotafx {getattr(sys.modules.get('rotafx'), '__version__', 'unknown')}"


# ---------------------------------------------------------------------------
# export


def export(model: torch.nn.Module, example_inputs: Any, *, path: str | os.PathLike[str], topology: Any = None,
           objective: str = "minimize_latency", example_kwargs: Mapping[str, Any] | None = None,
           overwrite: bool = False, **options: Any) -> PlanSpec:
    """Partition ``model`` (like :func:`rotafx.partition`) and write the plan directory ``path``.

    ``options`` are those of :func:`rotafx.partition` (``devices``, ``codec``, ``solver``,
    ...). The example inputs fix every shape of the plan: requests must have the same
    shapes and dtypes. An existing non-empty ``path`` is replaced only with ``overwrite=True``.
    Returns the written :class:`PlanSpec`.

    >>> import torch, rotafx, tempfile
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(4, 8)
    >>> d = tempfile.mkdtemp()
    >>> plan = rotafx.export(m, (x,), path=d + "/plan", overwrite=True)
    >>> torch.equal(rotafx.load(d + "/plan")(x), m(x))
    True
    """
    from .backend import partition

    args = _as_tuple(example_inputs)
    pm = partition(model, args, example_kwargs=example_kwargs, topology=topology, objective=objective, **options)
    return export_pipeline(pm, args, path=path, example_kwargs=example_kwargs, overwrite=overwrite,
                           model_name=type(model).__name__)


def export_pipeline(pm: Any, example_inputs: Any, *, path: str | os.PathLike[str],
                    example_kwargs: Mapping[str, Any] | None = None, overwrite: bool = False,
                    model_name: str | None = None) -> PlanSpec:
    """Write the plan directory of a :class:`~rotafx.PipelineModule` made by :func:`rotafx.partition`.

    Each stage is exported with ``torch.export`` on the tensors it receives when the
    pipeline runs ``example_inputs``, and checked to give the same outputs as the stage
    it came from. The directory is written next to ``path`` and renamed into place, so a
    failed export leaves nothing behind.
    """
    plan = getattr(pm, "plan", None)
    if plan is None or not hasattr(pm, "rewritten"):
        raise PlanError("rotafx: export needs a PipelineModule made by rotafx.partition (it carries the plan); "
                        f"got {type(pm).__name__}")
    rw = pm.rewritten
    out_dir = Path(path)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise PlanError(f"rotafx: {str(out_dir)!r} exists and is not an empty directory; pass overwrite=True "
                        f"(--overwrite) to replace it or choose another path")

    # the flat inputs, as the program takes them
    args = _as_tuple(example_inputs)
    if pm.in_spec is not None:
        flat, spec = tree_flatten((args, dict(example_kwargs or {})))
        if spec != pm.in_spec:
            raise PlanError(f"rotafx: example inputs are structured as {spec}, but the model was partitioned for {pm.in_spec}")
    else:
        flat = list(args)
    for name, t in zip(rw.inputs, flat):
        if not isinstance(t, torch.Tensor):
            raise PlanError(f"rotafx: export supports tensor inputs only; input {name!r} is a {type(t).__name__}")

    # run once, recording what every stage receives and returns
    seen: dict[int, tuple[tuple, tuple]] = {}
    hooks = []
    for st in rw.stages:
        mod = getattr(pm.program, f"stage{st.index}")
        hooks.append(mod.register_forward_hook(
            lambda m, a, o, idx=st.index: seen.__setitem__(idx, (tuple(a), tuple(o) if isinstance(o, (tuple, list)) else (o,)))))
    try:
        with torch.no_grad():
            pm.program(*flat)
    finally:
        for h in hooks:
            h.remove()

    flow = _dataflow(rw)
    values: dict[str, TensorSpec] = {name: TensorSpec.of(t) for name, t in zip(rw.inputs, flat)}
    for st in rw.stages:
        ins, outs = seen[st.index]
        for vid, t in zip(flow.stage_inputs[st.index], ins):
            if not isinstance(t, torch.Tensor):
                raise PlanError(f"rotafx: stage {st.index} ({st.node}) receives {vid!r}, a {type(t).__name__}; "
                                f"export supports tensors between stages only")
        for vid, t in zip(flow.stage_outputs[st.index], outs):
            if not isinstance(t, torch.Tensor):
                raise PlanError(f"rotafx: stage {st.index} ({st.node}) returns {vid!r}, a {type(t).__name__}; "
                                f"export supports tensors between stages only")
            values[vid] = TensorSpec.of(t)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        stages: list[StageSpec] = []
        for pos, st in enumerate(rw.stages):
            ins, outs = seen[st.index]
            try:
                with torch.no_grad():
                    ep = torch.export.export(st.module, ins, strict=False)
            except Exception as e:
                raise PlanError(f"rotafx: torch.export could not export stage {pos} ({st.node}): "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
            with torch.no_grad():
                got = ep.module()(*ins)
            got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
            if len(got) != len(outs) or not all(torch.equal(a, b) for a, b in zip(got, outs)):
                raise PlanError(f"rotafx: the exported program of stage {pos} ({st.node}) does not reproduce the stage's outputs")
            file = f"stage{pos}.pt2"
            torch.export.save(ep, tmp / file)
            stages.append(StageSpec(
                index=pos, chain_index=st.index, node=st.node, kind=plan.partition.topology.devices[st.node].kind,
                device=str(st.device), file=file, sha256=_sha256(tmp / file),
                inputs=flow.stage_inputs[st.index], outputs=flow.stage_outputs[st.index],
                weights=tuple(st.weight_names),
                weight_bytes=sum(t.numel() * t.element_size() for t in st.parameters())))
        topo = plan.partition.topology
        spec = PlanSpec(
            codec=rw.codec, values=values, inputs=tuple(rw.inputs), outputs=flow.outputs,
            in_spec=pm.in_spec, out_spec=pm.out_spec, stages=stages,
            hops=_hops(flow, [st.index for st in rw.stages], tuple(rw.inputs), topo, plan.partition.stages, rw.codec),
            topology=topology_dict(topo), objective=plan.partition.objective.name,
            partition=_partition_dict(plan.partition), estimate=estimate_dict(plan.partition.estimate),
            meta={"model": model_name or "", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "rotafx": _version(), "torch": torch.__version__},
        )
        (tmp / PLAN_FILE).write_text(json.dumps(spec.to_json(), indent=1, allow_nan=False) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    spec.path = out_dir
    return spec


@dataclass
class _Flow:
    """Who reads and writes what in a rewritten program (value ids are the original node names)."""

    stage_inputs: dict[int, tuple[str, ...]]
    stage_outputs: dict[int, tuple[str, ...]]
    outputs: tuple[str, ...]


def _dataflow(rw: Any) -> _Flow:
    """Read the rewritten program's top-level graph: the values each stage call takes and returns."""
    alias: dict[fx.Node, str] = {}
    calls: dict[str, int] = {}
    stage_inputs: dict[int, tuple[str, ...]] = {}
    stage_outputs: dict[int, tuple[str, ...]] = {}
    subs = {f"stage{st.index}": st for st in rw.stages}
    placeholders = [n for n in rw.program.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(rw.inputs):
        raise PlanError(f"rotafx: the program has {len(placeholders)} inputs but the plan lists {len(rw.inputs)}")
    outputs: tuple[str, ...] = ()
    for n in rw.program.graph.nodes:
        if n.op == "placeholder":
            alias[n] = rw.inputs[placeholders.index(n)]
        elif (n.op == "call_method" and n.target == "to") or (n.op == "call_function" and n.target in (move_value, _transfer, transfer_value)):
            alias[n] = alias[n.args[0]]
        elif n.op == "call_module" and n.target in subs:
            idx = subs[n.target].index
            calls[n.name] = idx
            stage_inputs[idx] = tuple(alias[a] if isinstance(a, fx.Node) else _not_tensor(a, n) for a in n.args)
            outs = subs[n.target].module.graph.output_node().args[0]
            stage_outputs[idx] = tuple(o.name if isinstance(o, fx.Node) else _not_tensor(o, n) for o in outs)
        elif n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node) and n.args[0].name in calls:
            alias[n] = stage_outputs[calls[n.args[0].name]][int(n.args[1])]
        elif n.op == "output":
            flat, _ = tree_flatten(n.args[0])
            outputs = tuple(alias[a] if isinstance(a, fx.Node) else _not_tensor(a, n) for a in flat)
        else:
            raise PlanError(f"rotafx: the rewritten program has a step export does not know: {n.format_node()}")
    produced = [v for vs in stage_outputs.values() for v in vs]
    if len(set(produced)) != len(produced) or set(produced) & set(rw.inputs):
        raise PlanError("rotafx: two stages (or a stage and an input) give a value the same name; cannot export")
    return _Flow(stage_inputs, stage_outputs, outputs)


def _not_tensor(a: Any, n: fx.Node) -> str:
    raise PlanError(f"rotafx: {n.format_node()} passes the constant {a!r}; export supports tensors between stages only")


def _hops(flow: _Flow, chain_of: list[int], inputs: tuple[str, ...], topo: Any, layer_stages: Sequence[int],
          codec: str | None) -> list[HopSpec]:
    """The messages between neighbouring processes (relaying values that skip a stage), with the links they cross."""
    n = len(chain_of)
    pos_of = {c: p for p, c in enumerate(chain_of)}
    avail: dict[str, int] = {v: DRIVER for v in inputs}  # the process that first holds the value
    origin: dict[str, int] = {}  # where the codec starts applying: producer, or an input's first reader
    readers: dict[str, list[int]] = {}
    for c in chain_of:
        p = pos_of[c]
        for v in flow.stage_inputs[c]:
            readers.setdefault(v, []).append(p)
            origin.setdefault(v, p)
        for v in flow.stage_outputs[c]:
            avail[v] = origin[v] = p
    is_output = set(flow.outputs)
    hops = []
    for k in range(n + 1):
        entries: list[WireEntry] = []
        for v in dict.fromkeys([*inputs, *(v for c in chain_of for v in flow.stage_outputs[c])]):
            if avail[v] >= k:
                continue
            needed_by_stage = any(r >= k for r in readers.get(v, ()))
            if needed_by_stage:
                entries.append(WireEntry(v, encoded=codec is not None and origin.get(v, n) < k))
            if v in is_output:  # model outputs travel as they are (the in-process runtime does not compress them)
                entries.append(WireEntry(v, encoded=False))
        a = chain_of[k - 1] if k > 0 else 0
        b = chain_of[k] if k < n else len(topo.chain) - 1
        hops.append(HopSpec(k, k - 1, k, tuple(dict.fromkeys(entries)), tuple(_links_between(topo, a, b, layer_stages))))
    return hops


def _links_between(topo: Any, a: int, b: int, layer_stages: Sequence[int]) -> list[dict[str, Any]]:
    """The topology links from chain stage ``a`` to chain stage ``b``, taking a bypass over empty stages."""
    used = set(layer_stages)
    out = []
    c = a
    bypass = {f - 1: g for f, g in topo.bypasses}
    while c < b:
        g = bypass.get(c)
        if g is not None and g + 1 <= b and not any(s in used for s in range(c + 1, g + 1)):
            nxt = g + 1
        else:
            nxt = c + 1
        link = topo.link(topo.chain[c], topo.chain[nxt])
        if link.kind != "local":
            out.append({"src": link.src, "dst": link.dst, "kind": link.kind,
                        "bandwidth_bps": link.bandwidth_bps, "latency_ms": link.latency_ms})
        c = nxt
    return out


def topology_dict(topo: Any) -> dict[str, Any]:
    """The general form of a :class:`~rotafx.Topology` (reads back with ``Topology.from_dict``)."""
    devices = []
    for d in topo.devices.values():
        dev = {"name": d.name, "kind": d.kind, "flops": d.flops, "memory": d.memory_bytes,
               "memory_bandwidth": d.memory_bandwidth, "power": d.power_w}
        if d.cache_bytes:
            dev.update(cache=d.cache_bytes, cache_bandwidth=d.cache_bandwidth)
        devices.append(dev)
    links = [{"src": l.src, "dst": l.dst, "kind": l.kind, "bandwidth": l.bandwidth_bps, "latency_ms": l.latency_ms,
              "energy_per_bit": l.energy_per_bit_j, "bidirectional": False} for l in topo.links.values()]
    return {"devices": devices, "links": links, "chain": list(topo.chain),
            "bypasses": [list(b) for b in topo.bypasses], "capacity": topo.capacity}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _partition_dict(p: Any) -> dict[str, Any]:
    return {"objective": p.objective.name, "solver": p.solver, "status": p.status, "gap": _num(p.gap),
            "objective_value": _num(p.objective_value), "stages": list(p.stages), "nodes": p.nodes,
            "cut_points": p.cut_points, "layers": [l.name for l in p.profile.layers]}


def estimate_dict(e: Any) -> dict[str, Any]:
    """The figures of an :class:`~rotafx.Estimate` (ms, bytes, joules) as plain JSON."""
    return {
        "total_ms": e.total_ms, "parts": {k: float(v) for k, v in e.parts().items()},
        "compute_ms": e.compute_ms, "transfer_ms": e.transfer_ms, "propagation_ms": e.propagation_ms,
        "period_ms": e.period_ms, "throughput_rps": _num(e.throughput_rps), "energy_j": e.energy_j,
        "transfer_bytes": e.transfer_bytes, "codec": e.codec,
        "transfers": [{"boundary": t.boundary, "src": t.src, "dst": t.dst, "link_kind": t.link_kind, "bytes": t.bytes,
                       "transfer_ms": t.transfer_ms, "propagation_ms": t.propagation_ms} for t in e.transfers],
        "by_layer": [{"index": l.index, "name": l.name, "node": l.node, "stage": l.stage, "ms": l.total_ms} for l in e.by_layer],
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (tuple(x) if isinstance(x, list) else (x,))


# ---------------------------------------------------------------------------
# load


def read_plan(path: str | os.PathLike[str]) -> PlanSpec:
    """Read and check ``path/plan.json`` (schema, consistency); loads no program.

    Raises :class:`PlanError` for a missing or malformed file or a newer schema.
    """
    d = Path(path)
    f = d / PLAN_FILE if d.is_dir() or not d.name.endswith(".json") else d
    if f.name == PLAN_FILE and f.parent != d:
        d = f.parent
    if not f.exists():
        raise PlanError(f"rotafx: no plan at {str(d)!r}: {f} does not exist (write one with rotafx.export or `rotafx export`)")
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PlanError(f"rotafx: {f} is not readable JSON: {e}") from None
    return PlanSpec.from_json(data, path=f.parent)


class LoadedStage(torch.nn.Module):
    """One stage of a plan, loaded from its ``.pt2``: call it with its inputs, get the tuple of its outputs.

    ``spec`` is its :class:`StageSpec`, ``plan`` the whole :class:`PlanSpec`,
    ``program`` the ``ExportedProgram``.
    """

    def __init__(self, plan: PlanSpec, spec: StageSpec, program: Any, device: torch.device) -> None:
        super().__init__()
        self.plan = plan
        self.spec = spec
        self.program = program
        self.device = device
        self.module = program.module()

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def node(self) -> str:
        return self.spec.node

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [self.plan.values[v] for v in self.spec.inputs]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [self.plan.values[v] for v in self.spec.outputs]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def load(path: str | os.PathLike[str], stage: int | None = None, *, device: Any = None,
         devices: Sequence[Any] | Mapping[str, Any] | None = None, verify: bool = True,
         emulate_links: bool = False) -> "LoadedPipeline | LoadedStage":
    """Load a plan directory: the whole pipeline in this process, or with ``stage=i`` stage ``i`` alone.

    ``device`` puts every stage on one torch device, ``devices`` gives one per stage (a
    list, or a dict node -> device); by default each stage goes where it was exported.
    ``verify`` checks each program file's sha256 against ``plan.json``. Every stage is
    read and checked before anything is returned: a newer schema, a missing file or a
    program that does not match the plan raises :class:`PlanError`.
    ``emulate_links`` makes the pipeline wait, at each hop, as long as the topology's
    links would take (see :mod:`rotafx.runtime.links`).
    """
    plan = read_plan(path)
    if stage is not None:
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < plan.num_stages:
            raise PlanError(f"rotafx: stage must be an integer 0..{plan.num_stages - 1} (the plan has "
                            f"{plan.num_stages} stages), got {stage!r}")
        return _load_stage(plan, plan.stages[stage], _stage_device(plan, plan.stages[stage], device, devices), verify)
    loaded = [_load_stage(plan, s, _stage_device(plan, s, device, devices), verify) for s in plan.stages]
    return LoadedPipeline(plan, loaded, emulate_links=emulate_links)


def _stage_device(plan: PlanSpec, s: StageSpec, device: Any, devices: Any) -> torch.device:
    if device is not None and devices is not None:
        raise PlanError("rotafx: give device or devices, not both")
    if devices is not None:
        if isinstance(devices, Mapping):
            return torch.device(devices[s.node]) if s.node in devices else torch.device(s.device)
        if len(devices) != plan.num_stages:
            raise PlanError(f"rotafx: devices lists {len(devices)} devices but the plan has {plan.num_stages} stages")
        return torch.device(devices[s.index])
    return torch.device(device if device is not None else s.device)


def _load_stage(plan: PlanSpec, s: StageSpec, device: torch.device, verify: bool) -> LoadedStage:
    assert plan.path is not None
    f = plan.path / s.file
    if not f.exists():
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): its program {f} is missing; the plan lists "
                        f"{plan.num_stages} stage files ({', '.join(x.file for x in plan.stages)}); copy it next to plan.json")
    if verify:
        digest = _sha256(f)
        if digest != s.sha256:
            raise PlanError(f"rotafx: stage {s.index} ({s.node}): {f} does not match plan.json (sha256 {digest[:12]}… "
                            f"but the plan says {s.sha256[:12]}…); the file comes from another export: copy the whole "
                            f"plan directory again")
    try:
        ep = torch.export.load(f)
    except Exception as e:
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): {f} is not a torch.export program: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    sig = ep.graph_signature
    user_in = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(sig.user_inputs)]
    want = [plan.values[v] for v in s.inputs]
    got = [TensorSpec.of(n.meta["val"]) if isinstance(n.meta.get("val"), torch.Tensor) else None for n in user_in]
    if got != want or len(sig.user_outputs) != len(s.outputs):
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): {f} does not match plan.json: the program takes "
                        f"{[g.describe() if g else '?' for g in got]} and returns {len(sig.user_outputs)} values, the plan "
                        f"says it takes {[w.describe() for w in want]} and returns {len(s.outputs)}")
    if torch.device(s.device) != device:
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    return LoadedStage(plan, s, ep, device)


class LoadedPipeline(torch.nn.Module):
    """A loaded plan run in one process: the stages in order, ``rotafx::transfer`` between them.

    Called like the original model (same argument structure, same shapes and dtypes as the
    example inputs). With ``emulate_links`` each hop waits as long as the topology's links
    would take for the bytes it carries.
    """

    def __init__(self, plan: PlanSpec, stages: Sequence[LoadedStage], *, emulate_links: bool = False) -> None:
        super().__init__()
        self.plan = plan
        self.stages = torch.nn.ModuleList(stages)
        self.emulate_links = emulate_links
        from .runtime.links import hop_delay_s

        self._hop_s = [hop_delay_s(h.links, plan.hop_bytes(h)) for h in plan.hops]

    def flatten_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The flat tensors of one call, checked against the plan (structure, shapes, dtypes)."""
        return check_request(self.plan, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = self.flatten_inputs(args, kwargs)
        out = self.run_flat(flat)
        return tree_unflatten(out, self.plan.out_spec) if self.plan.out_spec is not None else tuple(out)

    def run_flat(self, flat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run the stages on flat inputs; the flat outputs, each on the device of the stage that made it."""
        plan = self.plan
        env: dict[str, torch.Tensor] = dict(zip(plan.inputs, flat))
        first_read: set[str] = set()
        for st in self.stages:
            if self.emulate_links:
                time.sleep(self._hop_s[st.index])
            ins = []
            for v in st.spec.inputs:
                if v in plan.inputs and v not in first_read:
                    first_read.add(v)
                    env[v] = env[v].to(st.device)
                    ins.append(env[v])
                else:
                    ins.append(torch.ops.rotafx.transfer(env[v], st.device, plan.codec))
            with torch.no_grad():
                outs = st(*ins)
            env.update(zip(st.spec.outputs, outs))
        if self.emulate_links:
            time.sleep(self._hop_s[-1])
        return [env[v] for v in plan.outputs]


def check_request(plan: PlanSpec, args: tuple, kwargs: Mapping[str, Any], where: str = "") -> list[torch.Tensor]:
    """Flatten one request like the model's example inputs and check it against the plan, or raise ``PlanError``."""
    if plan.in_spec is not None:
        flat, spec = tree_flatten((tuple(args), dict(kwargs)))
        if spec != plan.in_spec:
            raise PlanError(f"rotafx: {where}inputs are structured as {spec}, but the plan was exported for "
                            f"{plan.in_spec}; call it the way the example inputs were given")
    else:
        if kwargs:
            raise PlanError(f"rotafx: {where}this plan takes {len(plan.inputs)} positional inputs, not keywords {sorted(kwargs)}")
        flat = list(args)
    if len(flat) != len(plan.inputs):
        raise PlanError(f"rotafx: {where}expected {len(plan.inputs)} input tensors ({', '.join(plan.inputs)}), got {len(flat)}")
    for name, t in zip(plan.inputs, flat):
        spec = plan.values[name]
        if not isinstance(t, torch.Tensor):
            raise PlanError(f"rotafx: {where}input {name!r} must be a tensor {spec.describe()}, got {type(t).__name__}")
        if not spec.matches(t):
            raise PlanError(f"rotafx: {where}input {name!r} is {TensorSpec.of(t).describe()}, but the plan was exported "
                            f"for {spec.describe()}; plans have static shapes: export again with example inputs of this shape")
    return flat
