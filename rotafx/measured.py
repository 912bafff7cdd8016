"""The estimator's own error: run a plan on this machine and set what it measures beside what the cost model said.

:func:`estimate_vs_measured` exports the plan the optimizer picks (or loads a plan directory),
runs it in this process through :func:`rotafx.load` (with the topology's links emulated by
default), times every stage's compute and the whole request over ``repeats`` requests, and
returns a :class:`Comparison`: per stage and for the whole request, the estimate, the
measured median with its spread (10th-90th percentile), and the error
``estimate / measured - 1``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

__all__ = ["Comparison", "Row", "estimate_vs_measured"]


@dataclass(frozen=True)
class Row:
    """One line of a :class:`Comparison`: times in ms; ``error`` is ``estimate / measured - 1``."""

    what: str
    estimate_ms: float
    measured_ms: float
    p10_ms: float
    p90_ms: float
    figures: str = ""

    @property
    def error(self) -> float:
        return self.estimate_ms / self.measured_ms - 1.0 if self.measured_ms > 0 else float("inf")


@dataclass(frozen=True)
class Comparison:
    """Estimate against measurement: one row per stage's compute, one for the links, one for the request."""

    rows: tuple[Row, ...]
    repeats: int
    emulate_links: bool
    plan_dir: str
    generation: str = ""  # the workload, when the rows are a generation's (TTFT, TPOT, the whole generation)
    processes: int = 0  # stage processes the plan ran as (0: in this process)
    # as processes: the driver's hop to the first stage and from the last, a part of "links and the rest"
    driver_hops: Row | None = None
    # as processes: one hop between two stage processes, its fixed cost per message (what a link's message_ms prices)
    process_hop: Row | None = None

    @property
    def total(self) -> Row:
        return self.rows[-1]

    def report(self) -> str:
        """The table, as the CLI prints it."""
        what = f"generations ({self.generation})" if self.generation else "requests"
        where = f"as {self.processes} stage processes and a driver" if self.processes else "in this process"
        lines = [f"estimate vs measured over {self.repeats} {what} {where}"
                 f"{' with the links emulated' if self.emulate_links else ''} (plan {self.plan_dir}):",
                 f"  {'':<34} {'estimate':>10} {'measured':>10} {'p10-p90':>17} {'error':>8}"]
        for r in self.rows:
            spread = f"{r.p10_ms:.3f}-{r.p90_ms:.3f}ms"
            lines.append(f"  {r.what:<34} {r.estimate_ms:>8.3f}ms {r.measured_ms:>8.3f}ms {spread:>17} "
                         f"{100 * r.error:>+7.1f}%"
                         + (f"  ({r.figures})" if r.figures else ""))
            for d in (self.driver_hops, self.process_hop):
                if r.what.startswith("links") and d is not None:
                    lines.append(f"    {'of which ' + d.what:<32} {d.estimate_ms:>8.3f}ms {d.measured_ms:>8.3f}ms "
                                 f"{f'{d.p10_ms:.3f}-{d.p90_ms:.3f}ms':>17} {100 * d.error:>+7.1f}%  ({d.figures})")
        return "\n".join(lines)


