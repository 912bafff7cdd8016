"""The estimator against this CPU: datasheet, calibrated and measured-layer estimates of held-out models, and their error.

Issue 13's goal, measured on the machine it runs on, with one torch thread:

1. calibrate this CPU once (``rotafx.calibrate.calibrate("cpu", threads=1)``, the full grid), kept
   in a temporary directory, never beside the results;
2. held-out models, ones the calibration never saw: the zoo's ``mlp`` (and a wider one),
   ``convnet`` and ``small_gpt``, and transformers' Llama and GPT-2 built from small configs,
   at a few shapes each;
3. per (model, shape): the whole request measured (eager, ``no_grad``, ``torch.utils.benchmark``
   medians over rounds interleaved across every case, half before and half after the layer
   measurements), and the estimate of ``LatencyEstimator(topology).estimate([0] * L, profile)``
   for (a) a datasheet device with this CPU's best matmul rate and copy bandwidth, (b) the
   calibrated device, (c) the calibrated device with the profile's layers measured at that
   shape (``profile.measure(model, inputs, threads=1)``);
4. error = estimate / measured - 1, its median |error| over cases for (a), (b), (c), the
   per-layer error of (b) against the measured layers, and, to say where (b) goes wrong, every
   op of the traced graph timed alone and compared with the calibration's price for it, by op kind.

Before timing, each case checks that the estimator priced what this script expects (the
calibrated estimate is the sum of the calibration's layer times, the measured one the sum of
the measured layers, the MLP's FLOPs the analytic count). Writes benchmarks/RESULTS_calibration.md.

    .venv/bin/python benchmarks/calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from rotafx.calibrate import Calibration, calibrate  # noqa: E402
from rotafx.frontends.pytorch.trace import trace  # noqa: E402
from rotafx.models import convnet, example_inputs, mlp, small_gpt  # noqa: E402

__all__ = ["Case", "cases", "main"]


@dataclass
class Case:
    """One (model, shape): the model, its inputs, and what was measured and estimated for it."""

    model_name: str
    shape: str
    model: torch.nn.Module
    inputs: tuple
    profile: Any = None
    measured_profile: Any = None
    runs_ms: list[float] = field(default_factory=list)  # whole-request medians, one per round
    program: Any = None  # torch.export's program of the model (.module()): what rotafx.load runs for one stage
    program_runs_ms: list[float] = field(default_factory=list)  # its medians, one per round
    est: dict[str, float] = field(default_factory=dict)  # "a", "b", "c" -> ms

    @property
    def label(self) -> str:
        return f"{self.model_name} {self.shape}"

    @property
    def measured_ms(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def spread(self) -> float:
        """Inter-quartile range of the round medians over their median."""
        q = statistics.quantiles(self.runs_ms, n=4) if len(self.runs_ms) > 1 else [self.runs_ms[0]] * 3
        return (q[2] - q[0]) / self.measured_ms


def _hf(kind: str) -> torch.nn.Module:
    """A transformers Llama or GPT-2 from a small config, sdpa attention, no KV cache, eval."""
    import transformers

    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                       use_cache=False)
        cls: Any = transformers.LlamaForCausalLM
    else:
        cfg = transformers.GPT2Config(vocab_size=512, n_embd=128, n_layer=2, n_head=4, n_positions=256, bos_token_id=0,
                                      eos_token_id=0, use_cache=False)
        cls = transformers.GPT2LMHeadModel
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(cfg).eval()


def _tokens(vocab: int, b: int, s: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(s)),)


def cases(quick: bool) -> list[Case]:
    """The held-out models at their shapes (``quick``: fewer shapes)."""
    torch.manual_seed(0)
    out: list[Case] = []
    m = mlp()
    for b in (1, 128) if quick else (1, 16, 128):
        out.append(Case("mlp", f"batch {b}", m, example_inputs("mlp", b)))
    wide = mlp((256, 1024, 1024, 256)).eval()
    for b in (1, 128) if quick else (1, 16, 128):
        out.append(Case("mlp-wide", f"batch {b}", wide, (torch.randn(b, 256),)))
    c = convnet()
    for b in (1, 8):
        out.append(Case("convnet", f"batch {b}", c, example_inputs("convnet", b)))
    g = small_gpt(vocab=256, d=128, heads=4, layers=4, seq=128).eval()
    for s in (1, 128) if quick else (1, 16, 128):
        out.append(Case("small_gpt", f"{s} tok", g, _tokens(256, 1, s)))
    for kind in ("llama", "gpt2"):
        hf = _hf(kind)
        for s in (16, 128):
            out.append(Case(f"hf-{kind}", f"{s} tok", hf, _tokens(512, 1, s)))
    return out


# -- topologies --------------------------------------------------------------------------------


def datasheet(cal: Calibration) -> dict[str, Any]:
    """The issue's baseline: a device given this CPU's best matmul rate and copy bandwidth, and nothing else."""
    return {"devices": [{"name": "cpu", "memory": "16 GB", "flops": cal.peak_flops("float32"),
                         "memory_bandwidth": cal.bandwidth_Bps}], "links": [], "chain": ["cpu"]}


def calibrated(cal: Calibration) -> dict[str, Any]:
    """The same device, priced by its calibration."""
    return {"devices": [{"name": "cpu", "memory": "16 GB", "calibration": cal.to_dict()}], "links": [], "chain": ["cpu"]}


def estimate_ms(topo: dict[str, Any], profile: Any) -> tuple[float, Any]:
    """Whole-request estimate (all layers on the one device) and the Estimate."""
    e = rotafx.LatencyEstimator(topo).estimate([0] * profile.num_layers, profile)
    return e.total_ms, e


# -- timing ------------------------------------------------------------------------------------


def time_request(case: Case, min_run_time: float, program: bool = False) -> float:
    """Median ms of one eager forward (``program``: of the exported program), by torch.utils.benchmark."""
    m, x = case.program if program else case.model, case.inputs
    with torch.no_grad():
        t = Timer(stmt="m(*x)", globals={"m": m, "x": x}, num_threads=1).blocked_autorange(min_run_time=min_run_time)
    return t.median * 1e3


def interleaved(cs: list[Case], rounds: int, min_run_time: float, say: Callable[[str], None]) -> None:
    """``rounds`` passes over every case, each appending one median to the case's runs."""
    for r in range(rounds):
        for c in cs:
            c.runs_ms.append(time_request(c, min_run_time))
            c.program_runs_ms.append(time_request(c, min_run_time, program=True))
        say(f"whole-request round {r + 1}/{rounds}")


