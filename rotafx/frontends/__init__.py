"""Profiles of models that are not PyTorch modules: ONNX graphs and Keras models.

Each frontend turns its model into a list of :class:`GraphOp` (one per ONNX node or
Keras layer call, in execution order) and a table of tensors; :func:`build_profile`
groups the ops into layers and computes, from that list alone, what
``rotafx.profile.profile_graph`` computes for an fx graph: per-layer FLOPs, weights,
output feature maps, workspace, the peak of live activations in execution order, and
the tensors that cross every layer boundary. Nothing here imports onnx or tensorflow;
the frontends import them when called.

* :func:`rotafx.frontends.onnx.profile_onnx` (``ModelProfile.from_onnx``);
* :func:`rotafx.frontends.tensorflow.profile_keras` (``ModelProfile.from_tensorflow``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..profile import LayerProfile, ModelProfile, ProfileError, TensorInfo

__all__ = ["GraphOp", "FrontendProfile", "build_profile", "fill_keys", "torch_dtype", "float_itemsize"]


@dataclass(frozen=True)
class GraphOp:
    """One operation of a non-PyTorch graph with its cost.

    ``inputs`` and ``outputs`` name activation tensors (graph inputs included, weights
    and constants not); ``weights`` names the weights it reads. ``view``: its outputs
    alias its first input (no new memory, nothing moved). ``transient``: outputs that
    are workspace of a fused computation (an attention score matrix), priced in
    ``buffer_bytes`` instead of as live activations. ``key``: the layer it belongs to
    (``None``: joins the next layer).
    """

    name: str
    key: str | None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()
    flops: int = 0
    bytes_moved: int = 0
    buffer_bytes: int = 0
    view: bool = False
    transient: tuple[str, ...] = ()
    op_type: str = ""


@dataclass
class FrontendProfile(ModelProfile):
    """A :class:`~rotafx.profile.ModelProfile` built from an ONNX graph or a Keras model.

    On top of the usual fields: ``source`` (``"onnx"`` or ``"keras"``), ``layer_ops``
    (the ONNX node names or Keras layer calls of each layer), ``output_shapes`` (shape of
    every tensor each layer hands to later layers or the model output), ``tensor_shapes``
    (every activation tensor), and, when measured, ``measured_ms`` (time of each layer on
    this machine, in ms) and ``op_ms`` (per op).
    """

    source: str = ""
    layer_ops: list[tuple[str, ...]] = field(default_factory=list, repr=False)
    output_shapes: list[tuple[tuple[int, ...], ...]] = field(default_factory=list, repr=False)
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    tensor_types: dict[str, Any] = field(default_factory=dict, repr=False)
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    measured_ms: list[float] | None = None
    op_ms: dict[str, float] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        return self.summary()


def fill_keys(keys: Sequence[str | None], default: str = "model") -> list[str]:
    """Ops with no layer key join the next layer (trailing ones the last), as ``profile_graph`` does."""
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


def build_profile(ops: Sequence[GraphOp], tensors: Mapping[str, TensorInfo], inputs: Sequence[str],
                  outputs: Sequence[str], weights: Mapping[str, tuple[int, int]], params: frozenset[str], *,
                  name: str, source: str, shapes: Mapping[str, tuple[int, ...]] | None = None,
                  **extra: Any) -> FrontendProfile:
    """Group ops into layers (runs of equal keys) and compute liveness and boundaries.

    ``tensors`` describes every activation (graph inputs and op outputs); ``outputs``
    are the graph outputs (read after the last layer); ``weights`` maps a weight name to
    ``(numel, bytes)``, ``params`` says which of them are parameters.

    >>> t = {n: TensorInfo(n, 10, 4) for n in ("x", "h", "y")}
    >>> ops = [GraphOp("fc1", "a", ("x",), ("h",), ("w1",), flops=100),
    ...        GraphOp("fc2", "b", ("h",), ("y",), ("w2",), flops=50)]
    >>> w = {"w1": (5, 20), "w2": (5, 20)}
    >>> p = build_profile(ops, t, ["x"], ["y"], w, frozenset(w), name="m", source="demo")
    >>> [(l.name, l.flops, l.params, l.activation_bytes) for l in p.layers], [len(b) for b in p.boundaries]
    ([('a', 100, 5, 40), ('b', 50, 5, 40)], [1, 1, 1])
    """
    if not ops:
        raise ProfileError(f"rotafx: {name} has no operations to place")
    keys = fill_keys([op.key for op in ops])
    runs: list[tuple[str, list[int]]] = []
    for i, k in enumerate(keys):
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

    # producers and readers of every activation
    produced_at: dict[str, int] = {t: -1 for t in inputs}
    for i, op in enumerate(ops):
        for t in op.outputs:
            produced_at.setdefault(t, i)
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for t in dict.fromkeys(op.inputs):
            readers.setdefault(t, []).append(i)
    for t in outputs:
        readers.setdefault(t, []).append(N)

    # liveness: a storage lives from its producer to its last reader; views share their input's storage
    transient = {t for op in ops for t in op.transient}
    root: dict[str, str] = {t: t for t in inputs}
    for op in ops:
        for t in op.outputs:
            if op.view and op.inputs and op.inputs[0] in root:
                root[t] = root[op.inputs[0]]
            else:
                root[t] = t
    last_use: dict[str, int] = {}
    for t, r in root.items():
        for pos in readers.get(t, ()):
            last_use[r] = max(last_use.get(r, -1), pos)
    delta = [0] * (N + 2)
    for r in set(root.values()):
        if r in transient or r not in tensors:
            continue
        b = tensors[r].nbytes
        s = produced_at.get(r, -1)
        e = last_use.get(r, s)
        if b == 0:
            continue
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
        read_in = [layer_of_op[r] if r < N else L for r in readers.get(t, ())]
        later = [r for r in read_in if r > made_in]
        if not later:
            continue
        crossing.add(t)
        for p in range(made_in + 1, max(later) + 1):
            boundaries[p].append(tensors[t])

    shapes = dict(shapes or {})
    layers: list[LayerProfile] = []
    for li, ((_, idx), lname) in enumerate(zip(runs, names)):
        lops = [ops[i] for i in idx]
        lw: dict[str, int] = {}
        for op in lops:
            for w in op.weights:
                if w in weights:
                    lw.setdefault(w, weights[w][1])
        out = [t for op in lops for t in op.outputs if t in crossing]
        layers.append(LayerProfile(
            index=li, name=lname,
            params=sum(weights[w][0] for w in lw if w in params),
            flops=sum(op.flops for op in lops),
            weight_bytes=sum(lw.values()),
            activation_bytes=sum(tensors[t].nbytes for t in out),
            buffer_bytes=max((op.buffer_bytes for op in lops), default=0),
            peak_bytes=peaks[li],
            bytes_moved=sum(op.bytes_moved for op in lops),
            work=tuple((op.flops, op.bytes_moved) for op in lops if op.flops or op.bytes_moved),
            weight_names=tuple(lw),
        ))
    return FrontendProfile(
        layers=layers, boundaries=[tuple(b) for b in boundaries], weights=dict(weights),
        param_names=params, name=name, source=source,
        layer_ops=[tuple(ops[i].name for i in idx) for _, idx in runs],
        output_shapes=[tuple(shapes.get(t, ()) for op in (ops[i] for i in idx) for t in op.outputs if t in crossing)
                       for _, idx in runs],
        tensor_shapes=shapes, input_names=tuple(inputs), output_names=tuple(outputs), **extra)


def torch_dtype(dtype: Any) -> Any:
    """A ``torch.dtype`` from a dtype or its name (``"float16"``, ``"fp16"``, ``"bfloat16"``); ``None`` stays ``None``.

    >>> torch_dtype("fp16")
    torch.float16
    """
    if dtype is None:
        return None
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    name = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "half": "float16", "fp64": "float64"}.get(name, name)
    t = getattr(torch, name, None)
    if not isinstance(t, torch.dtype):
        raise ValueError(f"rotafx: unknown dtype {dtype!r}; use e.g. 'float16', 'bfloat16' or torch.float16")
    return t


def float_itemsize(dtype: Any) -> int | None:
    """Bytes per element that floating tensors are priced at under ``dtype`` (``None``: their own size)."""
    t = torch_dtype(dtype)
    if t is None:
        return None
    import torch

    return torch.empty((), dtype=t).element_size()
