"""Measure every layer of a PyTorch model on a real device, at the profiled shapes.

The model is traced as for profiling (the same ``torch.export`` program, so the same op
names and layers), split into one fx submodule per layer (``torch.fx.passes.split_module``),
run once whole to capture each layer's inputs, then each layer is timed alone on those
inputs by ``torch.utils.benchmark`` (warm-up, blocked runs, median), in ``rounds`` passes
over the layers interleaved so that a noisy moment on a shared machine touches every layer
alike. A layer's time is the median over rounds; its spread is (max - min) / median.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch.fx.passes.split_module import split_module

from ...layers import ProfileError
from .trace import as_args, trace

__all__ = ["measure_layers"]


def measure_layers(model: torch.nn.Module, example_inputs: Any, layer_of: Mapping[str, int], num_layers: int, *,
                   example_kwargs: Mapping[str, Any] | None = None, device: Any = None, threads: int | None = None,
                   rounds: int = 5, min_run_time: float = 0.05,
                   progress: Callable[[str], None] | None = None) -> list[tuple[float, float]]:
    """``(median ms, spread)`` of each of ``num_layers`` layers; ``layer_of`` maps an op (fx node) name to its layer."""
    from torch.utils.benchmark import Timer

    if any(p.device.type == "meta" for p in model.parameters()):
        raise ProfileError(f"rotafx: {type(model).__name__} has weights on the meta device: measuring needs real "
                           f"weights (build the model on 'cpu' or a GPU, or use a calibrated device instead)")
    dev = torch.device(device) if device is not None else next((p.device for p in model.parameters()), torch.device("cpu"))
    model = model.to(dev)
    args = tuple(a.to(dev) if isinstance(a, torch.Tensor) else a for a in as_args(example_inputs))
    kwargs = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in (example_kwargs or {}).items()}
    traced = trace(model, args, kwargs)
    gm = traced.graph_module
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    user = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if a is not None]
    n_user = sum(1 for ph in placeholders if ph not in traced.weights)
    if n_user != len(user):
        raise ProfileError(f"rotafx: cannot measure {type(model).__name__}: its program takes {n_user} input(s), "
                           f"the example inputs hold {len(user)}")
    feed = iter(user)
    values = [traced.values[traced.weights[ph]].to(dev) if ph in traced.weights else next(feed) for ph in placeholders]

    current = [0]

    def part(node: fx.Node) -> int:
        if node.name in layer_of:
            current[0] = layer_of[node.name]
        return current[0]

    split = split_module(gm, None, part, keep_original_order=True)
    subs = {int(name.removeprefix("submod_")): mod for name, mod in split.named_children() if name.startswith("submod_")}
    captured: dict[int, tuple] = {}

    def capture(i: int, mod: fx.GraphModule) -> Callable[..., Any]:
        def run(*a: Any) -> Any:
            captured[i] = a
            return mod(*a)
        return run

    for i, mod in subs.items():
        setattr(split, f"submod_{i}", _Recorder(capture(i, mod)))
    with torch.no_grad():
        split(*values)
    threads = threads or torch.get_num_threads()
    times: dict[int, list[float]] = {i: [] for i in subs}
    say = progress or (lambda _m: None)
    with torch.no_grad():
        for r in range(max(1, rounds)):
            for i, mod in subs.items():
                a = captured[i]
                t = Timer(stmt="mod(*a)", globals={"mod": mod, "a": a}, num_threads=threads)
                times[i].append(t.blocked_autorange(min_run_time=min_run_time).median * 1e3)
            say(f"measured round {r + 1}/{max(1, rounds)} of {len(subs)} layer(s) on {dev}")
    out = [(0.0, 0.0)] * num_layers
    for i, ts in times.items():
        if 0 <= i < num_layers:
            ts = sorted(ts)
            med = ts[len(ts) // 2] if len(ts) % 2 else (ts[len(ts) // 2 - 1] + ts[len(ts) // 2]) / 2
            out[i] = (med, (ts[-1] - ts[0]) / med if med > 0 else 0.0)
    return out


class _Recorder(torch.nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *a: Any) -> Any:
        return self.fn(*a)

