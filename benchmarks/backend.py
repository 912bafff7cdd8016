"""Overhead of the rotastellar rewrite: against eager, and (``--inductor``) against plain inductor.

A small GPT at batch 8, all stages on one device (``--device``, the CPU by default) in one
process. Every variant's output is checked first (bit-exact against eager for the eager inner
backend; ``assert_close`` against plain inductor for the inductor inner backend), then the
variants of each group (eager, inductor) are timed interleaved, call by call (the order
reversed every round), so that load from other processes falls on all of them alike.
Compile time is the first call of each compiled variant, each in a fresh process with an
empty inductor cache. Writes benchmarks/RESULTS_backend.md (RESULTS_backend_cuda.md on CUDA).

    .venv/bin/python benchmarks/backend.py [--calls 500] [--batch 8] [--inductor] [--device cuda:0]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch

import rotafx
from rotafx.models import small_gpt

CHAIN = ["cpu0", "cpu1", "cpu2"]
HERE = Path(__file__).resolve().parent


def three_cpus(memory: float) -> dict[str, Any]:
    return {"devices": [{"name": n, "flops": 1e12, "memory": int(memory)} for n in CHAIN],
            "links": [{"src": a, "dst": b, "bandwidth": 1e10} for a, b in zip(CHAIN, CHAIN[1:])], "chain": CHAIN}


# the torch device every stage runs on (--device); the variants read it when they are built
DEVICE = "cpu"


def setup(batch: int) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """The model, its input, and the smallest memory per node (+5%) that makes the planner cut it."""
    torch.manual_seed(0)
    model = small_gpt().eval().to(DEVICE)  # vocab 256, d 64, 4 heads, 2 layers, seq 32
    x = torch.randint(0, 256, (batch, 32), device=DEVICE)
    prof = rotafx.ModelProfile.from_pytorch(model, (x,))
    need = prof.weight_bytes + max(l.peak_bytes for l in prof.layers)
    for pct in range(34, 100, 2):
        try:
            rotafx.PartitionOptimizer(solver="dp").optimize(prof, three_cpus(need * pct / 100))
        except rotafx.InfeasibleError:
            continue
        return model, x, three_cpus(min(need * pct / 100 * 1.05, need * 0.99))
    raise AssertionError("no topology of three nodes forces a cut")


def own_code(model: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``model`` (the same submodules and weights) whose ``forward`` has a code object of its own.

    Dynamo keeps compiled code per code object and tries the entries of one code object most
    recently used first, so several compiled variants of one model called in turn would each
    first fail the guards of the others (about 10 µs apiece here); each variant gets its own.
    """
    cls, fwd = type(model), type(model).forward
    own = types.FunctionType(fwd.__code__.replace(), fwd.__globals__, fwd.__name__, fwd.__defaults__, fwd.__closure__)
    m = copy.copy(model)
    m.__class__ = type(cls.__name__, (cls,), {"forward": own, "__module__": cls.__module__})
    return m


def compiled(backend: Any = "inductor") -> Callable[[torch.nn.Module, torch.Tensor, dict], Any]:
    return lambda m, x, t: torch.compile(own_code(m), backend=backend, fullgraph=True)


# name -> (group, build, how its output is checked); a group's first variant is its baseline
VARIANTS: dict[str, tuple[str, Callable[[torch.nn.Module, torch.Tensor, dict], Any], str]] = {
    "eager": ("eager", lambda m, x, t: m, "exact"),
    "torch.compile, eager backend": ("eager", compiled("eager"), "exact"),
    "rotastellar, 1 stage": ("eager", compiled(rotafx.backend(inner="eager")), "exact"),
    "rotastellar, 2 stages": ("eager", lambda m, x, t: compiled(rotafx.backend(topology=t, devices=DEVICE, inner="eager"))(m, x, t), "exact"),
    "rotastellar, 2 stages, int8 codec": ("eager", lambda m, x, t: compiled(
        rotafx.backend(topology=t, devices=DEVICE, codec="int8", inner="eager"))(m, x, t), "codec"),
    "torch.export, unsplit (ep.module())": ("eager", lambda m, x, t: torch.export.export(m, (x,), strict=False).module(),
                                            "exact"),
    "rotafx.partition, 2 stages": ("eager", lambda m, x, t: rotafx.partition(m, (x,), topology=t, devices=DEVICE), "exact"),
    "torch.compile, inductor": ("inductor", compiled("inductor"), "close"),
    "rotastellar inner inductor, 1 stage": ("inductor", lambda m, x, t: compiled(rotafx.backend(inner="inductor"))(m, x, t),
                                            "close"),
    "rotastellar inner inductor, 2 stages": ("inductor", lambda m, x, t: compiled(
        rotafx.backend(topology=t, devices=DEVICE, inner="inductor"))(m, x, t), "close"),
}


