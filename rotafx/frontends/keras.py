"""The Keras frontend: read a Sequential or functional Keras 3 model (``ModelProfile.from_tensorflow``).

Every call of a Keras layer is one op and, at the top level, one rotafx layer (a nested
Sequential or functional model is one layer whose inner layers are priced one by one).
Shapes come from Keras's own shape inference (``compute_output_spec``) with the batch
dimension bound to ``batch_size`` and any other unknown dimension from ``input_shapes``.

FLOP rules (multiply-add = 2, the same as the PyTorch and ONNX profiles): ``Dense`` and
``EinsumDense`` 2 FLOPs per multiply-add (bias not counted) plus the activation,
``Conv*`` 2·B·Cout·prod(out spatial)·Cin/groups·prod(kernel) with an im2col workspace,
depthwise, separable and transposed convolutions likewise, ``MultiHeadAttention`` and
``GroupedQueryAttention`` their four projections plus 2·B·H·Lq·Lk·(Dqk + Dv) with the
score matrix as workspace, layer/batch/group normalisation 5 per element (RMS 4),
softmax 5 per element, other activations and merges 1 per output element, pooling 1
per window element, global pooling 1 per input element, ``Embedding`` and reshaping,
padding, cropping, dropout 0. Parameters are Keras's: ``total_params`` equals
``model.count_params()`` (batch-norm moving statistics included).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..layers import OpGraph, OpRecord, ProfileError, TensorInfo, report_unknown_ops
from .dtypes import float_itemsize, torch_dtype
from .sizes import positive_int

__all__ = ["read_keras", "KERAS_RULES"]


def _import_keras() -> Any:
    try:
        import keras
    except ImportError as e:  # pragma: no cover
        raise ImportError("rotafx: profiling Keras models needs TensorFlow and Keras 3: "
                          "pip install 'rotafx[tensorflow]'") from e
    if not hasattr(keras, "KerasTensor"):  # pragma: no cover
        raise ImportError(f"rotafx: from_tensorflow needs Keras 3 (found keras {getattr(keras, '__version__', '?')})")
    return keras


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).replace("tf.", "")


def _itemsize(dtype: Any) -> tuple[int, bool]:
    """(bytes per element, floating) of a Keras dtype name."""
    name = _dtype_name(dtype)
    table = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
             "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "bool": 1, "complex64": 8, "complex128": 16}
    return table.get(name, 4), name.startswith("float") or name == "bfloat16"


# ---------------------------------------------------------------------------
# per-layer rules: (layer, node, input shapes, output shapes, itemsize) -> (FLOPs, workspace bytes, view)


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)


def _activation_flops(layer: Any, out: Sequence[int]) -> int:
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", "linear") if act is not None else "linear"
    if name == "linear":
        return 0
    return (5 if name in ("softmax", "log_softmax") else 1) * _numel(out)


def _dense(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    return 2 * _numel(outs[0]) * ins[0][-1] + _activation_flops(layer, outs[0]), 0, False


def _einsum_dense(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    eq = str(layer.equation).replace(" ", "")
    lhs, out_terms = eq.split("->")
    x_terms, k_terms = lhs.split(",")
    sizes: dict[str, int] = {}
    for term, shape in ((x_terms, ins[0]), (k_terms, tuple(layer.kernel.shape))):
        head, _, tail = term.partition("...")
        for i, ch in enumerate(head):
            sizes[ch] = int(shape[i])
        for i, ch in enumerate(reversed(tail)):
            sizes[ch] = int(shape[len(shape) - 1 - i])
    contracted = math.prod(sizes[ch] for ch in sizes if ch not in out_terms)
    return 2 * _numel(outs[0]) * contracted + _activation_flops(layer, outs[0]), 0, False


def _conv(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    k = tuple(int(d) for d in layer.kernel.shape)  # (*kernel, Cin/groups, Cout)
    per_out = math.prod(k[:-1])
    cols = _numel(outs[0]) // max(1, k[-1]) * per_out
    return 2 * _numel(outs[0]) * per_out + _activation_flops(layer, outs[0]), cols * isz, False


def _conv_transpose(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    k = tuple(int(d) for d in layer.kernel.shape)  # (*kernel, Cout, Cin)
    return 2 * _numel(ins[0]) * math.prod(k[:-1]) + _activation_flops(layer, outs[0]), 0, False


def _depthwise(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    k = tuple(int(d) for d in layer.kernel.shape)  # (*kernel, Cin, multiplier)
    window = math.prod(k[:-2])
    cols = _numel(outs[0]) // max(1, k[-2] * k[-1]) * window
    return 2 * _numel(outs[0]) * window + _activation_flops(layer, outs[0]), cols * isz, False


def _separable(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    d = tuple(int(x) for x in layer.depthwise_kernel.shape)  # (*kernel, Cin, multiplier)
    p = tuple(int(x) for x in layer.pointwise_kernel.shape)  # (1.., Cin * multiplier, Cout)
    mid = _numel(outs[0]) // max(1, p[-1]) * p[-2]
    window = math.prod(d[:-2])
    flops = 2 * mid * window + 2 * _numel(outs[0]) * p[-2] + _activation_flops(layer, outs[0])
    return flops, mid // max(1, p[-2]) * window * isz, False


def _call_args(node: Any, names: Sequence[str]) -> list[Any]:
    """The KerasTensors a node was called with, by position or keyword."""
    args = getattr(getattr(node, "arguments", None), "args", ()) or ()
    kwargs = getattr(getattr(node, "arguments", None), "kwargs", {}) or {}
    out = []
    for i, n in enumerate(names):
        out.append(args[i] if len(args) > i else kwargs.get(n))
    return out


def _seq(shape: Sequence[int]) -> tuple[int, int, int]:
    """(batch, positions, features) of an attention input: every axis between the first and last is a position."""
    return int(shape[0]), _numel(shape[1:-1]), int(shape[-1])


def _mha(layer: Any, node: Any, ins: list, outs: list, isz: int, shape_of: Any) -> tuple[int, int, bool]:
    q, v, k = _call_args(node, ("query", "value", "key"))
    qs = shape_of(q)
    vs = shape_of(v)
    ks = shape_of(k) if k is not None else vs
    b, lq, dq = _seq(qs)
    _, lk, dk = _seq(ks)
    _, lv, dv = _seq(vs)
    dout = int(outs[0][-1])
    name = type(layer).__name__
    if name == "GroupedQueryAttention":
        hq, hkv, kd = int(layer.num_query_heads), int(layer.num_key_value_heads), int(layer.head_dim)
        vd = kd
        proj = 2 * b * (lq * dq * hq * kd + lk * dk * hkv * kd + lv * dv * hkv * vd + lq * hq * vd * dout)
        h = hq
    else:
        h, kd = int(layer.num_heads), int(layer.key_dim)
        vd = int(layer.value_dim or kd)
        proj = 2 * b * (lq * dq * h * kd + lk * dk * h * kd + lv * dv * h * vd + lq * h * vd * dout)
    attn = 2 * b * h * lq * lk * (kd + vd)
    return proj + attn, b * h * lq * lk * isz, False


def _dot_attention(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    q, v = ins[0], ins[1]
    k = ins[2] if len(ins) > 2 and ins[2] == v else v
    b, lq, d = _seq(q)
    _, lk, dv = _seq(v)
    del k
    return 2 * b * lq * lk * (d + dv), b * lq * lk * isz, False


def _norm(per: int) -> Any:
    def rule(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
        k = 4 if getattr(layer, "rms_scaling", False) else per
        return k * _numel(ins[0]), 0, False
    return rule


def _per_out(per: int) -> Any:
    return lambda layer, node, ins, outs, isz: (per * _numel(outs[0]), 0, False)


def _activation(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    return _activation_flops(layer, outs[0]), 0, False


def _merge(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    return max(1, len(ins) - 1) * _numel(outs[0]), 0, False


def _dot(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    axes = layer.axes if isinstance(layer.axes, (list, tuple)) else (layer.axes, layer.axes)
    a = int(axes[0]) % len(ins[0])
    return 2 * _numel(outs[0]) * int(ins[0][a]), 0, False


def _pool(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
    size = layer.pool_size if isinstance(layer.pool_size, (list, tuple)) else (layer.pool_size,)
    return _numel(outs[0]) * math.prod(int(s) for s in size), 0, False


def _rnn(gates: int) -> Any:
    def rule(layer: Any, node: Any, ins: list, outs: list, isz: int) -> tuple[int, int, bool]:
        b, t, d = int(ins[0][0]), int(ins[0][1]), int(ins[0][-1])
        units = int(layer.units if hasattr(layer, "units") else layer.cell.units)
        return 2 * b * t * gates * units * (d + units), 0, False
    return rule


def _zero(view: bool) -> Any:
    return lambda layer, node, ins, outs, isz: (0, 0, view)


KERAS_RULES: dict[str, Any] = {
    "Dense": _dense, "EinsumDense": _einsum_dense,
    "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
    "Conv1DTranspose": _conv_transpose, "Conv2DTranspose": _conv_transpose, "Conv3DTranspose": _conv_transpose,
    "DepthwiseConv1D": _depthwise, "DepthwiseConv2D": _depthwise,
    "SeparableConv1D": _separable, "SeparableConv2D": _separable,
    "MultiHeadAttention": "attention", "GroupedQueryAttention": "attention", "Attention": _dot_attention,
    "LayerNormalization": _norm(5), "BatchNormalization": _norm(5), "GroupNormalization": _norm(5),
    "UnitNormalization": _norm(5), "RMSNormalization": _norm(4), "SpectralNormalization": _norm(5),
    "Softmax": _per_out(5), "ReLU": _per_out(1), "LeakyReLU": _per_out(1), "PReLU": _per_out(1), "ELU": _per_out(1),
    "ThresholdedReLU": _per_out(1), "Activation": _activation, "Masking": _per_out(1),
    "Rescaling": _per_out(2), "Normalization": _per_out(2),
    "Add": _merge, "Subtract": _merge, "Multiply": _merge, "Average": _merge, "Maximum": _merge, "Minimum": _merge,
    "Dot": _dot,
    "MaxPooling1D": _pool, "MaxPooling2D": _pool, "MaxPooling3D": _pool,
    "AveragePooling1D": _pool, "AveragePooling2D": _pool, "AveragePooling3D": _pool,
    "GlobalAveragePooling1D": _norm(1), "GlobalAveragePooling2D": _norm(1), "GlobalAveragePooling3D": _norm(1),
    "GlobalMaxPooling1D": _norm(1), "GlobalMaxPooling2D": _norm(1), "GlobalMaxPooling3D": _norm(1),
    "LSTM": _rnn(4), "GRU": _rnn(3), "SimpleRNN": _rnn(1),
    "Embedding": _zero(False),
    "Reshape": _zero(True), "Flatten": _zero(True), "Dropout": _zero(True), "SpatialDropout1D": _zero(True),
    "SpatialDropout2D": _zero(True), "SpatialDropout3D": _zero(True), "GaussianNoise": _zero(True),
    "GaussianDropout": _zero(True), "AlphaDropout": _zero(True), "ActivityRegularization": _zero(True),
    "Identity": _zero(True),
    "Permute": _zero(False), "RepeatVector": _zero(False), "Concatenate": _zero(False),
    "Cropping1D": _zero(False), "Cropping2D": _zero(False), "Cropping3D": _zero(False),
    "ZeroPadding1D": _zero(False), "ZeroPadding2D": _zero(False), "ZeroPadding3D": _zero(False),
    "UpSampling1D": _zero(False), "UpSampling2D": _zero(False), "UpSampling3D": _zero(False),
    "Resizing": _zero(False), "CenterCrop": _zero(False), "CategoryEncoding": _zero(False),
}


def _rule_for(layer: Any) -> tuple[str, Any] | None:
    """The rule of a layer's class, or of the nearest Keras class it derives from."""
    for cls in type(layer).__mro__:
        if cls.__name__ in KERAS_RULES:
            return cls.__name__, KERAS_RULES[cls.__name__]
        if cls.__name__ == "Layer":
            break
    return None


