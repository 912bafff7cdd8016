"""Read an ONNX graph as an :class:`~rotafx.layers.OpGraph`: weights, constants folded, one record per node, layer keys.

* **weights**: the initializers (and ``Constant`` nodes), each charged to every layer
  that reads it; a floating initializer is a parameter unless it only feeds the running
  statistics of a ``BatchNormalization`` (ONNX does not tell parameters from buffers,
  so another buffer exported as an initializer, such as a rotary ``inv_freq``, counts
  as a parameter);
* **constant folding**: a node that computes only from constants is folded when it only
  changes a weight's layout or type (``Transpose``, ``Reshape``, ``Cast``, ...) or makes a
  small value from no weight at all (at most 4,096 elements: shapes, scalars, index
  vectors), as onnxruntime folds them and PyTorch has no op for them: it costs nothing,
  and the layer that reads its result is charged for the initializers it comes from. Any
  other computation on constants (a lookup of position embeddings, a rotary table from
  ``inv_freq``, a causal mask) runs, as in PyTorch, and its output is an activation. An input read only for its type or shape (``CastLike``'s target,
  ``Shape`` and ``Size`` of a statically shaped tensor) is no dependence on the model's inputs;
* **layers**: module paths from ``torch.onnx.export`` (the node metadata
  ``pkg.torch.onnx.name_scopes``, or node names such as ``/layers.0/attn/MatMul``),
  grouped by :func:`rotafx.layers.layer_keys`, so that the ONNX and PyTorch profiles of
  one model have the same layers.
"""

from __future__ import annotations

import ast
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...layers import OpGraph, OpRecord, TensorInfo, layer_keys, report_unknown_ops
from ..dtypes import float_itemsize, torch_dtype
from .costs import fuse, node_cost, node_kernel
from .load import ELEM, import_onnx, load_onnx, subgraph_inputs
from .measure import measure_ops
from .shapes import RANDOM_OPS, TensorTable, bind_inputs, constant_numel, fill_missing_shapes, infer_types, skeleton

__all__ = ["read_onnx"]

# ops an input of which is read for its type or shape only: (op type, input positions)
_TYPE_ONLY_INPUTS = {"CastLike": (1,), "Shape": (0,), "Size": (0,)}
# ops that change only the layout or type of a constant: always folded
_LAYOUT_OPS = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "CastLike"}
_SMALL = 4096  # elements of a constant result that is always folded (shapes, scalars, index vectors)


