"""The in-process runtime: one module whose stages run one after another, each on its own device."""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import os
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
from torch._C._dynamo.guards import GlobalStateGuard
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._pytree import TreeSpec, tree_flatten, tree_structure, tree_unflatten

from ..ops import transfer
from ..rewrite import Rewritten, StageInfo, WeightSlot, version_of
from .tracing import Trace, link_track, predicted_spans, stage_track

__all__ = ["PipelineModule", "CompiledStage", "FlatRunner", "INNER_BACKENDS"]

log = logging.getLogger("rotafx")

INNER_BACKENDS = ("eager", "inductor", "aot_eager")


class CompiledStage(torch.nn.Module):
    """A stage compiled by an inner backend at its first call with each new signature.

    The stage's weights are compiled as inputs (its ``get_attr`` nodes become placeholders) and
    read from the stage module at each call, so a weight replaced by another tensor (a refresh,
    ``load_state_dict(assign=True)``, ``torch.func.functional_call``) is used without compiling
    again. Compiled code is kept per signature: shape, strides, dtype, device and
    ``requires_grad`` of every input and weight (checked at every call: ``module.half()`` or
    ``requires_grad_()`` keep the tensor object), values of the other arguments, and the global
    state dynamo guards on (grad mode, inference mode, autocast, ...), so a stage of a graph
    dynamo made dynamic, a converted model and a training step after an inference call each get
    code compiled for them. Hooks on the stage module do not run inside compiled code.

    A stage of a graph dynamo captured with symbolic sizes is compiled once, while dynamo compiles
    that graph, by :meth:`compile_symbolic`; a call with a new signature runs that code, without
    compiling, where its inputs have the dtypes, devices, ``requires_grad`` and number of
    dimensions it was compiled for, its weights and the global state are the same, and the shape
    guards on its inputs (sizes, strides, offsets; dynamo's and the inner compiler's) hold.
    """

    def __init__(self, gm: fx.GraphModule, backend: str,
                 reads: Sequence[tuple[torch.nn.Module, str]] | None = None) -> None:
        super().__init__()
        self.gm = gm
        self.backend = backend
        # ``reads``: ``gm`` already takes these weights as its last inputs (a FlatProgram's function)
        lifted, reads = _lift_weights(gm) if reads is None else (gm, list(reads))
        self.__dict__["_lifted"] = lifted  # no weights of its own: kept out of the module tree
        self._weights = _WeightReader(reads)
        self._fns: dict[tuple, list[tuple[Any, Callable[..., Any]]]] = {}  # signature -> (global state, code)
        self._symbolic: _SymbolicCode | None = None  # code for every size (compile_symbolic)

    def __getstate__(self) -> dict[str, Any]:
        # compiled code does not pickle: a loaded stage compiles again at its first call
        return {**self.__dict__, "_fns": {}, "_symbolic": None}

    def compile_symbolic(self, device: torch.device) -> bool:
        """Compile the stage now, with the symbolic sizes of the graph dynamo is compiling, for all its sizes.

        Called by a backend inside dynamo's compilation of the graph the stage was cut from. The
        stage's inputs are the fake values its placeholders recorded, as leaves on ``device`` (where
        the stage runs; a tensor moved there keeps its strides, as ``Tensor.to`` does), and its
        weights fake tensors of static shape (aot autograd would give a tensor dynamo did not see,
        such as a stage's copy of a weight on another device, symbolic sizes of its own); the
        guards the inner compiler adds on the sizes join dynamo's. Each stage gets a tracing
        context of its own on dynamo's fake mode, so that a backward compiled later reads the
        metadata of its own forward.

        Args:
            device: the device the stage runs on (its inputs are moved there before the call).

        Returns:
            Whether the stage was compiled; ``False`` when a placeholder recorded no fake value
            (a graph not captured by dynamo) or one that is not a tensor or an integer, and then
            it compiles per signature at its calls.

        Example (inside a ``torch.compile`` backend)::

            for st in plan.stages:
                stage = getattr(plan.module.program, f"stage{st.index}")
                if isinstance(stage, CompiledStage):
                    stage.compile_symbolic(st.device)
        """
        values = [n.meta.get("val", n.meta.get("example_value")) for n in self.gm.graph.nodes if n.op == "placeholder"]
        fake_mode = next((v.fake_mode for v in values if isinstance(v, FakeTensor)), None)
        if fake_mode is None or fake_mode.shape_env is None or not all(
                isinstance(v, (FakeTensor, torch.SymInt, int)) for v in values):
            return False
        weights = self._weights()
        with fake_mode:
            example = [(v.detach() if v.device == device else torch.empty_like(v, device=device))
                       .requires_grad_(v.requires_grad) if isinstance(v, FakeTensor) else v for v in values]
            # static: from_tensor on a tensor dynamo did not fakify would give it symbols of its own
            fake_weights = [fake_mode.from_tensor(w, static_shapes=True) for w in weights]
        state = GlobalStateGuard()
        with torch._guards.tracing(torch._guards.TracingContext(fake_mode)):
            fn = self._compile([*example, *fake_weights])
        self._symbolic = _SymbolicCode.of(fn, example, weights, state, fake_mode.shape_env)
        return True

    def _compile(self, example: list[Any]) -> Callable[..., Any]:
        try:
            if self.backend == "inductor":
                from torch._inductor.compile_fx import compile_fx

                return compile_fx(self._lifted, example)
            from torch._dynamo.backends.registry import lookup_backend

            return lookup_backend(self.backend)(self._lifted, example)
        except Exception as e:  # noqa: BLE001 - whatever the compiler raises, the stage still runs, and says so
            warnings.warn(f"rotafx: the inner backend {self.backend!r} could not compile a stage "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); running it eagerly",
                          stacklevel=3)
            return self._lifted.forward

    def forward(self, *args: Any) -> Any:
        weights = self._weights()
        entries = self._fns.setdefault((tuple(map(_signature, args)), tuple(map(_signature, weights))), [])
        fn = next((code for state, code in entries if state.check()), None)
        if fn is None:
            state = GlobalStateGuard()
            if self._symbolic is not None and self._symbolic.admits(args, weights):
                fn = self._symbolic.fn  # kept for this signature too: the next such call is a look-up
            else:
                if len(self._fns) > 1 or entries:
                    log.info("rotafx: compiling a stage again with %s for new input shapes, weights or modes", self.backend)
                fn = self._compile([*args, *weights])
            entries.append((state, fn))
        return fn(*args, *weights)