def _quantiles(xs: Sequence[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    q = lambda f: s[min(len(s) - 1, max(0, round(f * (len(s) - 1))))]  # noqa: E731
    return statistics.median(s), q(0.1), q(0.9)


def estimate_vs_measured(model: torch.nn.Module | str | os.PathLike[str], example_inputs: Any = None, *,
                         example_kwargs: Mapping[str, Any] | None = None, repeats: int = 20, warmup: int = 3,
                         emulate_links: bool = True, threads: int | None = None, path: str | os.PathLike[str] | None = None,
                         generation: Any = None, processes: bool = False, **options: Any) -> Comparison:
    """Run a plan here and compare each stage's and the whole request's time with the estimate.

    ``model`` is a module (exported with ``options`` as :func:`rotafx.export` takes them:
    ``topology``, ``objective``, ``codec``, ...) or a plan directory. ``repeats`` requests are
    timed after ``warmup``; ``threads`` sets torch's intra-op threads while timing
    (default: as they are). ``emulate_links`` holds each hop back as the topology's links
    would (:mod:`rotafx.runtime.links`): without it the links cost only a copy here.

    With ``processes``, the plan runs as it is deployed: one process per stage on this machine and a driver in
    this one (:func:`~rotafx.runtime.distributed.launch_local`, ``threads`` threads each, default 1), one
    request at a time; each stage's compute comes from the driver's trace (the stages time it themselves), and
    "links and the rest" holds every hop between the processes too, and the driver's own two hops (the request to
    the first stage, the output back from the last), priced as a process hop of this machine
    (:attr:`Comparison.driver_hops`: by the first and last nodes' calibrated process hop, else the chain links'
    ``message_ms``).

    With ``generation`` (as :func:`rotafx.partition` takes it: ``{"new_tokens": N, ...}``) a causal LM
    is partitioned for generating tokens and ``repeats`` generations run in this process
    (:func:`rotafx.generate`, links not emulated): the rows are TTFT, TPOT and the whole
    generation, each beside the plan's estimate (``pipeline.generation_plan``).
    """
    if generation is not None and processes:
        raise ValueError("rotafx: estimate_vs_measured(generation=..., processes=True) is not supported; time "
                         "Driver.generate(..., timings=True) across processes (benchmarks/generate_distributed.py)")
    if generation is not None:
        return _generation_vs_measured(model, example_inputs, example_kwargs, generation, repeats, warmup, threads,
                                       options)
    from .frontends.pytorch.trace import as_args
    from .plan.load import load
    from .plan.schema import read_plan
    from .plan.write import export

    for name, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"rotafx: {name} must be an integer >= {low}, got {v!r}")
    if example_inputs is None:
        raise ValueError("rotafx: estimate_vs_measured needs example_inputs to run the plan with")
    if isinstance(model, (str, os.PathLike)):
        plan_dir = Path(model)
        if options:
            raise ValueError(f"rotafx: options {sorted(options)} are for exporting a model; a plan directory is run as "
                             f"it is")
    else:
        plan_dir = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="rotafx-check-")) / "plan"
        export(model, example_inputs, example_kwargs=example_kwargs, path=plan_dir, **options)
    spec = read_plan(plan_dir)
    args = as_args(example_inputs)
    kwargs = dict(example_kwargs or {})
    if processes:
        stage_ms, total_ms, driver_ms, hop_ms, nbytes = _time_processes(plan_dir, spec, args, kwargs, repeats, warmup,
                                                                        emulate_links, threads)
        topo = _topology(spec)
        est_ms, figures = driver_hops_ms(spec, *nbytes, topo=topo)
        # a request whose trace lacks the spans is left out; none at all: the driver's hops are not measured (but
        # still priced in the links' row and the whole request)
        driver = Row("the driver's two hops", est_ms, *_quantiles(driver_ms), figures) if driver_ms else None
        cmp = _compare(spec, stage_ms, total_ms, repeats, emulate_links, plan_dir, len(spec.stages), driver, est_ms)
        if hop_ms:
            m, lo, hi = _quantiles(hop_ms)
            est = process_message_ms(spec, topo=topo)
            hint = f"measured: give the links message_ms {m:.3f} to price this machine's hops"
            cmp = dataclasses.replace(cmp, process_hop=Row("a hop between stages", est, m, lo, hi,
                                                           "the links' message_ms; " + hint if est else hint))
        return cmp
    pipe = load(plan_dir, emulate_links=emulate_links)
    spent: dict[int, float] = {}
    starts: dict[int, float] = {}

    def before(i: int) -> Any:
        def hook(_m: Any, _a: Any) -> None:
            starts[i] = time.perf_counter()
        return hook

    def after(i: int) -> Any:
        def hook(_m: Any, _a: Any, _o: Any) -> None:
            st = pipe.stages[i]
            if st.device.type == "cuda":
                torch.cuda.synchronize(st.device)
            spent[i] = spent.get(i, 0.0) + time.perf_counter() - starts[i]
        return hook

    handles = []
    for i, st in enumerate(pipe.stages):
        handles += [st.register_forward_pre_hook(before(i)), st.register_forward_hook(after(i))]
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    stage_ms: list[list[float]] = [[] for _ in pipe.stages]
    total_ms: list[float] = []
    try:
        with torch.no_grad():
            for r in range(warmup + repeats):
                spent.clear()
                t0 = time.perf_counter()
                pipe(*args, **kwargs)
                for d in {st.device for st in pipe.stages if st.device.type == "cuda"}:
                    torch.cuda.synchronize(d)
                t = time.perf_counter() - t0
                if r >= warmup:
                    total_ms.append(1e3 * t)
                    for i in range(len(pipe.stages)):
                        stage_ms[i].append(1e3 * spent.get(i, 0.0))
    finally:
        torch.set_num_threads(old_threads)
        for h in handles:
            h.remove()
    return _compare(spec, stage_ms, total_ms, repeats, emulate_links, plan_dir, 0)