# ---------------------------------------------------------------------------
# the graph


def _graph_nodes(model: Any) -> list[Any]:
    """Keras nodes from the model's inputs to its outputs, in an order that runs every producer first."""
    order: list[Any] = []
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = [(t, False) for t in reversed(list(model.outputs))]
    while stack:
        t, expanded = stack.pop()
        op, node_index, _ = t._keras_history
        node = op._inbound_nodes[node_index]
        if id(node) in done:
            continue
        if expanded or node.is_input:
            done.add(id(node))
            order.append(node)
            continue
        stack.append((t, True))
        for inp in reversed(list(node.input_tensors)):
            stack.append((inp, False))
    return [n for n in order if not n.is_input]


def _has_graph(model: Any) -> bool:
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


class _Walker:
    """Turns a Keras graph (and the graphs of nested models) into op records."""

    def __init__(self, keras: Any, float_size: int | None, batch: int) -> None:
        self.keras = keras
        self.float_size = float_size
        self.batch = batch
        self.ops: list[OpRecord] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.unknown: dict[str, str] = {}
        self.unruled: set[str] = set()  # the layer calls with no rule
        self.calls: dict[str, int] = {}

    def add_tensor(self, name: str, spec: Any, where: str) -> None:
        shape = tuple(spec.shape)
        if any(d is None for d in shape):
            raise ProfileError(f"rotafx: the output of {where} has an unknown dimension (shape {shape}) even with the "
                               f"inputs bound; pass input_shapes with every dimension of every input")
        size, floating = _itemsize(spec.dtype)
        if floating and self.float_size is not None:
            size = self.float_size
        self.shapes[name] = tuple(int(d) for d in shape)
        self.tensors[name] = TensorInfo(name, _numel(shape), size, floating, self.shapes[name], _dtype_name(spec.dtype))

    def walk(self, model: Any, in_names: Sequence[str], in_specs: Sequence[Any], key: str | None, prefix: str) -> list[str]:
        keras = self.keras
        nodes = _graph_nodes(model)
        name_of: dict[int, str] = {id(t): n for t, n in zip(model.inputs, in_names)}
        spec_of: dict[int, Any] = {id(t): s for t, s in zip(model.inputs, in_specs)}
        produced = list(dict.fromkeys(t for n in nodes for t in n.output_tensors))
        if produced:
            probe = keras.Model(list(model.inputs), produced)
            specs = probe.compute_output_spec(list(in_specs) if len(in_specs) > 1 else in_specs[0])
            specs = specs if isinstance(specs, (list, tuple)) else [specs]
            for t, s in zip(produced, specs):
                spec_of[id(t)] = s
        for node in nodes:
            layer = node.operation
            count = self.calls[prefix + layer.name] = self.calls.get(prefix + layer.name, 0) + 1
            base = prefix + layer.name + (f"#{count}" if count > 1 else "")
            ins = list(node.input_tensors)
            outs = list(node.output_tensors)
            if isinstance(layer, keras.Model) and _has_graph(layer):
                inner = self.walk(layer, [name_of[id(t)] for t in ins], [spec_of[id(t)] for t in ins],
                                  key if key is not None else base, base + "/")
                for t, n in zip(outs, inner):
                    name_of[id(t)] = n
                continue
            out_names = [base if len(outs) == 1 else f"{base}:{i}" for i in range(len(outs))]
            for t, n in zip(outs, out_names):
                name_of[id(t)] = n
                self.add_tensor(n, spec_of[id(t)], f"layer {base!r}")
            in_shapes = [tuple(int(d) for d in spec_of[id(t)].shape) for t in ins]
            out_shapes = [self.shapes[n] for n in out_names]
            isz = self.tensors[out_names[0]].itemsize if out_names else 4
            found = _rule_for(layer)
            if found is None:
                self.unknown.setdefault(type(layer).__name__, base)
                self.unruled.add(base)
                cost = (0, 0, False)
            elif found[1] == "attention":
                cost = _mha(layer, node, in_shapes, out_shapes, isz,
                            lambda t: tuple(int(d) for d in spec_of[id(t)].shape))
            else:
                cost = found[1](layer, node, in_shapes, out_shapes, isz)
            flops, ws, view = cost
            wnames = tuple(dict.fromkeys(v.path for v in layer.weights))
            in_names_ = tuple(dict.fromkeys(name_of[id(t)] for t in ins))
            moved = 0 if view else (sum(self.tensors[n].nbytes for n in in_names_ if n in self.tensors)
                                    + sum(self.weight_bytes(v) for v in layer.weights)
                                    + sum(self.tensors[n].nbytes for n in out_names))
            self.ops.append(OpRecord(name=base, key=key if key is not None else base, inputs=in_names_,
                                    outputs=tuple(out_names), weights=wnames, flops=int(flops), bytes_moved=int(moved),
                                    buffer_bytes=int(ws), view=view, op_type=type(layer).__name__))
        return [name_of[id(t)] for t in model.outputs]

    def weight_bytes(self, v: Any) -> int:
        size, floating = _itemsize(v.dtype)
        if floating and self.float_size is not None:
            size = self.float_size
        return _numel(v.shape) * size