@dataclasses.dataclass(frozen=True)
class _SymbolicCode:
    """Code a :class:`CompiledStage` compiled for symbolic sizes, and what a call must match to run it."""

    fn: Callable[..., Any]
    inputs: tuple[Any, ...]  # per input: (dtype, device, requires_grad, dim) of a tensor, or int
    weights: tuple[Any, ...]  # the signatures of the weights it was compiled with
    state: Any  # the global state (grad mode, autocast, ...) it was compiled in
    guards: str | None  # the shape guards on the inputs, as ShapeEnv.produce_guards_expression writes them
    shape_env: Any  # None where the inputs do not give every symbol (a size s0 + 1 and no s0): no call is admitted

    @staticmethod
    def of(fn: Callable[..., Any], example: Sequence[Any], weights: Sequence[torch.Tensor], state: Any,
           shape_env: Any) -> _SymbolicCode:
        """The record of ``fn``, compiled for ``example`` and ``weights``; its guards are those on the example's sizes."""
        sizes = [s for v in example for s in ((*v.shape, *v.stride(), v.storage_offset())
                                              if isinstance(v, torch.Tensor) else (v,)) if isinstance(s, torch.SymInt)]
        given = {s.node.expr for s in sizes if s.node.expr.is_Symbol}
        if any(not s.node.expr.free_symbols <= given for s in sizes):
            # the guards would name the graph's inputs, which a stage's call does not have
            shape_env, guards = None, None
        else:
            guards = shape_env.produce_guards_expression(
                example, guards=shape_env.get_pruned_guards(sizes), ignore_static=False)
        inputs = tuple((v.dtype, v.device, v.requires_grad, v.dim()) if isinstance(v, torch.Tensor) else int
                       for v in example)
        return _SymbolicCode(fn, inputs, tuple(map(_signature, weights)), state, guards, shape_env)

    def admits(self, args: Sequence[Any], weights: Sequence[torch.Tensor]) -> bool:
        """Whether a call with ``args`` and ``weights`` may run this code."""
        if (self.shape_env is None or len(args) != len(self.inputs) or tuple(map(_signature, weights)) != self.weights
                or not self.state.check()):
            return False
        for a, want in zip(args, self.inputs):
            if want is int:
                if type(a) is not int:
                    return False
            elif type(a) not in (torch.Tensor, torch.nn.Parameter) or (a.dtype, a.device, a.requires_grad, a.dim()) != want:
                return False
        return self.guards is None or self.shape_env.evaluate_guards_expression(self.guards, args)


