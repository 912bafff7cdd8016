"""The ``rotastellar`` torch.compile backend, :func:`partition` and the :func:`partitioned` decorator.

The pass order, written once (:func:`plan_graph`): annotate the graph, group it into
layers, solve the placement, rewrite into one submodule per stage joined by
``rotafx::transfer``, wrap it in the in-process runtime.

The backend is registered by the ``torch_dynamo_backends`` entry point in the
package metadata (``rotastellar = "rotafx.backend:rotastellar"``), not by an import
side effect::

    torch.compile(model, backend="rotastellar", fullgraph=True,
                  options={"topology": topo, "devices": {"ground0": "cuda:0", "orbital0": "cuda:1"}})
    torch.compile(model, backend=rotafx.backend(topology=topo, objective="maximize_throughput"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx

from .annotate import annotate, node_value
from .ops import check_codec
from .profile import ModelProfile, profile_graph
from .rewrite import Rewritten, rewrite, stage_map
from .runtime.local import INNER_BACKENDS, FlatRunner, PipelineModule
from .solve import InfeasibleError, Partition, PartitionOptimizer
from .solve.objective import OBJECTIVES
from .solve.optimizer import SOLVERS
from .topology import Topology, TopologyError

__all__ = ["BackendError", "Plan", "RotaStellarBackend", "backend", "rotastellar", "partition", "partitioned",
           "last_plan", "plans", "OPTIONS", "LOCAL_TOPOLOGY"]

log = logging.getLogger("rotafx")

# the default: one local device that holds anything, so plain backend="rotastellar" works
LOCAL_TOPOLOGY: dict[str, Any] = {
    "devices": [{"name": "local", "kind": "ground", "flops": 1e14, "memory": 1e18}],
    "links": [],
    "chain": ["local"],
}

OPTIONS: dict[str, str] = {
    "topology": "a Topology, a topology dict, a preset name or a file path (default: one local device)",
    "objective": f"one of {', '.join(OBJECTIVES)} (default minimize_latency)",
    "objective_weights": "weights of the terms of the 'balance' objective",
    "devices": "torch device of each topology node: a dict node -> device, a list (one per chain stage) or one device",
    "inner": f"backend that compiles each stage: one of {', '.join(INNER_BACKENDS)} (default inductor, as torch.compile; eager for debugging)",
    "codec": "compression of tensors between stages: None, 'fp16', 'bf16' or 'int8'",
    "solver": f"one of {', '.join(SOLVERS)} (default milp; dp on a single device)",
    "time_limit": "seconds the MILP solver may take",
    "memory_rule": "'liveness' (default) or 'sum'",
}

_MAX_PLANS = 32
_PLANS: list["Plan"] = []
# solved placements by (costs of the graph, planning options): a recompiled graph with the same costs reuses one
_SOLVED: dict[tuple, Partition] = {}
_MAX_SOLVED = 64


class BackendError(ValueError):
    """A bad option, device or topology given to the backend; the message starts with ``rotafx:``."""


@dataclass
class Plan:
    """What the backend did with one captured graph: the partition, the devices and the running module."""

    partition: Partition
    devices: tuple[torch.device, ...]  # torch device of each chain stage
    module: PipelineModule
    codec: str | None
    inner: str
    graph_index: int = 0
    reused: bool = False  # the placement of an earlier graph with the same costs, not solved again
    size_hints: dict[str, int] = dataclasses.field(default_factory=dict)  # dynamic sizes -> the value they were costed at

    @property
    def profile(self) -> ModelProfile:
        return self.partition.profile

    @property
    def stages(self) -> list[Any]:
        """The non-empty stages, in chain order (``.index``, ``.node``, ``.device``, ``.module``)."""
        return self.module.stages

    @property
    def rewritten(self) -> Rewritten:
        return self.module.rewritten

    def table(self) -> str:
        """One row per non-empty stage: its node, device, layers, parameters and what it sends."""
        prof = self.partition.profile
        rows = [f"{'stage':>5}  {'node':<12} {'device':<8} {'layers':<40} {'params':>10} {'weights MB':>10} {'transfers in':>12}"]
        received: dict[str, int] = {}
        for n in self.rewritten.program.graph.nodes:
            if n.op == "call_module":
                received[str(n.target)] = sum(1 for a in n.args if isinstance(a, fx.Node) and a in self.rewritten.transfers)
        for st in self.stages:
            layers = [l for l, s in enumerate(self.partition.stages) if s == st.index]
            names = prof.layers[layers[0]].name + (f" .. {prof.layers[layers[-1]].name}" if len(layers) > 1 else "")
            span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"{layers[0]}"
            params = sum(t.numel() for n, t in zip(st.weight_names, st.parameters()) if n in prof.param_names)
            wbytes = sum(t.numel() * t.element_size() for t in st.parameters())
            rows.append(f"{st.index:>5}  {st.node:<12} {str(st.device):<8} {(span + ' ' + names)[:40]:<40} "
                        f"{params:>10,} {wbytes / 1e6:>10.3f} {received.get(f'stage{st.index}', 0):>12}")
        return "\n".join(rows)

    def __str__(self) -> str:
        p = self.partition
        which = p.profile.name if p.profile.name.startswith("graph ") else f"{p.profile.name} (graph {self.graph_index})"
        sizes = (f", dynamic sizes costed at {', '.join(f'{k}={v}' for k, v in self.size_hints.items())}"
                 if self.size_hints else "")
        return (f"rotafx plan for {which}: {p.objective.name}, solver {p.solver} "
                f"({'reused, ' if self.reused else ''}{p.status}), codec {self.codec or 'none'}, inner {self.inner}, "
                f"{len(self.rewritten.transfers)} transfers{sizes}\n{self.table()}")


def last_plan() -> Plan | None:
    """The plan of the graph most recently compiled by the backend (or partitioned), or ``None``.

    A model with graph breaks gives one plan per captured graph: see :func:`plans`.
    """
    return _PLANS[-1] if _PLANS else None


def plans() -> list[Plan]:
    """The most recent plans, oldest first (at most 32 are kept)."""
    return list(_PLANS)


def _remember(plan: Plan) -> None:
    _PLANS.append(plan)
    del _PLANS[:-_MAX_PLANS]


# ---------------------------------------------------------------------------
# options


@dataclass
class _Config:
    """Validated options."""

    topology: Topology
    objective: str = "minimize_latency"
    objective_weights: Mapping[str, float] | None = None
    devices: Any = None
    inner: str = "inductor"
    codec: str | None = None
    solver: str | None = None
    time_limit: float = 60.0
    memory_rule: str = "liveness"

    @classmethod
    def make(cls, options: Mapping[str, Any]) -> "_Config":
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            known = "\n  ".join(f"{k}: {v}" for k, v in OPTIONS.items())
            raise BackendError(f"rotafx: unknown option(s) {unknown} for the rotastellar backend; the options are:\n  {known}")
        topo_spec = options.get("topology")
        try:
            topo = Topology.coerce(topo_spec if topo_spec is not None else LOCAL_TOPOLOGY)
        except (TopologyError, OSError) as e:
            raise BackendError(f"rotafx: option topology: {e}") from e
        objective = str(options.get("objective") or "minimize_latency")
        if objective not in OBJECTIVES:
            raise BackendError(f"rotafx: option objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        inner = str(options.get("inner") or "inductor")
        if inner not in INNER_BACKENDS:
            raise BackendError(f"rotafx: option inner={inner!r} is not supported; use one of {', '.join(INNER_BACKENDS)}")
        try:
            codec = check_codec(options.get("codec"))
        except ValueError as e:
            raise BackendError(f"rotafx: option codec: {str(e).removeprefix('rotafx: ')}") from None
        solver = options.get("solver")
        if solver is not None and solver not in SOLVERS:
            raise BackendError(f"rotafx: option solver={solver!r} is not known; use one of {', '.join(SOLVERS)}")
        time_limit = options.get("time_limit", 60.0)
        if not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or not time_limit > 0:
            raise BackendError(f"rotafx: option time_limit={time_limit!r} must be a positive number of seconds")
        rule = options.get("memory_rule", "liveness")
        if rule not in ("liveness", "sum"):
            raise BackendError(f"rotafx: option memory_rule={rule!r} is not known; use 'liveness' or 'sum'")
        cfg = cls(topology=topo, objective=objective, objective_weights=options.get("objective_weights"),
                  devices=options.get("devices"), inner=inner, codec=codec, solver=solver,
                  time_limit=float(time_limit), memory_rule=rule)
        if cfg.devices is not None:
            resolve_devices(topo, cfg.devices, None)  # fail now, not at the first compile
        return cfg


def torch_device(spec: Any, where: str) -> torch.device:
    """``spec`` as a torch device that exists on this machine, or a :class:`BackendError` saying why not."""
    try:
        d = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        kind = str(spec).split(":")[0]
        raise BackendError(f"rotafx: {where} = {spec!r}: {kind!r} is not a torch device type ({str(e).splitlines()[0]}); "
                           f"use 'cpu', 'cuda:0', ...") from None
    if d.type == "cpu":
        return torch.device("cpu")
    if d.type == "meta":
        raise BackendError(f"rotafx: {where} = {spec!r}: the meta device holds no data and cannot run a stage; use 'cpu' or 'cuda:0'")
    mod = getattr(torch, d.type, None)
    available = bool(mod is not None and hasattr(mod, "is_available") and mod.is_available())
    if not available:
        raise BackendError(f"rotafx: {where} = {spec!r}, but this machine has no {d.type} device "
                           f"(torch.{d.type}.is_available() is False); map that node to 'cpu' or to a device that exists")
    count = int(mod.device_count()) if hasattr(mod, "device_count") else 1
    index = d.index if d.index is not None else (int(mod.current_device()) if hasattr(mod, "current_device") else 0)
    if index >= count:
        raise BackendError(f"rotafx: {where} = {spec!r}, but this machine has {count} {d.type} device(s) "
                           f"({d.type}:0 .. {d.type}:{count - 1})")
    return torch.device(d.type, index)


def resolve_devices(topology: Topology, devices: Any, home: torch.device | None) -> tuple[torch.device, ...]:
    """The torch device of every chain stage, from the ``devices`` option (``None``: every node on ``home``)."""
    chain = topology.chain
    if devices is None:
        d = home or torch.device("cpu")
        return tuple(d for _ in chain)
    if isinstance(devices, (str, torch.device)):
        d = torch_device(devices, "devices")
        return tuple(d for _ in chain)
    if isinstance(devices, Mapping):
        unknown = sorted(set(map(str, devices)) - set(topology.devices))
        if unknown:
            raise BackendError(f"rotafx: devices names {unknown}, which are not nodes of the topology "
                               f"({', '.join(topology.devices)})")
        missing = [n for n in dict.fromkeys(chain) if n not in devices]
        if missing:
            raise BackendError(f"rotafx: devices gives no torch device for the node(s) {missing} of the chain "
                               f"{' -> '.join(chain)}; add e.g. {{{missing[0]!r}: 'cpu'}}")
        resolved = {n: torch_device(devices[n], f"devices[{n!r}]") for n in dict.fromkeys(chain)}
        return tuple(resolved[n] for n in chain)
    if isinstance(devices, Sequence):
        if len(devices) != len(chain):
            raise BackendError(f"rotafx: devices lists {len(devices)} devices but the chain has {len(chain)} stages "
                               f"({' -> '.join(chain)}); give one per stage or a dict node -> device")
        out = tuple(torch_device(d, f"devices[{i}] (node {chain[i]})") for i, d in enumerate(devices))
        for i, a in enumerate(chain):
            for j in range(i):
                if chain[j] == a and out[j] != out[i]:
                    raise BackendError(f"rotafx: node {a} appears twice in the chain but devices maps it to {out[j]} and {out[i]}")
        return out
    raise BackendError(f"rotafx: devices must be a dict node -> device, a list or a device, got {type(devices).__name__}")


# ---------------------------------------------------------------------------
# the pass order


def plan_graph(gm: fx.GraphModule, weights: Mapping[str, str], params: frozenset[str], values: Mapping[str, torch.Tensor],
               cfg: _Config, *, name: str, graph_index: int = 0, in_spec: Any = None, out_spec: Any = None) -> Plan:
    """annotate -> profile -> solve -> rewrite -> runtime, for one graph."""
    annotate(gm, weights)
    profile = profile_graph(gm, weights, params, name=name)
    solver = cfg.solver or ("dp" if len(cfg.topology.chain) == 1 else "milp")
    key = (cost_key(profile), repr(cfg.topology), cfg.objective, repr(cfg.objective_weights), cfg.codec, solver,
           cfg.time_limit, cfg.memory_rule)
    solved = _SOLVED.get(key)
    if solved is not None:
        part = dataclasses.replace(solved, profile=profile, _moves={})
        log.info("rotafx: %s has the costs of a graph planned before; reusing its placement", name)
    else:
        opt = PartitionOptimizer(solver=solver, time_limit=cfg.time_limit, codec=cfg.codec, memory_rule=cfg.memory_rule)
        try:
            part = opt.optimize(profile, cfg.topology, cfg.objective, weights=cfg.objective_weights)
        except InfeasibleError as e:
            raise BackendError(f"rotafx: the topology cannot hold {name}: {e}") from e
        _SOLVED[key] = dataclasses.replace(part, _moves={}, validation=None)  # a copy: move_layer() changes part
        while len(_SOLVED) > _MAX_SOLVED:
            del _SOLVED[next(iter(_SOLVED))]
    home = next((t.device for t in values.values()), None)
    for n in gm.graph.nodes:
        v = node_value(n)
        if n.op == "placeholder" and isinstance(v, torch.Tensor) and v.device.type != "meta":
            home = v.device
            break
    devices = resolve_devices(cfg.topology, cfg.devices, home)
    rw = rewrite(gm, stage_map([l.nodes for l in profile.layers], part.stages), devices, weights, values,
                 codec=cfg.codec, chain=cfg.topology.chain)
    module = PipelineModule(rw, inner=cfg.inner, in_spec=in_spec, out_spec=out_spec)
    plan = Plan(partition=part, devices=devices, module=module, codec=cfg.codec, inner=cfg.inner, graph_index=graph_index,
                reused=solved is not None, size_hints=_size_hints(gm))
    module.plan = plan
    _remember(plan)
    log.info("%s", plan)
    return plan


def _size_hints(gm: fx.GraphModule) -> dict[str, int]:
    """The symbolic sizes among the graph's inputs, with the value each was costed at."""
    hints: dict[str, int] = {}
    for n in gm.graph.nodes:
        v = node_value(n)
        if n.op == "placeholder" and isinstance(v, torch.SymInt) and v.node.hint is not None:
            hints[str(v)] = int(v.node.hint)
    return hints