def _input_name(t: Any) -> str:
    return str(t._keras_history[0].name)


def _ensure_graph(keras: Any, model: Any, input_shapes: Any) -> None:
    if _has_graph(model):
        return
    if isinstance(model, keras.Sequential):
        if input_shapes is None:
            raise ProfileError(f"rotafx: Sequential model {model.name!r} is not built and has no Input; pass "
                               f"input_shapes=(batch, ...) or add keras.Input(shape) as its first layer")
        shape = input_shapes
        if isinstance(shape, Mapping):
            shape = next(iter(shape.values()))
        if shape and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        model.build((None, *tuple(shape)[1:]))
        if _has_graph(model):
            return
    raise ProfileError(f"rotafx: {model.name!r} is a subclassed Keras model with no layer graph; rotafx reads Sequential "
                       f"and functional models. Rebuild it with the functional API, or export it to ONNX (tf2onnx) and "
                       f"use ModelProfile.from_onnx")


def _input_specs(keras: Any, model: Any, input_shapes: Any, batch: int) -> tuple[list[str], list[Any]]:
    inputs = list(model.inputs)
    names = [_input_name(t) for t in inputs]
    given: dict[str, Sequence[int | None]] = {}
    if input_shapes is not None:
        if isinstance(input_shapes, Mapping):
            unknown = [k for k in input_shapes if k not in names]
            if unknown:
                raise ProfileError(f"rotafx: input_shapes names {unknown}, which are not inputs of {model.name!r} "
                                   f"({names})")
            given = dict(input_shapes)
        else:
            seq = list(input_shapes)
            shapes = seq if seq and isinstance(seq[0], (list, tuple)) else [seq]
            if len(shapes) != len(inputs):
                raise ProfileError(f"rotafx: input_shapes gives {len(shapes)} shapes for {len(inputs)} inputs {names}")
            given = dict(zip(names, shapes))
    specs = []
    for t, n in zip(inputs, names):
        declared = tuple(t.shape)
        shape = list(given.get(n, declared))
        if len(shape) != len(declared):
            raise ProfileError(f"rotafx: input {n!r} has {len(declared)} dimensions {declared}, but input_shapes gives "
                               f"{len(shape)}: {tuple(shape)}")
        for axis, (g, d) in enumerate(zip(shape, declared)):
            if g is not None:
                g = shape[axis] = positive_int(g, f"input_shapes for input {n!r}, axis {axis},",
                                               "or None for the batch axis")
            if g is None and axis == 0:
                shape[0] = batch
            elif g is None:
                example = ", ".join(str(batch) if i == 0 else (str(x) if x is not None else "N")
                                    for i, x in enumerate(declared))
                raise ProfileError(f"rotafx: input {n!r} has an unknown dimension at axis {axis} (shape {declared}); "
                                   f"pass input_shapes={{{n!r}: ({example})}} with every N set")
            elif d is not None and int(g) != int(d):
                raise ProfileError(f"rotafx: input {n!r} has size {d} at axis {axis}, but input_shapes gives {g}")
        specs.append(keras.KerasTensor(tuple(int(x) for x in shape), dtype=t.dtype))
    return names, specs