def _signature(a: Any) -> Any:
    if isinstance(a, torch.Tensor):  # a tensor subclass needs code of its own; a Parameter does not
        kind = torch.Tensor if type(a) is torch.nn.Parameter else type(a)
        return kind, a.shape, a.stride(), a.storage_offset(), a.dtype, a.device, a.requires_grad
    return a if isinstance(a, (int, float, bool, str, type(None))) else repr(a)


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
    tracing and export); a call runs a :class:`FlatProgram` made from it at construction. Weights
    moved or replaced in the stages are seen; later edits to the graphs are not.
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
        devices = {st.device for st in rewritten.stages}
        one_device = len(devices) == 1 and all(_pastable(st.module) for st in rewritten.stages)
        if inner != "eager" and not one_device:
            # stages on several devices (or one FlatProgram cannot paste): each compiled on its own;
            # stages on one device are compiled as one function by FlatProgram
            for st in rewritten.stages:
                setattr(self.program, f"stage{st.index}", CompiledStage(st.module, inner))
        # what a call runs (kept out of the module tree: it shares the program's stages, and
        # state_dict() must list them once)
        self.__dict__["_run"] = FlatProgram(self.program, inner, devices.pop() if one_device else None)
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

    def trace(self, path: str | os.PathLike[str] | None) -> Trace | None:
        """Record every later call in a Chrome trace at ``path`` (``None``: stop recording).

        Each call is a request: its span, each stage's compute and each transfer between stages
        (measured, the devices synchronised around each), and the estimate's spans for the same
        request beside them (see :mod:`rotafx.runtime.tracing`). The file is complete after each
        call. A traced call runs the program node by node (``program``, not the flat function).

        Returns:
            The :class:`~rotafx.runtime.tracing.Trace` (``None`` when stopped).
        """
        self.__dict__["_trace"] = None if path is None else Trace(path)
        return self.__dict__["_trace"]

    def _traced(self, trace: Trace, *flat: Any) -> Any:
        timed = _TimedProgram(self.program, self.rewritten.stages, trace)
        timed.request = trace.begin()
        out = timed.run(*flat)
        done = trace.now()
        plan = getattr(self, "plan", None)
        predicted = predicted_spans(plan.partition.estimate, self.rewritten.stages) if plan is not None else ()
        trace.end(timed.request, predicted, end_s=done, kind=self.__dict__.get("_trace_kind", "request"))
        return tuple(out)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        run = self._run
        trace = self.__dict__.get("_trace")
        if trace is not None:
            run = functools.partial(self._traced, trace)
        if self.in_spec is None:
            if kwargs:
                raise TypeError(f"rotafx: this program takes {len(self.rewritten.inputs)} positional inputs, not keywords {sorted(kwargs)}")
            return run(*args)
        if self._plain_in and not kwargs and len(args) == len(self.rewritten.inputs) and all(
                type(a) is torch.Tensor for a in args):
            flat: Any = args  # what tree_flatten would give, and the structure in_spec asks for
        else:
            flat, spec = tree_flatten((args, kwargs))
            if spec != self.in_spec:
                raise TypeError(f"rotafx: inputs are structured as {spec}, but the model was partitioned for {self.in_spec}; "
                                f"call it the way example_inputs were given")
        out = run(*flat)
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
            elif held.shape == tensor.shape and held.dtype == tensor.dtype:
                with torch.no_grad():
                    held.copy_(tensor)
            else:
                new = tensor.detach().to(device)
                _set(mod, attr, torch.nn.Parameter(new, tensor.requires_grad) if isinstance(held, torch.nn.Parameter) else new)
        slot.source = tensor
        slot.version = version_of(tensor)



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