def _time_processes(plan_dir: Path, spec: Any, args: Sequence[Any], kwargs: Mapping[str, Any], repeats: int,
                    warmup: int, emulate_links: bool, threads: int | None
                    ) -> tuple[list[list[float]], list[float], list[float], list[float], tuple[int, int]]:
    """Each stage's compute, the whole request and the driver's two hops (ms) of ``repeats`` requests sent one at a
    time to the plan's stage processes, after ``warmup``, from the driver's trace; every hop between two stages
    (its "in flight" span: from the sender handing it over until the receiver took it, the emulated delay not
    included); and the bytes of a request's tensors and of its output's.

    The driver's hop in is the first stage's "in flight" span (the driver's send until that stage took it), its hop
    out the driver's own (the last stage's send until the driver took the output), neither with the emulated delay
    of a link; a request whose trace lacks either is left out of the driver's figure."""
    from torch.utils._pytree import tree_leaves

    from .runtime.distributed import launch_local
    from .runtime.tracing import link_track, read_trace

    trace = Path(tempfile.mkdtemp(prefix="rotafx-compare-")) / "run.json"
    request = {"args": list(args), "kwargs": dict(kwargs)} if kwargs else tuple(args)
    with launch_local(plan_dir, threads=threads or 1, emulate_links=emulate_links, trace=trace) as cluster:
        for _ in range(warmup + repeats):
            out = cluster.driver.run([request])
    tracks = {f"stage {st.chain_index}: {st.node} (": i for i, st in enumerate(spec.stages)}
    stage_ms = [[0.0] * repeats for _ in spec.stages]
    total_ms = [0.0] * repeats
    hop_in: dict[int, float] = {}
    hop_out: dict[int, float] = {}
    first_in = link_track("input", spec.stages[0].node)
    last_out = link_track(spec.stages[-1].node, "output")
    between = {link_track(a.node, b.node) for a, b in zip(spec.stages, spec.stages[1:])}
    hop_ms: list[float] = []
    for span in read_trace(trace):
        r = span.request - warmup
        if span.process != "measured" or r < 0 or r >= repeats:
            continue
        if span.track == "requests":  # the driver's: from the request's send to its output (not the trace's wait)
            total_ms[r] = span.ms
            continue
        if span.name == "in flight":
            if span.track == first_in:
                hop_in[r] = span.ms
            elif span.track == last_out:
                hop_out[r] = span.ms
            elif span.track in between:
                hop_ms.append(span.ms)
        i = next((i for prefix, i in tracks.items() if span.track.startswith(prefix)), None)
        if i is not None and span.name == "compute":
            stage_ms[i][r] += span.ms
    driver_ms = [hop_in[r] + hop_out[r] for r in range(repeats) if r in hop_in and r in hop_out]
    nbytes = tuple(sum(t.numel() * t.element_size() for t in tree_leaves(x) if isinstance(t, torch.Tensor))
                   for x in (request, out))
    return stage_ms, total_ms, driver_ms, hop_ms, (int(nbytes[0]), int(nbytes[1]))