def read_keras(model: Any, input_shapes: Mapping[str, Sequence[int | None]] | Sequence[Any] | None = None, *,
               batch_size: int = 1, dtype: Any = None, strict: bool = False, name: str | None = None) -> OpGraph:
    """The records of a Keras 3 model (Sequential or functional): one op, and one layer, per Keras layer call.

    ``input_shapes`` gives the shape of each input (a mapping by input name, a list in
    input order, or one shape for a one-input model), batch dimension included; an
    unknown batch dimension is ``batch_size``, any other unknown dimension must be given.
    ``dtype`` prices floating tensors at that size (``"float16"``: 2 bytes). A layer
    with no cost rule counts 0 FLOPs with a warning naming it (and is listed in
    ``unknown_ops``), or raises :class:`~rotafx.layers.CostRuleError` under
    ``strict=True``.

    >>> import keras  # doctest: +SKIP
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu")])  # doctest: +SKIP
    >>> p = ModelProfile.from_tensorflow(m, batch_size=2)  # doctest: +SKIP
    >>> p.total_params, p.layers[0].flops   # 2*2*8*4 + 2*4 (relu)  # doctest: +SKIP
    (36, 136)
    """
    keras = _import_keras()
    if not isinstance(model, keras.Model):
        kind = type(model).__name__
        hint = ("; a PyTorch module goes to ModelProfile.from_pytorch" if hasattr(model, "named_parameters")
                else "; a single layer: wrap it in keras.Sequential([keras.Input(shape), layer])"
                if isinstance(model, keras.layers.Layer) else "")
        raise TypeError(f"rotafx: from_tensorflow expects a Keras model (keras.Sequential or a functional keras.Model), "
                        f"got {kind}{hint}")
    batch_size = positive_int(batch_size, "batch_size")
    _ensure_graph(keras, model, input_shapes)
    names, specs = _input_specs(keras, model, input_shapes, batch_size)
    walker = _Walker(keras, float_itemsize(dtype), batch_size)
    for n, s in zip(names, specs):
        walker.add_tensor(n, s, f"input {n!r}")
    outputs = walker.walk(model, names, specs, None, "")
    report_unknown_ops(walker.unknown, "Keras layer(s)", strict, at="layer {!r}", stacklevel=4,
                       moved=(sum(op.bytes_moved for op in walker.ops if op.name in walker.unruled),
                              sum(op.bytes_moved for op in walker.ops)))
    weights: dict[str, tuple[int, int]] = {}
    for v in model.weights:
        weights.setdefault(v.path, (_numel(v.shape), walker.weight_bytes(v)))
    return OpGraph(ops=walker.ops, tensors=walker.tensors, inputs=tuple(names), outputs=tuple(dict.fromkeys(outputs)),
                   weights=weights, params=frozenset(weights), unknown_ops=dict(walker.unknown), source="keras",
                   name=name or model.name, dtype=torch_dtype(dtype),
                   batch_size=specs[0].shape[0] if specs and specs[0].shape else None)
