"""Read a ``torch.nn.Module``: trace it with ``torch.export``, annotate every node, read the records."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Mapping

import torch

from ...layers import OpGraph
from .annotate import annotate
from .graph import read_graph
from .trace import batch_of, example_args, trace

__all__ = ["read_module"]


def read_module(model: torch.nn.Module, example_inputs: Any = None, *, example_kwargs: Mapping[str, Any] | None = None,
                dtype: torch.dtype | None = None, batch_size: int | None = None, seq_len: int = 128,
                strict: bool = False, progress: bool = False) -> OpGraph:
    """The :class:`~rotafx.layers.OpGraph` of ``model`` (what ``ModelProfile.from_pytorch`` groups into layers).

    Works on the ``meta`` device (no weights allocated); ``example_inputs`` default as
    :func:`~rotafx.frontends.pytorch.trace.example_args` builds them; ``dtype`` prices
    floating tensors at that size without converting the model.
    """
    say = _progress_printer(progress)
    args = example_args(model, example_inputs, batch_size, seq_len)
    t0 = time.perf_counter()
    say(f"tracing {type(model).__name__} with torch.export ...")
    traced = trace(model, args, example_kwargs)
    gm = traced.graph_module
    say(f"traced {len(gm.graph.nodes)} nodes in {time.perf_counter() - t0:.1f} s; annotating")
    tty = sys.stderr.isatty()
    unknown = annotate(gm, traced.weights, dtype=dtype, strict=strict,
                       progress=(lambda i, n: say(f"annotated {i}/{n} nodes", end="\r" if i < n else "\n")
                                 if tty or i == n else None) if progress else None)
    graph = read_graph(gm, traced.weights, traced.params, name=type(model).__name__, unknown_ops=unknown, dtype=dtype,
                       batch_size=batch_of(args, batch_size))
    say(f"read {len(graph.ops)} ops in {time.perf_counter() - t0:.1f} s")
    return graph


def _progress_printer(enabled: bool) -> Callable[..., None]:
    def say(msg: str, end: str = "\n") -> None:
        if enabled:
            print(f"rotafx: {msg}", end=end, file=sys.stderr, flush=True)

    return say
