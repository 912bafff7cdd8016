"""Without ``torch.compile``: :func:`partition` (``torch.export`` + the same pass order) and the :func:`partitioned` class decorator."""

from __future__ import annotations

import functools
import os
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..frontends.pytorch import as_args
from ..frontends.pytorch import trace as trace_model
from ..layers import ProfileError
from ..objective import GENERATION_OBJECTIVES
from ..profile import Generation, ModelProfile
from ..solve import Partition
from ..runtime.local import PipelineModule
from .devices import BackendError
from .dynamo import RotaStellarBackend
from .options import Config
from .plan import Plan, plan_graph, solve

__all__ = ["partition", "partitioned", "PartitionSource"]


@dataclass(frozen=True)
class PartitionSource:
    """What :func:`partition` was given, kept on the module it returns (``pipeline.source``) so that
    :func:`rotafx.generate` can plan the model's decoder with the same options and the same cut."""

    model: torch.nn.Module
    options: Mapping[str, Any]
    example_inputs: tuple
    example_kwargs: Mapping[str, Any]


def partition(model: torch.nn.Module, example_inputs: Any, *, example_kwargs: Mapping[str, Any] | None = None,
              generation: Generation | Mapping[str, int] | None = None, trace: str | os.PathLike[str] | None = None,
              **options: Any) -> PipelineModule:
    """Trace ``model`` with ``torch.export``, plan it and return the rewritten module (no torch.compile).

    The module holds the weights, each on the device of the stage that uses it, and is
    called like ``model``. ``.stages`` lists the stages (``.device``, ``.node``,
    ``.parameters()``), ``.plan`` the :class:`~rotafx.backend.plan.Plan`. Options as in
    :data:`~rotafx.backend.options.OPTIONS`, except
    that ``inner`` defaults to ``eager`` here: the stages run as the exported ATen graph.

    ``generation`` plans a causal LM for generating tokens (:func:`rotafx.generate`): a
    :class:`~rotafx.profile.Generation` or a dict with ``new_tokens`` and optionally
    ``prompt_len`` and ``batch_size`` (default: the example's token ids) and ``sequences``. The
    layers are then placed by the optimizer on :meth:`ModelProfile.for_generation` (each node
    keeps room for the KV cache of its layers at the longest context, and the generation
    objectives ``minimize_tpot``, ``maximize_tokens_per_s``, ... apply), and that partition, with
    its TTFT/TPOT estimate, is ``.generation_plan``. A generation objective needs ``generation``.

    ``trace="run.json"`` records every call as Chrome trace events (:meth:`PipelineModule.trace`).

    >>> import torch, rotafx
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(4, 8)
    >>> pm = rotafx.partition(m, (x,))
    >>> torch.equal(pm(x), m(x)), len(pm.stages)
    (True, 1)
    """
    cfg = Config.make({"inner": "eager", **options})
    if not isinstance(model, torch.nn.Module):
        raise BackendError(f"rotafx: partition takes a torch.nn.Module, got {type(model).__name__}; wrap a function in "
                           f"a module, or compile it with torch.compile(fn, backend='rotastellar')")
    try:
        traced = trace_model(model, example_inputs, example_kwargs)
    except ProfileError as e:
        raise BackendError(str(e)) from e.__cause__
    if traced.mutated:
        raise BackendError(f"rotafx: {type(model).__name__} writes to {list(traced.mutated)} in forward() "
                           f"(batch norm in training mode?); call model.eval() before partitioning")
    planned = assignment = None
    if generation is not None or cfg.objective in GENERATION_OBJECTIVES:
        planned = _plan_generation(model, cfg, _workload(generation, cfg.objective, as_args(example_inputs),
                                                          example_kwargs or {}))
        assignment = _by_name(planned)
    plan = plan_graph(traced.graph_module, traced.weights, traced.params, traced.values, cfg,
                      name=type(model).__name__, in_spec=traced.in_spec, out_spec=traced.out_spec,
                      assignment=assignment)
    if planned is not None:
        plan.module.__dict__["generation_plan"] = planned
    if trace is not None:
        plan.module.trace(trace)
    _warn_on_running_statistics(model, plan)
    # kept out of the module tree (state_dict() lists the stages' weights once)
    plan.module.__dict__["source"] = PartitionSource(model, dict(options), as_args(example_inputs),
                                                     dict(example_kwargs or {}))
    return plan.module


