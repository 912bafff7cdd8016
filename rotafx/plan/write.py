"""Write a plan: partition a model (or take a partitioned one), export each stage with ``torch.export``, write ``plan.json``.

Values travel along the chain: a tensor made by stage ``a`` and read by stage ``c > a + 1`` is
*relayed* through the stages between them (the estimator prices every chain link the same way),
so each process only talks to its neighbours. The first process receives the model's inputs from
the driver and the last one sends the model's outputs back.

The codec (``plan["codec"]``) applies exactly where the in-process runtime applies it: to a
value that goes from the stage that made it (or, for a model input, the first stage that read
it) to a later stage that reads it. Model outputs travel as they are.
"""

from __future__ import annotations

import datetime
import json
import math
import operator
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import tree_flatten

from ..backend import partition
from ..costmodel import Route, route
from ..frontends.pytorch import as_args
from ..ops import move_value, transfer_value
from ..topology import Topology
from .schema import (DRIVER, PLAN_FILE, HopSpec, PlanError, PlanSpec, StageSpec, TensorSpec, WireEntry, is_constant,
                     rotafx_version, sha256_of, spec_json)

__all__ = ["export", "export_pipeline", "estimate_dict"]

_transfer = torch.ops.rotafx.transfer.default


def export(model: torch.nn.Module, example_inputs: Any, *, path: str | os.PathLike[str], topology: Any = None,
           objective: str = "minimize_latency", example_kwargs: Mapping[str, Any] | None = None,
           overwrite: bool = False, **options: Any) -> PlanSpec:
    """Partition ``model`` (like :func:`rotafx.partition`) and write the plan directory ``path``.

    ``options`` are those of :func:`rotafx.partition` (``devices``, ``codec``, ``solver``,
    ...). The example inputs fix every shape of the plan: requests must have the same
    shapes and dtypes. An existing non-empty ``path`` is replaced only with ``overwrite=True``.
    Returns the written :class:`PlanSpec`.

    >>> import torch, rotafx, tempfile
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    >>> x = torch.randn(4, 8)
    >>> d = tempfile.mkdtemp()
    >>> plan = rotafx.export(m, (x,), path=d + "/plan", overwrite=True)
    >>> torch.equal(rotafx.load(d + "/plan")(x), m(x))
    True
    """
    args = as_args(example_inputs)
    pm = partition(model, args, example_kwargs=example_kwargs, topology=topology, objective=objective, **options)
    return export_pipeline(pm, args, path=path, example_kwargs=example_kwargs, overwrite=overwrite,
                           model_name=type(model).__name__)


