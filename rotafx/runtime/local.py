"""The in-process runtime: one module whose stages run one after another, each on its own device."""

from __future__ import annotations

import logging
import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import TreeSpec, tree_flatten, tree_structure, tree_unflatten

from ..ops import transfer
from ..rewrite import Rewritten, StageInfo, WeightSlot, version_of

__all__ = ["PipelineModule", "CompiledStage", "FlatRunner", "INNER_BACKENDS"]

log = logging.getLogger("rotafx")

INNER_BACKENDS = ("eager", "inductor", "aot_eager")


class CompiledStage(torch.nn.Module):
    """A stage compiled by an inner backend at its first call with each new input signature.

    The inner backend compiles for the shapes it is given; a stage of a graph dynamo made
    dynamic sees other sizes later, so the compiled code is kept per signature (shapes,
    strides, dtypes and devices of the tensors, values of the other arguments).
    """

    def __init__(self, gm: fx.GraphModule, backend: str) -> None:
        super().__init__()
        self.gm = gm
        self.backend = backend
        self._fns: dict[tuple, Callable[..., Any]] = {}

    def reset(self) -> None:
        """Forget the compiled code (after a weight was replaced by another tensor)."""
        self._fns.clear()

    def forward(self, *args: Any) -> Any:
        key = tuple((tuple(a.shape), a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor)
                    else a if isinstance(a, (int, float, bool, str, type(None))) else repr(a) for a in args)
        fn = self._fns.get(key)
        if fn is None:
            if self._fns:
                log.info("rotafx: compiling a stage again with %s for new input shapes", self.backend)
            if self.backend == "inductor":
                from torch._inductor.compile_fx import compile_fx

                fn = compile_fx(self.gm, list(args))
            else:
                from torch._dynamo.backends.registry import lookup_backend

                fn = lookup_backend(self.backend)(self.gm, list(args))
            self._fns[key] = fn
        # a module with parameters compiles to the unboxed convention (aot_module_simplified's forward)
        return fn(*args)


class PipelineModule(torch.nn.Module):
    """A model split into stages, each holding its own weights on its own device.

    Calling it runs the stages in chain order; ``rotafx::transfer`` carries the tensors
    between them. ``stages[i]`` has ``.device``, ``.node`` (the topology node),
    ``.module`` and ``.parameters()``.

    ``in_spec``/``out_spec`` (pytree specs, as ``torch.export`` gives them) let it be
    called like the original model; without them it takes and returns flat values.
    ``weight_args`` (the dynamo calling convention) gives, for each weight passed as an
    argument, its position: a weight whose tensor object or version changed since it
    was copied is copied again before the call.

    ``program`` is the rewritten graph as planned (each transfer a ``rotafx::transfer`` call, for
    tracing and export); a call runs a copy of it made at construction, whose transfers go through
    :func:`rotafx.ops.transfer`. Its stages are shared, so weights moved or replaced in them are
    seen; edits to ``program``'s own graph, or hooks on ``program``, are not.
    """

    def __init__(self, rewritten: Rewritten, *, inner: str = "eager", in_spec: TreeSpec | None = None,
                 out_spec: TreeSpec | None = None) -> None:
        super().__init__()
        if inner not in INNER_BACKENDS:
            raise ValueError(f"rotafx: unknown inner backend {inner!r}; use one of {', '.join(INNER_BACKENDS)}")
        self.program = rewritten.program
        self.rewritten = rewritten
        self.inner = inner
        self.in_spec = in_spec
        self.out_spec = out_spec
        if inner != "eager":
            for st in rewritten.stages:
                setattr(self.program, f"stage{st.index}", CompiledStage(st.module, inner))
        # what a call runs: the program, its transfers made through ops.transfer (kept out of the
        # module tree: it shares the program's stages, and state_dict() must list them once)
        self.__dict__["_run"] = _runnable(self.program).forward
        # the calls whose pytree handling is the identity: n plain positional inputs, one output
        n = len(rewritten.inputs)
        self._plain_in = in_spec is not None and in_spec == tree_structure((tuple(range(n)), {}))
        self._leaf_out = out_spec is not None and out_spec.is_leaf()

    @property
    def stages(self) -> list[StageInfo]:
        return self.rewritten.stages

    @property
    def devices(self) -> list[torch.device]:
        return [s.device for s in self.stages]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.in_spec is None:
            if kwargs:
                raise TypeError(f"rotafx: this program takes {len(self.rewritten.inputs)} positional inputs, not keywords {sorted(kwargs)}")
            return self._run(*args)
        if self._plain_in and not kwargs and len(args) == len(self.rewritten.inputs) and all(
                type(a) is torch.Tensor for a in args):
            flat: Any = args  # what tree_flatten would give, and the structure in_spec asks for
        else:
            flat, spec = tree_flatten((args, kwargs))
            if spec != self.in_spec:
                raise TypeError(f"rotafx: inputs are structured as {spec}, but the model was partitioned for {self.in_spec}; "
                                f"call it the way example_inputs were given")
        out = self._run(*flat)
        if self._leaf_out and len(out) == 1:
            return out[0]
        return tree_unflatten(list(out), self.out_spec) if self.out_spec is not None else out

    # -- weights passed as arguments (torch.compile) ----------------------------
    def refresh(self, slot: WeightSlot, tensor: torch.Tensor) -> None:
        """Copy ``tensor`` (the current value of a weight) into every stage that holds it."""
        for mod, attr, device in slot.copies:
            held = getattr(mod, attr)
            if tensor.device == device:
                if held is not tensor:  # the stage aliased the old tensor: point it at the new one
                    _set(mod, attr, tensor)
                    self._reset_compiled()
            elif held.shape == tensor.shape and held.dtype == tensor.dtype:
                with torch.no_grad():
                    held.copy_(tensor)
            else:
                new = tensor.detach().to(device)
                _set(mod, attr, torch.nn.Parameter(new, tensor.requires_grad) if isinstance(held, torch.nn.Parameter) else new)
                self._reset_compiled()
        slot.source = tensor
        slot.version = version_of(tensor)

    def _reset_compiled(self) -> None:
        for m in self.program.children():
            if isinstance(m, CompiledStage):
                m.reset()