def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` followed by a wait for the GPU (on CUDA), so that a call's time is its work's."""
    if torch.device(DEVICE).type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize())[0]


def compile_seconds(name: str, batch: int, threads: int) -> float:
    """Build ``name`` and time its first call, in this (fresh) process."""
    torch.set_num_threads(threads)
    model, x, tight = setup(batch)
    _, build, _ = VARIANTS[name]
    with torch.no_grad():
        t0 = time.perf_counter()
        fn = build(model, x, tight)
        synced(lambda: fn(x))()
        return time.perf_counter() - t0


def fresh_compile_seconds(name: str, batch: int, threads: int) -> float:
    """:func:`compile_seconds` in a new Python process with its own empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="rotafx-bench-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
               "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
        out = subprocess.run([sys.executable, __file__, "--compile-time-of", name, "--batch", str(batch),
                              "--threads", str(threads), "--device", DEVICE], env=env, capture_output=True, text=True,
                             check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def interleaved_us(fns: list[Callable[[], Any]], calls: int, warmup: int = 20) -> list[list[float]]:
    """Microseconds of each call of each function, timed in turn call by call (the order reversed every round)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    clock = time.perf_counter
    for r in range(calls):
        for i in (order if r % 2 == 0 else order[::-1]):
            fn = fns[i]
            t0 = clock()
            fn()
            times[i].append((clock() - t0) * 1e6)
    return times


def pct(t: list[float], q: float) -> float:
    s = sorted(t)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--inductor", action="store_true", help="also time inner='inductor' against plain inductor")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: least noise on a shared machine)")
    ap.add_argument("--no-compile-times", action="store_true", help="skip the fresh-process compile times")
    ap.add_argument("--device", default="cpu", help="the torch device of the model and every stage (cpu, cuda:0, ...)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per group; figures are medians over the runs")
    ap.add_argument("--compile-time-of", help=argparse.SUPPRESS)
    ap.add_argument("--time-group", choices=("eager", "inductor"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help="default: benchmarks/RESULTS_backend.md (cpu) or RESULTS_backend_cuda.md")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if args.out is None:
        args.out = str(HERE / ("RESULTS_backend.md" if torch.device(DEVICE).type == "cpu" else
                               f"RESULTS_backend_{torch.device(DEVICE).type}.md"))
    if args.compile_time_of:
        print(json.dumps({"seconds": compile_seconds(args.compile_time_of, args.batch, args.threads)}))
        return
    if args.time_group:
        print(json.dumps(time_group(args.time_group, args)))
        return
    groups = ["eager"] + (["inductor"] if args.inductor else [])
    names = [n for n, (group, _, _) in VARIANTS.items() if group in groups]
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        measured: dict[str, Any] = {}
        for group in groups:  # each group in a fresh process: nothing one group built runs beside the other's calls
            out = subprocess.run([sys.executable, __file__, "--time-group", group, "--calls", str(args.calls), "--batch",
                                  str(args.batch), "--threads", str(args.threads), "--device", DEVICE],
                                 capture_output=True, text=True, check=True)
            measured.update(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.append(measured)
        print(f"run {run + 1}: " + ", ".join(f"{n} {statistics.median(measured[n]['times']):.0f} us" for n in names), flush=True)

    compile_s: dict[str, float] = {}
    if not args.no_compile_times:
        for name in names:
            if name != "eager":
                compile_s[name] = fresh_compile_seconds(name, args.batch, args.threads)
                print(f"compile {name}: {compile_s[name]:.1f} s", flush=True)

    rows = []
    base_of: dict[str, str] = {}
    for name in names:
        group = VARIANTS[name][0]
        base = base_of.setdefault(group, name)
        # per run: the ratio of the medians and the paired ratio; reported: the median over the runs
        ratios = [statistics.median(r[name]["times"]) / statistics.median(r[base]["times"]) for r in runs]
        paireds = [statistics.median(a / b for a, b in zip(r[name]["times"], r[base]["times"])) for r in runs]
        t = [v for r in runs for v in r[name]["times"]]
        last = runs[-1][name]
        rows.append((name, group, last["stages"], statistics.median(t), pct(t, 0.1), pct(t, 0.9), statistics.median(ratios),
                     statistics.median(paireds), last["first_call"], compile_s.get(name), last["diff"], ratios))
        print(f"{name:<40} stages {last['stages']!s:>2}  median {statistics.median(t):8.1f} us  (p10 {pct(t, 0.1):.1f}, "
              f"p90 {pct(t, 0.9):.1f})  {statistics.median(ratios):.3f}x {base} (runs: "
              f"{', '.join(f'{r:.3f}' for r in ratios)}; paired {statistics.median(paireds):.3f}x)", flush=True)
    write(args, rows)
    print(f"wrote {args.out}")


def time_group(group: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build the variants of ``group``, check their outputs, time them interleaved; in this process."""
    torch.set_num_threads(args.threads)
    torch._inductor.config.compile_threads = 1  # no pool of compile workers alive beside the timed calls
    model, x, tight = setup(args.batch)
    names = [n for n, (g, _, _) in VARIANTS.items() if g == group]
    result: dict[str, Any] = {}
    with torch.no_grad():
        want = model(x)
        built: dict[str, Any] = {}
        outputs: dict[str, torch.Tensor] = {}
        for name in names:
            _, build, check = VARIANTS[name]
            t0 = time.perf_counter()
            fn = build(model, x, tight)
            got = synced(lambda: fn(x))()
            first_call = time.perf_counter() - t0
            if check == "exact":
                assert torch.equal(got, want), f"{name}: output differs from eager"
            elif check == "codec":
                torch.testing.assert_close(got, want, rtol=0.1, atol=0.1)
            else:  # against plain inductor, itself checked against eager
                torch.testing.assert_close(got, outputs.get("torch.compile, inductor", want))
            stages: Any = "-"
            if name.startswith("rotas") or name.startswith("rotafx"):
                plan = rotafx.last_plan()
                stages = len(plan.stages)
                if "2 stages" in name:
                    assert len(plan.stages) == 2 and len(plan.rewritten.transfers) >= 1, f"{name}: {plan}"
            built[name], outputs[name] = fn, got
            result[name] = {"stages": stages, "first_call": first_call, "diff": float((got - want).abs().max())}
        gc.collect()
        times = interleaved_us([synced(lambda fn=built[n]: fn(x)) for n in names], args.calls)
    for name, t in zip(names, times):
        result[name]["times"] = t
    return result


def write(args: argparse.Namespace, rows: list[tuple]) -> None:
    by = {r[0]: r for r in rows}
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f"GPU {torch.cuda.get_device_name(torch.device(args.device))}" if args.device.startswith("cuda") else "no GPU used"
    lines = [
        "# rotastellar backend: overhead of the rewrite",
        "",
        f"Small GPT (`rotafx.models.small_gpt()`: vocab 256, d 64, 4 heads, 2 layers, sequence 32), batch {args.batch}, "
        f"fp32, `torch.no_grad()`, {args.threads} torch thread(s), every stage on `{args.device}` in one process. "
        f"{args.runs} runs; in each, each group of variants (eager, inductor) is built and timed in a fresh process: "
        f"{args.calls} timed calls per variant after 20 warm-up calls, the group's variants interleaved call by call "
        "(the order reversed every round), so that the load of other jobs on this shared machine falls on all of them "
        "alike. Each output is checked before timing: bit-exact against eager (eager inner backend), `assert_close` "
        "against plain inductor (inductor inner backend), within 0.1 for the int8 codec.",
        "",
        "\"vs base\" is the median over the runs of the ratio of the variant's median to the group's first row's "
        "(\"runs\" lists each run's); \"paired\" the median over the runs of the median over the rounds of each "
        "call's time over the base's call in the same round (less sensitive to load that drifts). \"median\", \"p10\" "
        "and \"p90\" pool the calls of all runs. \"first call\" is build plus first call in the timing process "
        "(caches warm from earlier variants); \"compile\" the same in a fresh process with an empty inductor cache.",
        "",
    ]
    for group, title in (("eager", "Eager inner backend, against eager"), ("inductor", "Inductor inner backend, against plain inductor")):
        grp = [r for r in rows if r[1] == group]
        if not grp:
            continue
        lines += [f"## {title}", "",
                  "| variant | stages | median µs | p10 µs | p90 µs | vs base | runs | paired | first call s | compile s "
                  "| max abs diff vs eager |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for name, _, stages, med, p10, p90, ratio, paired, first, comp, diff, ratios in grp:
            lines.append(f"| {name} | {stages} | {med:.1f} | {p10:.1f} | {p90:.1f} | {ratio:.3f}x | "
                         f"{', '.join(f'{r:.3f}' for r in ratios)} | {paired:.3f}x | "
                         f"{first:.2f} | {'-' if comp is None else f'{comp:.1f}'} | {diff:.2g} |")
        lines.append("")

    def verdict(name: str, base: str) -> str:
        if name not in by or base not in by:
            return "not measured"
        r, p = by[name][6], by[name][7]
        ok = max(r, p) <= 1.05
        return f"{'met' if ok else 'not met'} ({r:.3f}x by medians, {p:.3f}x paired)"

    e, ce = "eager", "torch.compile, eager backend"
    lines += ["## Goals (within 5%)", "",
              f"* 1 stage, eager inner backend, against eager: {verdict('rotastellar, 1 stage', e)}.",
              f"* 2 stages, eager inner backend, against eager: {verdict('rotastellar, 2 stages', e)}.",
              f"* `rotafx.partition`, 2 stages, against eager: {verdict('rotafx.partition, 2 stages', e)}."]
    if "torch.compile, inductor" in by:
        lines += [f"* 1 stage, inner inductor, against plain inductor: {verdict('rotastellar inner inductor, 1 stage', 'torch.compile, inductor')}.",
                  f"* 2 stages, inner inductor, against plain inductor: {verdict('rotastellar inner inductor, 2 stages', 'torch.compile, inductor')}."]
    med = {n: r[3] for n, r in by.items()}

    def delta(a: str, b: str, of: str = e) -> str:
        if not (a in med and b in med and of in med):
            return "-"
        return f"{med[a] - med[b]:+.0f} µs ({(med[a] - med[b]) / med[of]:+.1%} of {of})"

    lines += ["", "Where the time over the baseline goes (differences of medians):", "",
              f"* dynamo itself (`torch.compile` with the eager backend, over eager): {delta(ce, e)}",
              f"* the rotastellar runtime for one stage (over the eager backend): {delta('rotastellar, 1 stage', ce)}",
              f"* the cut, one `rotafx::transfer` (2 stages over 1, eager inner): "
              f"{delta('rotastellar, 2 stages', 'rotastellar, 1 stage')}",
              f"* `rotafx.partition`, 2 stages, over the unsplit exported program: "
              f"{delta('rotafx.partition, 2 stages', 'torch.export, unsplit (ep.module())')}"]
    if "torch.compile, inductor" in by:
        lines += [f"* inner inductor, 1 stage over plain inductor: "
                  f"{delta('rotastellar inner inductor, 1 stage', 'torch.compile, inductor', 'torch.compile, inductor')}",
                  f"* inner inductor, the cut (2 stages over 1): "
                  f"{delta('rotastellar inner inductor, 2 stages', 'rotastellar inner inductor, 1 stage', 'torch.compile, inductor')}"]
    lines += [
        "",
        f"Both plans put their stages on `{args.device}`, so the 2-stage rows over the 1-stage rows are the cost of the "
        "cut itself: one `rotafx::transfer` per crossing tensor, whose output is a copy (the op's output may not alias "
        "its input), and, with an inner backend, a second compiled graph (no fusion across the cut). With the eager "
        "inner backend the runtime pastes the stages into one function (`FlatProgram`) and makes the transfer through "
        "`rotafx.ops.transfer`, which runs the op's Python kernel without the dispatcher when nothing (autograd, a "
        "tracer, a mode) must see the op.",
        "",
        f"Command: `.venv/bin/python benchmarks/backend.py --calls {args.calls} --runs {args.runs} --batch {args.batch} "
        f"--threads {args.threads}"
        f"{' --inductor' if args.inductor else ''}{'' if args.device == 'cpu' else f' --device {args.device}'}`",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs visible, load average {load:.1f} at the end of the run "
        f"(other jobs share it), torch {torch.__version__}, Python {sys.version.split()[0]}, "
        f"{platform.system()} {platform.release()}; torch threads {args.threads}; {gpu}.",
        "",
    ]
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if NOTES in old:  # notes written by hand below the marker survive a rerun
        lines += [NOTES + old.split(NOTES, 1)[1].rstrip("\n"), ""]
    out.write_text("\n".join(lines))


NOTES = "<!-- notes by hand: benchmarks/backend.py keeps everything below this line -->"


if __name__ == "__main__":
    main()
