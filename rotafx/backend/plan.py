"""The pass order, written once: annotate -> profile -> solve -> rewrite -> runtime, for one captured graph."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.fx as fx

from ..frontends.pytorch import annotate, node_value, read_graph
from ..profile import ModelProfile
from ..rewrite import Rewritten, home_device, rewrite, stage_map
from ..runtime.local import PipelineModule
from ..solve import InfeasibleError, Partition, PartitionOptimizer
from .cache import PLANS, SOLVED
from .devices import BackendError, resolve_devices
from .options import Config

__all__ = ["Plan", "plan_graph", "cost_key", "last_plan", "plans"]

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
               cfg: Config, *, name: str, graph_index: int = 0, in_spec: Any = None, out_spec: Any = None) -> Plan:
    """annotate -> profile -> solve -> rewrite -> runtime, for one graph.

    ``weights`` maps weight placeholders to weight names, ``params`` names the parameters
    among them and ``values`` gives the tensor behind each weight name.
    """
    annotate(gm, weights)
    profile = ModelProfile.from_graph(read_graph(gm, weights, params, name=name))
    solver = cfg.solver or ("dp" if len(cfg.topology.chain) == 1 else "milp")
    key = (cost_key(profile), repr(cfg.topology), cfg.objective, repr(cfg.objective_weights), cfg.codec, solver,
           cfg.time_limit, cfg.memory_rule)
    part = SOLVED.get(key, profile)
    reused = part is not None
    if part is not None:
        log.info("rotafx: %s has the costs of a graph planned before; reusing its placement", name)
    else:
        opt = PartitionOptimizer(solver=solver, time_limit=cfg.time_limit, codec=cfg.codec, memory_rule=cfg.memory_rule)
        try:
            part = opt.optimize(profile, cfg.topology, cfg.objective, weights=cfg.objective_weights)
        except InfeasibleError as e:
            raise BackendError(f"rotafx: the topology cannot hold {name}: {e}") from e
        SOLVED.put(key, part)
    devices = resolve_devices(cfg.topology, cfg.devices, home_device(gm.graph.nodes, values))
    rw = rewrite(gm, stage_map([l.ops for l in profile.layers], part.stages), devices, weights, values,
                 codec=cfg.codec, chain=cfg.topology.chain)
    module = PipelineModule(rw, inner=cfg.inner, in_spec=in_spec, out_spec=out_spec)
    plan = Plan(partition=part, devices=devices, module=module, codec=cfg.codec, inner=cfg.inner, graph_index=graph_index,
                reused=reused, size_hints=_size_hints(gm))
    module.plan = plan
    PLANS.add(plan)
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
                    l.bytes_moved, tuple(sorted(l.work)), tuple(sorted(l.weight_names)), l.op_costs, l.measured_ms)
                   for l in profile.layers)
    boundaries = tuple(tuple(sorted((t.numel, t.itemsize, t.floating) for t in b)) for b in profile.boundaries)
    return (layers, boundaries, tuple(sorted(profile.weights.items())), profile.param_names, str(profile.dtype),
            profile.measured_on)
