"""Rewrite: split a graph into one submodule per stage, joined by ``rotafx::transfer`` calls.

``torch.fx.passes.split_module`` does the cut, with the solved stage of each node as its
callback. Around the submodules rotafx builds its own top-level graph:

* each weight (parameter, buffer, constant) becomes an attribute of every stage that
  reads it, on that stage's device (copied once; the same tensor object when the
  device does not change, so in-place updates stay visible);
* every tensor that one stage produces and a later stage reads goes through
  ``torch.ops.rotafx.transfer(x, device, codec)``, once per receiving stage;
* a user input is moved (``Tensor.to``) to the first stage that reads it and, like
  an activation, transferred from there to the later stages that read it;
* every output is returned on the device the original graph produced it on.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.fx as fx
from torch.fx.passes.split_module import split_module

from .frontends.pytorch.annotate import node_value
from .ops import move_value, transfer_value
from .wire import check_codec

__all__ = ["rewrite", "Rewritten", "StageInfo", "WeightSlot", "RewriteError", "stage_map", "version_of", "home_device"]

_transfer = torch.ops.rotafx.transfer.default


class RewriteError(RuntimeError):
    """A graph that cannot be split as asked; the message names the node."""


@dataclass
class StageInfo:
    """One stage of the rewritten program: its chain position, device, submodule and weights."""

    index: int  # position in the topology's chain
    node: str  # the topology node that runs it
    device: torch.device
    module: fx.GraphModule
    weight_names: tuple[str, ...] = ()  # qualified names of the parameters and buffers it holds
    attr_of: dict[str, str] = field(default_factory=dict)  # weight qualname -> attribute of ``module``

    def parameters(self) -> list[torch.Tensor]:
        """The tensors this stage holds (parameters and buffers), on :attr:`device`."""
        return [getattr(self.module, self.attr_of[n]) for n in self.weight_names]


@dataclass
class WeightSlot:
    """Where one weight of the original graph lives in the rewritten one (for refreshing it)."""

    node_name: str  # the placeholder or get_attr node of the original graph
    name: str  # qualified name (``layers.0.fc.weight``)
    source: torch.Tensor  # the tensor the copies were made from
    version: int  # ``source._version`` when copied
    copies: list[tuple[torch.nn.Module, str, torch.device]] = field(default_factory=list)


@dataclass
class Rewritten:
    """The output of :func:`rewrite`: a top-level program calling one submodule per stage."""

    program: fx.GraphModule
    stages: list[StageInfo]
    inputs: tuple[str, ...]  # the user-input placeholders of the original graph, in order
    weights: list[WeightSlot]
    codec: str | None = None

    @property
    def transfers(self) -> list[fx.Node]:
        """The ``rotafx::transfer`` calls of the program."""
        return [n for n in self.program.graph.nodes if n.op == "call_function" and n.target in (_transfer, transfer_value)]


def stage_map(layer_ops: Sequence[Sequence[str]], stages: Sequence[int]) -> dict[str, int]:
    """Node name -> chain stage, from a profile's layers (``layer.ops``: their node names) and a partition's ``stages``."""
    if len(layer_ops) != len(stages):
        raise RewriteError(f"rotafx: {len(layer_ops)} layers but {len(stages)} stages in the partition")
    return {n: int(s) for ns, s in zip(layer_ops, stages) for n in ns}


def _written_in_place(node: fx.Node) -> bool:
    """Whether an in-place op (``mul_``, ``copy_``) writes a user of ``node``: a view written there must stay on its
    base's stage, or the write would change a copy."""
    def in_place(user: fx.Node) -> bool:
        name = str(getattr(user.target, "__name__", user.target)).split(".")[0]
        return name == "setitem" or (name.endswith("_") and not name.startswith("_"))

    return any(in_place(u) for u in node.users)


def _is_tensor(node: fx.Node) -> bool:
    """Whether the node's traced value is one tensor (dynamo's ``example_value``, export's ``val``)."""
    return isinstance(node.meta.get("example_value", node.meta.get("val")), torch.Tensor)


