"""ModelProfile: a model as an ordered list of layers, each with its weights, activations, workspace and FLOPs."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.fx as fx

from .annotate import annotate, node_cost, node_value

__all__ = ["ModelProfile", "LayerProfile", "TensorInfo", "ProfileError", "trace"]

MB = 1e6


class ProfileError(ValueError):
    """A model that cannot be profiled as given; the message says what to pass instead."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor that crosses a layer boundary: its producer, element count and element size."""

    name: str
    numel: int
    itemsize: int
    floating: bool = True

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class LayerProfile:
    """One layer (a block of the model, e.g. ``layers.7``), in execution order.

    ``weight_bytes``: parameters and buffers its nodes read; ``activation_bytes``: its
    output feature map (bytes of the tensors it produces that later layers or the model
    output read); ``buffer_bytes``: the largest workspace of its ops; ``peak_bytes``:
    the largest amount of live activation memory (plus that op's workspace) while it
    runs, in whole-model execution order; ``flops``: multiply-add = 2.
    """

    index: int
    name: str
    params: int
    flops: int
    weight_bytes: int
    activation_bytes: int
    buffer_bytes: int
    peak_bytes: int
    bytes_moved: int
    # (flops, bytes_moved, weight_bytes_read) of each op, for the roofline time
    work: tuple[tuple[int, int], ...] = ()
    weight_names: tuple[str, ...] = ()
    nodes: tuple[fx.Node, ...] = field(default=(), repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # the nodes belong to the traced graph (fake tensors in their meta): copies and pickles leave them behind
        return {**self.__dict__, "nodes": ()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def activation_size_mb(self) -> float:
        return self.activation_bytes / MB

    @property
    def weight_mb(self) -> float:
        return self.weight_bytes / MB

    @property
    def size_bytes(self) -> int:
        """The paper's size(l) = weight + activation + buffer, in bytes."""
        return self.weight_bytes + self.activation_bytes + self.buffer_bytes


@dataclass
class ModelProfile:
    """Layers of a model with their costs, and the tensors that cross each layer boundary.

    ``boundaries[p]`` lists the tensors produced before layer ``p`` and read at or after
    it (``p = 0``: the model inputs; ``p = num_layers``: the model outputs).

    >>> p = ModelProfile.from_layers([
    ...     {"name": "a", "params": 10, "flops": 100, "activation_bytes": 8},
    ...     {"name": "b", "params": 10, "flops": 100, "activation_bytes": 8}])
    >>> p.num_layers, p.total_params
    (2, 20)
    """

    layers: list[LayerProfile]
    boundaries: list[tuple[TensorInfo, ...]]
    weights: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (numel, bytes); params and buffers
    param_names: frozenset[str] = frozenset()
    name: str = "model"
    dtype: torch.dtype | None = None
    batch_size: int | None = None
    graph_module: fx.GraphModule | None = field(default=None, repr=False)
    unknown_ops: dict[str, str] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        # the traced graph stays behind in copies and pickles (a torch.export graph cannot be unpickled)
        return {**self.__dict__, "graph_module": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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
    def peak_activation_bytes(self) -> int:
        return max((l.peak_bytes for l in self.layers), default=0)

    @property
    def memory_mb(self) -> float:
        """Weights (once) plus the peak of live activations and workspace, in MB (10^6 bytes)."""
        return (self.weight_bytes + self.peak_activation_bytes) / MB

    def boundary_bytes(self, p: int, codec: str | None = None) -> int:
        """Bytes that cross the boundary before layer ``p`` (with a transfer codec, if any)."""
        from .costmodel import codec_bytes

        return sum(codec_bytes(t, codec) for t in self.boundaries[p])

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
        shown = self.layers if max_rows is None or self.num_layers <= max_rows else (
            self.layers[: max_rows // 2] + [None] + self.layers[-(max_rows - max_rows // 2):])  # type: ignore[list-item]
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

        >>> p = ModelProfile.from_layers([{"name": "embed", "params": 100}, {"name": "mid", "params": 10},
        ...                               {"name": "head", "reads": ["embed"]}])
        >>> p.layers[2].weight_bytes, p.total_params
        (200, 110)
        """
        built: list[LayerProfile] = []
        weights: dict[str, tuple[int, int]] = {}
        prev_out = None
        for i, spec in enumerate(layers):
            if isinstance(spec, LayerProfile):
                spec = {k: getattr(spec, k) for k in ("name", "params", "flops", "weight_bytes", "activation_bytes",
                                                      "buffer_bytes", "bytes_moved")}
            unknown = set(spec) - {"name", "params", "flops", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved",
                                   "reads"}
            if unknown:
                raise ProfileError(f"layer {i}: unknown key(s) {sorted(unknown)}")
            vals = {}
            for key in ("params", "flops", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved"):
                v = spec.get(key)
                if v is not None and (not isinstance(v, (int, float)) or v < 0):
                    raise ProfileError(f"layer {i} ({spec.get('name', '?')}): {key} must be a number >= 0, got {v!r}")
                vals[key] = None if v is None else int(v)
            lname = str(spec.get("name", f"layer{i}"))
            params = vals["params"] or 0
            wbytes = vals["weight_bytes"] if vals["weight_bytes"] is not None else params * itemsize
            act = vals["activation_bytes"] or 0
            buf = vals["buffer_bytes"] or 0
            inp = (input_bytes if input_bytes is not None else act) if prev_out is None else prev_out
            flops = vals["flops"] or 0
            own = f"{i}:{lname}.weight"
            weights[own] = (params, wbytes)
            names = [own]
            for other in spec.get("reads") or ():
                src = next((l for l in built if l.name == other), None)
                if src is None:
                    raise ProfileError(f"layer {i} ({lname}): reads {other!r}, which is not an earlier layer "
                                       f"({', '.join(l.name for l in built) or 'none'})")
                names += [w for w in src.weight_names[:1] if w not in names]
            params = sum(weights[w][0] for w in names)
            wbytes = sum(weights[w][1] for w in names)
            moved = vals["bytes_moved"] if vals["bytes_moved"] is not None else wbytes + inp + act
            built.append(LayerProfile(index=i, name=lname, params=params, flops=flops, weight_bytes=wbytes,
                                      activation_bytes=act, buffer_bytes=buf, peak_bytes=inp + act + buf,
                                      bytes_moved=moved, work=((flops, moved),), weight_names=tuple(names)))
            prev_out = act
        if not built:
            raise ProfileError("from_layers needs at least one layer")
        first_in = input_bytes if input_bytes is not None else built[0].activation_bytes
        boundaries = [(TensorInfo("input", first_in, 1),)]
        boundaries += [(TensorInfo(l.name, l.activation_bytes, 1),) for l in built]
        return cls(layers=built, boundaries=boundaries, weights=weights, param_names=frozenset(weights), name=name)

    @classmethod
    def from_pytorch(cls, model: torch.nn.Module, example_inputs: Any = None, *, example_kwargs: Mapping[str, Any] | None = None,
                     dtype: torch.dtype | None = None, batch_size: int | None = None, seq_len: int = 128,
                     strict: bool = False, progress: bool = False) -> "ModelProfile":
        """Trace a PyTorch model with ``torch.export`` and profile it.

        Works on the ``meta`` device (no weights allocated). ``example_inputs`` is a
        tensor or a tuple of positional inputs; when omitted, rotafx builds one for
        models that start with an ``nn.Embedding`` (tokens, ``batch_size x seq_len``) or an
        ``nn.Linear`` (``batch_size x in_features``). ``dtype`` prices floating tensors at
        that size (``torch.float16``: 2 bytes per parameter) without converting the model.

        >>> import torch
        >>> p = ModelProfile.from_pytorch(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()))
        >>> p.total_params, p.layers[0].flops
        (36, 64)
        """
        say = _progress_printer(progress)
        args = _example_args(model, example_inputs, batch_size, seq_len)
        batch = _batch_of(args, batch_size)
        t0 = time.perf_counter()
        say(f"tracing {type(model).__name__} with torch.export ...")
        gm, weights, params = trace(model, args, example_kwargs)
        say(f"traced {len(gm.graph.nodes)} nodes in {time.perf_counter() - t0:.1f} s; annotating")
        tty = sys.stderr.isatty()
        unknown = annotate(gm, weights, dtype=dtype, strict=strict,
                           progress=(lambda i, n: say(f"annotated {i}/{n} nodes", end="\r" if i < n else "\n")
                                     if tty or i == n else None) if progress else None)
        prof = profile_graph(gm, weights, params, name=type(model).__name__, dtype=dtype, batch_size=batch)
        prof.unknown_ops = unknown
        say(f"profiled {prof.num_layers} layers in {time.perf_counter() - t0:.1f} s")
        return prof

    @classmethod
    def from_onnx(cls, path: Any, input_shapes: Mapping[str, Any] | None = None, **kwargs: Any) -> "ModelProfile":
        """Profile an ONNX model (a path, bytes or ``onnx.ModelProto``): see :func:`rotafx.frontends.onnx.profile_onnx`."""
        from .frontends.onnx import profile_onnx

        return profile_onnx(path, input_shapes=input_shapes, **kwargs)

    @classmethod
    def from_tensorflow(cls, model: Any, **kwargs: Any) -> "ModelProfile":
        """Profile a Keras model (Sequential or functional): see :func:`rotafx.frontends.tensorflow.profile_keras`."""
        from .frontends.tensorflow import profile_keras

        return profile_keras(model, **kwargs)


# ---------------------------------------------------------------------------
# trace


def trace(model: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any] | None = None
          ) -> tuple[fx.GraphModule, dict[str, str], frozenset[str]]:
    """``torch.export`` the model; returns the graph, weight placeholder -> weight name, and parameter names."""
    try:
        # fx records a Python stack trace per node; on a 5,000-node model that is a third of the time
        with torch.no_grad(), _no_fx_stack_traces():
            ep = torch.export.export(model, args, dict(kwargs or {}), strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProfileError(
            f"rotafx: torch.export could not trace {type(model).__name__}: {first}\n"
            f"Check that example_inputs match forward()'s signature and sit on the model's device "
            f"({_device_of(model)}), or make the failing code traceable."
        ) from e
    sig = ep.graph_signature
    weights = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    # torch.export lifts a tied weight once per name (lm_head.weight and embed.weight, one of them
    # unused); name every tensor by its first name so that it is counted once
    canonical: dict[str, str] = {}
    for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        first: dict[int, str] = {}
        for wname, t in named:
            canonical[wname] = first.setdefault(id(t), wname)
    weights = {ph: canonical.get(w, w) for ph, w in weights.items()}
    return ep.graph_module, weights, frozenset(canonical.get(w, w) for w in sig.inputs_to_parameters.values())


@contextlib.contextmanager
def _no_fx_stack_traces() -> Iterator[None]:
    """Turn off fx's per-node stack traces for the duration (rotafx's errors do not use them)."""
    saved = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = saved


def _device_of(model: torch.nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _example_args(model: torch.nn.Module, example_inputs: Any, batch_size: int | None, seq_len: int) -> tuple:
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (
            tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,))
        if batch_size is not None:
            b = _batch_of(args, None)
            if b is not None and b != batch_size:
                raise ProfileError(f"batch_size={batch_size} but example_inputs have batch {b}; give one or the other")
        return args
    batch = batch_size or 1
    device = _device_of(model)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Embedding):
            return (torch.zeros(batch, seq_len, dtype=torch.long, device=device),)
        if isinstance(mod, torch.nn.Linear):
            dtype = mod.weight.dtype
            return (torch.zeros(batch, mod.in_features, dtype=dtype, device=device),)
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            break
    raise ProfileError(
        f"rotafx: cannot guess example inputs for {type(model).__name__} (it does not start with an nn.Embedding or "
        f"an nn.Linear); pass example_inputs=(torch.randn(batch, ...),) shaped as its forward() expects"
    )


def _batch_of(args: tuple, default: int | None) -> int | None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return default


def _progress_printer(enabled: bool) -> Callable[..., None]:
    def say(msg: str, end: str = "\n") -> None:
        if enabled:
            print(f"rotafx: {msg}", end=end, file=sys.stderr, flush=True)

    return say


# ---------------------------------------------------------------------------
# group nodes into layers

_DYNAMO_PATH = re.compile(r"\[['\"]?([^'\"\]]+)['\"]?\]")


def module_path(node: fx.Node) -> str:
    """The dotted module path a node was traced under ('' at the root)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    if path.startswith("L['self']") or path.startswith("L["):  # dynamo: L['self'].layers[0].mlp
        path = path.split("]", 1)[1] if path.startswith("L[") else path
        path = _DYNAMO_PATH.sub(r".\1", path).replace("._modules.", ".").lstrip(".")
    path = re.sub(r"@\d+$", "", path)
    return path


def layer_keys(paths: Sequence[str]) -> list[str | None]:
    """Group module paths at the depth that gives the blocks: up to the first list index
    (``layers.7``), else one level below the parent of such a list (``model.norm``),
    else the top-level child (``lm_head``); ``None`` for the root module."""
    parents: set[tuple[str, ...]] = set()
    for p in paths:
        parts = tuple(p.split(".")) if p else ()
        for i, part in enumerate(parts):
            if part.isdigit() and i >= 1:
                parents.add(parts[: i - 1])
                break
    keys: list[str | None] = []
    for p in paths:
        parts = tuple(p.split(".")) if p else ()
        key: tuple[str, ...] | None = None
        for i, part in enumerate(parts):
            if part.isdigit():
                key = parts[: i + 1]
                break
        if key is None and parts:
            best = max((q for q in parents if parts[: len(q)] == q and len(parts) > len(q)), key=len, default=None)
            key = parts[: len(best) + 1] if best is not None else parts[:1]
        keys.append(".".join(key) if key else None)
    return keys


def profile_graph(gm: fx.GraphModule, weights: Mapping[str, str], params: frozenset[str] = frozenset(), *,
                  name: str = "model", dtype: torch.dtype | None = None, batch_size: int | None = None,
                  keys: Sequence[str | None] | None = None) -> ModelProfile:
    """Group an annotated graph's nodes into layers and compute liveness and boundaries."""
    nodes = list(gm.graph.nodes)
    compute = [n for n in nodes if n.op in ("call_function", "call_method", "call_module")]
    if not compute:
        raise ProfileError(f"rotafx: {name} has no operations to place")
    if keys is None:
        keys = layer_keys([module_path(n) for n in compute])
    # nodes at the root module join the next layer (or the last one at the end)
    filled: list[str | None] = list(keys)
    nxt: str | None = None
    for i in range(len(filled) - 1, -1, -1):
        if filled[i] is None:
            filled[i] = nxt
        else:
            nxt = filled[i]
    last = next((k for k in filled if k is not None), "model")
    for i, k in enumerate(filled):
        if k is None:
            filled[i] = last
        else:
            last = k
    # runs of equal keys are layers; a key seen again later gets a suffix
    runs: list[tuple[str, list[fx.Node]]] = []
    seen: dict[str, int] = {}
    for n, k in zip(compute, filled):
        assert k is not None
        if runs and runs[-1][0] == k:
            runs[-1][1].append(n)
            continue
        seen[k] = seen.get(k, 0) + 1
        runs.append((k, [n]))
    names = []
    counts: dict[str, int] = {}
    for k, _ in runs:
        counts[k] = counts.get(k, 0) + 1
        names.append(k if counts[k] == 1 else f"{k}#{counts[k]}")

    layer_of: dict[fx.Node, int] = {}
    for li, (_, ns) in enumerate(runs):
        for n in ns:
            layer_of[n] = li
    L = len(runs)
    order = {n: i for i, n in enumerate(compute)}
    output_node = next(n for n in reversed(nodes) if n.op == "output")

    # weights: each weight belongs to every layer that reads it
    weight_nodes = {n for n in nodes if n.op in ("placeholder", "get_attr") and node_cost(n).is_weight}
    weight_name = {n: weights.get(n.name, str(n.target)) for n in weight_nodes}
    wtable: dict[str, tuple[int, int]] = {}
    for n in weight_nodes:
        val = node_value(n)
        numel = sum(int(t.numel()) for t in _flat_tensors(val)) if val is not None else 0
        wtable[weight_name[n]] = (numel, node_cost(n).weight_bytes)
    layer_weights: list[dict[str, int]] = [dict() for _ in range(L)]
    for wn in weight_nodes:
        for user in wn.users:
            if user in layer_of:
                layer_weights[layer_of[user]][weight_name[wn]] = node_cost(wn).weight_bytes

    # liveness over the whole-model schedule: a storage lives from its producer to its last reader
    root: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n in weight_nodes or n.op == "output":
            continue
        c = node_cost(n)
        if n.op != "placeholder" and c.is_view:
            src = next((a for a in n.all_input_nodes if a in root), None)
            root[n] = root[src] if src is not None else n
        else:
            root[n] = n
    end = len(compute)
    last_use: dict[fx.Node, int] = {}
    for n in root:
        for u in n.users:
            pos = order.get(u, end)
            r = root[n]
            last_use[r] = max(last_use.get(r, -1), pos)
    start = {r: (order[r] if r in order else -1) for r in set(root.values())}
    delta = [0] * (end + 2)  # live bytes change at each step (step -1 shifted to 0)
    for r, s in start.items():
        b = node_cost(r).activation_bytes
        e = last_use.get(r, s)
        if b == 0:
            continue
        delta[s + 1] += b
        delta[e + 2 if e + 2 < len(delta) else len(delta) - 1] -= b
    live_at = []
    acc = 0
    for i in range(end + 1):
        acc += delta[i]
        if i >= 1:
            live_at.append(acc)  # live bytes while compute[i-1] runs (its output included)
    peaks = [0] * L
    for n, li in layer_of.items():
        peaks[li] = max(peaks[li], live_at[order[n]] + node_cost(n).buffer_bytes)

    # boundaries: tensors produced before layer p and read at or after it
    def info(n: fx.Node) -> TensorInfo:
        ts = _flat_tensors(node_value(n))
        numel = sum(int(t.numel()) for t in ts)
        nbytes = node_cost(n).output_bytes
        floating = bool(ts) and all(t.is_floating_point() for t in ts)
        return TensorInfo(n.name, numel, (nbytes // numel) if numel else 0, floating)

    produced_in = {n: (layer_of[n] if n in layer_of else -1) for n in nodes
                   if n.op in ("placeholder", "call_function", "call_method", "call_module") and n not in weight_nodes}
    last_reader: dict[fx.Node, int] = {}
    for n in produced_in:
        readers = [layer_of.get(u, L) if u is not output_node else L for u in n.users]
        readers = [r for r in readers if r > produced_in[n]]
        if readers and _flat_tensors(node_value(n)):
            last_reader[n] = max(readers)
    boundaries: list[list[TensorInfo]] = [[] for _ in range(L + 1)]
    for n, lr in last_reader.items():
        ti = info(n)
        for p in range(produced_in[n] + 1, lr + 1):
            boundaries[p].append(ti)

    layers = []
    for li, (ns, lname) in enumerate(zip((r[1] for r in runs), names)):
        costs = [node_cost(n) for n in ns]
        produced = [n for n in ns if n in last_reader]
        out_bytes = sum(node_cost(n).output_bytes for n in produced)
        lw = layer_weights[li]
        layers.append(LayerProfile(
            index=li, name=lname,
            params=sum(wtable[w][0] for w in lw if w in params),
            flops=sum(c.flops for c in costs),
            weight_bytes=sum(lw.values()),
            activation_bytes=out_bytes,
            buffer_bytes=max((c.buffer_bytes for c in costs), default=0),
            peak_bytes=peaks[li],
            bytes_moved=sum(c.bytes_moved for c in costs),
            work=tuple((c.flops, c.bytes_moved) for c in costs if c.flops or c.bytes_moved),
            weight_names=tuple(lw),
            nodes=tuple(ns),
        ))
    return ModelProfile(layers=layers, boundaries=[tuple(b) for b in boundaries], weights=wtable,
                        param_names=params or frozenset(wtable), name=name, dtype=dtype,
                        batch_size=batch_size, graph_module=gm)


def _flat_tensors(x: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