def cost_key(profile: ModelProfile) -> tuple:
    """Everything about a profile that the solver reads: two graphs with equal keys get the same placement."""
    layers = tuple((l.name, l.params, l.flops, l.weight_bytes, l.activation_bytes, l.buffer_bytes, l.peak_bytes,
                    l.bytes_moved, tuple(sorted(l.work)), tuple(sorted(l.weight_names))) for l in profile.layers)
    boundaries = tuple(tuple(sorted((t.numel, t.itemsize, t.floating) for t in b)) for b in profile.boundaries)
    return (layers, boundaries, tuple(sorted(profile.weights.items())), profile.param_names)


# ---------------------------------------------------------------------------
# torch.compile


def _planning_adds_no_guards() -> contextlib.AbstractContextManager[None]:
    """Reading symbolic sizes to cost a graph must not specialise it.

    A graph dynamo captured with dynamic sizes is costed at their hints (the sizes of the
    call that made them dynamic); without this, each read of a size would add a guard
    and the next size would recompile and plan again.
    """
    fake_mode = torch._guards.detect_fake_mode()
    shape_env = getattr(fake_mode, "shape_env", None)
    return shape_env.suppress_guards() if shape_env is not None else contextlib.nullcontext()


_SOURCE_ROOT = re.compile(r"^[LG]\[['\"][^'\"]*['\"]\]")
_SOURCE_PART = re.compile(r"\._(?:modules|parameters|buffers)\[['\"]([^'\"]+)['\"]\]|\.(\w+)|\[(\d+)\]")


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
            qual = ".".join(a or b or c for a, b, c in _SOURCE_PART.findall(_SOURCE_ROOT.sub("", src))) or n.name
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
        self.config = _Config.make(self.options)
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
        cfg = _Config.make({**self.options, **options}) if options else self.config
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
        return FlatRunner(plan.module, input_positions, weight_positions)