_UNREAD = object()  # a topology argument not given: read it from the plan


def _topology(spec: Any) -> Any:
    """The plan's topology, or None when it does not load (a plan directory is input from others)."""
    from .topology import Topology, TopologyError

    try:
        return Topology.from_dict(spec.topology)
    except (TopologyError, ValueError, TypeError, KeyError):
        return None


def process_message_ms(spec: Any, *, topo: Any = _UNREAD) -> float:
    """The fixed cost per message the plan's topology gives a hop between two of its stages: the ``message_ms`` of
    the chain links each hop crosses, averaged over the hops (0 when none is given or the topology does not load).
    ``topo``: the plan's topology already loaded (:func:`_topology`), else it is read from ``spec``."""
    topo = _topology(spec) if topo is _UNREAD else topo
    at = _chain_positions(spec, topo) if topo is not None else []
    if len(at) < 2:
        return 0.0
    per_hop = []
    for a, b in zip(at, at[1:]):
        chain = topo.chain[a:b + 1]
        per_hop.append(sum(_message_ms(topo, x, y) for x, y in zip(chain, chain[1:]) if x != y))
    return sum(per_hop) / len(per_hop)


def _chain_positions(spec: Any, topo: Any) -> list[int]:
    """Each stage's place on the topology's chain, or ``[]`` when the plan's stages do not say one there (a plan
    directory is input from others)."""
    try:
        at = [int(st.chain_index) for st in spec.stages]
        nodes = [st.node for st in spec.stages]
    except (AttributeError, TypeError, ValueError):
        return []
    ok = all(0 <= i < len(topo.chain) and topo.chain[i] == n for i, n in zip(at, nodes)) and at == sorted(at)
    return at if ok else []


def _message_ms(topo: Any, src: str, dst: str) -> float:
    from .topology import TopologyError

    try:
        return topo.link(src, dst).message_ms
    except TopologyError:
        return 0.0


def driver_hops_ms(spec: Any, in_bytes: int, out_bytes: int, *, topo: Any = _UNREAD) -> tuple[float, str]:
    """The estimate of the driver's two hops (ms), the request's ``in_bytes`` to the first stage's process and the
    output's ``out_bytes`` back from the last's, and where the figure comes from.

    Each is a hop between two processes of one host: the calibrated process hop of that end's node
    (``calibrate(processes=True)``: its fixed cost per message and its bandwidth) when it has one, else the
    ``message_ms`` of the chain link leaving the first node (arriving at the last), the user's figure for a
    process hop; 0 when neither is known (then the figure says so). ``topo`` as :func:`process_message_ms` takes it."""
    topo = _topology(spec) if topo is _UNREAD else topo
    if topo is None:
        return 0.0, "not priced: the plan's topology does not load"
    at = _chain_positions(spec, topo)
    if not at:
        return 0.0, "not priced: the plan's stages are not on its topology's chain"
    chain, first, last = topo.chain, at[0], at[-1]
    ends = ((chain[first], in_bytes, (chain[first], chain[first + 1]) if first + 1 < len(chain) else None),
            (chain[last], out_bytes, (chain[last - 1], chain[last]) if last > 0 else None))
    total, how = 0.0, []
    for node, nbytes, pair in ends:
        dev = topo.devices.get(node)
        hop = dev.calibration.transfers.get("process") if dev is not None and dev.calibration is not None else None
        if hop:
            total += 1e3 * (hop["latency_s"] + nbytes / hop["bandwidth_Bps"])
            how.append("calibrated process hop")
            continue
        msg = _message_ms(topo, *pair) if pair is not None and pair[0] != pair[1] else 0.0
        total += msg
        how.append("the link's message_ms" if msg else "not priced")
    figures = how[0] if how[0] == how[1] else " / ".join(how)
    if "not priced" in how:
        figures += ": calibrate the nodes with processes=True, or give the links message_ms"
    return total, figures


