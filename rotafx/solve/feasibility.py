"""Feasibility: whether a placement fits every device, and the plain reasons none can (a layer, or all weights, too large)."""

from __future__ import annotations

from ..costmodel import CostTables
from ..units import fmt_bytes

__all__ = ["fits", "InfeasibleError", "diagnose_infeasible"]


class InfeasibleError(ValueError):
    """No placement fits: the message gives the tightest reason with its numbers."""


def fits(tables: CostTables, stages: list[int]) -> bool:
    """Whether every device holds its stages, with the same memory rule as the MILP and DP."""
    mem = tables.device_memory(stages)
    return all(mem[d] <= tables.capacity[d] * (1 + 1e-12) for d in mem)


def diagnose_infeasible(tables: CostTables) -> None:
    """Raise :class:`InfeasibleError` for the plain reasons: one layer or all weights too large."""
    caps = tables.capacity
    largest_dev = max(caps, key=lambda d: caps[d])
    largest = caps[largest_dev]
    prof = tables.profile
    for l in range(tables.L):
        need = tables.layers_memory([l])
        if need > largest:
            layer = prof.layers[l]
            raise InfeasibleError(
                f"layer {l} ({layer.name}) needs {fmt_bytes(need)} alone (weights {fmt_bytes(layer.weight_bytes)}, "
                + (f"KV cache {fmt_bytes(tables.kv_bytes[l])} at {tables.generation.context_len} tokens, "
                   if tables.kv_bytes[l] else "")
                + f"peak activations and workspace {fmt_bytes(tables.peak_bytes[l])}) but the largest node, {largest_dev}, "
                f"holds {fmt_bytes(largest)} ({tables.topology.capacity}); it is {fmt_bytes((need - largest))} too large. "
                f"Give nodes more memory, profile with a smaller dtype (dtype=torch.float16) or a smaller batch, "
                f"or split the layer into smaller modules")
    total_w = tables.total_weight_bytes
    total_cap = sum(caps.values())
    if total_w > total_cap:
        raise InfeasibleError(
            f"the model's weights" + (f" and KV cache ({fmt_bytes(float(tables.kv_bytes.sum()))} at "
                                      f"{tables.generation.context_len} tokens)" if tables.kv_bytes.any() else "")
            + f" need {fmt_bytes(total_w)} but all nodes together hold {fmt_bytes(total_cap)} "
            f"({', '.join(f'{d} {fmt_bytes(c)}' for d, c in caps.items())}); short by {fmt_bytes((total_w - total_cap))}")