def _workload(generation: Any, objective: str, args: tuple, kwargs: Mapping[str, Any]) -> Generation:
    """The generation workload ``partition`` was asked to plan for, its defaults from the example's token ids."""
    if isinstance(generation, Generation):
        return generation
    if generation is None:
        raise BackendError(f"rotafx: objective {objective!r} prices token generation; say what to generate: "
                           f"generation={{'new_tokens': 128}} (prompt_len and batch_size default to the example's)")
    if not isinstance(generation, Mapping):
        raise BackendError(f"rotafx: generation must be a rotafx.profile.Generation or a dict with new_tokens (and "
                           f"prompt_len, batch_size, sequences), got {type(generation).__name__}")
    keys = ("prompt_len", "new_tokens", "batch_size", "sequences")
    unknown = sorted(set(generation) - set(keys))
    if unknown or "new_tokens" not in generation:
        raise BackendError(f"rotafx: generation={dict(generation)!r}: " + (
            f"unknown key(s) {unknown}; " if unknown else "new_tokens is missing; ") + f"its keys are {', '.join(keys)}")
    ids = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() >= 2
                and not a.is_floating_point()), None)
    given = dict(generation)
    if ids is not None:
        given.setdefault("batch_size", int(ids.shape[0]))
        given.setdefault("prompt_len", int(ids.shape[1]))
    if "prompt_len" not in given:
        raise BackendError("rotafx: generation needs prompt_len: the example has no [batch, tokens] tensor of ids")
    try:
        return Generation(**given)
    except ProfileError as e:
        raise BackendError(f"rotafx: generation={dict(generation)!r}: {str(e).removeprefix('rotafx: ')}") from None


def _plan_generation(model: torch.nn.Module, cfg: Config, gen: Generation) -> Partition:
    """The optimizer's partition of the model's prefill and decode step, its KV cache in every node's memory."""
    try:
        profile = ModelProfile.for_generation(model, prompt_len=gen.prompt_len, new_tokens=gen.new_tokens,
                                              batch_size=gen.batch_size, sequences=gen.sequences)
    except ProfileError as e:
        raise BackendError(str(e)) from e.__cause__
    solver = cfg.solver or ("dp" if len(cfg.topology.chain) == 1 else "milp")
    return solve(profile, cfg, solver, f"{type(model).__name__} generating {gen.new_tokens} tokens")


def _by_name(planned: Partition) -> Callable[[ModelProfile], list[int]]:
    """Place each layer of a graph's profile on the stage ``planned`` gave the layer of the same name; a layer
    it does not name goes with the layer before it."""
    stage_of = {l.name: int(s) for l, s in zip(planned.profile.layers, planned.stages)}

    def assign(profile: ModelProfile) -> list[int]:
        if not any(l.name in stage_of for l in profile.layers):
            raise BackendError(f"rotafx: the generation profile's layers ({', '.join(list(stage_of)[:4])}, ...) are "
                               f"not the partitioned graph's ({', '.join(l.name for l in profile.layers[:4])}, ...)")
        out, last = [], int(planned.stages[0])
        for layer in profile.layers:
            last = max(last, stage_of.get(layer.name, last))
            out.append(last)
        return out

    return assign


def _warn_on_running_statistics(model: torch.nn.Module, plan: Plan) -> None:
    """A batch norm in training mode updates its running statistics in the stage that runs it: the model's own
    buffers when the stage is on their device (the stage holds those very tensors), a copy on any other."""
    training = [name for name, m in model.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats]
    if not training:
        return
    own = dict(model.named_buffers(remove_duplicate=False))
    moved = sorted({f"{st.node} ({st.device})" for st in plan.stages
                    for w, t in zip(st.weight_names, st.parameters())
                    if w.endswith(("running_mean", "running_var")) and own.get(w) is not t})
    if moved:
        warnings.warn(f"rotafx: {type(model).__name__} is in training mode: {', '.join(training[:3])}"
                      f"{' ...' if len(training) > 3 else ''} update running statistics; the stages on {', '.join(moved)} "
                      f"update their own copies, not the model's buffers. Call model.eval() to partition for inference",
                      stacklevel=3)


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
    Config.make(be_options)  # validate at decoration time

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
