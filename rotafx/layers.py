"""Layers: the per-op record every frontend produces, and the one function that groups ops into layers.

A frontend (PyTorch, ONNX, Keras) reads a model into an :class:`OpGraph`: one
:class:`OpRecord` per operation in execution order, the activations it reads and
writes (:class:`TensorInfo`), the weights it reads, its FLOPs, bytes moved and
workspace. :func:`group_layers` turns that list, and nothing else, into
:class:`LayerProfile` rows and the tensors that cross every layer boundary, so that
every frontend's profile is computed by the same code:

* **layers** are runs of ops with the same layer key (an op with no key joins the next
  layer; a key seen again later gets a ``#2`` suffix);
* **weights** of a layer: every weight its ops read (a weight two layers read is
  charged to both; a device that runs both holds it once);
* **liveness**, over the whole model's execution order: a storage lives from the op
  that makes it to its last reader; a view shares its first input's storage (a view of
  a weight allocates nothing); a ``transient`` output (an attention score matrix) is
  workspace, not an activation. A layer's ``peak_bytes`` is the most live activation
  memory while one of its ops runs, plus that op's workspace;
* **boundaries**: ``boundaries[p]`` are the tensors made before layer ``p`` (or model
  inputs) and read at or after it (``p = num_layers``: the model outputs).

>>> t = {n: TensorInfo(n, 10, 4) for n in ("x", "h", "y")}
>>> g = OpGraph(ops=[OpRecord("fc1", "a", inputs=("x",), outputs=("h",), weights=("w1",), flops=100),
...                  OpRecord("fc2", "b", inputs=("h",), outputs=("y",), weights=("w2",), flops=50)],
...             tensors=t, inputs=("x",), outputs=("y",), weights={"w1": (5, 20), "w2": (5, 20)})
>>> layers, boundaries = group_layers(g)
>>> [(l.name, l.flops, l.params, l.activation_bytes, l.peak_bytes) for l in layers]
[('a', 100, 5, 40, 80), ('b', 50, 5, 40, 80)]
>>> [[x.name for x in b] for b in boundaries]
[['x'], ['h'], ['y']]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Sequence

from .units import MB, fmt_bytes

__all__ = ["TensorInfo", "OpRecord", "OpGraph", "LayerProfile", "OpCost", "group_layers", "layer_keys", "fill_keys",
           "ProfileError", "CostRuleError", "report_unknown_ops"]


class ProfileError(ValueError):
    """A model that cannot be profiled as given; the message says what to pass instead."""


class CostRuleError(RuntimeError):
    """An op with no cost rule, raised under ``strict=True``."""


@dataclass(frozen=True)
class TensorInfo:
    """An activation tensor: its name, element count and element size (bytes), and, when known, shape and dtype."""

    name: str
    numel: int
    itemsize: int
    floating: bool = True
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # "float32", "int64", ...

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class OpRecord:
    """One operation, as a frontend read it.

    ``inputs`` and ``outputs`` name activation tensors (model inputs included, weights
    not); ``weights`` names the weights it reads. ``view``: its outputs alias its first
    input (no new memory). ``transient``: outputs that are workspace of a fused
    computation, priced in ``buffer_bytes`` instead of as live activations. ``key``: the
    layer it belongs to (``None``: it joins the next layer). ``measured_ms``: its time
    on this machine, when measured. ``kernel``: its largest matmul-like kernel, as
    ``("mm", M, K, N)`` (convolutions as their GEMM) or ``("sdpa", batch*heads, key length,
    head dim)``: the shape a calibrated device's achieved rate is looked up at.
    """

    name: str
    key: str | None
    op_type: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    flops: int = 0
    bytes_moved: int = 0
    buffer_bytes: int = 0
    view: bool = False
    transient: tuple[str, ...] = ()
    measured_ms: float | None = None
    kernel: tuple[str, int, int, int] | None = None
    kv_bytes_per_token: int = 0
    # the module calls it runs inside, outermost first (a PyTorch trace's nn_module_stack keys; a module called
    # twice has two keys): the calls a layer's eager forward makes (LayerProfile.module_calls)
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpGraph:
    """What a frontend reads from a model: its ops in execution order and the tables they refer to.

    ``tensors`` describes every activation (model inputs and op outputs); ``weights``
    maps a weight name to ``(numel, bytes)`` and ``params`` says which weights are
    parameters (the rest are buffers and constants); ``unknown_ops`` lists the op types
    that had no cost rule (op type -> first op that used it).
    """

    ops: Sequence[OpRecord]
    tensors: Mapping[str, TensorInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    weights: Mapping[str, tuple[int, int]]
    params: frozenset[str] | None = None  # None: every weight is a parameter
    unknown_ops: Mapping[str, str] = field(default_factory=dict)
    source: str = ""
    name: str = "model"
    dtype: object = None  # the torch.dtype floating tensors were priced at, if any
    batch_size: int | None = None


class OpCost(NamedTuple):
    """What one op of a layer costs the cost model: its work, the kernel it runs, whether it is a view."""

    flops: int
    bytes_moved: int
    kernel: tuple[str, int, int, int] | None
    view: bool
    op_type: str = ""  # the frontend's op name (OpRecord.op_type): which launch and rate table prices it


@dataclass(frozen=True)
class LayerProfile:
    """One layer (a block of the model, e.g. ``layers.7``), in execution order.

    ``weight_bytes``: parameters and buffers its ops read; ``activation_bytes``: its
    output feature map (bytes of the tensors it produces that later layers or the model
    output read, listed in ``outputs``); ``buffer_bytes``: the largest workspace of its
    ops; ``peak_bytes``: the largest amount of live activation memory (plus that op's
    workspace) while it runs, in whole-model execution order; ``flops``: multiply-add = 2;
    ``work``: ``(flops, bytes_moved)`` of each op, for the roofline time; ``ops``: the
    names of its ops (fx nodes, ONNX nodes, Keras layer calls); ``op_costs``: every op's
    :class:`OpCost` (views included: on a calibrated device each op has a launch cost);
    ``measured_ms``: its time on this machine, when measured; ``kv_bytes_per_token``: what
    a KV cache of its attention holds per token of one sequence (its keys and values, before
    any grouped-query repeat; 0 for a layer with no self-attention); ``module_calls``: the
    ``nn.Module`` calls its eager forward makes (each counted in the layer of its first op;
    0 for a profile not read from PyTorch modules; what ``module_call_s`` would multiply: the
    cost model spreads module calls over the ops instead, which measured closer).
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
    work: tuple[tuple[int, int], ...] = ()
    weight_names: tuple[str, ...] = ()
    ops: tuple[str, ...] = field(default=(), repr=False)
    outputs: tuple[TensorInfo, ...] = field(default=(), repr=False)
    measured_ms: float | None = None
    op_costs: tuple[OpCost, ...] = field(default=(), repr=False)
    kv_bytes_per_token: int = 0
    module_calls: int = 0

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