def export_pipeline(pm: Any, example_inputs: Any, *, path: str | os.PathLike[str],
                    example_kwargs: Mapping[str, Any] | None = None, overwrite: bool = False,
                    model_name: str | None = None) -> PlanSpec:
    """Write the plan directory of a :class:`~rotafx.PipelineModule` made by :func:`rotafx.partition`.

    Each stage is exported with ``torch.export`` on the tensors it receives when the
    pipeline runs ``example_inputs``, and checked to give the same outputs as the stage
    it came from. The directory is written next to ``path`` and renamed into place, so a
    failed export leaves nothing behind.
    """
    plan = getattr(pm, "plan", None)
    if plan is None or not hasattr(pm, "rewritten"):
        raise PlanError("rotafx: export needs a PipelineModule made by rotafx.partition (it carries the plan); "
                        f"got {type(pm).__name__}")
    rw = pm.rewritten
    out_dir = Path(path)
    _check_replaceable(out_dir, overwrite)

    # the flat inputs, as the program takes them
    args = as_args(example_inputs)
    if pm.in_spec is not None:
        flat, spec = tree_flatten((args, dict(example_kwargs or {})))
        if spec != pm.in_spec:
            raise PlanError(f"rotafx: example inputs are structured as {spec}, but the model was partitioned for {pm.in_spec}")
    else:
        flat = list(args)
    constants: dict[str, Any] = {}
    for name, t in zip(rw.inputs, flat):
        if not isinstance(t, torch.Tensor):
            if not is_constant(t):
                raise PlanError(f"rotafx: input {name!r} is a {type(t).__name__}; a plan takes tensors, and None, bools, "
                                f"numbers and strings as constants baked into its programs")
            constants[name] = t

    # run once, recording what every stage receives and returns
    seen: dict[int, tuple[tuple, tuple]] = {}
    hooks = []
    for st in rw.stages:
        mod = getattr(pm.program, f"stage{st.index}")
        hooks.append(mod.register_forward_hook(
            lambda m, a, o, idx=st.index: seen.__setitem__(idx, (tuple(a), tuple(o) if isinstance(o, (tuple, list)) else (o,)))))
    try:
        with torch.no_grad():
            pm.program(*flat)
    finally:
        for h in hooks:
            h.remove()

    flow = _dataflow(rw)
    constants.update(flow.constants)
    values: dict[str, TensorSpec] = {name: TensorSpec.of(t) for name, t in zip(rw.inputs, flat) if name not in constants}
    for st in rw.stages:
        ins, outs = seen[st.index]
        for vid, t in zip(flow.stage_inputs[st.index], ins):
            if not isinstance(t, torch.Tensor) and vid not in constants:
                raise PlanError(f"rotafx: stage {st.index} ({st.node}) receives {vid!r}, a {type(t).__name__}; "
                                f"export supports tensors between stages only")
        for vid, t in zip(flow.stage_outputs[st.index], outs):
            if not isinstance(t, torch.Tensor):
                raise PlanError(f"rotafx: stage {st.index} ({st.node}) returns {vid!r}, a {type(t).__name__}; "
                                f"export supports tensors between stages only")
            values[vid] = TensorSpec.of(t)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        stages: list[StageSpec] = []
        for pos, st in enumerate(rw.stages):
            ins, outs = seen[st.index]
            try:
                with torch.no_grad():
                    ep = torch.export.export(st.module, ins, strict=False)
            except Exception as e:
                raise PlanError(f"rotafx: torch.export could not export stage {pos} ({st.node}): "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
            with torch.no_grad():
                got = ep.module()(*ins)
            got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
            if len(got) != len(outs) or not all(torch.equal(a, b) for a, b in zip(got, outs)):
                raise PlanError(f"rotafx: the exported program of stage {pos} ({st.node}) does not reproduce the stage's outputs")
            file = f"stage{pos}.pt2"
            torch.export.save(ep, tmp / file)
            stages.append(StageSpec(
                index=pos, chain_index=st.index, node=st.node, kind=plan.partition.topology.devices[st.node].kind,
                device=str(st.device), file=file, sha256=sha256_of(tmp / file),
                inputs=flow.stage_inputs[st.index], outputs=flow.stage_outputs[st.index],
                weights=tuple(st.weight_names),
                weight_bytes=sum(t.numel() * t.element_size() for t in st.parameters())))
        topo = plan.partition.topology
        spec = PlanSpec(
            codec=rw.codec, values=values, constants=constants, inputs=tuple(rw.inputs), outputs=flow.outputs,
            in_spec_json=spec_json(pm.in_spec), out_spec_json=spec_json(pm.out_spec), stages=stages,
            hops=_hops(flow, [st.index for st in rw.stages], tuple(v for v in rw.inputs if v not in constants), topo,
                       plan.partition.stages, rw.codec),
            topology=topo.to_dict(), objective=plan.partition.objective.name,
            partition=_partition_dict(plan.partition), estimate=estimate_dict(plan.partition.estimate),
            meta={"model": model_name or "", "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "rotafx": rotafx_version(), "torch": torch.__version__},
        )
        (tmp / PLAN_FILE).write_text(json.dumps(spec.to_json(), indent=1, allow_nan=False) + "\n")
        if out_dir.exists():
            _check_replaceable(out_dir, overwrite)  # again: nothing may have landed there meanwhile
            old = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(out_dir)}{os.getpid()}-old-", dir=out_dir.parent))
            os.replace(out_dir, old / "plan")  # the old plan moves aside whole, then goes
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    spec.path = out_dir
    return spec


def _tmp_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.rotafx-tmp-"


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary directories an export killed half-way left beside ``out_dir`` (their process is gone)."""
    prefix = _tmp_prefix(out_dir)
    for d in out_dir.parent.glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` may be written: it does not exist, is an empty directory, or (with ``overwrite``) holds a rotafx
    plan and nothing else. Any other file or directory is never deleted."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise PlanError(f"rotafx: {str(out_dir)!r} is a file, not a plan directory; choose another path")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not overwrite:
        raise PlanError(f"rotafx: {str(out_dir)!r} exists and is not an empty directory; pass overwrite=True "
                        f"(--overwrite) to replace the plan in it, or choose another path")
    try:
        old = json.loads((out_dir / PLAN_FILE).read_text())
        files = {PLAN_FILE, *(str(st["file"]) for st in old["stages"])} if old.get("format") == "rotafx-plan" else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        files = None
    if files is None:
        raise PlanError(f"rotafx: overwrite=True replaces a rotafx plan directory, and {str(out_dir)!r} holds no rotafx "
                        f"plan (no readable plan.json); nothing was deleted: choose another path")
    others = [e for e in entries if e not in files]
    if others:
        raise PlanError(f"rotafx: {str(out_dir)!r} holds a plan and other files too ({', '.join(others[:5])}"
                        f"{' ...' if len(others) > 5 else ''}); overwrite=True replaces a plan directory only, so nothing "
                        f"was deleted: move them or choose another path")


@dataclass
class _Flow:
    """Who reads and writes what in a rewritten program (value ids are the original node names)."""

    stage_inputs: dict[int, tuple[str, ...]]
    stage_outputs: dict[int, tuple[str, ...]]
    outputs: tuple[str, ...]
    constants: dict[str, Any]  # value id -> the literal the program returns there (None, a number)


def _dataflow(rw: Any) -> _Flow:
    """Read the rewritten program's top-level graph: the values each stage call takes and returns."""
    alias: dict[fx.Node, str] = {}
    calls: dict[str, int] = {}
    stage_inputs: dict[int, tuple[str, ...]] = {}
    stage_outputs: dict[int, tuple[str, ...]] = {}
    subs = {f"stage{st.index}": st for st in rw.stages}
    placeholders = [n for n in rw.program.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(rw.inputs):
        raise PlanError(f"rotafx: the program has {len(placeholders)} inputs but the plan lists {len(rw.inputs)}")
    outputs: tuple[str, ...] = ()
    constants: dict[str, Any] = {}
    for n in rw.program.graph.nodes:
        if n.op == "placeholder":
            alias[n] = rw.inputs[placeholders.index(n)]
        elif (n.op == "call_method" and n.target == "to") or (n.op == "call_function" and n.target in (move_value, _transfer, transfer_value)):
            alias[n] = alias[n.args[0]]
        elif n.op == "call_module" and n.target in subs:
            idx = subs[n.target].index
            calls[n.name] = idx
            stage_inputs[idx] = tuple(alias[a] if isinstance(a, fx.Node) else _not_tensor(a, n) for a in n.args)
            outs = subs[n.target].module.graph.output_node().args[0]
            stage_outputs[idx] = tuple(o.name if isinstance(o, fx.Node) else _not_tensor(o, n) for o in outs)
        elif n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node) and n.args[0].name in calls:
            alias[n] = stage_outputs[calls[n.args[0].name]][int(n.args[1])]
        elif n.op == "output":
            flat, _ = tree_flatten(n.args[0])
            out = []
            for k, a in enumerate(flat):
                if isinstance(a, fx.Node):
                    out.append(alias[a])
                elif is_constant(a):  # the model returns a literal there (None, a number)
                    constants[f"output{k}"] = a
                    out.append(f"output{k}")
                else:
                    _not_tensor(a, n)
            outputs = tuple(out)
        else:
            raise PlanError(f"rotafx: the rewritten program has a step export does not know: {n.format_node()}")
    produced = [v for vs in stage_outputs.values() for v in vs]
    if len(set(produced)) != len(produced) or set(produced) & set(rw.inputs):
        raise PlanError("rotafx: two stages (or a stage and an input) give a value the same name; cannot export")
    if set(constants) & set(rw.inputs) or set(constants) & set(produced):
        raise PlanError("rotafx: a value of the program is named like a constant output; cannot export")
    return _Flow(stage_inputs, stage_outputs, outputs, constants)


def _not_tensor(a: Any, n: fx.Node) -> str:
    raise PlanError(f"rotafx: {n.format_node()} passes {a!r}, a {type(a).__name__}; a plan passes tensors between "
                    f"stages, and takes and returns None, bools, numbers and strings as constants")


def _hops(flow: _Flow, chain_of: list[int], inputs: tuple[str, ...], topo: Topology, layer_stages: Sequence[int],
          codec: str | None) -> list[HopSpec]:
    """The messages between neighbouring processes (relaying values that skip a stage), with the links they cross
    (the cost model's route: the one the estimate priced)."""
    taken = route(topo, layer_stages)
    n = len(chain_of)
    pos_of = {c: p for p, c in enumerate(chain_of)}
    avail: dict[str, int] = {v: DRIVER for v in inputs}  # the process that first holds the value
    origin: dict[str, int] = {}  # where the codec starts applying: producer, or an input's first reader
    readers: dict[str, list[int]] = {}
    for c in chain_of:
        p = pos_of[c]
        for v in flow.stage_inputs[c]:
            readers.setdefault(v, []).append(p)
            origin.setdefault(v, p)
        for v in flow.stage_outputs[c]:
            avail[v] = origin[v] = p
    is_output = set(flow.outputs)
    hops = []
    for k in range(n + 1):
        entries: list[WireEntry] = []
        for v in dict.fromkeys([*inputs, *(v for c in chain_of for v in flow.stage_outputs[c])]):
            if avail[v] >= k:
                continue
            needed_by_stage = any(r >= k for r in readers.get(v, ()))
            if needed_by_stage:
                entries.append(WireEntry(v, encoded=codec is not None and origin.get(v, n) < k))
            if v in is_output:  # model outputs travel as they are (the in-process runtime does not compress them)
                entries.append(WireEntry(v, encoded=False))
        a = chain_of[k - 1] if k > 0 else 0
        b = chain_of[k] if k < n else len(topo.chain) - 1
        hops.append(HopSpec(k, k - 1, k, tuple(dict.fromkeys(entries)), tuple(_links_between(taken, a, b))))
    return hops


def _links_between(route: Route, a: int, b: int) -> list[dict[str, Any]]:
    """The topology links of ``route`` from chain stage ``a`` up to chain stage ``b``, as plan.json lists them."""
    return [{"src": link.src, "dst": link.dst, "kind": link.kind, "bandwidth_bps": link.bandwidth_bps,
             "latency_ms": link.latency_ms} for c, link in route.hops if a <= c < b and link.kind != "local"]


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _partition_dict(p: Any) -> dict[str, Any]:
    return {"objective": p.objective.name, "solver": p.solver, "status": p.status, "gap": _num(p.gap),
            "objective_value": _num(p.objective_value), "stages": list(p.stages), "nodes": p.nodes,
            "cut_points": p.cut_points, "layers": [l.name for l in p.profile.layers]}


def estimate_dict(e: Any) -> dict[str, Any]:
    """The figures of an :class:`~rotafx.Estimate` (ms, bytes, joules) as plain JSON."""
    return {
        "total_ms": e.total_ms, "parts": {k: float(v) for k, v in e.parts().items()},
        "compute_ms": e.compute_ms, "transfer_ms": e.transfer_ms, "propagation_ms": e.propagation_ms,
        "period_ms": e.period_ms, "throughput_rps": _num(e.throughput_rps), "energy_j": e.energy_j,
        "transfer_bytes": e.transfer_bytes, "codec": e.codec,
        "transfers": [{"boundary": t.boundary, "src": t.src, "dst": t.dst, "link_kind": t.link_kind, "bytes": t.bytes,
                       "transfer_ms": t.transfer_ms, "propagation_ms": t.propagation_ms} for t in e.transfers],
        "by_layer": [{"index": l.index, "name": l.name, "node": l.node, "stage": l.stage, "ms": l.total_ms} for l in e.by_layer],
    }