def read_onnx(model: Any, input_shapes: Mapping[str, Any] | Sequence[Sequence[int]] | None = None, *,
              dtype: Any = None, strict: bool = False, group_by: Any = "auto", measure: bool = False,
              measure_runs: int = 3, name: str | None = None) -> OpGraph:
    """The records of an ONNX model (what ``ModelProfile.from_onnx`` groups into layers).

    ``model``: a path, serialized bytes or an ``onnx.ModelProto``. ``input_shapes`` binds
    dynamic dimensions, by input (``{"input_ids": (1, 128)}``) or by dimension name
    (``{"batch": 1, "seq": 128}``); a dynamic dimension left unbound is an error that
    names it. ``dtype`` prices floating tensors at that size (``"float16"``: 2 bytes).
    An op with no cost rule is counted as 0 FLOPs with a warning naming it (listed in
    ``unknown_ops``), or raises :class:`~rotafx.layers.CostRuleError` with
    ``strict=True``. ``group_by``: ``"auto"`` (module paths when the exporter recorded
    them, else one layer per op that reads a weight), ``"scope"``, ``"op"`` or a callable
    ``NodeProto -> layer name``. ``measure=True`` runs the model in onnxruntime with its
    profiler (``measure_runs`` runs after a warm-up) and records each op's time in ms on
    this machine (``profile.measured_ms`` per layer, ``profile.op_ms`` per op).

    >>> import onnx
    >>> from onnx import helper, TensorProto
    >>> from rotafx import ModelProfile
    >>> g = helper.make_graph(
    ...     [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/fc/Gemm", transB=1),
    ...      helper.make_node("Relu", ["y"], ["z"], name="/act/Relu")],
    ...     "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
    ...     [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
    ...     [helper.make_tensor("w", TensorProto.FLOAT, [4, 8], [0.0] * 32),
    ...      helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4)])
    >>> p = ModelProfile.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), {"batch": 2})
    >>> [(l.name, l.params, l.flops) for l in p.layers]
    [('fc', 36, 128), ('act', 0, 8)]
    """
    import_onnx()
    if group_by not in (None, "auto", "scope", "op") and not callable(group_by):
        raise ValueError(f"rotafx: group_by must be 'auto', 'scope', 'op' or a callable, got {group_by!r}")
    src_path = model if isinstance(model, (str, os.PathLike)) else None
    proto = load_onnx(model, load_external_data=False)
    size = float_itemsize(dtype)
    shapes = bind_inputs(proto.graph, input_shapes)
    label = name or (Path(src_path).stem if src_path is not None else (proto.graph.name or "onnx_model"))
    sk = skeleton(proto, shapes)
    graph = sk.graph
    types, why = infer_types(sk, label)
    table = TensorTable(types, size)

    # weights: initializers and Constant nodes; parameters: floating initializers that are not BN statistics
    weights: dict[str, tuple[int, int]] = {}
    for init in graph.initializer:
        n = math.prod(init.dims)
        isz, floating, _ = ELEM.get(init.data_type, (0, False, ""))
        weights[init.name] = (n, n * (size if floating and size else isz))
    init_names = set(weights)
    stats = {i for node in graph.node if node.op_type == "BatchNormalization" for i in node.input[3:5] if i}

    # constant folding: what is computed from constants alone is a constant, charged as its sources
    const_src: dict[str, frozenset[str]] = {n: frozenset({n}) for n in init_names}
    nodes: list[Any] = []
    for node in graph.node:
        std = node.domain in ("", "ai.onnx")
        if node.op_type == "Constant" and std:
            for o in node.output:
                const_src[o] = frozenset({o})
                n = table.numel(o) if table.known(o) else constant_numel(node)
                weights[o] = (n, n * table.itemsize(o))
            continue
        ins = _value_inputs(node, table)
        src = frozenset().union(*(const_src[i] for i in ins if i in const_src))
        if std and node.op_type not in RANDOM_OPS and all(i in const_src for i in ins) and (
                ins or node.op_type in _TYPE_ONLY_INPUTS) and (node.op_type in _LAYOUT_OPS or (
                not src & init_names and all(table.known(o) and table.numel(o) <= _SMALL for o in node.output if o))):
            for o in node.output:
                if o:
                    const_src[o] = src
            continue
        nodes.append(node)
    uses_as_param = {s for node in nodes for pos, i in enumerate(node.input)
                     if i in const_src and not (node.op_type == "BatchNormalization" and pos in (3, 4))
                     for s in const_src[i]}
    init_type = {i.name: int(i.data_type) for i in graph.initializer}
    params = frozenset(w for w in init_names if ELEM.get(init_type[w], (0, False, ""))[1]
                       and (w not in stats or w in uses_as_param))

    # sequences (SplitToSequence / SequenceConstruct): as many elements as their inputs
    for node in nodes:
        if node.op_type in ("SplitToSequence", "SequenceConstruct", "SequenceInsert") and node.output:
            srcs = node.input[:1] if node.op_type != "SequenceConstruct" else node.input
            table.extra_numel[node.output[0]] = sum(table.numel(i) for i in srcs if i)

    # every activation needs a static shape
    inputs = [i.name for i in graph.input if i.name not in init_names]
    missing = [(o, n) for n in nodes for o in n.output if o and not table.known(o)]
    if missing:
        fill_missing_shapes(model if src_path is None else src_path, shapes, missing, types, why)

    unknown: dict[str, str] = {}
    unruled: set[int] = set()  # positions of the ops with no rule
    ops: list[OpRecord] = []
    for idx, node in enumerate(nodes):
        cost = node_cost(node, table)
        if cost is None:
            unknown.setdefault(_op_key(node), node.name or f"#{idx}")
            unruled.add(idx)
            cost = (0, 0, False)
        flops, ws, view = cost
        all_in = list(dict.fromkeys(i for i in list(node.input) + subgraph_inputs(node) if i))
        outs = tuple(o for o in node.output if o)
        ops.append(OpRecord(
            name=node.name or f"{node.op_type}_{idx}", key=None, op_type=node.op_type,
            inputs=tuple(i for i in all_in if i not in const_src), outputs=outs,
            weights=tuple(dict.fromkeys(w for i in all_in if i in const_src for w in sorted(const_src[i]) if w in weights)),
            flops=int(flops), bytes_moved=0 if view else sum(table.nbytes(t) for t in (*all_in, *outs)),
            buffer_bytes=int(ws), view=view, kernel=node_kernel(node, table)))
    report_unknown_ops(unknown, "ONNX op(s)", strict, stacklevel=4,
                       moved=(sum(ops[i].bytes_moved for i in unruled), sum(op.bytes_moved for op in ops)))
    keys = _group_keys(nodes, [any(w in params for w in op.weights) for op in ops], group_by)
    ops = [replace(op, key=k) for op, k in zip(ops, keys)]
    if measure:
        times = measure_ops(model if src_path is None else src_path, shapes, [op.name for op in ops], measure_runs)
        ops = [replace(op, measured_ms=times.get(op.name, 0.0)) for op in ops]
    outputs = tuple(o.name for o in graph.output if o.name not in const_src)
    ops = fuse(ops, table, outputs)

    tensors = {t: TensorInfo(t, table.numel(t), table.itemsize(t), table.floating(t), table.shape(t), table.dtype(t))
               for t in [*inputs, *(o for op in ops for o in op.outputs)]}
    return OpGraph(ops=ops, tensors=tensors, inputs=tuple(inputs), outputs=outputs, weights=weights, params=params,
                   unknown_ops=unknown, source="onnx", name=label, dtype=torch_dtype(dtype),
                   batch_size=shapes[inputs[0]][0] if inputs and shapes.get(inputs[0]) else None)


def _value_inputs(node: Any, table: TensorTable) -> list[str]:
    """The inputs whose values a node reads: all of them but those it reads for their type (or static shape) only."""
    skip = _TYPE_ONLY_INPUTS.get(node.op_type, ()) if node.domain in ("", "ai.onnx") else ()
    ins = [i for pos, i in enumerate(node.input) if i and not (pos in skip and (node.op_type == "CastLike"
                                                                               or table.shape(i) is not None))]
    return ins + [i for i in subgraph_inputs(node) if i]


def _op_key(node: Any) -> str:
    """An op type as ``unknown_ops`` lists it (``domain::Type`` outside the standard domain)."""
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


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
    if group_by == "scope" or (group_by in (None, "auto") and any(p is not None for p in paths)):
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
    out: list[str | None] = []
    current: str | None = None
    for n, w in zip(nodes, weighted):
        if w or current is None:
            current = n.name or f"{n.op_type}_{len(out)}"
        out.append(current)
    return out
