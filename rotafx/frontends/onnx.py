"""ONNX frontend: profile an ONNX graph (``ModelProfile.from_onnx``) and export a partition as one ONNX file per stage.

How an ONNX model becomes a profile:

* **weights**: the initializers (and ``Constant`` nodes), each counted once per stage
  that reads it; a floating initializer is a parameter unless it only feeds the running
  statistics of a ``BatchNormalization`` (ONNX does not tell parameters from buffers, so
  another buffer exported as an initializer, such as a rotary ``inv_freq``, counts as a
  parameter);
* **constant folding**: a node whose inputs are all constants (``Transpose`` of a
  weight, shape arithmetic on constants) is folded as onnxruntime folds it: it costs
  nothing and the layer that reads its result is charged for the initializers it comes
  from;
* **shapes**: ``onnx.shape_inference`` (with data propagation) after every symbolic
  input dimension is bound from ``input_shapes``;
* **FLOPs** (multiply-add = 2, the same rules as the PyTorch profile): ``MatMul`` and
  ``Gemm`` 2·M·K·N (bias not counted, as ``torch.utils.flop_counter`` does not count
  ``addmm``'s), ``Conv`` 2·B·Cout·prod(out spatial)·Cin/groups·prod(kernel),
  ``ConvTranspose`` per input element, attention (the ``Attention`` op, or a
  ``MatMul → scale/mask → Softmax → MatMul`` subgraph) as its two matmuls
  2·B·H·Lq·Lk·(Dqk + Dv) with the score matrix as workspace (as rotafx prices
  scaled-dot-product attention), softmax and layer/group/batch/instance norm 5 per
  element, RMS norm 4, elementwise ops 1 per output element, reductions 1 per input
  element, pooling 1 per window element, data movement (reshape, transpose, gather,
  concat, cast, ...) 0;
* **workspace**: a convolution's im2col buffer, an attention's score matrix;
* **layers**: module paths from ``torch.onnx.export`` (the node metadata
  ``pkg.torch.onnx.name_scopes``, or node names such as ``/layers.0/attn/MatMul``),
  grouped by :func:`rotafx.profile.layer_keys`, so that the ONNX and PyTorch profiles of
  one model have the same layers.

:func:`export_stages` cuts the model at a partition's layer boundaries into one ONNX
model per stage, and :func:`run_stages` chains them in onnxruntime.
"""

from __future__ import annotations

import ast
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..annotate import CostRuleError
from ..profile import ProfileError, TensorInfo, layer_keys
from . import FrontendProfile, GraphOp, build_profile, float_itemsize as _float_itemsize, torch_dtype as _torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["profile_onnx", "load_onnx", "export_stages", "run_stages", "OnnxStage", "stage_ranges", "ZERO_COST_OPS",
           "POINTWISE_OPS", "PER_ELEMENT_OPS"]

# -- element types: ONNX TensorProto.DataType -> (bytes per element, floating) -------------------------
_ELEM: dict[int, tuple[int, bool]] = {
    1: (4, True), 2: (1, False), 3: (1, False), 4: (2, False), 5: (2, False), 6: (4, False), 7: (8, False),
    8: (0, False), 9: (1, False), 10: (2, True), 11: (8, True), 12: (4, False), 13: (8, False), 14: (8, False),
    15: (16, False), 16: (2, True), 17: (1, True), 18: (1, True), 19: (1, True), 20: (1, True), 21: (1, False),
    22: (1, False), 23: (1, True), 24: (1, True), 25: (1, False), 26: (1, False), 27: (1, True), 28: (1, True),
}

# -- cost rules --------------------------------------------------------------------------------------
# outputs alias the first input (onnxruntime reuses the buffer): no memory, nothing moved
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "SequenceAt"}
# data movement and tensor creation: 0 FLOPs
ZERO_COST_OPS = VIEW_OPS | {
    "Transpose", "Concat", "Split", "SplitToSequence", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
    "SequenceErase", "SequenceLength", "ConcatFromSequence", "Slice", "Gather", "GatherElements", "GatherND",
    "Scatter", "ScatterElements", "ScatterND", "Expand", "Tile", "Pad", "Cast", "CastLike", "Shape", "Size",
    "Constant", "ConstantOfShape", "Range", "Trilu", "DepthToSpace", "SpaceToDepth", "Resize", "Upsample", "OneHot",
    "NonZero", "TopK", "ArgMax", "ArgMin", "CumSum", "Compress", "EyeLike", "ReverseSequence", "Optional",
    "OptionalGetElement", "OptionalHasElement", "Unique", "RandomNormal", "RandomUniform", "RandomNormalLike",
    "RandomUniformLike", "Multinomial", "Bernoulli", "CenterCropPad", "GridSample", "Col2Im",
}
# one FLOP per output element (variadic Sum/Max/Min/Mean: one per output element per extra input)
POINTWISE_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt", "Exp", "Log", "Erf", "Relu",
    "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Mish", "Swish", "Sin", "Cos", "Tan", "Asin", "Acos",
    "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Round", "Sign", "Clip", "Where", "Equal",
    "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "BitwiseAnd",
    "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift", "ThresholdedRelu", "Shrink", "Sum", "Max", "Min", "Mean",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "BiasAdd", "Hardmax",
}
# a fixed number of FLOPs per element of the first input
PER_ELEMENT_OPS = {
    "Softmax": 5, "LogSoftmax": 5, "BatchNormalization": 5, "LayerNormalization": 5, "GroupNormalization": 5,
    "InstanceNormalization": 5, "MeanVarianceNormalization": 5, "LpNormalization": 5, "RMSNormalization": 4,
    "SimplifiedLayerNormalization": 4, "SkipLayerNormalization": 6, "SkipSimplifiedLayerNormalization": 5,
    "LRN": 5,
}
REDUCE_OPS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool",
              "GlobalLpPool"}
POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"}
# score-matrix ops between the two matmuls of an attention subgraph
_SCORE_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Max", "Min", "Tanh", "Clip"}
_PROB_OPS = {"Cast", "Dropout", "Identity", "Where", "Mul"}


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # pragma: no cover
        raise ImportError("rotafx: profiling ONNX models needs the onnx package: pip install 'rotafx[onnx]'") from e
    return onnx


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover
        raise ImportError("rotafx: running or measuring ONNX models needs onnxruntime: pip install 'rotafx[onnx]'") from e
    return onnxruntime


# ---------------------------------------------------------------------------
# loading and binding shapes


def load_onnx(model: Any, *, load_external_data: bool = True) -> "onnx.ModelProto":
    """An ``onnx.ModelProto`` from a path, serialized bytes or a ``ModelProto``; a clear error for anything else.

    >>> load_onnx(b"hello")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rotafx.profile.ProfileError: rotafx: the bytes given are not a serialized ONNX model (...); pass the bytes of a file written by onnx.save
    """
    onnx = _import_onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as e:
            raise ProfileError(f"rotafx: the bytes given are not a serialized ONNX model ({_first_line(e)}); pass the "
                               f"bytes of a file written by onnx.save") from e
        _check_model(proto, "the bytes given")
        return proto
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"rotafx: no ONNX file at {str(path)!r}")
        if path.is_dir():
            raise ProfileError(f"rotafx: {str(path)!r} is a directory; pass the .onnx file inside it")
        try:
            proto = onnx.load(str(path), load_external_data=load_external_data)
        except Exception as e:
            raise ProfileError(f"rotafx: {path} is not an ONNX model ... ({_first_line(e)}); pass a file written by "
                               f"onnx.save or torch.onnx.export") from e
        _check_model(proto, str(path))
        return proto
    kind = type(model).__name__
    hint = " (a PyTorch module: use ModelProfile.from_pytorch)" if hasattr(model, "named_parameters") else ""
    raise TypeError(f"rotafx: from_onnx expects a path to an .onnx file, its bytes or an onnx.ModelProto, got {kind}{hint}")