def _compare(spec: Any, stage_ms: list[list[float]], total_ms: list[float], repeats: int, emulate_links: bool,
             plan_dir: Path, processes: int, driver: Row | None = None, driver_ms: float = 0.0) -> Comparison:
    """The rows of a comparison: each stage's compute, the links and the rest (the driver's hops among them, as
    processes: their estimate ``driver_ms``, measured in ``driver`` when the trace had them), the whole request."""
    est = spec.estimate
    by_stage: dict[int, float] = {}
    for row in est.get("by_layer", []):
        by_stage[int(row["stage"])] = by_stage.get(int(row["stage"]), 0.0) + float(row["ms"])
    figures = _figures(spec)
    rows = []
    for i, st in enumerate(spec.stages):
        m, lo, hi = _quantiles(stage_ms[i])
        rows.append(Row(f"stage {i} ({st.node}) compute", by_stage.get(st.chain_index, 0.0), m, lo, hi,
                        figures.get(st.node, "")))
    links = [t - sum(s[r] for s in stage_ms) for r, t in enumerate(total_ms)]
    m, lo, hi = _quantiles(links)
    rows.append(Row("links and the rest" if emulate_links else "links (not emulated) and the rest",
                    float(est.get("transfer_ms", 0.0)) + float(est.get("propagation_ms", 0.0)) + driver_ms, m, lo, hi))
    m, lo, hi = _quantiles(total_ms)
    rows.append(Row("whole request", float(est.get("total_ms", 0.0)) + driver_ms, m, lo, hi))
    return Comparison(tuple(rows), repeats, emulate_links, str(plan_dir), processes=processes, driver_hops=driver)


def _generation_vs_measured(model: Any, example_inputs: Any, example_kwargs: Mapping[str, Any] | None, generation: Any,
                            repeats: int, warmup: int, threads: int | None, options: Mapping[str, Any]) -> Comparison:
    """TTFT, TPOT and the whole generation of ``repeats`` timed :func:`rotafx.generate` calls against the plan."""
    from .backend.partition import partition
    from .frontends.pytorch.trace import as_args
    from .runtime.generate import generate

    for name, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"rotafx: {name} must be an integer >= {low}, got {v!r}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError("rotafx: generation is measured on a model partitioned here; give the module, not a plan "
                         "directory")
    pm = partition(model, as_args(example_inputs), example_kwargs=example_kwargs, generation=generation, **options)
    g = pm.generation_plan.estimate.generation
    ids = next(a for a in as_args(example_inputs) if isinstance(a, torch.Tensor) and not a.is_floating_point())
    prompt = ids[:g.batch_size].repeat(1, -(-g.prompt_len // ids.shape[1]))[:, :g.prompt_len]
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    ttft, tpot, whole = [], [], []
    try:
        for r in range(warmup + repeats):
            _, t = generate(pm, prompt, max_new_tokens=g.new_tokens, eos_token_id=[], timings=True)
            if r >= warmup:
                ttft.append(t.ttft_ms)
                tpot.append(t.tpot_ms)
                whole.append(t.ttft_ms + sum(t.decode_ms))
    finally:
        torch.set_num_threads(old_threads)
    rows = []
    for what, est, xs in (("time to first token", g.ttft_ms, ttft), ("time per output token", g.tpot_ms, tpot),
                          ("whole generation", g.generation_ms, whole)):
        m, lo, hi = _quantiles(xs)
        rows.append(Row(what, est, m, lo, hi))
    workload = f"{g.prompt_len} prompt + {g.new_tokens} new tokens, batch {g.batch_size}"
    return Comparison(tuple(rows), repeats, False, "in memory", generation=workload)


def _figures(spec: Any) -> dict[str, str]:
    """node -> "calibrated" / "datasheet", from the plan's topology."""
    out = {}
    for d in (spec.topology or {}).get("devices", []):
        if isinstance(d, Mapping) and "name" in d:
            out[str(d["name"])] = "calibrated" if d.get("calibration") else "datasheet"
    return out