def backend(**options: Any) -> RotaStellarBackend:
    """A configured backend for ``torch.compile``; options as in :data:`OPTIONS`.

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


# ---------------------------------------------------------------------------
# without torch.compile


def partition(model: torch.nn.Module, example_inputs: Any, *, example_kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> PipelineModule:
    """Trace ``model`` with ``torch.export``, plan it and return the rewritten module (no torch.compile).

    The module holds the weights, each on the device of the stage that uses it, and is
    called like ``model``. ``.stages`` lists the stages (``.device``, ``.node``,
    ``.parameters()``), ``.plan`` the :class:`Plan`. Options as in :data:`OPTIONS`, except
    that ``inner`` defaults to ``eager`` here: the stages run as the exported ATen graph.

    >>> import torch, rotafx
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(4, 8)
    >>> pm = rotafx.partition(m, (x,))
    >>> torch.equal(pm(x), m(x)), len(pm.stages)
    (True, 1)
    """
    cfg = _Config.make({"inner": "eager", **options})
    args = example_inputs if isinstance(example_inputs, tuple) else (
        tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,))
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, dict(example_kwargs or {}), strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackendError(f"rotafx: torch.export could not trace {type(model).__name__}: {first}\n"
                           f"Check that example_inputs match forward()'s signature, or use torch.compile with "
                           f"backend='rotastellar', which handles graph breaks") from e
    sig = ep.graph_signature
    mutated = {**sig.buffers_to_mutate, **getattr(sig, "user_inputs_to_mutate", {})}
    if mutated:
        raise BackendError(f"rotafx: {type(model).__name__} writes to {sorted(mutated.values())} in forward() "
                           f"(batch norm in training mode?); call model.eval() before partitioning")
    weights = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    values: dict[str, torch.Tensor] = {**ep.constants}
    values.update(dict(model.named_buffers(remove_duplicate=False)))
    values.update(dict(model.named_parameters(remove_duplicate=False)))
    missing = [w for w in weights.values() if w not in values]
    values.update({k: v for k, v in ep.state_dict.items() if k in missing})
    plan = plan_graph(ep.graph_module, weights, frozenset(sig.inputs_to_parameters.values()), values, cfg,
                      name=type(model).__name__, in_spec=ep.call_spec.in_spec, out_spec=ep.call_spec.out_spec)
    return plan.module


def partitioned(topology: Any = None, objective: str = "minimize_latency", *, fullgraph: bool = False,
                **options: Any) -> Callable[[type], type]:
    """Class decorator: every instance of the ``nn.Module`` runs through ``torch.compile`` with the rotastellar backend.

    Each instance gets its own backend; ``instance.rotafx_plans`` lists its plans.

    >>> import torch, rotafx
    >>> @rotafx.partitioned(objective="minimize_latency", fullgraph=True)
    ... class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return self.fc(x).relu()
    >>> net = Net()
    >>> _ = net(torch.randn(3, 4))
    >>> len(net.rotafx_plans)
    1
    """
    be_options = {"topology": topology, "objective": objective, **options}
    _Config.make(be_options)  # validate at decoration time

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
            raise TypeError(f"rotafx: @partitioned decorates an nn.Module class, not {cls!r}")
        original = cls.forward

        @functools.wraps(original)
        def forward(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            state = self.__dict__.get("_rotafx_state")
            if state is None:
                be = RotaStellarBackend(**be_options)
                compiled = torch.compile(types.MethodType(original, self), backend=be, fullgraph=fullgraph)
                state = self.__dict__["_rotafx_state"] = (be, compiled)
            return state[1](*args, **kwargs)

        def rotafx_plans(self: torch.nn.Module) -> list[Plan]:
            state = self.__dict__.get("_rotafx_state")
            return list(state[0].plans) if state else []

        cls.forward = forward  # type: ignore[attr-defined]
        cls.rotafx_plans = property(rotafx_plans)  # type: ignore[attr-defined]
        return cls

    return decorate