def rewrite(
    gm: fx.GraphModule,
    stage_of: Mapping[str, int],
    devices: Sequence[torch.device],
    weights: Mapping[str, str],
    values: Mapping[str, torch.Tensor],
    *,
    codec: str | None = None,
    chain: Sequence[str] | None = None,
) -> Rewritten:
    """Split ``gm`` into stages and join them with ``rotafx::transfer``.

    ``stage_of`` maps compute-node names to chain stages (non-decreasing in graph
    order); ``devices[s]`` is the torch device of chain stage ``s``; ``weights`` maps
    weight placeholder names to qualified names and ``values`` those qualified names to
    the tensors (get_attr tensors are read from ``gm``). ``gm`` is left unchanged.

    >>> import torch, torch.fx as fx
    >>> gm = fx.symbolic_trace(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    >>> rw = rewrite(gm, {"_0": 0, "_1": 1}, [torch.device("cpu")] * 2, {}, {})
    >>> [s.index for s in rw.stages], len(rw.transfers)
    ([0, 1], 1)
    """
    codec = check_codec(codec)
    chain = list(chain) if chain is not None else [f"stage{i}" for i in range(len(devices))]
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    work = fx.GraphModule(gm, graph)
    nodes = list(work.graph.nodes)

    # every compute node gets a stage: a getitem of a tuple follows its source (tuples never cross; indexing a
    # tensor is an op like any other), unknown nodes the previous one
    stage: dict[fx.Node, int] = {}
    last = None
    for n in nodes:
        if n.op in ("placeholder", "get_attr", "output"):
            continue
        src = n.args[0] if n.op == "call_function" and n.target is operator.getitem and n.args else None
        if isinstance(src, fx.Node) and src in stage and (not _is_tensor(src) or _written_in_place(n)):
            s = stage[src]
        elif n.name in stage_of:
            s = int(stage_of[n.name])
        elif last is not None:
            s = last
        else:
            s = min(stage_of.values(), default=0)
        if last is not None and s < last:
            raise RewriteError(f"rotafx: stages must not decrease along the graph; {n.format_node()} is on stage {s} after {last}")
        if not 0 <= s < len(devices):
            raise RewriteError(f"rotafx: node {n.name} is on stage {s} but only {len(devices)} devices were given")
        stage[n] = last = s
    if not stage:
        raise RewriteError("rotafx: the graph has no operations to split")

    home = home_device(nodes, values)
    for n, s in stage.items():
        if devices[s] != home and home is not None:
            n.args = _retarget(n.args, home, devices[s])
            n.kwargs = _retarget(n.kwargs, home, devices[s])
    work.recompile()

    split = split_module(work, None, lambda n: stage[n], keep_original_order=True, keep_original_node_name=True,
                         tuple_return=True)
    parts = sorted((int(name.rsplit("_", 1)[1]), getattr(split, name)) for name in split.meta["partition_names"])

    originals = {n.name: n for n in nodes}
    weight_names = dict(weights)
    for n in nodes:
        if n.op == "get_attr":
            weight_names.setdefault(n.name, str(n.target))
    slots: dict[str, WeightSlot] = {}
    copies: dict[tuple[str, torch.device], torch.Tensor] = {}

    top = fx.Graph()
    env: dict[tuple[str, int], fx.Node] = {}  # (original name, stage) -> value on that stage's device
    produced: dict[str, int] = {}  # original name -> stage that produced it (or first read it, for inputs)
    inputs: list[str] = []
    for n in nodes:
        if n.op == "placeholder" and n.name not in weight_names:
            ph = top.placeholder(n.name, type_expr=n.type)
            ph.meta = dict(n.meta)
            env[(n.name, -1)] = ph
            inputs.append(n.name)

    def value_on(name: str, s: int) -> fx.Node:
        if (name, s) in env:
            return env[(name, s)]
        orig = originals[name]
        if name not in produced:  # a user input, read for the first time: it enters here
            produced[name] = s
            moved = _move(top, env[(name, -1)], orig, devices[s])
        else:
            moved = _send(top, env[(name, produced[name])], orig, devices[s], codec)
        env[(name, s)] = moved
        return moved

    stages: list[StageInfo] = []
    for s, sub in parts:
        args = []
        held: dict[str, str] = {}
        for ph in [p for p in sub.graph.nodes if p.op == "placeholder"]:
            name = ph.name
            if name in weight_names:
                qual = weight_names[name]
                src = values[qual] if qual in values else operator.attrgetter(str(originals[name].target))(gm)
                attr = held.get(qual) or _attr_name(qual, sub)
                t = copies.get((qual, devices[s]))
                if t is None:
                    t = copies[(qual, devices[s])] = _place(src, devices[s])
                slot = slots.setdefault(name, WeightSlot(name, qual, src, version_of(src)))
                if qual not in held:
                    _register(sub, attr, t)
                    slot.copies.append((sub, attr, devices[s]))
                    held[qual] = attr
                _to_get_attr(sub, ph, attr)
            elif name in originals:
                args.append(value_on(name, s))
            else:
                raise RewriteError(f"rotafx: stage {s} reads {name!r}, which is not a node of the original graph")
        sub.recompile()
        call = top.call_module(f"stage{s}", tuple(args))
        outs = list(sub.graph.output_node().args[0])
        for i, o in enumerate(outs):
            g = top.call_function(operator.getitem, (call, i))
            g.meta = dict(o.meta)
            env[(o.name, s)] = g
            produced[o.name] = s
        stages.append(StageInfo(index=s, node=chain[s], device=devices[s], module=sub,
                                weight_names=tuple(held), attr_of=dict(held)))

    def result(a: fx.Node) -> fx.Node:
        if a.name in weight_names:
            raise RewriteError(f"rotafx: the graph returns the weight {weight_names[a.name]} itself; return a computed value")
        s = produced.get(a.name)
        v = env[(a.name, s)] if s is not None else env[(a.name, -1)]
        want = _device_of(originals[a.name])
        have = devices[s] if s is not None else want
        if want is not None and have != want:
            v = _move(top, v, originals[a.name], want)
        return v

    top.output(fx.node.map_arg(gm.graph.output_node().args[0], result))
    root = torch.nn.Module()
    for st in stages:
        root.add_module(f"stage{st.index}", st.module)
    program = fx.GraphModule(root, top, class_name="RotafxProgram")
    for m in (program, *(st.module for st in stages)):
        # unpickling re-traces a GraphModule's code with its graph's tracer class; torch.export's
        # tracer cannot be made that way, and fx's own Tracer reads this code as well
        m._tracer_cls = None
    return Rewritten(program=program, stages=stages, inputs=tuple(inputs), weights=list(slots.values()), codec=codec)


