"""The plan schema: ``plan.json`` as typed objects (values, stages, hops), read and checked, and a request checked against it.

A plan directory holds everything a node needs, without the model's Python code::

    plan/
      plan.json        schema "rotafx-plan" version 1: topology, objective, partition, estimate,
                       the values (every tensor that enters, crosses or leaves a stage), the stages
                       (inputs, outputs, device, file, sha256) and the hops (what each process sends
                       to the next one, in order, with or without the codec)
      stage0.pt2       torch.export.save of stage 0 (its weights inside)
      stage1.pt2       ...
      stage0.prefill.pt2, stage0.decode.pt2, ...   with "generation" in plan.json (a causal LM exported
                       with a max context): each stage's prefill and decode programs, its layers' KV
                       cache a buffer of each (state of the stage, never on the wire)
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils._pytree import TreeSpec, tree_flatten, treespec_dumps, treespec_loads

from ..wire import CODECS, check_codec, compresses

__all__ = ["PlanError", "TensorSpec", "WireEntry", "HopSpec", "StageSpec", "PlanSpec", "GenerationSpec", "read_plan",
           "check_request",
           "sha256_of", "rotafx_version", "is_constant", "spec_json", "FORMAT", "SCHEMA_VERSION", "PLAN_FILE", "DRIVER"]

FORMAT = "rotafx-plan"
SCHEMA_VERSION = 3  # 2: constants (non-tensor inputs and outputs); 3: generation programs
PLAN_FILE = "plan.json"
DRIVER = -1  # the position of the driver in a hop's ``src`` (it also receives the last hop)


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
        if not compresses(torch.empty((), dtype=self.torch_dtype), codec):
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
    cache: tuple[tuple[str, TensorSpec], ...] = ()  # a generation program's KV cache buffers: (name, shape)


@dataclass
class PlanSpec:
    """``plan.json``, read back: the schema as typed objects, plus the directory it came from."""

    codec: str | None
    values: dict[str, TensorSpec]
    inputs: tuple[str, ...]  # the model's flat inputs (value ids)
    outputs: tuple[str, ...]  # the model's flat outputs (value ids)
    in_spec_json: str | None  # the pytree structure of (args, kwargs), as torch's treespec_dumps writes it
    out_spec_json: str | None  # the pytree structure of the outputs
    stages: list[StageSpec]
    hops: list[HopSpec]
    topology: dict[str, Any]
    objective: str
    partition: dict[str, Any]
    estimate: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    # values that are not tensors (a bool keyword, an int, a None output): baked into the plan, checked at call time
    constants: dict[str, Any] = field(default_factory=dict)
    generation: "GenerationSpec | None" = None  # the prefill and decode programs of a causal LM

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def in_spec(self) -> TreeSpec | None:
        """How the model's inputs are structured (read when a request is checked, not when the plan is loaded)."""
        return _treespec(self.in_spec_json, "inputs")

    @property
    def out_spec(self) -> TreeSpec | None:
        """How the model's outputs are structured: a stage process never needs it, the driver does."""
        return _treespec(self.out_spec_json, "outputs")

    @property
    def tensor_inputs(self) -> tuple[str, ...]:
        """The model's flat inputs that are tensors (the others are constants of the plan), in order."""
        return tuple(v for v in self.inputs if v not in self.constants)

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
            "in_spec": self.in_spec_json,
            "out_spec": self.out_spec_json,
            "values": {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.values.items()},
            "constants": {k: {"value": v} for k, v in self.constants.items()},
            "stages": [{
                "index": s.index, "chain_index": s.chain_index, "node": s.node, "kind": s.kind, "device": s.device,
                "file": s.file, "sha256": s.sha256, "inputs": list(s.inputs), "outputs": list(s.outputs),
                "receives": _entries_json(self.hops[s.index].entries), "sends": _entries_json(self.hops[s.index + 1].entries),
                "weights": list(s.weights), "weight_bytes": s.weight_bytes,
                **({"cache": [{"name": n, "shape": list(t.shape), "dtype": t.dtype} for n, t in s.cache]} if s.cache else {}),
            } for s in self.stages],
            "hops": [{"index": h.index, "src": h.src, "dst": h.dst, "entries": _entries_json(h.entries),
                      "bytes": self.hop_bytes(h), "links": [dict(l) for l in h.links]} for h in self.hops],
            **({"generation": self.generation.to_json()} if self.generation is not None else {}),
        }

    def files(self) -> list[str]:
        """Every program file the plan names (the one-pass stages', then the generation programs')."""
        gen = self.generation
        return [s.file for p in (self, *((gen.prefill, gen.decode) if gen else ())) for s in p.stages]

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
                            f"({rotafx_version()}) reads versions up to {SCHEMA_VERSION}; upgrade rotafx on this node "
                            f"(pip install -U rotafx) or export the plan again with this version")
        try:
            values = {k: TensorSpec(tuple(int(x) for x in v["shape"]), str(v["dtype"])) for k, v in data["values"].items()}
            constants = {str(k): v["value"] for k, v in (data.get("constants") or {}).items()}
            for k, v in constants.items():
                if not is_constant(v):
                    raise PlanError(f"rotafx: {where}: constant {k!r} is {v!r}; a plan's constants are None, bools, "
                                    f"numbers and strings")
            for k, v in values.items():
                if not isinstance(getattr(torch, v.dtype, None), torch.dtype):
                    raise PlanError(f"rotafx: {where}: value {k!r} has unknown dtype {v.dtype!r}")
            stages = [StageSpec(index=int(s["index"]), chain_index=int(s["chain_index"]), node=str(s["node"]),
                                kind=str(s.get("kind", "")), device=str(s["device"]), file=str(s["file"]),
                                sha256=str(s["sha256"]), inputs=tuple(s["inputs"]), outputs=tuple(s["outputs"]),
                                weights=tuple(s.get("weights", ())), weight_bytes=int(s.get("weight_bytes", 0)),
                                cache=tuple((str(c["name"]), TensorSpec(tuple(int(x) for x in c["shape"]), str(c["dtype"])))
                                            for c in s.get("cache", ())))
                      for s in data["stages"]]
            hops = [HopSpec(index=int(h["index"]), src=int(h["src"]), dst=int(h["dst"]),
                            entries=tuple(WireEntry(str(e["value"]), bool(e["encoded"])) for e in h["entries"]),
                            links=tuple(dict(l) for l in h.get("links", ())))
                    for h in data["hops"]]
            spec = cls(codec=check_codec(data.get("codec")), values=values, inputs=tuple(data["inputs"]),
                       outputs=tuple(data["outputs"]),
                       in_spec_json=_json_text(data.get("in_spec"), "in_spec"),
                       out_spec_json=_json_text(data.get("out_spec"), "out_spec"),
                       stages=stages, hops=hops, topology=dict(data.get("topology") or {}),
                       objective=str(data.get("objective", "")), partition=dict(data.get("partition") or {}),
                       estimate=dict(data.get("estimate") or {}), meta=dict(data.get("meta") or {}), path=path,
                       constants=constants)
            if data.get("generation") is not None:
                spec.generation = GenerationSpec.from_json(data["generation"], path, where)
        except PlanError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"rotafx: {where} is malformed: {type(e).__name__}: {e}") from None
        spec._check(where)
        if spec.generation is not None:
            spec.generation.check(spec, where)
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
        both = sorted(set(self.values) & set(self.constants))
        if both:
            raise PlanError(f"rotafx: {where}: {both} are listed both as tensors and as constants")
        names = set(self.values) | set(self.constants)
        refs = [*self.inputs, *self.outputs, *(v for s in self.stages for v in (*s.inputs, *s.outputs))]
        unknown = sorted(set(refs) - names)
        if unknown:
            raise PlanError(f"rotafx: {where} refers to values {unknown} that are not listed under 'values'")
        sent = sorted({e.value for h in self.hops for e in h.entries} - set(self.values))
        if sent:
            raise PlanError(f"rotafx: {where}: the hops send {sent}, which are not tensors listed under 'values'")


