"""Run a loaded plan in one process: its stages in order, ``rotafx::transfer`` between them; and its generation programs, a KV cache per sequence slot on each stage."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils._pytree import tree_unflatten

from ..ops import transfer
from ..plan.schema import PlanSpec, TensorSpec, check_request
from .links import hop_delay_s
from .tracing import StageTrack, Trace, link_track, predicted_spans, stage_track

__all__ = ["LoadedPipeline", "CachedStage", "run_chain"]


def run_chain(plan: PlanSpec, stages: Sequence[Callable[..., tuple]], devices: Sequence[torch.device],
              flat: Sequence[torch.Tensor], hop_s: Sequence[float] | None = None,
              trace: tuple[Trace, int] | None = None) -> list[Any]:
    """Run ``plan``'s stages (``stages[i]`` called with stage ``i``'s inputs, on ``devices[i]``) on the flat input
    tensors; the flat outputs, each tensor on the device of the stage that made it, the constants as they are.
    ``hop_s``: the time to wait at each hop (link emulation), or None. ``trace``: a trace and the request's
    number: each hop's wait and moves, and each stage's compute, are recorded in it."""
    env: dict[str, Any] = dict(zip(plan.tensor_inputs, flat))
    first_read: set[str] = set()
    prev = "input"

    def hop(into: str, t0: float, what: str) -> None:
        if trace is not None:
            trace[0].span(link_track(prev, into), what, trace[1], t0, trace[0].now())

    for spec, call, dev in zip(plan.stages, stages, devices):
        t0 = trace[0].now() if trace is not None else 0.0
        if hop_s is not None:
            time.sleep(hop_s[spec.index])
            hop(spec.node, t0, "emulated link delay")
        t0 = trace[0].now() if trace is not None else 0.0
        ins = []
        for v in spec.inputs:
            if v in plan.constants:
                ins.append(plan.constants[v])
            elif v in plan.inputs and v not in first_read:
                first_read.add(v)
                env[v] = env[v].to(dev)
                ins.append(env[v])
            else:
                ins.append(transfer(env[v], dev, plan.codec))
        hop(spec.node, t0, "transfer")
        t0 = trace[0].now() if trace is not None else 0.0
        with torch.no_grad():
            outs = call(*ins)
        if trace is not None:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            trace[0].span(stage_track(spec.chain_index, spec.node, dev), "compute", trace[1], t0, trace[0].now())
        env.update(zip(spec.outputs, outs))
        prev = spec.node
    if hop_s is not None:
        t0 = trace[0].now() if trace is not None else 0.0
        time.sleep(hop_s[-1])
        hop("output", t0, "emulated link delay")
    return [plan.constants[v] if v in plan.constants else env[v] for v in plan.outputs]


class CachedStage:
    """One stage's prefill and decode programs (loaded stages) and a KV cache per sequence slot.

    ``run(kind, slot, *inputs)`` points the program's cache buffers at ``slot``'s cache (made,
    zeroed, at the slot's first call) and runs it; ``free(slot)`` drops that cache. The two
    programs share their weights (same name, shape and values): the stage holds them once.
    """

    def __init__(self, prefill: torch.nn.Module, decode: torch.nn.Module, cache: Sequence[tuple[str, TensorSpec]],
                 device: torch.device) -> None:
        self.programs = {"prefill": prefill, "decode": decode}
        self.cache = tuple(cache)
        self.device = device
        self.slots: dict[int, list[torch.Tensor]] = {}
        held = dict(prefill.module.named_parameters())
        held.update(prefill.module.named_buffers())
        for name, t in [*decode.module.named_parameters(), *decode.module.named_buffers()]:
            mine = held.get(name)
            if mine is not None and mine is not t and mine.shape == t.shape and mine.dtype == t.dtype and \
                    torch.equal(mine, t):
                _assign(decode.module, name, mine)

    def run(self, kind: str, slot: int, *inputs: Any) -> tuple[torch.Tensor, ...]:
        """Run the ``"prefill"`` or ``"decode"`` program of sequence slot ``slot``."""
        tensors = self.slots.get(slot)
        if tensors is None:
            tensors = self.slots[slot] = [torch.zeros(s.shape, dtype=s.torch_dtype, device=self.device)
                                          for _, s in self.cache]
        prog = self.programs[kind]
        for (name, _), t in zip(self.cache, tensors):
            _assign(prog.module, name, t)
        return prog(*inputs)

    def free(self, slot: int) -> None:
        """Drop sequence slot ``slot``'s cache (nothing when it has none)."""
        self.slots.pop(slot, None)


def _assign(module: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    """Make ``module``'s parameter or buffer ``name`` (a dotted path) the tensor ``t``."""
    owner, _, leaf = name.rpartition(".")
    mod = module.get_submodule(owner) if owner else module
    if leaf in mod._parameters:
        mod._parameters[leaf] = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(t, requires_grad=False)
    else:
        mod._buffers[leaf] = t


class LoadedPipeline(torch.nn.Module):
    """A loaded plan run in one process: the stages in order, ``rotafx::transfer`` between them.

    Called like the original model (same argument structure, same shapes and dtypes as the
    example inputs). With ``emulate_links`` each hop waits as long as the topology's links
    would take for the bytes it carries. A plan with generation programs also has
    ``cached_stages`` (one :class:`CachedStage` per stage), which :func:`rotafx.generate` runs.
    """

    def __init__(self, plan: PlanSpec, stages: Sequence[torch.nn.Module], *, emulate_links: bool = False,
                 cached_stages: Sequence[CachedStage] = ()) -> None:
        super().__init__()
        self.plan = plan
        self.stages = torch.nn.ModuleList(stages)
        self.emulate_links = emulate_links
        self.cached_stages = list(cached_stages)
        self._hop_s = [hop_delay_s(h.links, plan.hop_bytes(h)) for h in plan.hops]
        gen = plan.generation
        # a decode step's first hop also carries the sampled token back from the last node (generation.return_links)
        self._gen_hop_s = {k: [hop_delay_s((*h.links, *(gen.return_links if k == "decode" and h.index == 0 else ())),
                                           p.hop_bytes(h)) for h in p.hops]
                           for k, p in (("prefill", gen.prefill), ("decode", gen.decode))} if gen else {}

    def flatten_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The flat tensors of one call, checked against the plan (structure, shapes, dtypes)."""
        return check_request(self.plan, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = self.flatten_inputs(args, kwargs)
        out = self.run_flat(flat)
        return tree_unflatten(out, self.plan.out_spec) if self.plan.out_spec is not None else tuple(out)

    def trace(self, path: str | os.PathLike[str] | None) -> Trace | None:
        """Record every later call in a Chrome trace at ``path`` (``None``: stop), as
        :meth:`rotafx.PipelineModule.trace` does: each stage's compute, each hop's transfer and emulated
        delay, and the plan's estimate beside them; the file is complete after each call."""
        self.__dict__["_trace"] = None if path is None else Trace(path)
        return self.__dict__["_trace"]

    def run_flat(self, flat: Sequence[torch.Tensor]) -> list[Any]:
        """Run the stages on the flat input tensors (``plan.tensor_inputs``); the flat outputs, each tensor on the
        device of the stage that made it, the plan's constants as they are."""
        trace = self.__dict__.get("_trace")
        devices = [st.device for st in self.stages]
        if trace is None:
            return run_chain(self.plan, list(self.stages), devices, flat, self._hop_s if self.emulate_links else None)
        request = trace.begin()
        out = run_chain(self.plan, list(self.stages), devices, flat, self._hop_s if self.emulate_links else None,
                        (trace, request))
        done = trace.now()
        tracks = [StageTrack(s.chain_index, s.node, d) for s, d in zip(self.plan.stages, devices)]
        trace.end(request, predicted_spans(self.plan.estimate or {}, tracks), end_s=done)
        return out

    def step(self, kind: str, slot: int, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        """One call of the ``"prefill"`` or ``"decode"`` program for sequence slot ``slot`` (its cache on every
        stage): the logits ``[batch_size, tokens, vocab]``."""
        gen = self.plan.generation
        assert gen is not None and self.cached_stages, "the plan has no generation programs"
        prog = gen.program(kind)
        flat = {"input_ids": input_ids, "cache_position": cache_position}
        calls = [lambda *a, st=st: st.run(kind, slot, *a) for st in self.cached_stages]
        devices = [st.device for st in self.cached_stages]
        trace = self.__dict__.get("_trace")
        request = trace.begin() if trace is not None else -1
        out = run_chain(prog, calls, devices, [flat[v] for v in prog.tensor_inputs],
                        self._gen_hop_s[kind] if self.emulate_links else None,
                        (trace, request) if trace is not None else None)
        if trace is not None:
            done = trace.now()
            tracks = [StageTrack(s.chain_index, s.node, d) for s, d in zip(prog.stages, devices)]
            trace.end(request, predicted_spans(getattr(prog, "estimate", None) or {}, tracks), end_s=done, kind=kind)
        return out[0]

    def free(self, slot: int) -> None:
        """Drop sequence slot ``slot``'s cache on every stage."""
        for st in self.cached_stages:
            st.free(slot)