def _check_model(proto: Any, what: str) -> None:
    # protobuf parses many non-ONNX files without complaint into an empty message
    if proto.ir_version <= 0 or not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ProfileError(f"rotafx: {what} is not an ONNX model ... (it parses, but has no IR version or no graph); "
                           f"pass a file written by onnx.save or torch.onnx.export")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _bind_inputs(graph: Any, input_shapes: Any) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input, with symbolic dimensions bound from ``input_shapes``."""
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    by_input: dict[str, Sequence[int]] = {}
    by_dim: dict[str, int] = {}
    if input_shapes is None:
        input_shapes = {}
    if isinstance(input_shapes, Mapping):
        for key, value in input_shapes.items():
            if key in names:
                by_input[key] = value
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                by_dim[key] = int(value)
            else:
                params = sorted({d.dim_param for i in inputs for d in i.type.tensor_type.shape.dim if d.dim_param})
                raise ProfileError(f"rotafx: input_shapes has {key!r}, which is neither an input ({names}) nor a "
                                   f"dimension name ({params}) of this model")
    elif isinstance(input_shapes, Sequence):
        if len(input_shapes) != len(inputs):
            raise ProfileError(f"rotafx: input_shapes gives {len(input_shapes)} shapes for {len(inputs)} inputs {names}")
        by_input = dict(zip(names, input_shapes))
    else:
        raise TypeError(f"rotafx: input_shapes must map input names to shapes (or dimension names to sizes), "
                        f"got {type(input_shapes).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        tt = inp.type.tensor_type
        declared = [(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)) for d in tt.shape.dim]
        if inp.name in by_input:
            given = tuple(by_input[inp.name])
            if tt.HasField("shape") and len(given) != len(declared):
                raise ProfileError(f"rotafx: input {inp.name!r} has {len(declared)} dimensions {tuple(declared)}, "
                                   f"but input_shapes gives {len(given)}: {given}")
            for axis, (g, d) in enumerate(zip(given, declared)):
                if isinstance(d, int) and d != g:
                    raise ProfileError(f"rotafx: input {inp.name!r} has size {d} at axis {axis}, but input_shapes "
                                       f"gives {g}")
                if isinstance(d, str):
                    if by_dim.setdefault(d, int(g)) != int(g):
                        raise ProfileError(f"rotafx: dimension {d!r} is bound to {by_dim[d]} but input {inp.name!r} "
                                           f"gives {g} at axis {axis}")
            shapes[inp.name] = tuple(int(g) for g in given)
            continue
        if not tt.HasField("shape"):
            raise ProfileError(f"rotafx: input {inp.name!r} has no declared shape; pass "
                               f"input_shapes={{{inp.name!r}: (...)}}")
        out = []
        for axis, d in enumerate(declared):
            if isinstance(d, int):
                out.append(d)
            elif d is not None and d in by_dim:
                out.append(by_dim[d])
            else:
                what = f"dimension {d!r}" if d else "an unnamed dimension"
                fix = f"input_shapes={{{d!r}: N}} or " if d else ""
                raise ProfileError(f"rotafx: input {inp.name!r} has a dynamic {what} at axis {axis} "
                                   f"(shape {tuple(x if x is not None else '?' for x in declared)}) and no value for it; "
                                   f"pass {fix}input_shapes={{{inp.name!r}: (...)}}")
        shapes[inp.name] = tuple(out)
    return shapes


def _skeleton(proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """A copy of the model without large weight data, its inputs fixed to ``shapes`` (for shape inference)."""
    onnx = _import_onnx()
    sk = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(sk, f, getattr(proto, f))
    sk.opset_import.extend(proto.opset_import)
    sk.functions.extend(proto.functions)
    g, src = sk.graph, proto.graph
    g.name = src.name
    g.node.extend(src.node)
    for init in src.initializer:
        if math.prod(init.dims) > 4096 or init.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(_empty_tensor(init))
        else:
            g.initializer.append(init)
    g.sparse_initializer.extend(src.sparse_initializer)
    for inp in src.input:
        if inp.name in shapes:
            elem = inp.type.tensor_type.elem_type
            g.input.append(onnx.helper.make_tensor_value_info(inp.name, elem, list(shapes[inp.name])))
        else:
            g.input.append(inp)
    # declared types keep their fixed dimensions (custom ops have no shape inference); symbolic ones are dropped,
    # inference recomputes them from the bound inputs
    g.output.extend(_fixed_dims_only(vi) for vi in src.output)
    g.value_info.extend(_fixed_dims_only(vi) for vi in src.value_info)
    if sk.functions and hasattr(onnx, "inliner"):
        sk = onnx.inliner.inline_local_functions(sk)
    return sk


def _fixed_dims_only(vi: Any) -> Any:
    onnx = _import_onnx()
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    return out


def _empty_tensor(init: Any) -> Any:
    onnx = _import_onnx()
    t = onnx.TensorProto()
    t.name = init.name
    t.dims.extend(init.dims)
    t.data_type = init.data_type
    return t


# ---------------------------------------------------------------------------
# profile


class _Ctx:
    """Shapes and element types of every tensor after shape inference."""

    def __init__(self, types: Mapping[str, Any], float_itemsize: int | None) -> None:
        self.types = types
        self.float_itemsize = float_itemsize
        self.extra_numel: dict[str, int] = {}  # sequences: elements of all their tensors

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in t.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return None
            dims.append(int(d.dim_value))
        return tuple(dims)

    def elem(self, name: str) -> int:
        t = self.types.get(name)
        if t is None:
            return 0
        if t.HasField("tensor_type"):
            return int(t.tensor_type.elem_type)
        if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
            return int(t.sequence_type.elem_type.tensor_type.elem_type)
        return 0

    def floating(self, name: str) -> bool:
        return _ELEM.get(self.elem(name), (0, False))[1]

    def itemsize(self, name: str) -> int:
        size, floating = _ELEM.get(self.elem(name), (0, False))
        return self.float_itemsize if (floating and self.float_itemsize is not None) else size

    def numel(self, name: str) -> int:
        if name in self.extra_numel:
            return self.extra_numel[name]
        s = self.shape(name)
        return math.prod(s) if s is not None else 0

    def nbytes(self, name: str) -> int:
        return self.numel(name) * self.itemsize(name)

    def known(self, name: str) -> bool:
        return name in self.extra_numel or self.shape(name) is not None


def _attrs(node: Any) -> dict[str, Any]:
    onnx = _import_onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _op_key(node: Any) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _einsum_flops(eq: str, shapes: list[tuple[int, ...] | None], out_numel: int) -> int | None:
    eq = eq.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, rhs = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes) or any(s is None for s in shapes):
        return None
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes):
        assert shape is not None
        head, _, tail = term.partition("...")
        for i, ch in enumerate(head):
            sizes[ch] = shape[i]
        for i, ch in enumerate(reversed(tail)):
            sizes[ch] = shape[len(shape) - 1 - i]
    contracted = [ch for ch in sizes if ch not in rhs]
    factor = math.prod(sizes[ch] for ch in contracted)
    return (2 if contracted and len(terms) > 1 else 1) * out_numel * factor * max(1, len(terms) - 1)


def _node_cost(node: Any, c: _Ctx) -> tuple[int, int, bool] | None:
    """(FLOPs, workspace bytes, is a view) of one node, or ``None`` when no rule applies."""
    op = node.op_type
    ins = list(node.input)
    out = node.output[0] if node.output else ""
    domain = node.domain if node.domain not in ("", "ai.onnx") else ""
    if domain not in ("", "com.microsoft"):
        return None
    if op in ("MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul"):
        sa = c.shape(ins[0])
        if not sa:
            return 0, 0, False
        k = sa[-2] if (op == "FusedMatMul" and _attrs(node).get("transA", 0) and len(sa) >= 2) else sa[-1]
        return 2 * c.numel(out) * k, 0, False
    if op == "Gemm":
        sa = c.shape(ins[0])
        if not sa:
            return 0, 0, False
        k = sa[0] if _attrs(node).get("transA", 0) else sa[-1]
        return 2 * c.numel(out) * k, 0, False
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv"):
        w = c.shape(ins[3] if op == "QLinearConv" else ins[1])
        if not w:
            return 0, 0, False
        per_out = math.prod(w[1:])
        cols = (c.numel(out) // max(1, w[0])) * per_out
        return 2 * c.numel(out) * per_out, cols * c.itemsize(out), False
    if op == "ConvTranspose":
        w = c.shape(ins[1])
        return (2 * c.numel(ins[0]) * math.prod(w[1:]) if w else 0), 0, False
    if op == "Einsum":
        eq = _attrs(node).get("equation", "")
        eq = eq.decode() if isinstance(eq, bytes) else str(eq)
        f = _einsum_flops(eq, [c.shape(i) for i in ins], c.numel(out))
        return (f, 0, False) if f is not None else None
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention") and len(ins) >= 3:
        return _attention_cost(node, c)
    if op in ("RNN", "GRU", "LSTM"):
        x, w, r = c.shape(ins[0]), c.shape(ins[1]), c.shape(ins[2])
        if not (x and w and r):
            return 0, 0, False
        steps = x[0] * x[1]  # seq * batch (either layout)
        return 2 * steps * w[0] * w[1] * (w[2] + r[2]), 0, False
    if op in PER_ELEMENT_OPS:
        return PER_ELEMENT_OPS[op] * c.numel(ins[0]), 0, False
    if op in REDUCE_OPS:
        return c.numel(ins[0]), 0, False
    if op in POOL_OPS:
        kernel = _attrs(node).get("kernel_shape", [1])
        return c.numel(out) * math.prod(kernel), 0, False
    if op in POINTWISE_OPS:
        n_in = len([i for i in ins if i])
        extra = max(1, n_in - 1) if op in ("Sum", "Max", "Min", "Mean") else 1
        return c.numel(out) * extra, 0, False
    if op in ZERO_COST_OPS:
        return 0, 0, op in VIEW_OPS
    return None


def _attention_cost(node: Any, c: _Ctx) -> tuple[int, int, bool]:
    """Fused attention ops: their two matmuls, 2*B*H*Lq*Lk*(Dqk + Dv); the score matrix as workspace."""
    ins = list(node.input)
    q, k, v = c.shape(ins[0]), c.shape(ins[1]), c.shape(ins[2])
    if not (q and k and v):
        return 0, 0, False
    a = _attrs(node)
    if len(q) == 4:  # (B, H, L, D)
        b, h, lq, dqk = q
        lk, dv = k[-2], v[-1]
    else:  # (B, L, H*D)
        h = int(a.get("q_num_heads", a.get("num_heads", 1)) or 1)
        kv_h = int(a.get("kv_num_heads", h) or h)
        b, lq, dqk = q[0], q[1], q[2] // h
        lk, dv = k[1], v[-1] // kv_h
    flops = 2 * b * h * lq * lk * (dqk + dv)
    return flops, b * h * lq * lk * c.itemsize(ins[0]), False


def _subgraph_inputs(node: Any) -> list[str]:
    """Outer-scope names read inside a node's subgraphs (If, Loop, Scan bodies)."""
    onnx = _import_onnx()
    names: list[str] = []
    for a in node.attribute:
        graphs = ([a.g] if a.type == onnx.AttributeProto.GRAPH
                  else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                for i in list(n.input) + _subgraph_inputs(n):
                    if i and i not in local:
                        names.append(i)
                local.update(n.output)
    return names


def _scope_path(node: Any) -> str | None:
    """The module path a node was exported from ('' at the root), or None when it carries none."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                break
            # module scopes start at the root module (''); anything else (a tracing hook) is no module
            return str(scopes[-2]) if len(scopes) >= 2 and scopes[0] == "" else ""
    if "/" in node.name:
        parts = [x for x in node.name.split("/") if x]
        return ".".join(parts[:-1])
    return None


def _group_keys(nodes: Sequence[Any], weighted: Sequence[bool], group_by: Any) -> list[str | None]:
    """Layer key of every op: by exported module path, or by a callable, or one layer per weighted op."""
    if callable(group_by):
        return [None if k is None else str(k) for k in (group_by(n) for n in nodes)]
    paths = [_scope_path(n) for n in nodes]
    use_scope = group_by == "scope" or (group_by in (None, "auto") and any(p is not None for p in paths))
    if group_by not in (None, "auto", "scope", "op"):
        raise ValueError(f"rotafx: group_by must be 'auto', 'scope', 'op' or a callable, got {group_by!r}")
    keys: list[str | None]
    if use_scope:
        plain = [p or "" for p in paths]
        keys = layer_keys(plain)
        if len({k for k in keys if k is not None}) <= 1:
            # every op under one wrapper ("sequential/dense/MatMul"): drop the common leading components
            split = [p.split(".") for p in plain if p]
            common = 0
            while split and all(len(s) > common + 1 and s[common] == split[0][common] for s in split):
                common += 1
            if common:
                keys = layer_keys([".".join(p.split(".")[common:]) if p else "" for p in plain])
        return keys
    # no scopes: every op that reads a weight starts a layer; the others join the layer before them
    keys = []
    current: str | None = None
    for n, w in zip(nodes, weighted):
        if w or current is None:
            current = n.name or f"{n.op_type}_{len(keys)}"
        keys.append(current)
    return keys


def profile_onnx(model: Any, input_shapes: Mapping[str, Any] | Sequence[Sequence[int]] | None = None, *,
                 dtype: Any = None, strict: bool = False, group_by: Any = "auto", measure: bool = False,
                 measure_runs: int = 3, name: str | None = None) -> FrontendProfile:
    """Profile an ONNX model: layers, parameters, FLOPs, bytes, workspace and boundaries.

    ``model``: a path, serialized bytes or an ``onnx.ModelProto``. ``input_shapes`` binds
    dynamic dimensions, by input (``{"input_ids": (1, 128)}``) or by dimension name
    (``{"batch": 1, "seq": 128}``); a dynamic dimension left unbound is an error that
    names it. ``dtype`` prices floating tensors at that size (``"float16"``: 2 bytes).
    An op with no cost rule is counted as 0 FLOPs with a warning naming it (listed in
    ``unknown_ops``), or raises :class:`~rotafx.annotate.CostRuleError` with
    ``strict=True``. ``group_by``: ``"auto"`` (module paths when the exporter recorded
    them, else one layer per op that reads a weight), ``"scope"``, ``"op"`` or a callable
    ``NodeProto -> layer name``. ``measure=True`` runs the model in onnxruntime with its
    profiler and fills ``measured_ms`` (per layer) and ``op_ms`` (per node), in ms on this
    machine.

    >>> import onnx
    >>> from onnx import helper, TensorProto
    >>> g = helper.make_graph(
    ...     [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/fc/Gemm", transB=1),
    ...      helper.make_node("Relu", ["y"], ["z"], name="/act/Relu")],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
    ...     [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
    ...     [helper.make_tensor("w", TensorProto.FLOAT, [4, 8], [0.0] * 32),
    ...      helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4)])
    >>> p = profile_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), {"batch": 2})
    >>> [(l.name, l.params, l.flops) for l in p.layers]
    [('fc', 36, 128), ('act', 0, 8)]
    """
    _import_onnx()
    src_path = model if isinstance(model, (str, os.PathLike)) else None
    proto = load_onnx(model, load_external_data=False)
    float_itemsize = _float_itemsize(dtype)
    shapes = _bind_inputs(proto.graph, input_shapes)
    label = name or (Path(src_path).stem if src_path is not None else (proto.graph.name or "onnx_model"))
    sk = _skeleton(proto, shapes)
    graph = sk.graph
    types, why = _infer_types(sk, label)
    ctx = _Ctx(types, float_itemsize)

    # weights: initializers and Constant nodes; parameters: floating initializers that are not BN statistics
    weights: dict[str, tuple[int, int]] = {}
    for init in graph.initializer:
        n = math.prod(init.dims)
        size, floating = _ELEM.get(init.data_type, (0, False))
        weights[init.name] = (n, n * (float_itemsize if floating and float_itemsize else size))
    init_names = set(weights)
    stats: set[str] = set()
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            stats.update(i for i in node.input[3:5] if i)

    # constant folding
    const_src: dict[str, frozenset[str]] = {name: frozenset({name}) for name in init_names}
    nodes: list[Any] = []
    for node in graph.node:
        ins = [i for i in list(node.input) + _subgraph_inputs(node) if i]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for o in node.output:
                const_src[o] = frozenset({o})
                n = ctx.numel(o) if ctx.known(o) else _constant_numel(node)
                weights[o] = (n, n * ctx.itemsize(o))
            continue
        if (ins and all(i in const_src for i in ins) and node.op_type not in RANDOM_OPS
                and node.domain in ("", "ai.onnx")):
            src = frozenset().union(*(const_src[i] for i in ins))
            for o in node.output:
                if o:
                    const_src[o] = src
            continue
        nodes.append(node)
    uses_as_param: set[str] = set()
    for node in nodes:
        for pos, i in enumerate(node.input):
            if i in const_src and not (node.op_type == "BatchNormalization" and pos in (3, 4)):
                uses_as_param.update(const_src[i])
    init_type = {i.name: int(i.data_type) for i in graph.initializer}
    params = frozenset(w for w in init_names if _ELEM.get(init_type[w], (0, False))[1]
                       and (w not in stats or w in uses_as_param))

    # sequences (SplitToSequence / SequenceConstruct): as many elements as their inputs
    for node in nodes:
        if node.op_type in ("SplitToSequence", "SequenceConstruct", "SequenceInsert") and node.output:
            srcs = node.input[:1] if node.op_type != "SequenceConstruct" else node.input
            ctx.extra_numel[node.output[0]] = sum(ctx.numel(i) for i in srcs if i)

    # every activation needs a static shape
    inputs = [i.name for i in graph.input if i.name not in init_names]
    missing = [(o, n) for n in nodes for o in n.output if o and not ctx.known(o)]
    if missing:
        _fill_missing_shapes(model if src_path is None else src_path, shapes, missing, types, why)

    unknown: dict[str, str] = {}
    ops: list[GraphOp] = []
    weighted: list[bool] = []
    for idx, node in enumerate(nodes):
        cost = _node_cost(node, ctx)
        if cost is None:
            unknown.setdefault(_op_key(node), node.name or f"#{idx}")
            cost = (0, 0, False)
        flops, ws, view = cost
        all_in = list(dict.fromkeys(i for i in list(node.input) + _subgraph_inputs(node) if i))
        acts = tuple(i for i in all_in if i not in const_src)
        wts = tuple(dict.fromkeys(w for i in all_in if i in const_src for w in sorted(const_src[i]) if w in weights))
        outs = tuple(o for o in node.output if o)
        moved = 0 if view else sum(ctx.nbytes(i) for i in all_in) + sum(ctx.nbytes(o) for o in outs)
        ops.append(GraphOp(name=node.name or f"{node.op_type}_{idx}", key=None, inputs=acts, outputs=outs,
                           weights=wts, flops=int(flops), bytes_moved=int(moved), buffer_bytes=int(ws), view=view,
                           op_type=node.op_type))
        weighted.append(any(w in params for w in wts))
    if unknown:
        listing = ", ".join(f"{op} (first at node {n})" for op, n in sorted(unknown.items()))
        if strict:
            raise CostRuleError(f"rotafx: no cost rule for ONNX op(s) {listing}; "
                                f"pass strict=False to count them as 0 FLOPs")
        warnings.warn(f"rotafx: no cost rule for ONNX op(s) {listing}; counted as 0 FLOPs", stacklevel=3)
    ops = _fuse_attention(ops, ctx)
    keys = _group_keys(nodes, weighted, group_by)
    ops = [replace(op, key=k) for op, k in zip(ops, keys)]

    tensors: dict[str, TensorInfo] = {}
    for t in inputs + [o for op in ops for o in op.outputs]:
        tensors[t] = TensorInfo(t, ctx.numel(t), ctx.itemsize(t), ctx.floating(t))
    outputs = [o.name for o in graph.output if o.name not in const_src]
    tshapes = {t: s for t in tensors if (s := ctx.shape(t)) is not None}
    batch = shapes[inputs[0]][0] if inputs and shapes.get(inputs[0]) else None
    prof = build_profile(ops, tensors, inputs, outputs, weights, params, name=label, source="onnx", shapes=tshapes,
                         dtype=_torch_dtype(dtype), batch_size=batch,
                         tensor_types={t: ctx.elem(t) for t in tensors})
    prof.unknown_ops = unknown
    if measure:
        _measure(prof, model if src_path is None else src_path, shapes, ctx, inputs, runs=measure_runs)
    return prof


def _collect_types(model: Any) -> dict[str, Any]:
    onnx = _import_onnx()
    types: dict[str, Any] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.ByteSize():
            types[vi.name] = vi.type
    for init in model.graph.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def _static_shape(t: Any) -> tuple[int, ...] | None:
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def _infer_types(sk: Any, label: str, rounds: int = 6) -> tuple[dict[str, Any], str]:
    """Types of every tensor: ``onnx.shape_inference`` with data propagation, then, while some
    shapes stay unknown, fold small constant subgraphs (shape arithmetic) and infer again.
    Also returns why a shape is still missing (strict inference's error), or ''."""
    onnx = _import_onnx()
    model = sk
    values: dict[str, np.ndarray] = {}
    types: dict[str, Any] = {}
    for _ in range(rounds):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as e:
            raise ProfileError(f"rotafx: onnx shape inference failed on {label}: {_first_line(e)}") from e
        types = _collect_types(inferred)
        missing = [o for n in model.graph.node for o in n.output if o and _static_shape(types.get(o)) is None
                   and (types.get(o) is None or types[o].HasField("tensor_type"))]
        if not missing:
            break
        folded = _fold_small_constants(model, types, values)
        if folded is None:
            break
        model = folded
    why = ""
    if any(_static_shape(types.get(o)) is None for n in model.graph.node for o in n.output if o):
        try:  # strict mode says why a shape is missing (non-strict inference stays silent)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as e:
            why = _first_line(e)
    return types, why


_FOLD_LIMIT = 4096  # elements: shape vectors, axes, scalars; never weights


def _fold_small_constants(model: Any, types: Mapping[str, Any], values: dict[str, np.ndarray]) -> Any | None:
    """The model with every small computable tensor (Shape of a static shape, arithmetic on constants)
    replaced by a Constant node, or None when nothing new folds."""
    onnx = _import_onnx()
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    opsets = {o.domain or "": o.version for o in model.opset_import}
    for init in model.graph.initializer:
        if init.name not in values and math.prod(init.dims) <= _FOLD_LIMIT and (init.raw_data or _has_field_data(init)):
            try:
                values[init.name] = numpy_helper.to_array(init)
            except Exception:
                pass
    new_nodes, changed = [], False
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        std = node.domain in ("", "ai.onnx")
        ins = [i for i in node.input if i]
        result: list[np.ndarray] | None = None
        if std and node.op_type == "Constant":
            try:
                values[outs[0]] = np.asarray(_run_node(ReferenceEvaluator(node), {})[0])
            except Exception:
                pass
            new_nodes.append(node)
            continue
        if std and node.op_type in ("Shape", "Size") and ins:
            shape = _static_shape(types.get(ins[0]))
            if shape is not None:
                a = _attrs(node)
                if node.op_type == "Shape":
                    start, end = a.get("start", 0), a.get("end", len(shape))
                    result = [np.array(shape[slice(start, end)], dtype=np.int64)]
                else:
                    result = [np.array(math.prod(shape), dtype=np.int64)]
        elif (std and ins and all(i in values for i in ins) and node.op_type not in RANDOM_OPS
              and not _subgraph_inputs(node) and not any(a.type in (5, 10) for a in node.attribute)):
            try:
                evaluator = ReferenceEvaluator(node, opsets=opsets)
                result = [np.asarray(r) for r in _run_node(evaluator, {i: values[i] for i in ins})]
            except Exception:
                result = None
        if result is not None and len(result) == len(outs) and all(r.size <= _FOLD_LIMIT for r in result):
            for o, r in zip(outs, result):
                values[o] = r
                new_nodes.append(onnx.helper.make_node("Constant", [], [o], value=numpy_helper.from_array(r, o)))
            changed = True
        else:
            new_nodes.append(node)
    if not changed:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    del out.graph.value_info[:]
    return out


def _run_node(evaluator: Any, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    out = evaluator.run(None, dict(feeds))
    return list(out.values()) if isinstance(out, dict) else list(out)


def _has_field_data(t: Any) -> bool:
    return bool(t.float_data or t.int32_data or t.int64_data or t.double_data or t.uint64_data or t.string_data)



def _constant_numel(node: Any) -> int:
    for a in node.attribute:
        if a.name in ("value", "sparse_value"):
            return math.prod(a.t.dims) if a.name == "value" else math.prod(a.sparse_tensor.dims)
        if a.name in ("value_floats", "value_ints"):
            return len(a.floats) or len(a.ints)
        if a.name in ("value_float", "value_int"):
            return 1
    return 0


def _fuse_attention(ops: list[GraphOp], c: _Ctx) -> list[GraphOp]:
    """Price ``MatMul -> (scale, mask) -> Softmax -> MatMul`` as one attention: its two matmuls, the scores as workspace."""
    producer = {t: i for i, op in enumerate(ops) for t in op.outputs}
    readers: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            readers.setdefault(t, []).append(i)
    out = list(ops)
    for si, sm in enumerate(ops):
        if sm.op_type != "Softmax" or not sm.inputs or not sm.outputs:
            continue
        score = c.shape(sm.inputs[0])
        if not score or len(score) < 2:
            continue
        chain = [si]
        t = sm.inputs[0]
        mm1 = None
        while t in producer and len(readers.get(t, [])) == 1:
            p = producer[t]
            po = ops[p]
            if po.op_type == "MatMul" and len(po.inputs) == 2:
                mm1 = p
                break
            main = [x for x in po.inputs if c.shape(x) == score]
            if po.op_type not in _SCORE_OPS or c.shape(po.outputs[0]) != score or not main:
                break
            chain.insert(0, p)
            t = main[0]
        if mm1 is None:
            continue
        t = sm.outputs[0]
        mm2 = None
        while len(readers.get(t, [])) == 1:
            r = readers[t][0]
            ro = ops[r]
            if ro.op_type == "MatMul" and ro.inputs and ro.inputs[0] == t and len(ro.inputs) == 2:
                mm2 = r
                break
            if ro.op_type not in _PROB_OPS or not ro.outputs or c.shape(ro.outputs[0]) != score:
                break
            chain.append(r)
            t = ro.outputs[0]
        if mm2 is None:
            continue
        ws = math.prod(score) * c.itemsize(sm.inputs[0])
        internal = {ops[mm1].outputs[0]} | {o for i in chain for o in ops[i].outputs}
        for i in [mm1, *chain, mm2]:
            op = ops[i]
            flops = op.flops if i in (mm1, mm2) else 0
            moved = sum(c.nbytes(x) for x in op.inputs if x not in internal)
            if i == mm2:
                moved += sum(c.nbytes(o) for o in op.outputs)
            trans = tuple(o for o in op.outputs if o in internal)
            out[i] = replace(op, flops=flops, bytes_moved=moved, buffer_bytes=ws, transient=trans,
                             op_type=op.op_type + "(attention)")
    return out


def _fill_missing_shapes(model: Any, shapes: Mapping[str, tuple[int, ...]], missing: list[tuple[str, Any]],
                         types: dict[str, Any], why: str = "") -> None:
    """Shapes that inference could not give (data-dependent ops): run the model once in onnxruntime to read them."""
    onnx = _import_onnx()
    listing = ", ".join(f"{t!r} ({n.op_type} {n.name})" for t, n in missing[:5]) + (" ..." if len(missing) > 5 else "")
    try:
        ort = _import_ort()
        full = load_onnx(model) if not isinstance(model, onnx.ModelProto) else model
        probe = onnx.ModelProto()
        probe.CopyFrom(full)
        for t, _ in missing:
            vi = onnx.ValueInfoProto()
            vi.name = t
            probe.graph.output.append(vi)
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = _random_feeds(sess, shapes)
        values = sess.run([t for t, _ in missing], feeds)
    except Exception as e:
        why = f" (onnx shape inference: {why})" if why else ""
        raise ProfileError(f"rotafx: shape inference left {len(missing)} tensor(s) without a static shape: {listing}"
                           f"{why}; running the model in onnxruntime to measure them failed too ({_first_line(e)}). "
                           f"Bind every dynamic dimension with input_shapes, or simplify the model "
                           f"(onnxsim) so that shapes are static") from e
    warnings.warn(f"rotafx: shape inference left {len(missing)} tensor(s) without a static shape ({listing}); "
                  f"measured them by running the model once in onnxruntime", stacklevel=3)
    for (t, _), v in zip(missing, values):
        arr = np.asarray(v)
        types[t] = onnx.helper.make_tensor_type_proto(onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))


def _random_feeds(sess: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        shape = shapes.get(i.name) or tuple(d if isinstance(d, int) else 1 for d in i.shape)
        kind = i.type
        if "float" in kind:
            ftype = "float16" if "float16" in kind else "float64" if "double" in kind else "float32"
            feeds[i.name] = rng.standard_normal(shape).astype(ftype)
        elif "bool" in kind:
            feeds[i.name] = np.zeros(shape, dtype=bool)
        else:  # token ids and indices: zeros are always in range
            feeds[i.name] = np.zeros(shape, dtype="int32" if "int32" in kind else "int64")
    return feeds


def _measure(prof: FrontendProfile, model: Any, shapes: Mapping[str, tuple[int, ...]], ctx: _Ctx,
             inputs: Sequence[str], runs: int) -> None:
    """Per-node times from onnxruntime's profiler (SessionOptions.enable_profiling), averaged over ``runs`` runs
    after one warm-up."""
    onnx = _import_onnx()
    ort = _import_ort()
    if runs < 1:
        raise ValueError(f"rotafx: measure_runs must be a positive integer (got {runs})")
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    # basic level folds constants (as the profile does) and keeps node names, so times map back to nodes
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3  # errors only: not every CastLike can be folded, which is fine
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "rotafx")
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        feeds = _random_feeds(sess, shapes)
        for _ in range(runs + 1):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        with open(trace) as f:
            events = json.load(f)
    # onnxruntime folds constants and fuses nodes ("fused node_linear", "node_MatMul_6/MatMulAddFusion"): a
    # node is matched by name, then by the name before its first "/", else charged to the layer that ran before it
    layer_of = {op: li for li, names in enumerate(prof.layer_ops) for op in names}
    run_events = sorted((ev for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run"),
                        key=lambda ev: ev["ts"])
    cutoff = run_events[0]["ts"] + run_events[0]["dur"] if len(run_events) > 1 else -1  # skip the warm-up run
    counted = max(1, len(run_events) - 1) if len(run_events) > 1 else 1
    samples: dict[str, float] = {}
    layer_total = [0.0] * prof.num_layers
    current = 0
    for ev in sorted((ev for ev in events if ev.get("cat") == "Node"), key=lambda ev: ev.get("ts", 0)):
        name = str(ev.get("name", ""))
        if not name.endswith("_kernel_time") or ev.get("ts", 0) < cutoff:
            continue
        node = name[: -len("_kernel_time")].removeprefix("fused ")
        ms = float(ev.get("dur", 0)) / 1000.0
        samples[node] = samples.get(node, 0.0) + ms
        li = layer_of.get(node, layer_of.get(node.split("/")[0]))
        if li is not None:
            current = li
        layer_total[current] += ms
    op_ms = {n: t / counted for n, t in samples.items()}
    measured = [t / counted for t in layer_total]
    prof.measured_ms = measured
    prof.op_ms = op_ms


# ---------------------------------------------------------------------------
# per-stage export


@dataclass
class OnnxStage:
    """One stage of a partitioned ONNX model: its layers ``[start, end)``, the tensors it reads and hands on."""

    index: int
    start: int
    end: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    model: Any  # onnx.ModelProto
    path: Path | None = None
    device: str | None = None  # the node it runs on, when cut from a Partition


def stage_ranges(profile: Any, partition: Any) -> list[tuple[int, int]]:
    """Layer ranges ``[start, end)`` of the stages of ``partition``.

    ``partition``: a :class:`~rotafx.solve.Partition` (consecutive layers on one stage
    form a stage), a sequence of cut points (the first layer of every stage after the
    first), or one stage label per layer.

    >>> stage_ranges(type("P", (), {"num_layers": 5})(), [2, 4])
    [(0, 2), (2, 4), (4, 5)]
    """
    L = profile.num_layers
    labels = getattr(partition, "stages", None)
    if labels is None:
        cuts = [int(c) for c in partition]
        if len(cuts) == L and L > 1 and sorted(set(cuts)) != cuts:
            labels = cuts
        else:
            bad = [c for c in cuts if not 0 < c < L]
            if bad or cuts != sorted(set(cuts)):
                raise ValueError(f"rotafx: cut points must be increasing layer indices in 1..{L - 1}, got {cuts}")
            edges = [0, *cuts, L]
            return [(a, b) for a, b in zip(edges[:-1], edges[1:])]
    labels = list(labels)
    if len(labels) != L:
        raise ValueError(f"rotafx: the partition has {len(labels)} stage labels for {L} layers")
    ranges, start = [], 0
    for l in range(1, L + 1):
        if l == L or labels[l] != labels[l - 1]:
            ranges.append((start, l))
            start = l
    return ranges


def export_stages(model: Any, profile: FrontendProfile, partition: Any, directory: str | os.PathLike | None = None,
                  *, prefix: str = "stage") -> list[OnnxStage]:
    """Cut an ONNX model into one ONNX model per stage of ``partition`` (and write ``{prefix}{i}.onnx`` files).

    Each stage reads the tensors that cross the boundary before its first layer
    (``profile.boundaries``) and writes those its layers produce that later stages or the
    model output read; the weights and constant subgraphs it needs go with it. Chaining
    the stages with :func:`run_stages` gives the whole model's outputs.
    """
    onnx = _import_onnx()
    if getattr(profile, "source", None) != "onnx":
        raise ValueError("rotafx: export_stages needs the profile of this ONNX model (ModelProfile.from_onnx)")
    full = load_onnx(model)
    if full.functions and hasattr(onnx, "inliner"):
        full = onnx.inliner.inline_local_functions(full)
    graph = full.graph
    inits = {i.name: i for i in graph.initializer}
    produced_by = {o: n for n in graph.node for o in n.output if o}
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(full, {}), check_type=False, strict_mode=False)
        ig = inferred.graph
        vis = {vi.name: vi for vi in list(ig.input) + list(ig.value_info) + list(ig.output)}
    except Exception:  # pragma: no cover - only used for declaring stage inputs/outputs
        vis = {}
    stages = []
    for si, (a, b) in enumerate(stage_ranges(profile, partition)):
        available = [t.name for t in profile.boundaries[a]]
        # a tensor that crosses boundary b but not boundary a is made by layers a..b-1 (boundaries are contiguous)
        wanted = [t.name for t in profile.boundaries[b] if t.name not in set(available)]
        # nodes that compute the wanted tensors from the available ones, in graph order
        need, stack, seen = set(), list(wanted), set(available)
        while stack:
            t = stack.pop()
            if t in seen or t in inits or t not in produced_by:
                continue
            seen.add(t)
            n = produced_by[t]
            if id(n) in need:
                continue
            need.add(id(n))
            stack.extend(i for i in list(n.input) + _subgraph_inputs(n) if i)
        nodes = [n for n in graph.node if id(n) in need]
        read = {i for n in nodes for i in list(n.input) + _subgraph_inputs(n) if i}
        stage_inputs = [t for t in available if t in read]
        made = {o for n in nodes for o in n.output}
        dangling = sorted(read - made - set(stage_inputs) - set(inits))
        if dangling or any(t not in made for t in wanted):
            raise ProfileError(f"rotafx: stage {si} (layers {a}..{b - 1}) cannot be cut out: "
                               f"{dangling or [t for t in wanted if t not in made]} is neither computed in it nor "
                               f"handed to it; was the profile made from this model?")
        g = onnx.helper.make_graph(
            nodes, f"{graph.name or 'model'}_{prefix}{si}",
            [_value_info(t, vis, profile) for t in stage_inputs],
            [_value_info(t, vis, profile) for t in wanted],
            [inits[i] for i in dict.fromkeys(i for i in read if i in inits)])
        m = onnx.helper.make_model(g, opset_imports=list(full.opset_import), ir_version=full.ir_version,
                                   producer_name="rotafx")
        m.functions.extend(full.functions)
        path = None
        if directory is not None:
            path = Path(directory) / f"{prefix}{si}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            big = m.ByteSize() > 1_800_000_000
            onnx.save(m, str(path), save_as_external_data=big, location=f"{prefix}{si}.onnx.data" if big else None)
        device = partition.nodes[a] if hasattr(partition, "nodes") else None
        stages.append(OnnxStage(si, a, b, tuple(stage_inputs), tuple(wanted), m, path, device))
    return stages


def _value_info(name: str, vis: Mapping[str, Any], profile: FrontendProfile) -> Any:
    onnx = _import_onnx()
    if name in vis and vis[name].type.HasField("tensor_type") and vis[name].type.tensor_type.elem_type:
        return vis[name]
    shape = profile.tensor_shapes.get(name)
    elem = int(profile.tensor_types.get(name, 1) or 1)
    return onnx.helper.make_tensor_value_info(name, elem, list(shape) if shape else None)


def run_stages(stages: Sequence[OnnxStage], feeds: Mapping[str, Any], *, providers: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
    """Run the stages one after another in onnxruntime, each fed from the tensors the earlier ones produced.

    Returns every tensor fed or handed on between stages (the model outputs among them).
    """
    ort = _import_ort()
    env: dict[str, Any] = dict(feeds)
    for st in stages:
        src = str(st.path) if st.path is not None else st.model.SerializeToString()
        sess = ort.InferenceSession(src, providers=list(providers or ["CPUExecutionProvider"]))
        missing = [t for t in st.inputs if t not in env]
        if missing:
            raise ProfileError(f"rotafx: stage {st.index} needs {missing}, which no input or earlier stage provides")
        values = sess.run(list(st.outputs), {t: env[t] for t in st.inputs})
        env.update(zip(st.outputs, values))
    return env
