"""The pass order, written once: annotate -> profile -> solve -> rewrite -> runtime, for one captured graph."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx

from ..frontends.pytorch import annotate, node_value, read_graph
from ..costmodel import CostTables
from ..estimate import evaluate
from ..objective import GENERATION_OBJECTIVES, objective
from ..profile import ModelProfile
from ..rewrite import Rewritten, home_device, rewrite, stage_map
from ..runtime.local import PipelineModule
from ..solve import InfeasibleError, Partition, PartitionOptimizer
from ..placement import memory_issues
from .cache import PLANS, SOLVED
from .devices import BackendError, resolve_devices
from .options import Config

__all__ = ["Plan", "plan_graph", "fixed_partition", "cost_key", "last_plan", "plans"]

log = logging.getLogger("rotafx")


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
    return PLANS.last()


def plans() -> list[Plan]:
    """The most recent plans, oldest first (at most 32 are kept)."""
    return PLANS.all()


def plan_graph(gm: fx.GraphModule, weights: Mapping[str, str], params: frozenset[str], values: Mapping[str, torch.Tensor],
               cfg: Config, *, name: str, graph_index: int = 0, in_spec: Any = None, out_spec: Any = None,
               assignment: Callable[[ModelProfile], Sequence[int]] | None = None,
               state: frozenset[str] = frozenset()) -> Plan:
    """annotate -> profile -> solve -> rewrite -> runtime, for one graph.

    ``weights`` maps weight placeholders to weight names, ``params`` names the parameters
    among them and ``values`` gives the tensor behind each weight name.

    ``assignment`` (internal: the programs :func:`rotafx.generate` builds) places the layers
    itself instead of the solver: it is given the graph's profile and returns the chain stage
    of every layer; each device's memory is still checked (:func:`fixed_partition`), and the
    plan is not added to :func:`plans`. ``state`` names the weights that are a KV cache, for
    that check's message.
    """
    annotate(gm, weights)
    # runs_as "modules": rotafx's in-process pipelines (the backend's, partition's) measured at about the eager
    # model's speed; what export writes for rotafx.load is priced again as programs (plan/write.py)
    profile = ModelProfile.from_graph(read_graph(gm, weights, params, name=name))
    if cfg.inner == "inductor":  # the stages run as inductor's code: priced so where the device measured it
        profile = dataclasses.replace(profile, compiled=True)
    if assignment is not None:
        part = fixed_partition(profile, cfg, assignment(profile), {n: values[n] for n in state if n in values})
        return _run(gm, weights, values, cfg, profile, part, graph_index=graph_index, reused=False, in_spec=in_spec,
                    out_spec=out_spec, record=False)
    solver = cfg.solver or ("dp" if len(cfg.topology.chain) == 1 else "milp")
    key = (cost_key(profile), repr(cfg.topology), cfg.objective, repr(cfg.objective_weights), cfg.codec, solver,
           cfg.time_limit, cfg.memory_rule)
    part = SOLVED.get(key, profile)
    reused = part is not None
    if part is not None:
        log.info("rotafx: %s has the costs of a graph planned before; reusing its placement", name)
    else:
        part = solve(profile, cfg, solver, name)
        SOLVED.put(key, part)
    return _run(gm, weights, values, cfg, profile, part, graph_index=graph_index, reused=reused, in_spec=in_spec,
                out_spec=out_spec, record=True)


def solve(profile: ModelProfile, cfg: Config, solver: str, name: str) -> Partition:
    """The optimizer's partition of ``profile`` under the options; an infeasible topology is a :class:`BackendError`."""
    opt = PartitionOptimizer(solver=solver, time_limit=cfg.time_limit, codec=cfg.codec, memory_rule=cfg.memory_rule)
    try:
        return opt.optimize(profile, cfg.topology, cfg.objective, weights=cfg.objective_weights)
    except InfeasibleError as e:
        raise BackendError(f"rotafx: the topology cannot hold {name}: {e}") from e


