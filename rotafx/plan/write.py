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

import dataclasses
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
from ..costmodel import Route, route, token_return
from ..frontends.pytorch import as_args
from ..ops import move_value, transfer_value
from ..topology import Topology, TopologyError
from ..runtime.generate import CONTEXT_STEP, context_length, max_positions, programs_for, token_ids
from .schema import (DRIVER, PLAN_FILE, GenerationSpec, HopSpec, PlanError, PlanSpec, StageSpec, TensorSpec, WireEntry,
                     is_constant, rotafx_version, sha256_of, spec_json)

__all__ = ["export", "export_pipeline", "estimate_dict"]

_transfer = torch.ops.rotafx.transfer.default


def export(model: torch.nn.Module, example_inputs: Any, *, path: str | os.PathLike[str], topology: Any = None,
           objective: str = "minimize_latency", example_kwargs: Mapping[str, Any] | None = None,
           overwrite: bool = False, max_context: int | None = None, **options: Any) -> PlanSpec:
    """Partition ``model`` (like :func:`rotafx.partition`) and write the plan directory ``path``.

    ``max_context`` (or ``generation={...}``, which also places the layers for generating) adds
    the prefill and decode programs of a causal LM (see :func:`export_pipeline`), so that
    ``rotafx.generate(rotafx.load(path), ids)`` and ``Driver.generate`` can run it.

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
                           model_name=type(model).__name__, max_context=max_context)


def export_pipeline(pm: Any, example_inputs: Any, *, path: str | os.PathLike[str],
                    example_kwargs: Mapping[str, Any] | None = None, overwrite: bool = False,
                    model_name: str | None = None, max_context: int | None = None) -> PlanSpec:
    """Write the plan directory of a :class:`~rotafx.PipelineModule` made by :func:`rotafx.partition`.

    Each stage is exported with ``torch.export`` on the tensors it receives when the
    pipeline runs ``example_inputs``, and checked to give the same outputs as the stage
    it came from. The directory is written next to ``path`` and renamed into place, so a
    failed export leaves nothing behind.

    For a causal LM (a model :func:`rotafx.generate` can run), the plan also holds each stage's
    prefill and decode programs (``plan.json``'s ``"generation"``), placed by the same cut, each
    stage's KV cache a buffer of its programs: ``max_context`` tokens per sequence (prompt + new
    tokens at most, up to the model's positions). They are written when ``max_context`` is given,
    or when ``pm`` was partitioned with ``generation={...}`` (then the prompt and new tokens the plan
    made room for); the prefill takes the example's tokens per call, one sequence per call.

    Args:
        pm: what :func:`rotafx.partition` returned.
        example_inputs: the inputs ``pm`` was partitioned with (their shapes become the plan's).
        path: the plan directory to write.
        example_kwargs: keyword inputs of the example.
        overwrite: replace a plan directory already at ``path``.
        model_name: recorded in ``plan.json``'s ``meta``.
        max_context: write the generation programs for this many tokens per sequence.

    Returns:
        The written :class:`PlanSpec` (``.path`` set).

    Raises:
        PlanError: ``pm`` is not a partitioned module, a stage does not export or reproduce its outputs,
            ``path`` holds something else, or ``max_context`` is not a positive integer within the model's positions.
        GenerationError: ``max_context`` was given for a model that has no static-cache decoder.
    """
    plan = getattr(pm, "plan", None)
    if plan is None or not hasattr(pm, "rewritten"):
        raise PlanError("rotafx: export needs a PipelineModule made by rotafx.partition (it carries the plan); "
                        f"got {type(pm).__name__}")
    out_dir = Path(path)
    _check_replaceable(out_dir, overwrite)
    gen_programs = _generation_programs(pm, max_context)  # before anything is written: a bad max_context fails here
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        spec = _export_program(pm, example_inputs, example_kwargs, tmp, "")
        spec.meta = {"model": model_name or "",
                     "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "rotafx": rotafx_version(), "torch": torch.__version__}
        if gen_programs is not None:
            spec.generation = _export_generation(gen_programs, tmp, spec)
            spec.generation.check(spec, "the exported plan")
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


def _export_program(pm: Any, example_inputs: Any, example_kwargs: Mapping[str, Any] | None, tmp: Path,
                    suffix: str, state: frozenset[int] = frozenset()) -> PlanSpec:
    """Export every stage of ``pm`` into ``tmp`` (``stage{i}{suffix}.pt2``) on the tensors it receives for the
    example, and the plan of that program (no meta). ``state``: the ids of the tensors that are a KV cache."""
    plan, rw = pm.plan, pm.rewritten
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

    stages: list[StageSpec] = []
    for pos, st in enumerate(rw.stages):
        ins, outs = seen[st.index]
        what = f"stage {pos} ({st.node}){' ' + suffix.strip('.') + ' program' if suffix else ''}"
        try:
            with torch.no_grad():
                ep = torch.export.export(st.module, ins, strict=False)
        except Exception as e:
            raise PlanError(f"rotafx: torch.export could not export {what}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
        with torch.no_grad():
            got = ep.module()(*ins)  # a cache is written again with the same keys and values
        got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
        if len(got) != len(outs) or not all(torch.equal(a, b) for a, b in zip(got, outs)):
            raise PlanError(f"rotafx: the exported program of {what} does not reproduce the stage's outputs")
        file = f"stage{pos}{suffix}.pt2"
        torch.export.save(ep, tmp / file)
        cache = tuple((name, TensorSpec.of(b)) for name, b in st.module.named_buffers() if id(b) in state)
        stages.append(StageSpec(
            index=pos, chain_index=st.index, node=st.node, kind=plan.partition.topology.devices[st.node].kind,
            device=str(st.device), file=file, sha256=sha256_of(tmp / file),
            inputs=flow.stage_inputs[st.index], outputs=flow.stage_outputs[st.index],
            weights=tuple(st.weight_names),
            weight_bytes=sum(t.numel() * t.element_size() for t in st.parameters()), cache=cache))
    topo = plan.partition.topology
    return PlanSpec(
        codec=rw.codec, values=values, constants=constants, inputs=tuple(rw.inputs), outputs=flow.outputs,
        in_spec_json=spec_json(pm.in_spec), out_spec_json=spec_json(pm.out_spec), stages=stages,
        hops=_hops(flow, [st.index for st in rw.stages], tuple(v for v in rw.inputs if v not in constants), topo,
                   plan.partition.stages, rw.codec),
        topology=topo.to_dict(), objective=plan.partition.objective.name,
        partition=_partition_dict(plan.partition), estimate=estimate_dict(_as_loaded(plan.partition)))


def _as_loaded(part: Any) -> Any:
    """The partition's placement priced as :func:`rotafx.load` runs it: each stage a torch.export program
    (``ModelProfile.runs_as="program"``: its ops' context and its own call; the same on a datasheet device)."""
    from ..costmodel import CostTables
    from ..estimate import evaluate

    if part.profile.runs_as == "program":
        return part.estimate
    program = dataclasses.replace(part.profile, runs_as="program")
    return evaluate(CostTables(program, part.topology, codec=part.codec, memory_rule=part.memory_rule), part.stages)


def _generation_programs(pm: Any, max_context: int | None) -> Any:
    """The in-process prefill and decode programs the plan's generation programs are exported from, or None when
    none are asked for (no ``max_context`` and ``pm`` not partitioned for generation)."""
    planned = pm.__dict__.get("generation_plan")
    source = pm.__dict__.get("source")
    if max_context is None and planned is None:
        return None
    if source is None:
        raise PlanError("rotafx: generation programs are exported from a module made by rotafx.partition (it keeps "
                        "the model); this one has none: leave out max_context")
    limit = max_positions(source.model)
    if max_context is None:  # as long as the plan made room for (what rotafx.generate on ``pm`` builds too)
        gen = planned.profile.generation
        max_context = gen.prompt_len + gen.new_tokens if gen is not None else context_length(CONTEXT_STEP, limit)
    if isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 1:
        raise PlanError(f"rotafx: max_context must be a positive number of tokens per sequence, got {max_context!r}")
    if limit is not None and max_context > limit:
        raise PlanError(f"rotafx: max_context {max_context} is over the {limit} positions of "
                        f"{type(source.model).__name__}; export with max_context <= {limit}")
    return programs_for(pm, 1, max_context), source.model


def _export_generation(found: Any, tmp: Path, plan: PlanSpec) -> GenerationSpec:
    """Export the prefill and decode programs' stages next to the plan's, the cache buffers named in each stage."""
    progs, model = found
    state = frozenset(id(t) for t in progs.state)
    C = progs.chunk
    specs = []
    for kind, n, start in (("prefill", C, 0), ("decode", 1, C if C < progs.max_len else 0)):
        module = progs.prefill if kind == "prefill" else progs.decode
        kwargs = {"input_ids": torch.zeros(1, n, dtype=torch.long), "cache_position": torch.arange(start, start + n)}
        specs.append(_export_program(module, (), kwargs, tmp, f".{kind}", state))
    for t in progs.state:  # the export wrote example keys and values: no later call may read them
        t.zero_()
    eos, pad = token_ids(model, None, None)
    try:
        back = token_return(progs.prefill.plan.partition.topology)
    except TopologyError:  # no way back in the topology: nothing to emulate for the token's trip
        back = ()
    return GenerationSpec(max_context=progs.max_len, prefill_chunk=C, batch_size=1, prefill=specs[0], decode=specs[1],
                          eos_token_id=tuple(eos), pad_token_id=pad,
                          return_links=tuple(_link_dict(l) for l in back if l.kind != "local"))


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
        gen = old.get("generation") or {}
        files = {PLAN_FILE, *(str(st["file"]) for p in (old, gen.get("prefill") or {}, gen.get("decode") or {})
                              for st in p.get("stages", ()))} if old.get("format") == "rotafx-plan" else None
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
    return [_link_dict(link) for c, link in route.hops if a <= c < b and link.kind != "local"]


def _link_dict(link: Any) -> dict[str, Any]:
    """A topology link as plan.json lists it."""
    return {"src": link.src, "dst": link.dst, "kind": link.kind, "bandwidth_bps": link.bandwidth_bps,
            "latency_ms": link.latency_ms}


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
        "by_layer": [{"index": l.index, "name": l.name, "node": l.node, "stage": l.stage, "ms": l.total_ms,
                      **({"call_ms": l.call_ms} if l.call_ms else {})} for l in e.by_layer],  # ms: the call included
        "bandwidth_bytes": e.bandwidth_bytes, "memory_bytes": {k: float(v) for k, v in e.memory_bytes.items()},
    }
