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

    @property
    def total(self) -> Row:
        return self.rows[-1]

    def report(self) -> str:
        """The table, as the CLI prints it."""
        lines = [f"estimate vs measured over {self.repeats} requests in this process"
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
                         **options: Any) -> Comparison:
    """Run a plan here and compare each stage's and the whole request's time with the estimate.

    ``model`` is a module (exported with ``options`` as :func:`rotafx.export` takes them:
    ``topology``, ``objective``, ``codec``, ...) or a plan directory. ``repeats`` requests are
    timed after ``warmup``; ``threads`` sets torch's intra-op threads while timing
    (default: as they are). ``emulate_links`` holds each hop back as the topology's links
    would (:mod:`rotafx.runtime.links`): without it the links cost only a copy here.
    """
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
    return Comparison(tuple(rows), repeats, emulate_links, str(plan_dir))


def _figures(spec: Any) -> dict[str, str]:
    """node -> "calibrated" / "datasheet", from the plan's topology."""
    out = {}
    for d in (spec.topology or {}).get("devices", []):
        if isinstance(d, Mapping) and "name" in d:
            out[str(d["name"])] = "calibrated" if d.get("calibration") else "datasheet"
    return out
