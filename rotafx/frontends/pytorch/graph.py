"""Read an annotated fx graph (``torch.export`` or dynamo) as an :class:`~rotafx.layers.OpGraph`: one record per node."""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from ...layers import OpGraph, OpRecord, TensorInfo, layer_keys
from .annotate import node_cost, node_value

__all__ = ["read_graph", "module_path", "source_path", "COMPUTE_OPS"]

COMPUTE_OPS = ("call_function", "call_method", "call_module")

# the object dynamo compiled: a local or global (L['self'], L['fn'], G['model']), then any subscripts of it and
# the function behind a bound method (L['args'][0] under a decorator with *args, L['fn'].__self__ for
# torch.compile(model.forward), L['d']['m'])
_SOURCE_ROOT = re.compile(r"^[LG]\[[^\]]*\](?:\[[^\]]*\]|\.__self__)*")
# what follows: module, parameter and buffer accesses, attributes, list indices and dict keys
_SOURCE_PART = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]|\.(\w+)|\[['\"]?([^'\"\]]+)['\"]?\]")


def source_path(source: str) -> str:
    """A dynamo source (``L['args'][0]._modules['layers']._modules['1']``) as the dotted path below the
    object compiled (``layers.1``); a ``torch.export`` path (no ``L[``/``G[`` root) as it is.

    >>> source_path("L['self'].layers[0].mlp"), source_path("L['args'][0]._modules['head']._parameters['weight']")
    ('layers.0.mlp', 'head.weight')
    """
    if not source.startswith(("L[", "G[")):
        return source
    return ".".join(a or b or c for a, b, c in _SOURCE_PART.findall(_SOURCE_ROOT.sub("", source)))


def _root(source: str) -> str:
    m = _SOURCE_ROOT.match(source)
    return m.group(0) if m else ""


def module_path(node: fx.Node) -> str:
    """The dotted module path a node was traced under ('' at the root): the innermost module of the object compiled.

    A module that is not reached from the object compiled (a global, such as a function that a library wraps as a
    module: transformers' ``apply_rotary_pos_emb``) does not start a path of its own; its ops belong to the module
    that called it.
    """
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    sources = [str(v[0]) for v in stack.values()]
    root = _root(sources[0])
    inner = [s for s in sources if _root(s) == root][-1]
    return re.sub(r"@\d+$", "", source_path(inner))


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def _info(node: fx.Node) -> TensorInfo | None:
    """The activation a node produces (all the tensors of a tuple together), or None when it makes no tensor."""
    ts = _tensors(node_value(node))
    if not ts:
        return None
    numel = sum(int(t.numel()) for t in ts)
    nbytes = node_cost(node).output_bytes
    single = len(ts) == 1
    return TensorInfo(node.name, numel, (nbytes // numel) if numel else 0, all(t.is_floating_point() for t in ts),
                      shape=tuple(int(s) for s in ts[0].shape) if single else None,
                      dtype=str(ts[0].dtype).removeprefix("torch.") if single else None)


def read_graph(gm: fx.GraphModule, weights: Mapping[str, str], params: frozenset[str] | None = None, *,
               name: str = "model", unknown_ops: Mapping[str, str] | None = None, dtype: Any = None,
               batch_size: int | None = None) -> OpGraph:
    """The records of an annotated graph (see :func:`~rotafx.frontends.pytorch.annotate.annotate`).

    Every compute node is one op, keyed by its module path (:func:`~rotafx.layers.layer_keys`);
    weight placeholders and ``get_attr`` nodes are weights, named through ``weights``
    (placeholder name -> weight name) or by their target.
    """
    nodes = list(gm.graph.nodes)
    is_weight = {n for n in nodes if n.op in ("placeholder", "get_attr") and node_cost(n).is_weight}
    weight_name = {n: weights.get(n.name, str(n.target)) for n in is_weight}
    table: dict[str, tuple[int, int]] = {}
    for n in is_weight:
        table[weight_name[n]] = (sum(int(t.numel()) for t in _tensors(node_value(n))), node_cost(n).weight_bytes)
    tensors: dict[str, TensorInfo] = {}
    inputs = []
    for n in nodes:
        if n.op == "placeholder" and n not in is_weight:
            inputs.append(n.name)
        if (n.op == "placeholder" or n.op in COMPUTE_OPS) and n not in is_weight:
            info = _info(n)
            if info is not None:
                tensors[n.name] = info
    compute = [n for n in nodes if n.op in COMPUTE_OPS]
    ops = []
    for n, key in zip(compute, layer_keys([module_path(n) for n in compute])):
        c = node_cost(n)
        ops.append(OpRecord(
            name=n.name, key=key, op_type=getattr(n.target, "__name__", str(n.target)),
            inputs=tuple(dict.fromkeys(a.name for a in n.all_input_nodes if a not in is_weight)),
            outputs=(n.name,), weights=tuple(dict.fromkeys(weight_name[a] for a in n.all_input_nodes if a in is_weight)),
            flops=c.flops, bytes_moved=c.bytes_moved, buffer_bytes=c.buffer_bytes, view=c.is_view, kernel=c.kernel,
            kv_bytes_per_token=c.kv_bytes_per_token, modules=tuple(n.meta.get("nn_module_stack") or ())))
    output = next(n for n in reversed(nodes) if n.op == "output")
    outputs = tuple(dict.fromkeys(a.name for a in output.all_input_nodes if a not in is_weight))
    return OpGraph(ops=ops, tensors=tensors, inputs=tuple(inputs), outputs=outputs, weights=table,
                   params=params if params else frozenset(table), unknown_ops=dict(unknown_ops or {}), source="pytorch",
                   name=name, dtype=dtype, batch_size=batch_size)
