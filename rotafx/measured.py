"""The estimator's own error: run a plan on this machine and set what it measures beside what the cost model said.

:func:`estimate_vs_measured` exports the plan the optimizer picks (or loads a plan directory),
runs it in this process through :func:`rotafx.load` (with the topology's links emulated by
default), times every stage's compute and the whole request over ``repeats`` requests, and
returns a :class:`Comparison`: per stage and for the whole request, the estimate, the
measured median with its spread (10th-90th percentile), and the error
``estimate / measured - 1``.
"""

from __future__ import annotations

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

    @property
    def total(self) -> Row:
        return self.rows[-1]

    def report(self) -> str:
        """The table, as the CLI prints it."""
        what = f"generations ({self.generation})" if self.generation else "requests"
        where = f"as {self.processes} stage processes and a driver" if self.processes else "in this process"
        lines = [f"estimate vs measured over {self.repeats} {what} {where}"
                 f"{' with the links emulated' if self.emulate_links else ''} (plan {self.plan_dir}):",
                 f"  {'':<28} {'estimate':>10} {'measured':>10} {'p10-p90':>17} {'error':>8}"]
        for r in self.rows:
            spread = f"{r.p10_ms:.3f}-{r.p90_ms:.3f}ms"
            lines.append(f"  {r.what:<28} {r.estimate_ms:>8.3f}ms {r.measured_ms:>8.3f}ms {spread:>17} "
                         f"{100 * r.error:>+7.1f}%"
                         + (f"  ({r.figures})" if r.figures else ""))
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
    "links and the rest" holds every hop between the processes too.

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
        stage_ms, total_ms = _time_processes(plan_dir, spec, args, kwargs, repeats, warmup, emulate_links, threads)
        return _compare(spec, stage_ms, total_ms, repeats, emulate_links, plan_dir, len(spec.stages))
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
                    warmup: int, emulate_links: bool, threads: int | None) -> tuple[list[list[float]], list[float]]:
    """Each stage's compute and the whole request (ms) of ``repeats`` requests sent one at a time to the plan's
    stage processes, after ``warmup``; the stages' compute from the driver's trace."""
    from .runtime.distributed import launch_local
    from .runtime.tracing import read_trace

    trace = Path(tempfile.mkdtemp(prefix="rotafx-compare-")) / "run.json"
    request = {"args": list(args), "kwargs": dict(kwargs)} if kwargs else tuple(args)
    with launch_local(plan_dir, threads=threads or 1, emulate_links=emulate_links, trace=trace) as cluster:
        for _ in range(warmup + repeats):
            cluster.driver.run([request])
    tracks = {f"stage {st.chain_index}: {st.node} (": i for i, st in enumerate(spec.stages)}
    stage_ms = [[0.0] * repeats for _ in spec.stages]
    total_ms = [0.0] * repeats
    for span in read_trace(trace):
        if span.process != "measured" or span.request < warmup or span.request - warmup >= repeats:
            continue
        if span.track == "requests":  # the driver's: from the request's send to its output (not the trace's wait)
            total_ms[span.request - warmup] = span.ms
            continue
        if span.name != "compute":
            continue
        i = next((i for prefix, i in tracks.items() if span.track.startswith(prefix)), None)
        if i is not None:
            stage_ms[i][span.request - warmup] += span.ms
    return stage_ms, total_ms


def _compare(spec: Any, stage_ms: list[list[float]], total_ms: list[float], repeats: int, emulate_links: bool,
             plan_dir: Path, processes: int) -> Comparison:
    """The rows of a comparison: each stage's compute, the links and the rest, the whole request."""
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
                    float(est.get("transfer_ms", 0.0)) + float(est.get("propagation_ms", 0.0)), m, lo, hi))
    m, lo, hi = _quantiles(total_ms)
    rows.append(Row("whole request", float(est.get("total_ms", 0.0)), m, lo, hi))
    return Comparison(tuple(rows), repeats, emulate_links, str(plan_dir), processes=processes)


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
