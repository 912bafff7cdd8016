"""The dynamo adapter: the ``rotastellar`` backend ``torch.compile`` calls with each captured graph.

The backend is registered by the ``torch_dynamo_backends`` entry point in the
package metadata (``rotastellar = "rotafx.backend:rotastellar"``), not by an import
side effect::

    torch.compile(model, backend="rotastellar", fullgraph=True,
                  options={"topology": topo, "devices": {"ground0": "cuda:0", "orbital0": "cuda:1"}})
    torch.compile(model, backend=rotafx.backend(topology=topo, objective="maximize_throughput"))
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from ..frontends.pytorch.graph import source_path
from ..runtime.local import CompiledStage, FlatRunner
from .devices import BackendError
from .options import Config
from .plan import Plan, plan_graph

__all__ = ["RotaStellarBackend", "backend", "rotastellar"]

log = logging.getLogger("rotafx")


def _planning_adds_no_guards() -> contextlib.AbstractContextManager[None]:
    """Reading symbolic sizes to cost a graph must not specialise it.

    A graph dynamo captured with dynamic sizes is costed at their hints (the sizes of the
    call that made them dynamic); without this, each read of a size would add a guard
    and the next size would recompile and plan again.
    """
    fake_mode = torch._guards.detect_fake_mode()
    shape_env = getattr(fake_mode, "shape_env", None)
    return shape_env.suppress_guards() if shape_env is not None else contextlib.nullcontext()


def _dynamo_weights(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> tuple[dict[str, str], frozenset[str], list[int]]:
    """Weight placeholders of a dynamo graph: name -> qualified name, the parameters, and the user-input positions."""
    weights: dict[str, str] = {}
    params: set[str] = set()
    inputs: list[int] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, n in enumerate(placeholders):
        ex = example_inputs[i] if i < len(example_inputs) else None
        ga = n.meta.get("grapharg")
        src = getattr(getattr(ga, "source", None), "name", "")
        src = src() if callable(src) else str(src)
        is_param = isinstance(ex, torch.nn.Parameter) or "._parameters[" in src
        is_buffer = "._buffers[" in src
        if isinstance(ex, torch.Tensor) and (is_param or is_buffer):
            qual = source_path(src) or n.name
            weights[n.name] = qual
            if is_param:
                params.add(qual)
        else:
            inputs.append(i)
    return weights, frozenset(params), inputs


class RotaStellarBackend:
    """A configured ``rotastellar`` backend: ``torch.compile(model, backend=rotafx.backend(...))``.

    Each graph dynamo captures is planned and rewritten; :attr:`plans` lists them
    (one per graph; a graph break gives two). Errors start with ``rotafx:``; nothing
    falls back to eager.
    """

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)
        self.config = Config.make(self.options)
        self.plans: list[Plan] = []

    def __repr__(self) -> str:
        return f"rotafx.backend({', '.join(f'{k}={v!r}' for k, v in self.options.items())})"

    @property
    def plan(self) -> Plan | None:
        """The most recent plan of this backend."""
        return self.plans[-1] if self.plans else None

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable[..., Any]:
        options = kwargs.pop("options", None) or {}
        mode = kwargs.pop("mode", None)
        if kwargs:
            raise BackendError(f"rotafx: unexpected backend arguments {sorted(kwargs)}")
        if mode not in (None, "default"):
            raise BackendError(f"rotafx: torch.compile(mode={mode!r}) is not supported by rotastellar; "
                               f"pass options={{'inner': 'inductor'}} to compile each stage with inductor")
        cfg = Config.make({**self.options, **options}) if options else self.config
        reason = getattr(gm, "compile_subgraph_reason", None)
        if getattr(reason, "graph_break", False):
            warnings.warn("rotafx: the model has a graph break; each captured graph is planned on its own against the "
                          "whole topology. Compile with fullgraph=True to plan the model as one graph", stacklevel=2)
        weights, params, input_positions = _dynamo_weights(gm, example_inputs)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        values = {weights[n.name]: example_inputs[i] for i, n in enumerate(placeholders) if n.name in weights}
        if not any(n.op in ("call_function", "call_method", "call_module") for n in gm.graph.nodes):
            log.info("rotafx: a captured graph with no operations; nothing to place")
            return gm.forward
        with _planning_adds_no_guards():
            plan = plan_graph(gm, weights, params, values, cfg, name=f"graph {len(self.plans)}", graph_index=len(self.plans))
        self.plans.append(plan)
        slots = {s.node_name: s for s in plan.rewritten.weights}
        weight_positions = [(i, slots[n.name]) for i, n in enumerate(placeholders) if n.name in slots]
        run = plan.module._run
        if plan.size_hints and cfg.inner != "eager" and run._compiled is not None:
            return _compile_as_dynamo_graph(run, gm, example_inputs, input_positions, weight_positions, cfg.inner)
        if plan.size_hints and cfg.inner != "eager":
            # stages on several devices, each compiled on its own: now, with the graph's symbolic sizes, once for all
            for st in plan.stages:
                stage = getattr(plan.module.program, f"stage{st.index}", None)
                if isinstance(stage, CompiledStage):
                    stage.compile_symbolic(st.device)
        return FlatRunner(plan.module, input_positions, weight_positions)


def _compile_as_dynamo_graph(run: Any, gm: fx.GraphModule, example_inputs: Sequence[Any],
                             input_positions: Sequence[int], weight_positions: Sequence[tuple[int, Any]],
                             inner: str) -> Callable[..., Any]:
    """A dynamic graph whose stages share one device: its flat program, taking dynamo's inputs in dynamo's order
    (weights included), compiled by the inner backend now, inside dynamo's tracing context, as any backend
    compiles a graph: with the graph's symbolic sizes, so that one compilation serves every size dynamo's
    guards admit (a decode step at every context length), where compiling at the first call would compile
    again for each new size."""
    flat = run.flat
    by_copy = {(id(mod), attr): i for i, slot in weight_positions for mod, attr, _ in slot.copies}
    positions = [*input_positions, *(by_copy[(id(mod), target)] for mod, target in run.reads)]
    graph = fx.Graph()
    outer = [n for n in gm.graph.nodes if n.op == "placeholder"]
    args = []
    for n in outer:
        ph = graph.placeholder(n.name, type_expr=n.type)
        ph.meta = dict(n.meta)
        args.append(ph)
    env: dict[fx.Node, Any] = {}
    k = 0
    for n in flat.graph.nodes:
        if n.op == "placeholder":
            env[n] = args[positions[k]]
            k += 1
        elif n.op == "output":
            graph.output(fx.node.map_arg(n.args[0], env.__getitem__))
        else:
            env[n] = graph.node_copy(n, env.__getitem__)
    program = fx.GraphModule(flat, graph, class_name="RotafxDynamic")
    if inner == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(program, list(example_inputs))
    from torch._dynamo.backends.registry import lookup_backend

    return lookup_backend(inner)(program, list(example_inputs))


def backend(**options: Any) -> RotaStellarBackend:
    """A configured backend for ``torch.compile``; options as in :data:`~rotafx.backend.options.OPTIONS`.

    >>> import torch, rotafx
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> be = rotafx.backend(codec=None, inner="eager")
    >>> y = torch.compile(m, backend=be, fullgraph=True)(torch.randn(4, 8))
    >>> [str(s.device) for s in be.plan.stages]
    ['cpu']
    """
    return RotaStellarBackend(**options)


def rotastellar(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable[..., Any]:
    """The backend ``torch.compile(model, backend="rotastellar", options={...})`` finds through the entry point.

    Without options it plans for one local device (every tensor stays where it is).
    """
    return RotaStellarBackend()(gm, example_inputs, **kwargs)