@dataclass
class GenerationSpec:
    """``plan.json``'s ``"generation"``: the prefill and decode programs of a causal LM, each a plan of its own
    over the same stages (values, stage files, hops), and the static shapes they were exported for.

    ``max_context``: tokens per sequence the cache holds (prompt + new tokens at most);
    ``prefill_chunk``: prompt tokens per prefill call; ``batch_size``: sequences per call (one
    cache slot); ``eos_token_id`` / ``pad_token_id``: the model's own (a transformers
    ``generation_config``), the defaults of :func:`rotafx.generate` on the plan.
    """

    max_context: int
    prefill_chunk: int
    batch_size: int
    prefill: PlanSpec
    decode: PlanSpec
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # the links a sampled token takes from the last node back to the first (the cost model's token_return), as
    # the hops list theirs: stage 0 waits for them before a decode step when links are emulated
    return_links: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"max_context": self.max_context, "prefill_chunk": self.prefill_chunk, "batch_size": self.batch_size,
                "eos_token_id": list(self.eos_token_id), "pad_token_id": self.pad_token_id,
                "return_links": [dict(l) for l in self.return_links],
                "prefill": self.prefill.to_json(), "decode": self.decode.to_json()}

    @classmethod
    def from_json(cls, data: Any, path: Path | None, where: str) -> "GenerationSpec":
        if not isinstance(data, Mapping):
            raise PlanError(f"rotafx: {where}: 'generation' must be an object, got {type(data).__name__}")
        ints = {}
        for key in ("max_context", "prefill_chunk", "batch_size"):
            v = data.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"rotafx: {where}: generation.{key} must be a positive integer, got {v!r}; export the "
                                f"plan again")
            ints[key] = v
        eos, pad = data.get("eos_token_id") or [], data.get("pad_token_id")
        if not isinstance(eos, list) or any(isinstance(e, bool) or not isinstance(e, int) for e in eos) or \
                (pad is not None and (isinstance(pad, bool) or not isinstance(pad, int))):
            raise PlanError(f"rotafx: {where}: generation.eos_token_id must be a list of ints and pad_token_id an int "
                            f"or null, got {eos!r} and {pad!r}")
        progs = [PlanSpec.from_json(data.get(k), path) if isinstance(data.get(k), Mapping) else None
                 for k in ("prefill", "decode")]
        if progs[0] is None or progs[1] is None:
            raise PlanError(f"rotafx: {where}: generation lacks its prefill or decode program; export the plan again")
        links = data.get("return_links") or []
        if not isinstance(links, list) or not all(isinstance(l, Mapping) for l in links):
            raise PlanError(f"rotafx: {where}: generation.return_links must be a list of links, got {links!r}")
        return cls(prefill=progs[0], decode=progs[1], eos_token_id=tuple(eos), pad_token_id=pad,
                   return_links=tuple(dict(l) for l in links), **ints)

    def program(self, kind: str) -> PlanSpec:
        """The ``"prefill"`` or ``"decode"`` program's plan."""
        return self.prefill if kind == "prefill" else self.decode

    def check(self, plan: PlanSpec, where: str) -> None:
        """The programs run on the plan's stages, take ``input_ids`` and ``cache_position`` of the stated shapes,
        and each cache buffer holds ``batch_size`` sequences of ``max_context`` tokens; no file is named twice."""
        B, M, C = self.batch_size, self.max_context, self.prefill_chunk
        if C > M:
            raise PlanError(f"rotafx: {where}: generation.prefill_chunk ({C}) is over max_context ({M})")
        nodes = [(s.index, s.node) for s in plan.stages]
        for kind, n in (("prefill", C), ("decode", 1)):
            prog = self.program(kind)
            if [(s.index, s.node) for s in prog.stages] != nodes:
                raise PlanError(f"rotafx: {where}: the {kind} program runs on stages "
                                f"{[s.node for s in prog.stages]}, the plan's are {[s.node for s in plan.stages]}")
            want = {"input_ids": TensorSpec((B, n), "int64"), "cache_position": TensorSpec((n,), "int64")}
            got = {v: prog.values.get(v) for v in prog.tensor_inputs}
            if got != want:
                raise PlanError(f"rotafx: {where}: the {kind} program takes "
                                f"{ {k: v.describe() if v else '?' for k, v in got.items()} }, but generation says "
                                f"batch_size {B} and {n} token(s) per call: "
                                f"{ {k: v.describe() for k, v in want.items()} }")
            for s in prog.stages:
                for name, t in s.cache:
                    if len(t.shape) != 4 or t.shape[0] != B or t.shape[2] != M:
                        raise PlanError(f"rotafx: {where}: stage {s.index}'s {kind} cache {name!r} is "
                                        f"{t.describe()}, not [batch_size {B}, heads, max_context {M}, head_dim]")
            if [s.cache for s in prog.stages] != [s.cache for s in self.prefill.stages]:
                raise PlanError(f"rotafx: {where}: the {kind} program's KV cache differs from the prefill's")
        files = plan.files()
        twice = sorted({f for f in files if files.count(f) > 1})
        if twice:
            raise PlanError(f"rotafx: {where}: program file(s) {twice} are named by more than one program")