def _kind(node: fx.Node) -> str:
    """The op kind of an fx node: its aten overload packet (``aten.linear``), or the callable's name."""
    t = node.target
    name = getattr(t, "__name__", str(t))
    name = str(t) if str(t).startswith("aten.") else name
    return re.sub(r"\.(default|Tensor|Scalar|int|dim|self|using_ints|input|using_sizes)$", "", name)


def time_ops(case: Case, cals: dict[str, Calibration], min_run_time: float) -> dict[str, list[Any]]:
    """Every call_function node of the traced graph timed alone on its real inputs, against its price by each calibration.

    Returns op kind -> [count, measured s, {calibration name: estimated s}, views]. The graph is the
    one the profile was made from (same ``torch.export`` call), so its node names are the profile's op names.
    """
    tr = trace(case.model, case.inputs)
    gm = tr.graph_module
    cost = {name: oc for layer in case.profile.layers for name, oc in zip(layer.ops, layer.op_costs)}
    user = iter(a for a in case.inputs if isinstance(a, torch.Tensor))
    values = [tr.values[tr.weights[n.name]] if n.name in tr.weights else next(user)
              for n in gm.graph.nodes if n.op == "placeholder"]
    out: dict[str, list[Any]] = {}

    class OpTimer(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            if n.op != "call_function":
                return super().run_node(n)
            a, k = self.fetch_args_kwargs_from_env(n)
            f = n.target
            res = f(*a, **k)
            t = Timer(stmt="f(*a, **k)", globals={"f": f, "a": a, "k": k}, num_threads=1)
            secs = t.blocked_autorange(min_run_time=min_run_time).median
            oc = cost.get(n.name)
            row = out.setdefault(_kind(n), [0, 0.0, dict.fromkeys(cals, 0.0), 0])
            row[0] += 1
            row[1] += secs
            for name, cal in cals.items():
                row[2][name] += cal.op_time_s(oc) if oc is not None else 0.0
            row[3] += bool(oc is not None and oc.view)
            return res

    with torch.no_grad():
        OpTimer(gm).run(*values)
    return out


def time_graph(case: Case, min_run_time: float) -> float:
    """Median ms of the traced graph module itself (the ops the profile prices, no nn.Module calls)."""
    tr = trace(case.model, case.inputs)
    gm = tr.graph_module
    user = iter(a for a in case.inputs if isinstance(a, torch.Tensor))
    values = [tr.values[tr.weights[n.name]] if n.name in tr.weights else next(user)
              for n in gm.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():
        gm(*values)
        t = Timer(stmt="gm(*v)", globals={"gm": gm, "v": values}, num_threads=1).blocked_autorange(
            min_run_time=min_run_time)
    return t.median * 1e3


# -- checks ------------------------------------------------------------------------------------


def check(case: Case, cal: Calibration) -> None:
    """The estimator priced what this script assumes; the MLP's FLOPs are the analytic count."""
    p = case.profile
    b, _ = estimate_ms(calibrated(cal), p)
    by_hand = 1e3 * sum(cal.layer_time_s(layer) for layer in p.layers)
    assert abs(b - by_hand) <= 1e-9 * max(1.0, by_hand), f"{case.label}: calibrated estimate {b} != sum of layers {by_hand}"
    if case.model_name.startswith("mlp"):
        lins = [m for m in case.model if isinstance(m, torch.nn.Linear)]
        rows = case.inputs[0].shape[0]
        assert p.total_flops >= sum(2 * rows * m.in_features * m.out_features for m in lins), f"{case.label}: FLOPs"
    with torch.no_grad():
        y = case.model(*case.inputs)
    y = y.logits if hasattr(y, "logits") else y
    assert torch.isfinite(y).all(), f"{case.label}: the model's output is not finite"


def check_measured(case: Case, cal: Calibration) -> None:
    """With measured layers, the estimate is their sum and says 'measured'."""
    p = case.measured_profile
    c, e = estimate_ms(calibrated(cal), p)
    total = sum(layer.measured_ms for layer in p.layers)
    assert abs(c - total) <= 1e-9 * max(1.0, total), f"{case.label}: measured estimate {c} != sum of layers {total}"
    assert set((e.figures or {}).values()) == {"measured"}, f"{case.label}: figures {e.figures}"


# -- report ------------------------------------------------------------------------------------


def err(est: float, meas: float) -> float:
    return est / meas - 1.0


def median_abs(xs: list[float]) -> float:
    return statistics.median(abs(x) for x in xs)


def layer_rows(cs: list[Case], cal: Calibration) -> list[tuple[str, str, float, float, int]]:
    """(case, layer, (b) estimate ms, measured ms, ops) of every layer."""
    rows = []
    for c in cs:
        for layer in c.measured_profile.layers:
            rows.append((c.label, layer.name, 1e3 * cal.layer_time_s(layer), layer.measured_ms, len(layer.op_costs)))
    return rows


ANALYSIS = "## Analysis"


def kept_analysis(path: Path) -> str:
    """The hand-written analysis of an earlier results file (kept across runs), or a placeholder."""
    if path.exists():
        text = path.read_text()
        if ANALYSIS in text:
            return text[text.index(ANALYSIS):]
    return f"{ANALYSIS}\n\n(to be written from the figures above)\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about 2 minutes)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_calibration.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    say = lambda m: print(f"[{time.time() - start:6.1f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    rounds, run_s, layer_repeats, op_s = (6, 0.05, 3, 0.005) if args.quick else (16, 0.1, 7, 0.01)

    tmp = Path(tempfile.mkdtemp(prefix="rotafx-calibration-"))
    t0 = time.time()
    cal = calibrate("cpu", threads=1)
    cal_s = time.time() - t0
    cal.save(tmp / "cpu.yaml")
    cal = Calibration.load(tmp / "cpu.yaml")  # the estimator reads what a user's file would hold
    say(f"calibrated in {cal_s:.0f} s -> {tmp / 'cpu.yaml'}")
    kinds = {k: cal.kind_time_s(k, 2 * 4 * 16384) for k in ("pointwise", "tanh", "gelu", "norm", "softmax")}
    head = {"peak matmul GFLOP/s": cal.peak_flops() / 1e9,
            "matmul 1x1024x1024 GFLOP/s": cal.matmul_flops(1, 1024, 1024) / 1e9,
            "matmul 16x256x256 GFLOP/s": cal.matmul_flops(16, 256, 256) / 1e9,
            "matmul 256x1024x1024 GFLOP/s": cal.matmul_flops(256, 1024, 1024) / 1e9,
            "conv 3x3 GEMM 1024x144x16 GFLOP/s": cal.conv_flops(1024, 144, 16) / 1e9,
            "attention BH 2 S 16 D 32 GFLOP/s": cal.attention_flops(2, 16, 32) / 1e9,
            "attention BH 8 S 256 D 64 GFLOP/s": cal.attention_flops(8, 256, 64) / 1e9,
            "copy bandwidth GB/s (64 MB copy_ into a buffer)": cal.bandwidth_Bps / 1e9,
            **{f"{k} us per call at 128 kB moved": t * 1e6 for k, t in kinds.items()},
            "pointwise us per call, smallest probe": min(cal.op_times["pointwise"].values()) * 1e6,
            "linear launch us (smallest F.linear)": min(cal.op_times["matmul"].values()) * 1e6,
            "context us per op in a forward": cal.op_context_s * 1e6,
            "module call us": cal.module_call_s * 1e6,
            "context us per op in an fx graph": cal.graph_op_s * 1e6,
            "context us per op in an exported program": cal.program_op_s * 1e6,
            "exported program's own call us": cal.program_call_s * 1e6,
            "op of no kind us (launch + context)": cal.op_overhead_s * 1e6, "view us": cal.view_overhead_s * 1e6}
    for k, v in head.items():
        say(f"  {k}: {v:.2f}")
    # what-if: the cost model before the op-kind tables (every op: one launch cost + its roofline; a matmul its rate)
    cals = {"b": cal, "b-flat": dataclasses.replace(cal, op_times={}, conv={}, op_context_s=0.0, module_call_s=0.0)}
    # what-if: each op its context in an fx graph, plus each module call of the layer (module_calls) at module_call_s
    cals["b-calls"] = dataclasses.replace(cal, op_context_s=cal.graph_op_s)

    def calls_ms(layers: Any) -> float:
        return 1e3 * cal.module_call_s * sum(layer.module_calls for layer in layers)
    variants = ["a", *cals, "c"]

    cs = cases(args.quick)
    for c in cs:
        c.profile = rotafx.ModelProfile.from_pytorch(c.model, c.inputs)
        check(c, cal)
        c.est["a"], _ = estimate_ms(datasheet(cal), c.profile)
        for name, k in cals.items():
            c.est[name], _ = estimate_ms(calibrated(k), c.profile)
        c.est["b-calls"] += calls_ms(c.profile.layers)
        c.est["program"], _ = estimate_ms(calibrated(cal), dataclasses.replace(c.profile, runs_as="program"))
        with torch.no_grad():
            c.program = torch.export.export(c.model, c.inputs).module()
    say(f"{len(cs)} cases profiled and checked")

    for c in cs:  # warm every model before any round
        time_request(c, 0.02)
        time_request(c, 0.02, program=True)
    interleaved(cs, rounds // 2, run_s, say)
    for c in cs:
        c.measured_profile = c.profile.measure(c.model, c.inputs, threads=1, repeats=layer_repeats)
        check_measured(c, cal)
        c.est["c"], _ = estimate_ms(calibrated(cal), c.measured_profile)
    say("layers measured")
    first = {c.label: statistics.median(c.runs_ms) for c in cs}
    interleaved(cs, rounds - rounds // 2, run_s, say)
    second = {c.label: statistics.median(c.runs_ms[rounds // 2:]) for c in cs}
    drift = [abs(second[k] / first[k] - 1) for k in first]

    # where (b) goes wrong: the traced graph whole, and every op alone
    graph_ms: dict[str, float] = {}
    ops: dict[str, list[Any]] = {}
    op_cases = [c for c in cs if c.shape in ("batch 1", "16 tok", "1 tok")] if args.quick else cs
    for c in op_cases:
        graph_ms[c.label] = time_graph(c, run_s)
        for k, (n, ms, es, v) in time_ops(c, cals, op_s).items():
            row = ops.setdefault(k, [0, 0.0, dict.fromkeys(cals, 0.0), 0])
            row[0] += n
            row[1] += ms
            row[3] += v
            for name in cals:
                row[2][name] += es[name]
    say("ops timed")

    errs = {k: [err(c.est[k], c.measured_ms) for c in cs] for k in variants}
    lerr = {name: [err(1e3 * k.layer_time_s(layer) + (calls_ms([layer]) if name == "b-calls" else 0.0),
                       layer.measured_ms) for c in cs for layer in c.measured_profile.layers if layer.measured_ms > 0]
            for name, k in cals.items()}
    lrows = layer_rows(cs, cal)
    elapsed = time.time() - start
    what = {"a": "(a) datasheet", "b": "(b) calibrated", "c": "(c) measured layers",
            "b-flat": "what-if: (b) with one launch cost for every op kind (no op-kind tables)",
            "b-calls": "what-if: (b) with each module call priced in its layer (module_calls x module_call_s)"}
    goal = {"a": "(the baseline)", "b": "within 15%", "c": "within 5%", "b-flat": "", "b-calls": ""}

    lines = ["# The estimator against this CPU (issue 13)", "",
             f"`.venv/bin/python benchmarks/calibration.py{' --quick' if args.quick else ''}`, "
             f"{datetime.date.today().isoformat()}, {elapsed / 60:.1f} min (calibration {cal_s:.0f} s).", "",
             f"Machine: {cal.machine.get('cpu', platform.processor())}, {os.cpu_count()} cores (shared, noisy), "
             f"L2 1 MiB per core, L3 32 MiB, **one torch thread**, torch {torch.__version__}, "
             f"Python {platform.python_version()}, {platform.platform()}.", "",
             "## Calibration (`calibrate(\"cpu\", threads=1)`, full grid; kept in a temp dir)", "",
             "| figure | value |", "|---|---:|", *[f"| {k} | {v:.2f} |" for k, v in head.items()], "",
             "## Whole request: estimate / measured - 1", "",
             "(a) datasheet device (this CPU's best calibrated matmul rate and the calibration's copy bandwidth as "
             "`flops` / `memory_bandwidth`); (b) the calibrated device, no per-model measurement; (c) the calibrated "
             "device with the profile's layers measured at that shape (`profile.measure(model, inputs, threads=1, "
             f"repeats={layer_repeats})`). Measured: eager forward, `no_grad`, median of {rounds} round medians "
             f"(`torch.utils.benchmark`, {run_s} s each), rounds interleaved over all cases, half before and half after "
             "the layer measurements; spread = IQR of the rounds / median.", "",
             "| model | shape | layers | ops | measured ms | spread | (a) ms | (a) err | (b) ms | (b) err | (c) ms | (c) err |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cs:
        n_ops = sum(len(layer.op_costs) for layer in c.profile.layers)
        lines.append(f"| {c.model_name} | {c.shape} | {c.profile.num_layers} | {n_ops} | {c.measured_ms:.3f} | "
                     f"{c.spread:.1%} | " + " | ".join(f"{c.est[k]:.3f} | {err(c.est[k], c.measured_ms):+.1%}"
                                                       for k in "abc") + " |")
    lines += ["", "| estimate | median \\|err\\| | worst \\|err\\| | per layer median \\|err\\| | goal |",
              "|---|---:|---:|---:|---|"]
    for k in variants:
        per_layer = f"{median_abs(lerr[k]):.1%}" if k in lerr else ""
        lines.append(f"| {what[k]} | {median_abs(errs[k]):.1%} | {max(map(abs, errs[k])):.1%} | {per_layer} | {goal[k]} |")
    lines += ["", f"Per layer: each layer's estimate against its measured time ({len(lerr['b'])} layers). Noise: the "
              f"whole-request medians before and after the layer measurements differ by {statistics.median(drift):.1%} "
              f"(median over cases, worst {max(drift):.1%}); median spread "
              f"{statistics.median(c.spread for c in cs):.1%}, worst {max(c.spread for c in cs):.1%}.", "",
              "What-if rows (not the shipped cost model's figures): b-flat, the same `Calibration.op_time_s` on the same "
              "calibration with its op-kind tables, convolution table and context cost dropped, so that every op pays "
              "`op_overhead_s` plus its roofline (a matmul or attention its rate at its shape), as before the tables; "
              "b-calls, each op's context as in an fx graph (`graph_op_s`) and each layer's module calls "
              "(`LayerProfile.module_calls`, from the trace's module stack) at `module_call_s`, instead of one "
              "context per op that spreads the probe's module calls over its ops. Per case:", "",
              "| model | shape | " + " | ".join(f"{k} err" for k in cals) + " | implied context us per op |",
              "|---|---|" + "---:|" * (len(cals) + 1)]
    implied = []
    for c in cs:
        # the context cost per op that would close (b)'s gap: context + (measured - estimate) / ops
        n_ops = sum(len(layer.op_costs) for layer in c.profile.layers)
        implied.append(cal.op_context_s * 1e6 + (c.measured_ms - c.est["b"]) * 1e3 / n_ops)
        lines.append(f"| {c.model_name} | {c.shape} | " +
                     " | ".join(f"{err(c.est[k], c.measured_ms):+.1%}" for k in cals) + f" | {implied[-1]:.1f} |")
    lines += ["", f"Implied context us per op: the context cost per op (calibrated: {cal.op_context_s * 1e6:.2f} us) "
              f"that would make (b)'s estimate equal the measurement; median {statistics.median(implied):.1f} us."]

    perr = [err(c.est["program"], statistics.median(c.program_runs_ms)) for c in cs]
    lines += ["", "## The exported program: what rotafx.load runs", "",
              "Each case's `torch.export.export(model, inputs).module()` timed in the same rounds as the eager forward "
              "(interleaved with it), against the calibrated estimate of the profile with `runs_as=\"program\"` (each "
              f"op's context `program_op_s` = {cal.program_op_s * 1e6:.2f} us instead of `op_context_s` + module calls; "
              f"the program's own call, {cal.program_call_s * 1e6:.1f} us, is per stage).", "",
              "| case | eager ms | program ms | program / eager | (b) as program ms | err |", "|---|---:|---:|---:|---:|---:|"]
    for c, e in zip(cs, perr):
        pm = statistics.median(c.program_runs_ms)
        lines.append(f"| {c.label} | {c.measured_ms:.3f} | {pm:.3f} | {pm / c.measured_ms:.2f} | {c.est['program']:.3f} | "
                     f"{e:+.1%} |")
    lines += ["", f"Median \\|err\\| {median_abs(perr):.1%}, worst {max(map(abs, perr)):.1%}."]

    lines += ["", "## Per layer, (b) against measured layers", "",
              "| case | layer | ops | (b) ms | measured ms | err |", "|---|---|---:|---:|---:|---:|"]
    for lab, name, e, m, n in lrows:
        lines.append(f"| {lab} | {name} | {n} | {e:.4f} | {m:.4f} | {err(e, m) if m > 0 else float('nan'):+.0%} |")

    lines += ["", "## Where (b)'s error comes from", "",
              "The eager request against the traced graph run whole (the ops the profile prices, without nn.Module "
              "calls) and the sum of the measured layers (each layer's fx submodule timed alone):", "",
              "| case | eager ms | graph module ms | sum of layers ms | (b) ms |", "|---|---:|---:|---:|---:|"]
    for c in cs:
        g = graph_ms.get(c.label)
        lines.append(f"| {c.label} | {c.measured_ms:.3f} | {'' if g is None else f'{g:.3f}'} | "
                     f"{sum(l.measured_ms for l in c.measured_profile.layers):.3f} | {c.est['b']:.3f} |")
    tot_m = sum(r[1] for r in ops.values())
    tot = {k: sum(r[2][k] for r in ops.values()) for k in cals}
    lines += ["", f"Every op of the traced graph timed alone on its real inputs "
              f"({', '.join(c.label for c in op_cases)}; `torch.utils.benchmark`, {op_s} s each), against "
              "`Calibration.op_time_s` for it, by op kind, summed over those cases, sorted by |(b) - measured|. "
              f"Total: measured {tot_m * 1e3:.3f} ms; " +
              ", ".join(f"{k} {tot[k] * 1e3:.3f} ms ({err(tot[k], tot_m):+.0%})" for k in cals) + ".", "",
              "| op kind | count | views | measured us/op | (b) us/op | b-flat us/op | measured ms | (b) ms | (b) - measured ms "
              "| b-flat - measured ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, (n, ms, es, v) in sorted(ops.items(), key=lambda kv: -abs(kv[1][2]["b"] - kv[1][1])):
        lines.append(f"| {k} | {n} | {v} | {ms / n * 1e6:.1f} | {es['b'] / n * 1e6:.1f} | {es['b-flat'] / n * 1e6:.1f} | "
                     f"{ms * 1e3:.3f} | {es['b'] * 1e3:.3f} | {(es['b'] - ms) * 1e3:+.3f} | {(es['b-flat'] - ms) * 1e3:+.3f} |")
    out = Path(args.out)
    text = "\n".join(lines) + "\n\n" + kept_analysis(out)
    out.write_text(text)
    print(text)
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
