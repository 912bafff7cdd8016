"""Read a ``torch.nn.Module``: trace it with ``torch.export``, check what meta tensors let pass, annotate every node, read the records."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.utils._pytree import tree_flatten

from ...layers import OpGraph, ProfileError
from ..dtypes import torch_dtype
from .annotate import annotate, node_value
from .graph import module_path, read_graph
from .trace import batch_of, example_args, require_module, trace

__all__ = ["read_module", "check_traced"]

aten = torch.ops.aten

# ops whose tensor operands torch's CPU and CUDA kernels need in one dtype, which their meta kernels (what a
# trace runs) do not check; the other matmuls, convolutions, attention and embeddings are checked while tracing
_ONE_DTYPE_OPS = {aten.linear, aten.matmul, aten.mm, aten.addmm, aten.mv, aten.addmv, aten.dot, aten.vdot}


def read_module(model: torch.nn.Module, example_inputs: Any = None, *, example_kwargs: Mapping[str, Any] | None = None,
                dtype: torch.dtype | str | None = None, batch_size: int | None = None, seq_len: int = 128,
                strict: bool = False, progress: bool = False) -> OpGraph:
    """The :class:`~rotafx.layers.OpGraph` of ``model`` (what ``ModelProfile.from_pytorch`` groups into layers).

    Works on the ``meta`` device (no weights allocated); ``example_inputs`` default as
    :func:`~rotafx.frontends.pytorch.trace.example_args` builds them; ``dtype`` (a
    ``torch.dtype`` or a name: ``"fp16"``, ``"float16"``, ``"bf16"``, ``"fp32"``) prices
    floating tensors at that size without converting the model.
    """
    require_module(model, "from_pytorch")
    dtype = torch_dtype(dtype)
    say = _progress_printer(progress)
    args = example_args(model, example_inputs, batch_size, seq_len)
    t0 = time.perf_counter()
    say(f"tracing {type(model).__name__} with torch.export ...")
    traced = trace(model, args, example_kwargs)
    gm = traced.graph_module
    check_traced(gm, traced.weights, type(model).__name__)
    say(f"traced {len(gm.graph.nodes)} nodes in {time.perf_counter() - t0:.1f} s; annotating")
    tty = sys.stderr.isatty()
    unknown = annotate(gm, traced.weights, dtype=dtype, strict=strict,
                       progress=(lambda i, n: say(f"annotated {i}/{n} nodes", end="\r" if i < n else "\n")
                                 if tty or i == n else None) if progress else None)
    graph = read_graph(gm, traced.weights, traced.params, name=type(model).__name__, unknown_ops=unknown, dtype=dtype,
                       batch_size=batch_of(args, batch_size))
    say(f"read {len(graph.ops)} ops in {time.perf_counter() - t0:.1f} s")
    return graph


def check_traced(gm: fx.GraphModule, weights: Mapping[str, str], model: str = "the model") -> None:
    """What a trace on fake or meta tensors lets pass but the model could not run or rotafx could not price.

    Raises :class:`~rotafx.layers.ProfileError` for a tensor whose shape depends on the
    values of the inputs (``nonzero``, ``unique``, a boolean mask), and for a matmul whose
    operands differ in dtype (an integer input to an ``nn.Linear``), naming the node, its
    module, and the model inputs it comes from.
    """
    inputs = {n for n in gm.graph.nodes if n.op == "placeholder" and n.name not in weights}
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        val = node_value(node)
        if val is not None and free_unbacked_symbols(val):
            shapes = [tuple(t.shape) for t in tree_flatten(val)[0] if isinstance(t, torch.Tensor)]
            shape = ", ".join(f"({', '.join(map(str, sh))})" for sh in shapes) or str(val)
            raise ProfileError(
                f"rotafx: {model}: {_where(node)} makes a tensor whose shape depends on the values of the inputs "
                f"(shape {shape}); rotafx prices a model at fixed shapes, so data-dependent output shapes (nonzero, unique, "
                f"masked_select, boolean-mask indexing) are not supported. Compute a fixed-size result instead "
                f"(torch.where(mask, x, 0), topk with a fixed k), keep that op outside the module you profile, or "
                f"profile its ONNX export (from_onnx measures such shapes with onnxruntime)")
        if getattr(node.target, "_overloadpacket", None) not in _ONE_DTYPE_OPS:
            continue
        operands = [a for a in node.all_input_nodes if isinstance(node_value(a), torch.Tensor)]
        dtypes = {node_value(a).dtype for a in operands}
        if len(dtypes) <= 1:
            continue
        weight_dtypes = {node_value(a).dtype for a in operands if not _sources(a, inputs)}
        odd = [a for a in operands if node_value(a).dtype not in weight_dtypes] if weight_dtypes else operands
        named = sorted({f"{s.name!r} ({str(node_value(s).dtype).removeprefix('torch.')})"
                        for a in odd for s in _sources(a, inputs)})
        want = str(next(iter(weight_dtypes))).removeprefix("torch.") if len(weight_dtypes) == 1 else None
        operand_list = ", ".join(f"{a.name} {str(node_value(a).dtype).removeprefix('torch.')}" for a in operands)
        fix = (f"pass the input(s) as {want} (x.to(torch.{want})), or convert the model to the inputs' dtype"
               if want else "give every operand one dtype")
        raise ProfileError(
            f"rotafx: {model} cannot run on these example inputs: {_where(node)} needs one dtype for its operands "
            f"but gets {operand_list}" + (f", from model input {', '.join(named)}" if named else "")
            + f" (torch refuses this when the model runs; the meta tensors a trace uses do not check it); {fix}")


def _where(node: fx.Node) -> str:
    """A node as a user reads it: its op and the module it was traced under."""
    path = module_path(node)
    return f"node {node.name} ({getattr(node.target, '__name__', node.target)})" + (f" in module {path!r}" if path else "")


def _sources(node: fx.Node, inputs: set[fx.Node]) -> list[fx.Node]:
    """The model inputs ``node`` is computed from."""
    seen, stack, found = set(), [node], []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in inputs:
            found.append(n)
        stack.extend(n.all_input_nodes)
    return found


def _progress_printer(enabled: bool) -> Callable[..., None]:
    def say(msg: str, end: str = "\n") -> None:
        if enabled:
            print(f"rotafx: {msg}", end=end, file=sys.stderr, flush=True)

    return say
