"""Load a plan directory: every stage's program read and checked against ``plan.json``, in this process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..devices import existing_device
from ..runtime.loaded import CachedStage, LoadedPipeline
from .archive import read_program
from .schema import PlanError, PlanSpec, StageSpec, TensorSpec, read_plan

__all__ = ["load", "LoadedStage", "load_cached_stage"]


class LoadedStage(torch.nn.Module):
    """One stage of a plan, loaded from its ``.pt2``: call it with its inputs, get the tuple of its outputs.

    ``spec`` is its :class:`StageSpec`, ``plan`` the whole :class:`PlanSpec`,
    ``program`` the ``ExportedProgram``.
    """

    def __init__(self, plan: PlanSpec, spec: StageSpec, program: Any, device: torch.device) -> None:
        super().__init__()
        self.plan = plan
        self.spec = spec
        self.program = program
        self.device = device
        self.module = program.module()

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def node(self) -> str:
        return self.spec.node

    @property
    def input_specs(self) -> list[TensorSpec]:
        """The tensors it takes (its constant inputs, baked into the program, left out)."""
        return [self.plan.values[v] for v in self.spec.inputs if v in self.plan.values]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [self.plan.values[v] for v in self.spec.outputs]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def load(path: str | os.PathLike[str], stage: int | None = None, *, device: Any = None,
         devices: Sequence[Any] | Mapping[str, Any] | None = None, verify: bool = True,
         emulate_links: bool = False, trace: str | os.PathLike[str] | None = None) -> "LoadedPipeline | LoadedStage":
    """Load a plan directory: the whole pipeline in this process, or with ``stage=i`` stage ``i`` alone.

    ``device`` puts every stage on one torch device, ``devices`` gives one per stage (a
    list, or a dict node -> device); by default each stage goes where it was exported.
    ``verify`` checks each program file's sha256 against ``plan.json``. Every stage is
    read and checked before anything is returned: a newer schema, a missing file or a
    program that does not match the plan raises :class:`PlanError`.
    ``emulate_links`` makes the pipeline wait, at each hop, as long as the topology's
    links would take (see :mod:`rotafx.runtime.links`). ``trace="run.json"`` records every call of the
    pipeline as Chrome trace events (:meth:`LoadedPipeline.trace`).
    """
    plan = read_plan(path)
    if stage is not None:
        if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < plan.num_stages:
            raise PlanError(f"rotafx: stage must be an integer 0..{plan.num_stages - 1} (the plan has "
                            f"{plan.num_stages} stages), got {stage!r}")
        return _load_stage(plan, plan.stages[stage], _stage_device(plan, plan.stages[stage], device, devices), verify)
    where = [_stage_device(plan, s, device, devices) for s in plan.stages]
    loaded = [_load_stage(plan, s, d, verify) for s, d in zip(plan.stages, where)]
    cached = [load_cached_stage(plan, s.index, d, verify) for s, d in zip(plan.stages, where)] if plan.generation else []
    pipe = LoadedPipeline(plan, loaded, emulate_links=emulate_links, cached_stages=cached)
    if trace is not None:
        pipe.trace(trace)
    return pipe


def load_cached_stage(plan: PlanSpec, stage: int, device: torch.device, verify: bool = True) -> CachedStage:
    """Stage ``stage``'s prefill and decode programs (``plan.generation``), read and checked like a stage's program,
    each cache buffer ``plan.json`` names found in both with its stated shape."""
    gen = plan.generation
    assert gen is not None
    progs = []
    for kind in ("prefill", "decode"):
        sub = gen.program(kind)
        sub.path = plan.path
        s = sub.stages[stage]
        st = _load_stage(sub, s, device, verify, f"{kind} program")
        bufs = dict(st.module.named_buffers())
        for name, spec in s.cache:
            if name not in bufs or not spec.matches(bufs[name]):
                got = TensorSpec.of(bufs[name]).describe() if name in bufs else "nothing"
                raise PlanError(f"rotafx: stage {stage} ({s.node}): plan.json says its {kind} program {s.file} keeps "
                                f"the KV cache {name!r} {spec.describe()}, but the program holds {got} there; the plan "
                                f"was altered or comes from another export: copy the whole plan directory again")
        progs.append(st)
    return CachedStage(progs[0], progs[1], gen.prefill.stages[stage].cache, device)


def _stage_device(plan: PlanSpec, s: StageSpec, device: Any, devices: Any) -> torch.device:
    if device is not None and devices is not None:
        raise PlanError("rotafx: give device or devices, not both")
    if devices is not None:
        if isinstance(devices, Mapping):
            unknown = sorted(set(map(str, devices)) - {st.node for st in plan.stages})
            if unknown:
                raise PlanError(f"rotafx: devices names node(s) {unknown} that run no stage of this plan; its nodes "
                                f"are {[st.node for st in plan.stages]}")
            spec = devices.get(s.node, s.device)
            return existing_device(spec, f"devices[{s.node!r}]" if s.node in devices else
                                   f"stage {s.index}'s device (as exported)", PlanError)
        if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence):
            raise PlanError(f"rotafx: devices must be a list (one device per stage) or a dict node -> device, "
                            f"got {type(devices).__name__}")
        if len(devices) != plan.num_stages:
            raise PlanError(f"rotafx: devices lists {len(devices)} devices but the plan has {plan.num_stages} stages")
        return existing_device(devices[s.index], f"devices[{s.index}] (node {s.node})", PlanError)
    if device is not None:
        return existing_device(device, "device", PlanError)
    return existing_device(s.device, f"stage {s.index}'s device (as exported; pass device= or devices= to move it)",
                           PlanError)


def stage_file(plan: PlanSpec, s: StageSpec, what: str = "program") -> Path:
    """The stage's program file: a plain file inside the plan directory (a name with a directory part, an absolute
    path, ``..`` or a link out of the directory is refused: the plan may come from someone else)."""
    assert plan.path is not None
    root = plan.path.resolve()
    name = Path(s.file)
    f = (root / name).resolve()
    if name.is_absolute() or len(name.parts) != 1 or name.name in ("", ".", "..") or f.parent != root:
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): plan.json names the {what} {s.file!r}, which is not a "
                        f"file of the plan directory {root}; a plan's files are plain names next to plan.json")
    if not f.is_file():
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): its {what} {plan.path / s.file} is missing; the plan "
                        f"lists {plan.num_stages} stage files ({', '.join(x.file for x in plan.stages)}); copy it next to "
                        f"plan.json")
    return f


def _load_stage(plan: PlanSpec, s: StageSpec, device: torch.device, verify: bool, what: str = "program") -> LoadedStage:
    f = stage_file(plan, s, what)
    ep = read_program(f, s.sha256 if verify else None, f"stage {s.index} ({s.node}){'' if what == 'program' else ' ' + what}")
    sig = ep.graph_signature
    user_in = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in set(sig.user_inputs)]
    want = [None if v in plan.constants else plan.values[v] for v in s.inputs]
    got = [TensorSpec.of(n.meta["val"]) if isinstance(n.meta.get("val"), torch.Tensor) else None for n in user_in]
    if got != want or len(sig.user_outputs) != len(s.outputs):
        raise PlanError(f"rotafx: stage {s.index} ({s.node}): {f} does not match plan.json: the program takes "
                        f"{[g.describe() if g else '?' for g in got]} and returns {len(sig.user_outputs)} values, the plan "
                        f"says it takes {[w.describe() if w else 'a constant' for w in want]} and returns {len(s.outputs)}")
    if torch.device(s.device) != device:
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, device)
    return LoadedStage(plan, s, ep, device)