# ---------------------------------------------------------------------------
# helpers


def version_of(t: torch.Tensor) -> int:
    """``t._version``, or -1 for tensors that keep none (inference tensors)."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


def _is_tensor(node: fx.Node) -> bool | None:
    """Whether the node's recorded value is a tensor (``None`` when nothing was recorded)."""
    v = node_value(node)
    if v is None:
        return None
    return isinstance(v, torch.Tensor)


def _device_of(node: fx.Node) -> torch.device | None:
    v = node_value(node)
    return v.device if isinstance(v, torch.Tensor) else None


def _move(graph: fx.Graph, value: fx.Node, orig: fx.Node, device: torch.device) -> fx.Node:
    """``value.to(device)`` for tensors (no copy when already there); other values as they are."""
    kind = _is_tensor(orig)
    if kind is False:
        return value
    if kind is None:
        n = graph.call_function(move_value, (value, device))
    else:
        n = graph.call_method("to", (value, device))
    n.meta = dict(orig.meta)
    return n


def _send(graph: fx.Graph, value: fx.Node, orig: fx.Node, device: torch.device, codec: str | None) -> fx.Node:
    """A tensor crossing a stage boundary: ``rotafx::transfer``; other values pass as they are."""
    kind = _is_tensor(orig)
    if kind is False:
        return value
    target = _transfer if kind else transfer_value
    n = graph.call_function(target, (value, device, codec))
    n.meta = dict(orig.meta)
    return n


def home_device(nodes: Iterable[fx.Node], values: Mapping[str, torch.Tensor]) -> torch.device | None:
    """The device a graph runs on: that of its first tensor input (not on ``meta``), else of its first weight."""
    for n in nodes:
        if n.op == "placeholder":
            d = _device_of(n)
            if d is not None and d.type != "meta":
                return d
    for t in values.values():
        return t.device
    return None


def _retarget(x: Any, old: torch.device, new: torch.device) -> Any:
    """Replace ``old`` (a torch.device, or a device string under a ``device`` key) by ``new``."""
    def fix(a: Any) -> Any:
        if isinstance(a, torch.device) and a == old:
            return new
        if isinstance(a, dict):
            return {k: (new if k == "device" and isinstance(v, str) and torch.device(v) == old else fix(v)) for k, v in a.items()}
        if isinstance(a, (list, tuple)) and not isinstance(a, torch.Size):
            return type(a)(fix(v) for v in a) if not hasattr(a, "_fields") else type(a)(*(fix(v) for v in a))
        return a

    return fix(x)


def _place(src: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The tensor a stage on ``device`` holds: ``src`` itself when already there, else a copy."""
    if src.device == device:
        return src
    moved = src.detach().to(device)
    if isinstance(src, torch.nn.Parameter):
        return torch.nn.Parameter(moved, requires_grad=src.requires_grad)
    return moved


def _register(mod: torch.nn.Module, attr: str, t: torch.Tensor) -> None:
    if isinstance(t, torch.nn.Parameter):
        mod.register_parameter(attr, t)
    else:
        mod.register_buffer(attr, t)


def _attr_name(qual: str, mod: torch.nn.Module) -> str:
    base = re.sub(r"\W", "_", qual) or "weight"
    name, i = base, 1
    while hasattr(mod, name):
        i += 1
        name = f"{base}_{i}"
    return name


def _to_get_attr(sub: fx.GraphModule, ph: fx.Node, attr: str) -> None:
    """Replace a weight placeholder of a stage by a read of the stage's own attribute."""
    first = next(n for n in sub.graph.nodes if n.op != "placeholder")
    with sub.graph.inserting_before(first):
        g = sub.graph.get_attr(attr)
    g.meta = dict(ph.meta)
    ph.replace_all_uses_with(g)
    sub.graph.erase_node(ph)

