"""Run a loaded plan in one process: its stages in order, ``rotafx::transfer`` between them."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import torch
from torch.utils._pytree import tree_unflatten

from ..ops import transfer
from ..plan.schema import PlanSpec, check_request
from .links import hop_delay_s

__all__ = ["LoadedPipeline"]


class LoadedPipeline(torch.nn.Module):
    """A loaded plan run in one process: the stages in order, ``rotafx::transfer`` between them.

    Called like the original model (same argument structure, same shapes and dtypes as the
    example inputs). With ``emulate_links`` each hop waits as long as the topology's links
    would take for the bytes it carries.
    """

    def __init__(self, plan: PlanSpec, stages: Sequence[torch.nn.Module], *, emulate_links: bool = False) -> None:
        super().__init__()
        self.plan = plan
        self.stages = torch.nn.ModuleList(stages)
        self.emulate_links = emulate_links
        self._hop_s = [hop_delay_s(h.links, plan.hop_bytes(h)) for h in plan.hops]

    def flatten_inputs(self, args: tuple, kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The flat tensors of one call, checked against the plan (structure, shapes, dtypes)."""
        return check_request(self.plan, args, kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        flat = self.flatten_inputs(args, kwargs)
        out = self.run_flat(flat)
        return tree_unflatten(out, self.plan.out_spec) if self.plan.out_spec is not None else tuple(out)

    def run_flat(self, flat: Sequence[torch.Tensor]) -> list[Any]:
        """Run the stages on the flat input tensors (``plan.tensor_inputs``); the flat outputs, each tensor on the
        device of the stage that made it, the plan's constants as they are."""
        plan = self.plan
        env: dict[str, Any] = dict(zip(plan.tensor_inputs, flat))
        first_read: set[str] = set()
        for st in self.stages:
            if self.emulate_links:
                time.sleep(self._hop_s[st.index])
            ins = []
            for v in st.spec.inputs:
                if v in plan.constants:
                    ins.append(plan.constants[v])
                elif v in plan.inputs and v not in first_read:
                    first_read.add(v)
                    env[v] = env[v].to(st.device)
                    ins.append(env[v])
                else:
                    ins.append(transfer(env[v], st.device, plan.codec))
            with torch.no_grad():
                outs = st(*ins)
            env.update(zip(st.spec.outputs, outs))
        if self.emulate_links:
            time.sleep(self._hop_s[-1])
        return [plan.constants[v] if v in plan.constants else env[v] for v in plan.outputs]