def _json_text(value: Any, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise PlanError(f"rotafx: plan.json's {key!r} must be a string (a serialized pytree structure), got {type(value).__name__}")
    return value or None


@functools.lru_cache(maxsize=64)
def _treespec(text: str | None, what: str) -> TreeSpec | None:
    """A pytree structure read back; a type another package registered (a transformers ModelOutput) must be
    registered in this process too, which loading a plan never does by itself (it runs no code a plan names)."""
    if text is None:
        return None
    try:
        return treespec_loads(text)
    except NotImplementedError as e:  # torch: "Deserializing X in pytree is not registered."
        kind = str(e).split("Deserializing ", 1)[-1].split(" in pytree", 1)[0]
        raise PlanError(f"rotafx: the plan's {what} are structured as {kind}, a type this process has not registered "
                        f"with torch's pytree; import the package that defines it (e.g. `import transformers`) before "
                        f"running the plan here") from None
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as e:
        raise PlanError(f"rotafx: the plan's {what} structure cannot be read ({type(e).__name__}: {e})") from None


def spec_json(spec: TreeSpec | None) -> str | None:
    """A pytree structure as plan.json keeps it."""
    return treespec_dumps(spec) if spec is not None else None


def _entries_json(entries: Sequence[WireEntry]) -> list[dict[str, Any]]:
    return [{"value": e.value, "encoded": e.encoded} for e in entries]


def rotafx_version() -> str:
    """``rotafx X.Y.Z``: the version of the installed package."""
    try:
        return f"rotafx {importlib.metadata.version('rotafx')}"
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "rotafx (not installed)"



def sha256_of(path: Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()



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



def is_constant(value: Any) -> bool:
    """Whether a value can be a plan's constant: None, a bool, an int, a float or a string (what JSON holds as is)."""
    return value is None or isinstance(value, (bool, int, float, str))


def check_request(plan: PlanSpec, args: tuple, kwargs: Mapping[str, Any], where: str = "") -> list[torch.Tensor]:
    """Flatten one request like the model's example inputs and check it against the plan, or raise ``PlanError``.

    Returns the request's tensors, in the order of ``plan.tensor_inputs``; every input that
    is a constant of the plan must equal it (and be of its type).
    """
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
        raise PlanError(f"rotafx: {where}expected {len(plan.inputs)} inputs ({', '.join(plan.inputs)}), got {len(flat)}")
    tensors = []
    for name, t in zip(plan.inputs, flat):
        if name in plan.constants:
            want = plan.constants[name]
            if type(t) is not type(want) or t != want:
                raise PlanError(f"rotafx: {where}input {name!r} is {t!r}, but the plan was exported with {want!r} "
                                f"(baked into its programs); call it with {name}={want!r} or export again with {t!r}")
            continue
        spec = plan.values[name]
        if not isinstance(t, torch.Tensor):
            raise PlanError(f"rotafx: {where}input {name!r} must be a tensor {spec.describe()}, got {type(t).__name__}")
        if not spec.matches(t):
            raise PlanError(f"rotafx: {where}input {name!r} is {TensorSpec.of(t).describe()}, but the plan was exported "
                            f"for {spec.describe()}; plans have static shapes: export again with example inputs of this shape")
        tensors.append(t)
    return tensors