class FlatRunner:
    """The callable a torch.compile backend returns: takes every graph input (weights too), runs the stages.

    Before each call it checks that every weight argument is the tensor the stages hold (or
    were copied from) and, for a weight a stage holds a copy of, that it was not changed in
    place since; where not, the stages are refreshed. A stage that holds the tensor itself
    sees in-place changes without a copy, so only its identity is checked.
    """

    def __init__(self, pipeline: PipelineModule, input_positions: Sequence[int], weight_positions: Sequence[tuple[int, WeightSlot]]) -> None:
        self.pipeline = pipeline
        self._run = pipeline._run
        self.input_positions = tuple(input_positions)
        self.weight_positions = tuple(weight_positions)
        self._inputs = _getter(self.input_positions)
        self._weights = _getter(tuple(i for i, _ in self.weight_positions))
        self._track()

    def _track(self) -> None:
        """Note what the next call compares the weight arguments with."""
        self._sources = tuple(slot.source for _, slot in self.weight_positions)
        # the weights some stage holds a copy of (another device, or replaced since): their version counts
        self._copied = tuple((i, slot) for i, slot in self.weight_positions
                             if any(getattr(mod, attr) is not slot.source for mod, attr, _ in slot.copies))

    def __call__(self, *args: Any) -> Any:
        if self._sources and (any(map(operator.is_not, self._weights(args), self._sources))
                              or self._copied and any(version_of(args[i]) != slot.version for i, slot in self._copied)):
            for i, slot in self.weight_positions:
                t = args[i]
                if t is not slot.source or version_of(t) != slot.version:
                    self.pipeline.refresh(slot, t)
            self._track()
        return self._run(*self._inputs(args))


def _runnable(program: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``program`` whose ``rotafx::transfer`` calls go through :func:`rotafx.ops.transfer`.

    The function calls the op's kernel directly where the op's dispatch would reach nothing
    else (about 35 µs a call saved on a CPU) and the op where something must see it
    (autograd, a tracer, a mode); ``program`` keeps the op, for tracing and export.
    """
    graph = fx.Graph()
    graph.output(graph.graph_copy(program.graph, {}))
    for node in graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.rotafx.transfer.default:
            node.target = transfer
    return fx.GraphModule(program, graph, class_name="RotafxRun")


def _getter(positions: tuple[int, ...]) -> Callable[[tuple], tuple]:
    """``args -> tuple(args[i] for i in positions)`` (``args`` a tuple), done in C."""
    start = positions[0] if positions else 0
    if positions == tuple(range(start, start + len(positions))):  # a run of positions (or none): a slice
        return operator.itemgetter(slice(start, start + len(positions)))
    return operator.itemgetter(*positions)


def _set(mod: torch.nn.Module, attr: str, t: torch.Tensor) -> None:
    if attr in mod._parameters:
        del mod._parameters[attr]
    if attr in mod._buffers:
        del mod._buffers[attr]
    if isinstance(t, torch.nn.Parameter):
        mod.register_parameter(attr, t)
    else:
        mod.register_buffer(attr, t)