def layer_keys(paths: Sequence[str]) -> list[str | None]:
    """Group module paths at the depth that gives the blocks: up to the first list index
    (``layers.7``), else one level below the parent of such a list (``model.norm``),
    else the top-level child (``lm_head``); ``None`` for the root module.

    >>> layer_keys(["model.layers.0.attn", "model.layers.1.mlp", "model.norm", "lm_head", ""])
    ['model.layers.0', 'model.layers.1', 'model.norm', 'lm_head', None]
    """
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


def fill_keys(keys: Sequence[str | None], default: str = "model") -> list[str]:
    """Ops with no layer key join the next layer (trailing ones the last; all of them ``default``).

    >>> fill_keys([None, "a", None, "b", None])
    ['a', 'a', 'b', 'b', 'b']
    """
    filled: list[str | None] = list(keys)
    nxt: str | None = None
    for i in range(len(filled) - 1, -1, -1):
        if filled[i] is None:
            filled[i] = nxt
        else:
            nxt = filled[i]
    last = next((k for k in filled if k is not None), default)
    for i, k in enumerate(filled):
        if k is None:
            filled[i] = last
        else:
            last = k
    return [str(k) for k in filled]


def report_unknown_ops(unknown: Mapping[str, str], what: str, strict: bool, *, at: str = "node {}",
                       moved: tuple[int, int] | None = None, stacklevel: int = 3) -> None:
    """The one policy for ops with no cost rule: one warning that lists them, or :class:`CostRuleError` under ``strict``.

    ``unknown`` maps an op type to the first op that used it; ``what`` says what the
    ops are (``"op(s)"``, ``"ONNX op(s)"``, ``"Keras layer(s)"``); ``at`` formats where
    each was first seen (``"node {}"``, ``"layer {!r}"``); ``moved`` is ``(bytes the ops
    with no rule read and write, bytes all ops read and write)``: how much of the model's
    work the missing FLOPs may hide.

    >>> report_unknown_ops({"Mystery": "n7"}, "ONNX op(s)", strict=True)
    Traceback (most recent call last):
    ...
    rotafx.layers.CostRuleError: rotafx: no cost rule for ONNX op(s) Mystery (first at node n7); pass strict=False to count them as 0 FLOPs
    """
    if not unknown:
        return
    listing = ", ".join(f"{op} (first at {at.format(where)})" for op, where in sorted(unknown.items()))
    share = ""
    if moved is not None and moved[1] > 0:
        share = (f"; the ops that use them read and write {fmt_bytes(moved[0])}, {moved[0] / moved[1]:.1%} of the "
                 f"bytes the whole model moves")
    if strict:
        raise CostRuleError(f"rotafx: no cost rule for {what} {listing}{share}; pass strict=False to count them as 0 FLOPs")
    warnings.warn(f"rotafx: no cost rule for {what} {listing}; counted as 0 FLOPs{share}", stacklevel=stacklevel)


