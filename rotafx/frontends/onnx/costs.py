"""Costs: FLOPs, workspace and views of each ONNX op, and the fusions that price a decomposed op as the op it is.

The rules are the PyTorch profile's (multiply-add = 2): ``MatMul`` and ``Gemm`` 2·M·K·N
(bias not counted, as ``torch.utils.flop_counter`` does not count ``addmm``'s), ``Conv``
2·B·Cout·prod(out spatial)·Cin/groups·prod(kernel) with its im2col workspace,
``ConvTranspose`` per input element, attention ops as their two matmuls
2·B·H·Lq·Lk·(Dqk + Dv) with the score matrix as workspace, softmax and layer/group/batch/
instance norm 5 per element, RMS norm 4, elementwise ops 1 per output element,
reductions 1 per input element, pooling 1 per window element, data movement (reshape,
transpose, gather, concat, cast, ...) 0.

Exporters decompose ops PyTorch runs as one (``torch.onnx.export`` writes ``linear`` as
``MatMul`` + ``Add`` and scaled-dot-product attention as ``MatMul -> scale/mask -> Softmax
-> MatMul``); :func:`fuse` prices each such run as the one op it stands for, so that the
ONNX and PyTorch profiles of a model agree (onnxruntime fuses the same runs:
``MatMulAddFusion``, attention fusion).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

from ...layers import OpRecord
from .load import attrs
from .shapes import TensorTable

__all__ = ["node_cost", "node_kernel", "fuse", "VIEW_OPS", "ZERO_COST_OPS", "POINTWISE_OPS", "PER_ELEMENT_OPS", "REDUCE_OPS", "POOL_OPS"]

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
# the exporter's q/k preparation before the first matmul of an attention
_PREP_OPS = {"Mul", "Div", "Transpose"}
# score-matrix ops between the two matmuls of an attention subgraph
_SCORE_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Cast", "Max", "Min", "Tanh", "Clip"}
_PROB_OPS = {"Cast", "Dropout", "Identity", "Where", "Mul"}

def _einsum_flops(eq: str, shapes: list[tuple[int, ...] | None], out_numel: int) -> int | None:
    """FLOPs of an Einsum: 2 per multiply-add over the contracted indices (None when shapes are unknown)."""
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


def node_kernel(node: Any, c: TensorTable) -> tuple[str, int, int, int] | None:
    """The matmul a node runs, as the PyTorch profile records it: ``("mm", M, K, N)`` (leading dimensions folded
    into M; a convolution as its GEMM), for a calibrated device's rate at that shape; None for any other op."""
    op, ins = node.op_type, list(node.input)
    out = node.output[0] if node.output else ""
    so = c.shape(out)
    if not so:
        return None
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        sa = c.shape(ins[0])
        if not sa:
            return None
        trans_a = bool(attrs(node).get("transA", 0))
        k = sa[-2] if trans_a and len(sa) >= 2 else sa[-1]  # Gemm's A is 2-D: sa[-2] is sa[0]
        n = so[-1]
        return ("mm", c.numel(out) // max(1, n), int(k), int(n))
    if op in ("Conv", "FusedConv"):
        w = c.shape(ins[1])
        if not w or len(so) < 2:
            return None
        groups = int(attrs(node).get("group", 1) or 1)
        positions = c.numel(out) // max(1, so[1])
        return ("mm", positions * groups, math.prod(w[1:]), max(1, w[0] // groups))
    return None


def node_cost(node: Any, c: TensorTable) -> tuple[int, int, bool] | None:
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
        k = sa[-2] if (op == "FusedMatMul" and attrs(node).get("transA", 0) and len(sa) >= 2) else sa[-1]
        return 2 * c.numel(out) * k, 0, False
    if op == "Gemm":
        sa = c.shape(ins[0])
        if not sa:
            return 0, 0, False
        k = sa[0] if attrs(node).get("transA", 0) else sa[-1]
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
        eq = attrs(node).get("equation", "")
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
        kernel = attrs(node).get("kernel_shape", [1])
        return c.numel(out) * math.prod(kernel), 0, False
    if op in POINTWISE_OPS:
        n_in = len([i for i in ins if i])
        extra = max(1, n_in - 1) if op in ("Sum", "Max", "Min", "Mean") else 1
        return c.numel(out) * extra, 0, False
    if op in ZERO_COST_OPS:
        return 0, 0, op in VIEW_OPS
    return None


def _attention_cost(node: Any, c: TensorTable) -> tuple[int, int, bool]:
    """Fused attention ops: their two matmuls, 2*B*H*Lq*Lk*(Dqk + Dv); the score matrix as workspace."""
    ins = list(node.input)
    q, k, v = c.shape(ins[0]), c.shape(ins[1]), c.shape(ins[2])
    if not (q and k and v):
        return 0, 0, False
    a = attrs(node)
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


def fuse(ops: Sequence[OpRecord], table: TensorTable, outputs: Sequence[str] = ()) -> list[OpRecord]:
    """The records with each decomposed op merged into the one op it stands for: attention, ``MatMul`` + bias
    ``Add`` (``linear``), ``Mul(x, Sigmoid(x))`` (``silu``), ``Reciprocal(Sqrt(x))`` (``rsqrt``). A tensor the
    model outputs (``outputs``) is never merged away."""
    out = set(outputs)
    ops = _fuse_attention(list(ops), table, out)
    ops = _fuse_bias_add(ops, table, out)
    return _fuse_unary_pairs(ops, table, out)


_OUTPUT = -1  # the reader position of a model output


def _readers(ops: Sequence[OpRecord], outputs: set[str]) -> dict[str, list[int]]:
    """Who reads each tensor: op positions, and ``_OUTPUT`` for the model's outputs (so that no fusion hides one)."""
    readers: dict[str, list[int]] = {t: [_OUTPUT] for t in outputs}
    for i, op in enumerate(ops):
        for t in dict.fromkeys(op.inputs):
            readers.setdefault(t, []).append(i)
    return readers


def _merge(ops: Sequence[OpRecord], members: Sequence[int], table: TensorTable, **fields: Any) -> OpRecord:
    """One record for ``ops[members]`` (the last one's name, key and outputs): what they read from outside, what the
    last one writes, all their weights; bytes moved are the external inputs, the weights they read and the outputs."""
    group = [ops[i] for i in sorted(members)]
    made = {t for op in group for t in op.outputs}
    inputs = tuple(dict.fromkeys(t for op in group for t in op.inputs if t not in made))
    last = group[-1]
    weights = tuple(dict.fromkeys(w for op in group for w in op.weights))
    moved = sum(table.nbytes(t) for t in (*inputs, *weights, *last.outputs))
    times = [op.measured_ms for op in group if op.measured_ms is not None]
    kernel = max(group, key=lambda op: op.flops).kernel  # the matmul the fused op stands for
    return replace(last, inputs=inputs, weights=weights, bytes_moved=moved, transient=(),
                   measured_ms=sum(times) if times else None, **{"kernel": kernel, **fields})


def _apply(ops: list[OpRecord], merged: dict[int, tuple[list[int], OpRecord]]) -> list[OpRecord]:
    """Replace each group of members by its merged record, at the position of the group's last member."""
    drop = {i for members, _ in merged.values() for i in members}
    out = []
    for i, op in enumerate(ops):
        if i in merged:
            out.append(merged[i][1])
        elif i not in drop:
            out.append(op)
    return out


def _fuse_attention(ops: list[OpRecord], c: TensorTable, outputs: set[str]) -> list[OpRecord]:
    """``[scale q/k, transpose k] -> MatMul -> (scale, mask) -> Softmax -> MatMul`` as one attention op:
    its two matmuls' FLOPs, the score matrix as workspace (as rotafx prices scaled-dot-product attention)."""
    producer = {t: i for i, op in enumerate(ops) for t in op.outputs}
    readers = _readers(ops, outputs)
    merged: dict[int, tuple[list[int], OpRecord]] = {}
    taken: set[int] = set()
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
        while len(readers.get(t, [])) == 1 and readers[t][0] != _OUTPUT:
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
        # the exporter's preparation of q and k: a scale by a constant, the transpose of k
        for t in ops[mm1].inputs:
            while t in producer and len(readers.get(t, [])) == 1:
                p = producer[t]
                if ops[p].op_type not in _PREP_OPS or len(ops[p].inputs) != 1:
                    break
                chain.insert(0, p)
                t = ops[p].inputs[0]
        members = sorted({mm1, mm2, *chain})
        if taken.intersection(members):
            continue
        taken.update(members)
        ws = math.prod(score) * c.itemsize(sm.inputs[0])
        out = c.shape(ops[mm2].outputs[0])
        kernel = ("sdpa", math.prod(score[:-2]), score[-1], out[-1]) if out and len(score) >= 2 else None
        merged[mm2] = (members, _merge(ops, members, c, flops=ops[mm1].flops + ops[mm2].flops, buffer_bytes=ws,
                                       op_type="Attention(fused)", kernel=kernel))
    return _apply(ops, merged)


def _fuse_pairs(ops: list[OpRecord], c: TensorTable, outputs: set[str], match: Any) -> list[OpRecord]:
    """Merge each op whose one output has one reader with that reader, where ``match(first, second)`` gives the
    merged op's fields (``None``: leave them apart)."""
    readers = _readers(ops, outputs)
    merged: dict[int, tuple[list[int], OpRecord]] = {}
    taken: set[int] = set()
    for i, first in enumerate(ops):
        if i in taken or len(first.outputs) != 1:
            continue
        users = readers.get(first.outputs[0], [])
        if len(users) != 1 or users[0] in taken or users[0] == _OUTPUT:
            continue
        j = users[0]
        fields = match(first, ops[j])
        if fields is not None:
            taken.update((i, j))
            merged[j] = ([i, j], _merge(ops, [i, j], c, **fields))
    return _apply(ops, merged)


def _fuse_bias_add(ops: list[OpRecord], c: TensorTable, outputs: set[str]) -> list[OpRecord]:
    """``MatMul`` followed by the ``Add`` of a constant bias as one op (as PyTorch's ``linear`` and onnxruntime's
    ``MatMulAddFusion``): the matmul's FLOPs, the bias not counted."""
    def match(mm: OpRecord, add: OpRecord) -> dict[str, Any] | None:
        if (mm.op_type != "MatMul" or add.op_type != "Add" or add.inputs != mm.outputs or not add.weights
                or c.shape(add.outputs[0]) != c.shape(mm.outputs[0])):
            return None
        return {"flops": mm.flops, "buffer_bytes": max(mm.buffer_bytes, add.buffer_bytes), "op_type": "MatMul+Add(fused)"}

    return _fuse_pairs(ops, c, outputs, match)


# (first op, second op, whether the second also reads the first's input): pointwise pairs an exporter writes for one
# PyTorch op (onnxscript's silu and rsqrt), priced as that op: one FLOP per element, no intermediate
_UNARY_PAIRS = {("Sigmoid", "Mul"): True, ("Sqrt", "Reciprocal"): False}


def _fuse_unary_pairs(ops: list[OpRecord], c: TensorTable, outputs: set[str]) -> list[OpRecord]:
    """``Mul(x, Sigmoid(x))`` and ``Reciprocal(Sqrt(x))`` as one pointwise op on ``x``."""
    def match(first: OpRecord, second: OpRecord) -> dict[str, Any] | None:
        reads_x = _UNARY_PAIRS.get((first.op_type, second.op_type))
        if reads_x is None or len(first.inputs) != 1 or first.weights or second.weights:
            return None
        if set(second.inputs) != ({first.inputs[0], first.outputs[0]} if reads_x else {first.outputs[0]}):
            return None
        return {"flops": c.numel(second.outputs[0]), "buffer_bytes": 0,
                "op_type": f"{second.op_type}({first.op_type})(fused)"}

    return _fuse_pairs(ops, c, outputs, match)
