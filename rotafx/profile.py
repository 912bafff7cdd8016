"""ModelProfile: a model as an ordered list of layers, each with its weights, activations, workspace and FLOPs.

Every constructor goes the same way: a frontend reads the model into an
:class:`~rotafx.layers.OpGraph` (one record per op), and :func:`~rotafx.layers.group_layers`
turns it into layers and boundaries (:meth:`ModelProfile.from_graph`).
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .frontends.keras import read_keras
from .frontends.onnx import read_onnx
from .frontends.pytorch import read_module
from .frontends.pytorch.trace import example_args
from .devices import existing_device
from .frontends.sizes import count, positive_int
from .layers import LayerProfile, OpCost, OpGraph, ProfileError, TensorInfo, group_layers
from .units import MB
from .wire import wire_bytes

__all__ = ["ModelProfile", "LayerProfile", "TensorInfo", "ProfileError", "Generation"]


@dataclass(frozen=True)
class Generation:
    """A token-generation workload: ``prompt_len`` tokens prefilled at once, then ``new_tokens`` generated one
    decode step at a time, for ``batch_size`` sequences decoded together in each step, and ``sequences``
    such batches in flight through the pipeline at once (each its own micro-batch).

    The first token comes out of the prefill; each of the other ``new_tokens - 1`` is a decode step
    against a context that grows from ``prompt_len + 1`` to ``prompt_len + new_tokens - 1``; the
    profile prices that step at the mean context (:attr:`decode_context`: exact for costs linear in the
    context, as attention's are). The KV cache is held for the longest context (:attr:`context_len`).
    """

    prompt_len: int
    new_tokens: int
    batch_size: int = 1
    sequences: int = 1

    def __post_init__(self) -> None:
        for name in ("prompt_len", "new_tokens", "batch_size", "sequences"):
            positive_int(getattr(self, name), name, {"prompt_len": "tokens in the prompt",
                                                     "new_tokens": "tokens to generate",
                                                     "batch_size": "sequences decoded together per step",
                                                     "sequences": "micro-batches in flight"}[name])

    @property
    def context_len(self) -> int:
        """Tokens the KV cache holds at the end: prompt plus new tokens."""
        return self.prompt_len + self.new_tokens

    @property
    def decode_context(self) -> float:
        """The mean context a decode step attends over: ``prompt_len + new_tokens / 2``."""
        return self.prompt_len + self.new_tokens / 2

    @property
    def kv_rows(self) -> int:
        """Sequences whose KV cache is held at once: ``batch_size * sequences``."""
        return self.batch_size * self.sequences


RUNS_AS = ("modules", "graph", "program")


@dataclass(frozen=True)
class ModelProfile:
    """Layers of a model with their costs, and the tensors that cross each layer boundary.

    ``boundaries[p]`` lists the tensors produced before layer ``p`` and read at or after
    it (``p = 0``: the model inputs; ``p = num_layers``: the model outputs). ``weights``
    maps every weight (parameters, buffers, constants) to ``(numel, bytes)``;
    ``param_names`` says which are parameters. ``source`` is the frontend
    (``"pytorch"``, ``"onnx"``, ``"keras"`` or ``"layers"``); ``input_names`` and
    ``output_names`` name the model's inputs and outputs; ``op_ms`` holds measured
    per-op times (ms) when the frontend measured them. A profile is data: it holds no
    model and no graph, and ``dataclasses.replace`` makes a variant.

    >>> p = ModelProfile.from_layers([
    ...     {"name": "a", "params": 10, "flops": 100, "activation_bytes": 8},
    ...     {"name": "b", "params": 10, "flops": 100, "activation_bytes": 8}])
    >>> p.num_layers, p.total_params
    (2, 20)
    """

    layers: tuple[LayerProfile, ...]
    boundaries: tuple[tuple[TensorInfo, ...], ...]
    weights: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (numel, bytes)
    param_names: frozenset[str] = frozenset()
    name: str = "model"
    dtype: torch.dtype | None = None
    batch_size: int | None = None
    unknown_ops: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    op_ms: Mapping[str, float] = field(default_factory=dict, repr=False)
    measured_on: str | None = None  # the torch device (and host) layers were timed on, e.g. "cpu@host"
    seq_len: int | None = None  # the sequence length example inputs were built with (from_pytorch), for measure()
    measured_spread: tuple[float, ...] = field(default=(), repr=False)  # per layer: (max - min) / median over rounds
    generation: Generation | None = None  # the workload, for a profile made by for_generation (prefill in layers)
    decode: "ModelProfile | None" = field(default=None, repr=False)  # one decode step at the mean context, same layers
    # the layers run as code inductor compiled (the backend with an inner compiler): a calibrated device prices
    # them with its compiled launch costs (Calibration.compiled), when it measured them
    compiled: bool = False
    # how the layers run, which sets what a calibrated device charges around each op (Calibration.op_time_s):
    # "modules", the model's own nn.Modules in eager PyTorch, and rotafx's in-process pipelines, which run at about
    # its speed (op_context_s, module calls included); "graph", an fx graph of plain torch calls (graph_op_s);
    # "program", torch.export's programs, what rotafx.load runs (program_op_s, and program_call_s per stage)
    runs_as: str = "modules"

    def __post_init__(self) -> None:
        if self.runs_as not in RUNS_AS:
            raise ProfileError(f"rotafx: ModelProfile.runs_as must be one of {', '.join(RUNS_AS)}, got {self.runs_as!r}")

    # -- the seed's properties -----------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def total_params(self) -> int:
        """Parameters, each counted once (tied weights once)."""
        return sum(n for name, (n, _) in self.weights.items() if name in self.param_names)

    @property
    def weight_bytes(self) -> int:
        """Bytes of all parameters and buffers, each counted once."""
        return sum(b for _, b in self.weights.values())

    @property
    def total_flops(self) -> int:
        return sum(l.flops for l in self.layers)

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes the KV cache of every layer together holds per token of one sequence
        (``2 * kv_heads * head_dim * itemsize`` per self-attention layer)."""
        return sum(l.kv_bytes_per_token for l in self.layers)

    @property
    def peak_activation_bytes(self) -> int:
        return max((l.peak_bytes for l in self.layers), default=0)

    @property
    def memory_mb(self) -> float:
        """Weights (once) plus the peak of live activations and workspace, in MB (10^6 bytes)."""
        return (self.weight_bytes + self.peak_activation_bytes) / MB

    @property
    def layer_ops(self) -> list[tuple[str, ...]]:
        """The names of the ops (fx nodes, ONNX nodes, Keras layer calls) of each layer."""
        return [l.ops for l in self.layers]

    @property
    def output_shapes(self) -> list[tuple[tuple[int, ...] | None, ...]]:
        """The shape of every tensor each layer hands to later layers or the model output."""
        return [tuple(t.shape for t in l.outputs) for l in self.layers]

    @property
    def measured_ms(self) -> list[float] | None:
        """Each layer's measured time on this machine (ms), or ``None`` when the profile was not measured."""
        times = [l.measured_ms for l in self.layers]
        return None if any(t is None for t in times) else times  # type: ignore[return-value]

    def boundary_bytes(self, p: int, codec: str | None = None) -> int:
        """Bytes that cross the boundary before layer ``p`` (with a transfer codec, if any)."""
        return sum(wire_bytes(t.numel, t.itemsize, t.floating, codec) for t in self.boundaries[p])

    def layer_index(self, key: int | str) -> int:
        """A layer's index from its index or its name."""
        if isinstance(key, bool):
            raise TypeError(f"layer must be an index or a name, got {key!r}")
        if isinstance(key, int):
            if not -self.num_layers <= key < self.num_layers:
                raise IndexError(f"layer {key} is out of range: the model has {self.num_layers} layers (0..{self.num_layers - 1})")
            return key % self.num_layers
        for l in self.layers:
            if l.name == key:
                return l.index
        close = [l.name for l in self.layers if key in l.name][:5]
        raise KeyError(f"no layer named {key!r}" + (f"; did you mean {close}?" if close else ""))

    # -- display -------------------------------------------------------------
    def summary(self, max_rows: int | None = None) -> str:
        """A table of layers: params, GFLOPs, weights, activations, workspace and peak (MB)."""
        head = (f"{'#':>4}  {'layer':<28} {'params':>14} {'GFLOPs':>11} {'weights MB':>11} "
                f"{'activ. MB':>10} {'workspace MB':>12} {'peak MB':>9}")
        rows = [f"ModelProfile {self.name}: {self.num_layers} layers, {self.total_params:,} params, "
                f"{self.total_flops / 1e9:,.2f} GFLOPs, {self.memory_mb:,.1f} MB"
                + (f", dtype {str(self.dtype).replace('torch.', '')}" if self.dtype else "")
                + (f", batch {self.batch_size}" if self.batch_size else ""), head, "-" * len(head)]
        shown: Sequence[LayerProfile | None] = self.layers
        if max_rows is not None and self.num_layers > max_rows:
            shown = [*self.layers[: max_rows // 2], None, *self.layers[-(max_rows - max_rows // 2):]]
        for l in shown:
            if l is None:
                rows.append(f"{'...':>4}")
                continue
            rows.append(f"{l.index:>4}  {l.name[:28]:<28} {l.params:>14,} {l.flops / 1e9:>11.3f} {l.weight_bytes / MB:>11.2f} "
                        f"{l.activation_bytes / MB:>10.3f} {l.buffer_bytes / MB:>12.3f} {l.peak_bytes / MB:>9.3f}")
        if self.unknown_ops:
            rows.append(f"ops with no cost rule (0 FLOPs): {', '.join(sorted(self.unknown_ops))}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()

    # -- constructors ----------------------------------------------------------
    @classmethod
    def from_graph(cls, graph: OpGraph) -> "ModelProfile":
        """Group a frontend's records into layers (:func:`~rotafx.layers.group_layers`): every constructor ends here."""
        layers, boundaries = group_layers(graph)
        op_ms = {op.name: op.measured_ms for op in graph.ops if op.measured_ms is not None}
        return cls(layers=tuple(layers), boundaries=tuple(boundaries), weights=dict(graph.weights),
                   param_names=graph.params if graph.params is not None else frozenset(graph.weights),
                   name=graph.name, dtype=graph.dtype, batch_size=graph.batch_size,  # type: ignore[arg-type]
                   unknown_ops=dict(graph.unknown_ops), source=graph.source, input_names=tuple(graph.inputs),
                   output_names=tuple(graph.outputs), op_ms=op_ms)

    @classmethod
    def from_layers(cls, layers: Sequence[Mapping[str, Any] | LayerProfile], *, input_bytes: int | None = None,
                    name: str = "model", itemsize: int = 2) -> "ModelProfile":
        """Build a profile from hand-written layer figures (no model needed).

        Each layer is a mapping with ``name`` and any of ``params``, ``flops``,
        ``weight_bytes`` (default ``params * itemsize``), ``activation_bytes`` (its output,
        which crosses the boundary after it), ``buffer_bytes``, ``bytes_moved``
        (default: weights + input + output), ``reads`` (names of earlier layers whose weights
        this layer reads too, as a tied output head reads the embedding: a device that runs
        both holds them once). ``input_bytes`` is what the model input weighs (default: the
        first layer's activation bytes).

        Raises:
            ProfileError: an empty list, a layer that is not a mapping, an unknown key, a name
                that is empty or repeated, a figure that is not a finite number >= 0 (NaN, inf,
                None, a string, a bool; a fraction of a parameter or byte), an ``itemsize`` that
                is not a positive integer, a ``reads`` naming no earlier layer. The message
                names the layer, the key and the value.

        >>> p = ModelProfile.from_layers([{"name": "embed", "params": 100}, {"name": "mid", "params": 10},
        ...                               {"name": "head", "reads": ["embed"]}])
        >>> p.layers[2].weight_bytes, p.total_params
        (200, 110)
        """
        if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence):
            raise ProfileError(f"rotafx: from_layers takes a list of layers (mappings such as {{'name': 'l0', 'params': 10}}), "
                               f"got {type(layers).__name__}")
        if not layers:
            raise ProfileError("rotafx: from_layers needs at least one layer")
        itemsize = positive_int(itemsize, "itemsize", "bytes per parameter: 2 for fp16/bf16, 4 for fp32")
        if input_bytes is not None:
            input_bytes = count(input_bytes, "input_bytes")
        built: list[LayerProfile] = []
        weights: dict[str, tuple[int, int]] = {}
        seen: dict[str, int] = {}
        prev_out = None
        for i, spec in enumerate(layers):
            if isinstance(spec, LayerProfile):
                spec = {k: getattr(spec, k) for k in ("name", "params", "flops", "weight_bytes", "activation_bytes",
                                                      "buffer_bytes", "bytes_moved")}
            if not isinstance(spec, Mapping):
                raise ProfileError(f"rotafx: layer {i} must be a mapping such as {{'name': 'l{i}', 'params': 10}} or a "
                                   f"LayerProfile, got {spec!r}")
            unknown = set(spec) - {"name", "params", "flops", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved",
                                   "reads"}
            if unknown:
                raise ProfileError(f"rotafx: layer {i}: unknown key(s) {sorted(map(str, unknown))}; the keys are name, "
                                   f"params, flops, weight_bytes, activation_bytes, buffer_bytes, bytes_moved, reads")
            lname = spec.get("name", f"layer{i}")
            if not isinstance(lname, str) or not lname:
                raise ProfileError(f"rotafx: layer {i}: name must be a non-empty string, got {lname!r}")
            if lname in seen:
                raise ProfileError(f"rotafx: layers {seen[lname]} and {i} are both named {lname!r}; give every layer "
                                   f"its own name (a placement and reads=[...] refer to layers by name)")
            seen[lname] = i
            vals: dict[str, int | None] = {}
            for key in ("params", "flops", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved"):
                if key not in spec:
                    vals[key] = None
                    continue
                vals[key] = count(spec[key], f"layer {i} ({lname}): {key}", whole=key != "flops")
            params = vals["params"] or 0
            wbytes = vals["weight_bytes"] if vals["weight_bytes"] is not None else params * itemsize
            act = vals["activation_bytes"] or 0
            buf = vals["buffer_bytes"] or 0
            inp = (input_bytes if input_bytes is not None else act) if prev_out is None else prev_out
            flops = vals["flops"] or 0
            own = f"{i}:{lname}.weight"
            weights[own] = (params, wbytes)
            names = [own]
            reads = spec.get("reads") or ()
            if isinstance(reads, str):
                reads = [reads]
            elif not isinstance(reads, (list, tuple)):
                raise ProfileError(f"rotafx: layer {i} ({lname}): reads must be a list of earlier layers' names, got {reads!r}")
            for other in reads:
                src = next((l for l in built if l.name == other), None)
                if src is None:
                    raise ProfileError(f"rotafx: layer {i} ({lname}): reads {other!r}, which is not an earlier layer "
                                       f"({', '.join(l.name for l in built) or 'none'})")
                names += [w for w in src.weight_names[:1] if w not in names]
            params = sum(weights[w][0] for w in names)
            wbytes = sum(weights[w][1] for w in names)
            moved = vals["bytes_moved"] if vals["bytes_moved"] is not None else wbytes + inp + act
            out = TensorInfo(lname, act, 1)
            built.append(LayerProfile(index=i, name=lname, params=params, flops=flops, weight_bytes=wbytes,
                                      activation_bytes=act, buffer_bytes=buf, peak_bytes=inp + act + buf,
                                      bytes_moved=moved, work=((flops, moved),), weight_names=tuple(names),
                                      ops=(lname,), outputs=(out,)))
            prev_out = act
        first_in = input_bytes if input_bytes is not None else built[0].activation_bytes
        boundaries = ((TensorInfo("input", first_in, 1),), *((l.outputs[0],) for l in built))
        return cls(layers=tuple(built), boundaries=boundaries, weights=weights, param_names=frozenset(weights), name=name,
                   source="layers", input_names=("input",), output_names=(built[-1].name,))

    @classmethod
    def from_pytorch(cls, model: torch.nn.Module, example_inputs: Any = None, *, example_kwargs: Mapping[str, Any] | None = None,
                     dtype: torch.dtype | None = None, batch_size: int | None = None, seq_len: int = 128,
                     strict: bool = False, progress: bool = False, measure: bool = False,
                     device: Any = None, repeats: int = 5, runs_as: str = "modules") -> "ModelProfile":
        """Trace a PyTorch model with ``torch.export`` and profile it.

        Works on the ``meta`` device (no weights allocated). ``example_inputs`` is a
        tensor or a tuple of positional inputs; when omitted, rotafx builds one for
        models that start with an ``nn.Embedding`` (tokens, ``batch_size x seq_len``) or an
        ``nn.Linear`` (``batch_size x in_features``). ``dtype`` prices floating tensors at
        that size (``torch.float16``: 2 bytes per parameter) without converting the model.
        An op with no cost rule counts 0 FLOPs with a warning (listed in ``unknown_ops``),
        or raises :class:`~rotafx.layers.CostRuleError` under ``strict=True``.
        ``measure=True`` also times every layer on ``device`` (see :meth:`measure`).
        ``runs_as`` (:attr:`runs_as`) says how the layers will run, for a calibrated device's
        price: ``"modules"`` (the model called eagerly, the default; also rotafx's in-process
        pipelines: the backend, :func:`rotafx.partition`), ``"graph"`` (an fx graph of plain torch
        calls) or ``"program"`` (torch.export's programs: what :func:`rotafx.load` runs, and how the
        estimate :func:`rotafx.export` writes is priced).

        >>> import torch
        >>> p = ModelProfile.from_pytorch(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()))
        >>> p.total_params, p.layers[0].flops
        (36, 64)
        """
        args = example_args(model, example_inputs, batch_size, seq_len) if measure else example_inputs
        prof = cls.from_graph(read_module(model, args, example_kwargs=example_kwargs, dtype=dtype,
                                          batch_size=batch_size, seq_len=seq_len, strict=strict, progress=progress))
        prof = dataclasses.replace(prof, seq_len=seq_len, runs_as=runs_as)
        if measure:
            prof = prof.measure(model, args, example_kwargs=example_kwargs, device=device, repeats=repeats,
                                progress=progress)
        return prof

    def measure(self, model: torch.nn.Module, example_inputs: Any = None, *,
                example_kwargs: Mapping[str, Any] | None = None, device: Any = None, threads: int | None = None,
                repeats: int = 5, progress: bool = False) -> "ModelProfile":
        """This profile with every layer timed on a real device, at the profiled shapes (``layer.measured_ms``).

        ``model`` is the module this profile was made from, with real weights (a profile
        holds no model); ``example_inputs`` the inputs it was profiled with (default: built
        as :meth:`from_pytorch` builds them); ``device`` where to time it (default the
        model's; the model is moved there); ``threads`` torch intra-op threads while timing
        (default the current setting); ``repeats`` rounds over the layers, interleaved (the
        median is kept, the spread in ``measured_spread``). The layers run at the model's
        own dtype. The estimator and the solvers use these times for a device calibrated
        on the same machine and device (see :mod:`rotafx.calibrate`).
        """
        from .frontends.pytorch.measure import measure_layers  # torch.fx's splitter, only when measuring

        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ProfileError(f"rotafx: repeats must be a positive integer (rounds of timing), got {repeats!r}")
        if self.source != "pytorch":
            raise ProfileError(f"rotafx: measure() times a PyTorch model's layers; this profile comes from "
                               f"{self.source or 'elsewhere'!r} (ONNX: from_onnx(measure=True) times it with onnxruntime)")
        args = example_args(model, example_inputs, self.batch_size, self.seq_len or 128) if example_inputs is None \
            else example_inputs
        layer_of = {op: layer.index for layer in self.layers for op in layer.ops}
        say = (lambda m: print(m, file=sys.stderr)) if progress else None
        times = measure_layers(model, args, layer_of, self.num_layers, example_kwargs=example_kwargs, device=device,
                               threads=threads, rounds=repeats, progress=say)
        dev = existing_device(device if device is not None else next((p.device for p in model.parameters()), "cpu"),
                              "device", ProfileError)  # "cuda" -> "cuda:0", as calibrate() names it
        layers = tuple(dataclasses.replace(layer, measured_ms=t) for layer, (t, _) in zip(self.layers, times))
        return dataclasses.replace(self, layers=layers, measured_on=f"{dev}@{socket.gethostname()}",
                                   measured_spread=tuple(s for _, s in times))

    @classmethod
    def for_generation(cls, model: torch.nn.Module, *, prompt_len: int, new_tokens: int, batch_size: int = 1,
                       sequences: int = 1, dtype: torch.dtype | None = None, strict: bool = False,
                       progress: bool = False, runs_as: str = "modules") -> "ModelProfile":
        """Profile a causal LM for token generation: its prefill and one decode step, on any device (``meta`` too).

        The returned profile's layers are the **prefill** (``batch_size x prompt_len`` tokens at once);
        ``.decode`` is one **decode step** (``batch_size x 1`` token) with the same layers, each
        attention priced against the KV cache at the mean context (its keys and values read once, the
        two matmuls of one query against ``prompt_len + new_tokens / 2`` keys); ``.generation`` the
        workload. Every layer's ``kv_bytes_per_token`` is found from its attention ops (the keys and
        values that reach them, before any grouped-query repeat), and the cost model holds
        ``kv_bytes_per_token * batch_size * sequences * (prompt_len + new_tokens)`` of KV cache on the
        device of each layer, beside its weights. The model's forward takes token ids
        ``(batch, seq)`` (no cache: rotafx prices the cache itself).

        Args:
            model: a causal LM whose forward takes token ids.
            prompt_len, new_tokens: tokens of the prompt and tokens to generate (each >= 1).
            batch_size: sequences decoded together in each step.
            sequences: such batches in flight through a pipeline at once (micro-batches).
            dtype: price floating tensors at this dtype (as :meth:`from_pytorch`).

        Returns:
            A :class:`ModelProfile` with ``generation`` and ``decode`` set.

        Raises:
            ProfileError: a bad workload figure, a model with no self-attention (no KV cache to
                place: profile it with :meth:`from_pytorch`), or prefill and decode traces whose layers differ.

        >>> from rotafx.models import small_gpt
        >>> p = ModelProfile.for_generation(small_gpt(), prompt_len=8, new_tokens=4)
        >>> p.kv_bytes_per_token, p.decode.num_layers == p.num_layers   # 2 layers x (K + V) x 64 x 4 bytes
        (1024, True)
        """
        gen = Generation(prompt_len, new_tokens, batch_size, sequences)
        kw = dict(dtype=dtype, batch_size=batch_size, strict=strict, progress=progress, runs_as=runs_as)
        prefill = cls.from_pytorch(model, seq_len=prompt_len, **kw)
        if not prefill.kv_bytes_per_token:
            raise ProfileError(f"rotafx: {type(model).__name__} has no self-attention that rotafx can see (no "
                               f"scaled_dot_product_attention with query and key of one length), so it has no KV "
                               f"cache to place; profile it with ModelProfile.from_pytorch for one forward pass")
        step = cls.from_pytorch(model, seq_len=1, **kw)
        names = [l.name for l in prefill.layers]
        if [l.name for l in step.layers] != names:
            raise ProfileError(f"rotafx: {type(model).__name__}'s prefill ({prefill.num_layers} layers) and decode step "
                               f"({step.num_layers} layers) trace to different layers "
                               f"({sorted(set(names) ^ {l.name for l in step.layers})[:6]}); a decode step "
                               f"must run the same modules as the prompt")
        layers = tuple(_attend_to_context(d, p.kv_bytes_per_token, gen) for d, p in zip(step.layers, prefill.layers))
        decode = dataclasses.replace(step, layers=layers, seq_len=1)
        return dataclasses.replace(prefill, generation=gen, decode=decode, seq_len=prompt_len)

    @classmethod
    def from_onnx(cls, path: Any, input_shapes: Mapping[str, Any] | Sequence[Sequence[int]] | None = None,
                  **kwargs: Any) -> "ModelProfile":
        """Profile an ONNX model (a path, bytes or ``onnx.ModelProto``): see :func:`rotafx.frontends.onnx.read_onnx`.

        With ``measure=True`` its onnxruntime times (CPU) are the layers' measured times on this host's
        ``cpu``, used by the cost model as :meth:`measure`'s are."""
        prof = cls.from_graph(read_onnx(path, input_shapes=input_shapes, **kwargs))
        if kwargs.get("measure") and prof.measured_ms is not None:
            prof = dataclasses.replace(prof, measured_on=f"cpu@{socket.gethostname()}")
        return prof

    @classmethod
    def from_tensorflow(cls, model: Any, **kwargs: Any) -> "ModelProfile":
        """Profile a Keras model (Sequential or functional): see :func:`rotafx.frontends.keras.read_keras`."""
        return cls.from_graph(read_keras(model, **kwargs))


def _attend_to_context(layer: LayerProfile, kv_bytes_per_token: int, gen: Generation) -> LayerProfile:
    """A decode-step layer (traced with one token, so its attention saw one key) with each attention op priced
    against the KV cache at the mean context: the cache's keys and values read once, the two matmuls of one
    query per head against that many keys; memory-bound, so no matmul kernel rate applies."""
    attn = [i for i, c in enumerate(layer.op_costs) if c.kernel is not None and c.kernel[0] == "sdpa"]
    if not attn or not kv_bytes_per_token:
        return layer
    ctx = gen.decode_context
    width = {i: layer.op_costs[i].kernel[1] * layer.op_costs[i].kernel[3] for i in attn}  # batch*heads x head dim
    costs = list(layer.op_costs)
    for i in attn:
        c = costs[i]
        share = width[i] / sum(width.values())
        kv_read = kv_bytes_per_token * gen.batch_size * ctx * share
        costs[i] = c._replace(flops=int(4 * width[i] * ctx), bytes_moved=int(c.bytes_moved + kv_read), kernel=None)
    return dataclasses.replace(
        layer, op_costs=tuple(costs), flops=sum(c.flops for c in costs), bytes_moved=sum(c.bytes_moved for c in costs),
        work=tuple((c.flops, c.bytes_moved) for c in costs if c.flops or c.bytes_moved))