_nn_hooks = torch.nn.modules.module
_GLOBAL_HOOKS = (_nn_hooks._global_forward_hooks, _nn_hooks._global_forward_pre_hooks,
                 _nn_hooks._global_backward_hooks, _nn_hooks._global_backward_pre_hooks)


def _pastable(stage: torch.nn.Module) -> bool:
    """An fx stage whose graph calls no submodule and reads only tensors (it can be pasted inline)."""
    return isinstance(stage, fx.GraphModule) and all(
        n.op != "call_module" and (n.op != "get_attr" or isinstance(_attr(stage, n.target), torch.Tensor))
        for n in stage.graph.nodes)


def _owner(mod: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    """The module that holds the attribute ``target`` (``"sub.weight"``) of ``mod``, and its name there."""
    *path, name = target.split(".")
    return (mod.get_submodule(".".join(path)) if path else mod), name


def _attr(mod: torch.nn.Module, target: str) -> Any:
    owner, name = _owner(mod, target)
    return getattr(owner, name, None)


def _lift_weights(gm: fx.GraphModule) -> tuple[fx.GraphModule, list[tuple[torch.nn.Module, str]]]:
    """``gm`` with each tensor it reads as an attribute taken as an input after its own inputs,
    and the ``(gm, attribute)`` of each such input."""
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    nodes = list(gm.graph.nodes)
    for n in nodes:
        if n.op == "placeholder":
            env[n] = graph.node_copy(n, env.__getitem__)
    reads: list[tuple[torch.nn.Module, str]] = []
    for n in nodes:
        if n.op == "get_attr" and isinstance(_attr(gm, n.target), torch.Tensor):
            env[n] = graph.placeholder("w_" + n.target.replace(".", "_"))
            reads.append((gm, n.target))
    for n in nodes:
        if n not in env:
            env[n] = graph.node_copy(n, env.__getitem__)
    return fx.GraphModule(gm, graph, class_name="RotafxStage"), reads


class _WeightReader:
    """Reads, at each call, the tensors fx stages hold as attributes, from the dicts that hold them
    (``_parameters``, ``_buffers`` or plain attributes): a weight moved or replaced in a stage is
    read where it is now. An attribute costs an ``nn.Module.__getattr__`` call, about 1 µs; a
    dict look-up a tenth of that."""

    def __init__(self, reads: Sequence[tuple[torch.nn.Module, str]]) -> None:
        self.reads = list(reads)
        self._bound: Any = _UNBOUND

    def __getstate__(self) -> dict[str, Any]:
        # a copy finds its dicts again: a copied module holds dicts of its own
        return {"reads": self.reads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.reads, self._bound = state["reads"], _UNBOUND

    def _bind(self) -> None:
        bound = []
        for mod, target in self.reads:
            owner, name = _owner(mod, target)
            where = next((d for d in (owner._parameters, owner._buffers, owner.__dict__) if name in d), None)
            if where is None:  # e.g. a parametrized weight (a property): read as an attribute
                self._bound = None
                return
            bound.append((where, name))
        self._bound = bound

    def __call__(self) -> list[torch.Tensor]:
        for _ in range(2):
            if self._bound is _UNBOUND:
                self._bind()
            if self._bound is None:
                break
            try:
                return [d[k] for d, k in self._bound]
            except KeyError:  # a weight moved between parameters and buffers (refresh): find it again
                self._bound = _UNBOUND
        return [_attr(mod, target) for mod, target in self.reads]


_UNBOUND = object()


class _TimedProgram:
    """The program run node by node (its graph is a few nodes per stage), each stage call and each transfer timed
    into a trace; a plain walk of the graph, without fx.Interpreter's per-call set-up (0.25 ms)."""

    def __init__(self, program: fx.GraphModule, stages: Sequence[StageInfo], trace: Trace) -> None:
        self.program = program
        self.trace, self.request = trace, -1
        self.stage_of = {f"stage{st.index}": st for st in stages}
        self.devices = {st.device for st in stages}

    def _sync(self) -> None:
        for d in self.devices:
            if d.type == "cuda":
                torch.cuda.synchronize(d)

    def run(self, *inputs: Any) -> Any:
        env: dict[fx.Node, Any] = {}
        producer: dict[fx.Node, StageInfo] = {}  # the stage whose output a value is
        feed = iter(inputs)
        value = lambda a: fx.node.map_arg(a, env.__getitem__)  # noqa: E731
        for n in self.program.graph.nodes:
            if n.op == "placeholder":
                env[n] = next(feed)
                continue
            if n.op == "output":
                return value(n.args[0])
            args, kwargs = value(n.args), value(n.kwargs)
            st = self.stage_of.get(n.target) if n.op == "call_module" else None
            # a transfer between stages, or a user input moved to the first stage that reads it
            hop = (n.op == "call_function" and n.target is torch.ops.rotafx.transfer.default) or (
                n.op == "call_method" and n.target == "to")
            if st is None and not hop:
                if n.op == "call_function" and n.target is operator.getitem and n.args[0] in producer:
                    producer[n] = producer[n.args[0]]
                env[n] = _call(self.program, n, args, kwargs)
                continue
            self._sync()
            t0 = self.trace.now()
            env[n] = out = _call(self.program, n, args, kwargs)
            self._sync()
            t1 = self.trace.now()
            if st is not None:
                producer[n] = st
                self.trace.span(stage_track(st.index, st.node, st.device), "compute", self.request, t0, t1)
                continue
            src = producer.get(n.args[0]) if isinstance(n.args[0], fx.Node) else None
            dst = next((self.stage_of[u.target] for u in n.users if u.op == "call_module" and u.target in self.stage_of),
                       None)
            name = f"transfer {out.numel() * out.element_size():,} B" if isinstance(out, torch.Tensor) else "transfer"
            self.trace.span(link_track(src.node if src else "input", dst.node if dst else "output"), name,
                            self.request, t0, t1)
        raise AssertionError("the program has no output node")


def _call(gm: fx.GraphModule, n: fx.Node, args: Any, kwargs: Any) -> Any:
    """Run one call node of ``gm`` on its evaluated arguments."""
    if n.op == "call_module":
        return gm.get_submodule(n.target)(*args, **kwargs)
    if n.op == "call_method":
        return getattr(args[0], n.target)(*args[1:], **kwargs)
    if n.op == "get_attr":
        return getattr(gm, n.target)
    return n.target(*args, **kwargs)


class FlatProgram:
    """What a :class:`PipelineModule` call runs: ``program`` as one flat fx function.

    The graphs of the eager stages are pasted into the top-level graph, their weights become
    arguments read at each call by a :class:`_WeightReader`, and each ``rotafx::transfer`` call
    goes through :func:`rotafx.ops.transfer` (the op's kernel without the dispatcher where nothing
    must see the op). A weight attribute costs an ``nn.Module.__getattr__`` call (about 1 µs) and a
    stage call a few more; on the small GPT this is 40-55 µs of a 1.5 ms step. With an inner
    backend (``inner``), a program whose stages share one device is compiled as one function (a
    :class:`CompiledStage` over the pasted graph); stages on several devices are compiled each on
    its own and called as they are. ``program`` itself keeps the op and its submodules,
    for tracing and export; a hook on ``program`` or on a pasted stage module (or a global module
    hook, or the JIT tracer) sends the call to ``program``, so that hooks run as they would.
    """

    def __init__(self, program: fx.GraphModule, inner: str = "eager", device: torch.device | None = None) -> None:
        self.program = program
        self.inner = inner
        self.device = device  # the one device of every stage, when they share one and all can be pasted
        compiled = inner != "eager" and device is not None  # then the whole program is compiled as one function
        graph = fx.Graph()
        env: dict[fx.Node, Any] = {}
        nodes = list(program.graph.nodes)
        for n in nodes:  # the program's inputs, then one input per weight read by a pasted stage
            if n.op == "placeholder":
                env[n] = graph.placeholder(n.name, type_expr=n.type)
        pasted = {n.target: _lift_weights(m) for n in nodes
                  if n.op == "call_module" and _pastable(m := program.get_submodule(n.target))}
        weight_inputs = {name: [graph.placeholder(f"{name}_{t}".replace(".", "_")) for _, t in reads]
                         for name, (_, reads) in pasted.items()}
        for n in nodes:
            if n.op == "placeholder":
                continue
            if n.op == "call_module" and n.target in pasted:
                args = [*fx.node.map_arg(n.args, env.__getitem__), *weight_inputs[n.target]]
                local: dict[fx.Node, Any] = {}  # the stage's nodes -> theirs in the flat graph
                for sn in pasted[n.target][0].graph.nodes:
                    if sn.op == "placeholder":
                        local[sn] = args[len(local)]
                    elif sn.op == "output":
                        env[n] = fx.node.map_arg(sn.args[0], local.__getitem__)
                    else:
                        local[sn] = graph.node_copy(sn, local.__getitem__)
            elif n.op == "call_function" and n.target is operator.getitem and isinstance(env[n.args[0]], (tuple, list)):
                env[n] = env[n.args[0]][n.args[1]]  # an output of a pasted stage: the node itself
            elif n.op == "output":
                graph.output(fx.node.map_arg(n.args[0], env.__getitem__))
            else:
                env[n] = copy = graph.node_copy(n, env.__getitem__)
                if copy.op == "call_function" and copy.target is torch.ops.rotafx.transfer.default:
                    _retarget_transfer(copy, device if compiled else None)
        flat = fx.GraphModule(program, graph, class_name="RotafxFlat")
        self.flat = flat  # takes the program's inputs, then the weights of ``reads``
        self.forward = flat.forward
        stages = [program.get_submodule(name) for name in pasted]
        reads = [r for _, reads in pasted.values() for r in reads]
        self.reads = reads
        self._weights = _WeightReader(reads)
        self._compiled = CompiledStage(flat, inner, reads) if compiled else None
        self._hooks = _GLOBAL_HOOKS + tuple(d for m in (program, *stages) for d in (
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))

    def __reduce__(self) -> tuple:
        # made again from the program on copy and unpickling: the hook dicts must be the live ones
        return FlatProgram, (self.program, self.inner, self.device)

    def __call__(self, *inputs: Any) -> Any:
        if any(self._hooks) or torch._C._get_tracing_state():
            return self.program(*inputs)
        if self._compiled is not None:
            if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
                    or torch._C._len_torch_dispatch_stack()):
                return self.program(*inputs)  # traced or transformed: the stages themselves, not compiled code
            return self._compiled(*inputs)
        return self.forward(*inputs, *self._weights())


def _retarget_transfer(node: fx.Node, device: torch.device | None) -> None:
    """Make a pasted ``rotafx::transfer`` call go through :func:`rotafx.ops.transfer`; or, for a
    compiler, when every stage runs on ``device``, make a transfer to ``device`` with no codec the
    copy it is (``aten.clone``), which the compiler can fuse."""
    call = {**dict(zip(("x", "device", "codec"), node.args)), **node.kwargs}
    if (device is not None and call.get("codec") is None and call.get("device") is not None
            and torch.device(call["device"]) == device):
        node.target, node.args, node.kwargs = torch.ops.aten.clone.default, (call["x"],), {}
    else:
        node.target = transfer


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