def group_layers(graph: OpGraph) -> tuple[list[LayerProfile], list[tuple[TensorInfo, ...]]]:
    """Group ``graph``'s ops into layers; compute weights, liveness peaks, workspace and boundaries.

    Returns the layers in execution order and ``boundaries`` (``num_layers + 1`` tuples
    of the tensors that cross the cut before each layer).
    """
    ops = list(graph.ops)
    if not ops:
        raise ProfileError(f"rotafx: {graph.name} has no operations to place")
    tensors, weights = graph.tensors, graph.weights
    params = graph.params if graph.params is not None else frozenset(weights)

    # layers: runs of equal keys; a key seen again later gets a suffix
    runs: list[tuple[str, list[int]]] = []
    for i, k in enumerate(fill_keys([op.key for op in ops])):
        if runs and runs[-1][0] == k:
            runs[-1][1].append(i)
        else:
            runs.append((k, [i]))
    counts: dict[str, int] = {}
    names = []
    for k, _ in runs:
        counts[k] = counts.get(k, 0) + 1
        names.append(k if counts[k] == 1 else f"{k}#{counts[k]}")
    layer_of_op = [0] * len(ops)
    for li, (_, idx) in enumerate(runs):
        for i in idx:
            layer_of_op[i] = li
    L, N = len(runs), len(ops)

    # producers and readers of every activation (position N: the model output)
    produced_at: dict[str, int] = {t: -1 for t in graph.inputs}
    for i, op in enumerate(ops):
        for t in op.outputs:
            produced_at.setdefault(t, i)
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for t in dict.fromkeys(op.inputs):
            readers.setdefault(t, []).append(i)
    for t in graph.outputs:
        readers.setdefault(t, []).append(N)

    # liveness: a storage lives from its producer to its last reader; views share their input's storage,
    # a view of nothing but weights allocates nothing (root None)
    transient = {t for op in ops for t in op.transient}
    root: dict[str, str | None] = {t: t for t in graph.inputs}
    for op in ops:
        for t in op.outputs:
            if op.view:
                root[t] = root.get(op.inputs[0]) if op.inputs else None
            else:
                root[t] = t
    last_use: dict[str, int] = {}
    for t, r in root.items():
        if r is None:
            continue
        for pos in readers.get(t, ()):
            last_use[r] = max(last_use.get(r, -1), pos)
    delta = [0] * (N + 2)  # live bytes change at each step (step -1, the model inputs, shifted to 0)
    for r in {r for r in root.values() if r is not None}:
        if r in transient or r not in tensors:
            continue
        b = tensors[r].nbytes
        s = produced_at.get(r, -1)
        e = last_use.get(r, s)
        if b:
            delta[s + 1] += b
            delta[min(e + 2, N + 1)] -= b
    live_at, acc = [], 0
    for i in range(N + 1):
        acc += delta[i]
        if i >= 1:
            live_at.append(acc)  # live bytes while ops[i - 1] runs, its outputs included
    peaks = [0] * L
    for i, op in enumerate(ops):
        li = layer_of_op[i]
        peaks[li] = max(peaks[li], live_at[i] + op.buffer_bytes)

    # boundaries: tensors produced before layer p and read at or after it
    boundaries: list[list[TensorInfo]] = [[] for _ in range(L + 1)]
    crossing: set[str] = set()
    for t, pos in sorted(produced_at.items(), key=lambda kv: kv[1]):
        if t not in tensors:
            continue
        made_in = layer_of_op[pos] if pos >= 0 else -1
        later = [r for r in (layer_of_op[r] if r < N else L for r in readers.get(t, ())) if r > made_in]
        if not later:
            continue
        crossing.add(t)
        for p in range(made_in + 1, max(later) + 1):
            boundaries[p].append(tensors[t])

    # each module call in the layer of its first op
    calls = [0] * L
    seen: set[str] = set()
    for i, op in enumerate(ops):
        new = [m for m in op.modules if m not in seen]
        seen.update(new)
        calls[layer_of_op[i]] += len(new)

    layers: list[LayerProfile] = []
    for li, ((_, idx), lname) in enumerate(zip(runs, names)):
        lops = [ops[i] for i in idx]
        held: dict[str, int] = {}
        for op in lops:
            for w in op.weights:
                if w in weights:
                    held.setdefault(w, weights[w][1])
        outs = tuple(tensors[t] for op in lops for t in op.outputs if t in crossing)
        times = [op.measured_ms for op in lops]
        layers.append(LayerProfile(
            index=li, name=lname,
            params=sum(weights[w][0] for w in held if w in params),
            flops=sum(op.flops for op in lops),
            weight_bytes=sum(held.values()),
            activation_bytes=sum(t.nbytes for t in outs),
            buffer_bytes=max((op.buffer_bytes for op in lops), default=0),
            peak_bytes=peaks[li],
            bytes_moved=sum(op.bytes_moved for op in lops),
            work=tuple((op.flops, op.bytes_moved) for op in lops if op.flops or op.bytes_moved),
            weight_names=tuple(held),
            ops=tuple(op.name for op in lops),
            outputs=outs,
            measured_ms=sum(t for t in times if t is not None) if any(t is not None for t in times) else None,
            op_costs=tuple(OpCost(op.flops, op.bytes_moved, op.kernel, op.view, op.op_type) for op in lops),
            kv_bytes_per_token=sum(op.kv_bytes_per_token for op in lops),
            module_calls=calls[li],
        ))
    return layers, [tuple(b) for b in boundaries]