def _run(gm: fx.GraphModule, weights: Mapping[str, str], values: Mapping[str, torch.Tensor], cfg: Config,
         profile: ModelProfile, part: Partition, *, graph_index: int, reused: bool, in_spec: Any, out_spec: Any,
         record: bool) -> Plan:
    """rewrite -> runtime for a placed graph."""
    devices = resolve_devices(cfg.topology, cfg.devices, home_device(gm.graph.nodes, values))
    rw = rewrite(gm, stage_map([l.ops for l in profile.layers], part.stages), devices, weights, values,
                 codec=cfg.codec, chain=cfg.topology.chain)
    module = PipelineModule(rw, inner=cfg.inner, in_spec=in_spec, out_spec=out_spec)
    plan = Plan(partition=part, devices=devices, module=module, codec=cfg.codec, inner=cfg.inner, graph_index=graph_index,
                reused=reused, size_hints=_size_hints(gm))
    module.plan = plan
    if record:
        PLANS.add(plan)
    log.info("%s", plan)
    return plan


def fixed_partition(profile: ModelProfile, cfg: Config, stages: Sequence[int],
                    cache: Mapping[str, torch.Tensor] | None = None) -> Partition:
    """The :class:`~rotafx.solve.Partition` that puts layer ``l`` on chain stage ``stages[l]``, no solver asked.

    Args:
        profile: the graph's profile.
        cfg: the options (topology, objective, codec, memory rule).
        stages: the chain stage of every layer, non-decreasing.
        cache: the KV cache tensors among the weights, by name (counted in the memory of the
            layers that hold them; named apart in the error).

    Returns:
        A partition with ``status``, ``solver`` and ``method`` ``"fixed"``, estimated by the cost model.

    Raises:
        BackendError: ``stages`` is not one chain stage per layer, in order; or a device's memory
            cannot hold its layers (weights, KV cache and live activations), naming the node, the
            bytes and what to change.
    """
    stages = tuple(int(s) for s in stages)
    topo, L = cfg.topology, len(profile.layers)
    if len(stages) != L or any(not 0 <= s < len(topo.chain) for s in stages) or any(
            b < a for a, b in zip(stages, stages[1:])):
        raise BackendError(f"rotafx: a fixed placement gives {len(stages)} chain stages for {L} layers of "
                           f"{profile.name} ({list(stages)[:12]}); give one stage in 0..{len(topo.chain) - 1} per "
                           f"layer, non-decreasing along the chain")
    tables = CostTables(profile, topo, codec=cfg.codec, memory_rule=cfg.memory_rule)
    cache = dict(cache or {})
    counted: set[str] = set()
    cache_bytes = []
    for layer in profile.layers:  # each cache tensor once, in the first layer that names it
        mine = [n for n in layer.weight_names if n in cache and n not in counted]
        counted.update(mine)
        cache_bytes.append(float(sum(cache[n].numel() * cache[n].element_size() for n in mine)))
    issues = memory_issues(tables, stages, cache_bytes)
    if issues:
        raise BackendError(f"rotafx: {profile.name} placed as the pipeline is does not fit: " + "; ".join(issues) +
                           ". Generate fewer tokens, use a smaller batch, or give the node(s) more memory")
    obj = objective(cfg.objective, cfg.objective_weights)
    est = evaluate(tables, stages)
    # a generation objective has no value on one forward pass (a program of rotafx.generate, a pipeline placed by its
    # generation plan): nan, as a fixed placement's gap
    value = obj.value(est) if profile.generation is not None or obj.name not in GENERATION_OBJECTIVES else math.nan
    return Partition(profile=profile, topology=topo, objective=obj, stages=stages, estimate=est,
                     objective_value=value, status="fixed", gap=math.nan, solver="fixed", solve_seconds=0.0,
                     codec=cfg.codec, memory_rule=cfg.memory_rule, method="fixed")


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
                    l.bytes_moved, tuple(sorted(l.work)), tuple(sorted(l.weight_names)), l.op_costs, l.measured_ms)
                   for l in profile.layers)
    boundaries = tuple(tuple(sorted((t.numel, t.itemsize, t.floating) for t in b)) for b in profile.boundaries)
    return (layers, boundaries, tuple(sorted(profile.weights.items())), profile.param_names, str(profile.dtype),
            profile.measured_on, profile.compiled, profile.runs_as)
