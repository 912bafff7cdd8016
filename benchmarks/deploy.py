"""A plan deployed as three processes (ground -> orbit -> ground) on this machine, against the single-process model.

1. Throughput of the three-process pipeline (``rotafx.runtime.distributed``, gloo on
   127.0.0.1) by the number of requests (micro-batches) in the stream, with emulated
   links off and on, against the plain model in one process.
2. The estimator's latency and period against the measured ones, with emulated links on
   (the seed's links: uplink 100 Mbit/s, downlink 500 Mbit/s, 25 ms each way), the
   devices' FLOP/s calibrated on this CPU so that the compute part means something here.

Every output is checked against the model before anything is timed. Writes
benchmarks/RESULTS_deploy.md.

    .venv/bin/python benchmarks/deploy.py [--counts 1,2,4,8,16,32] [--repeats 3]

3. ``--calibrated`` (issue 13): the same deployment with every device carrying this machine's
   calibration (``rotafx.calibrate("cpu", threads=1, processes=True)``, saved under a temporary
   directory) and each link the measured per-message cost of a process hop (``message_ms``),
   re-planned and exported; the calibrated estimator's latency, period and each part (links,
   compute, per-hop message cost) beside the measured medians of interleaved rounds, with the
   error ``estimate / measured - 1``. Writes its own section of RESULTS_deploy.md (the datasheet
   run keeps it), a few minutes a run:

    .venv/bin/python benchmarks/deploy.py --calibrated [--runs 2] [--rounds 21] [--streams 8,40]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from rotafx.costmodel import CostTables  # noqa: E402
from rotafx.models import small_gpt  # noqa: E402
from rotafx.runtime.distributed import launch_local  # noqa: E402


def calibrate_flops(n: int = 256, reps: int = 50, trials: int = 7) -> float:
    """FLOP/s of one thread on an n x n fp32 matmul, the best of ``trials`` (the devices of the benchmark run at this speed)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(5):
        a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def topology(model: torch.nn.Module, x: tuple, flops: float | None, emulate_seed_links: bool = True, *,
             calibration: str | None = None, message_ms: float = 0.0) -> dict[str, Any]:
    """ground0 -(100 Mbit/s, 25 ms)-> orbital0 -(500 Mbit/s, 25 ms)-> ground1; memory forces a three-way split.

    ``calibration``: a calibration file every device names (its figures then price compute, and ``flops``
    is left to it); ``message_ms``: each link's fixed cost per message (a process hop's)."""
    def topo(memory: float) -> dict[str, Any]:
        def dev(name: str, kind: str) -> dict[str, Any]:
            d: dict[str, Any] = {"name": name, "kind": kind, "memory": memory, "power": 300 if kind == "orbital" else 700}
            if calibration is not None:
                d["calibration"] = calibration
            else:
                d.update(flops=flops, memory_bandwidth=20e9)
            return d
        msg = {"message_ms": message_ms} if message_ms else {}
        return {"devices": [dev("ground0", "ground"), dev("orbital0", "orbital"), dev("ground1", "ground")],
                "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": 100e6, "latency_ms": 25.0, **msg},
                          {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": 500e6, "latency_ms": 25.0, **msg}],
                "chain": ["ground0", "orbital0", "ground1"]}

    prof = rotafx.ModelProfile.from_pytorch(model, x)
    tables = CostTables(prof, rotafx.Topology.coerce(topo(1e18)))
    L = prof.num_layers
    need = min(max(tables.layers_memory(range(0, a)), tables.layers_memory(range(a, b)), tables.layers_memory(range(b, L)))
               for a in range(1, L - 1) for b in range(a + 1, L))
    return topo(need * 1.001)


def timed(fn: Any, repeats: int) -> float:
    """Fewest seconds ``fn()`` took over ``repeats`` runs (the machine is shared: the minimum is the least disturbed)."""
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


BEGIN, END = "<!-- calibrated: written by benchmarks/deploy.py --calibrated -->", "<!-- calibrated: end -->"


def _q(xs: list[float]) -> tuple[float, float, float]:
    """Median, 10th and 90th percentile (nearest rank) of ``xs``."""
    s = sorted(xs)
    at = lambda f: s[min(len(s) - 1, max(0, round(f * (len(s) - 1))))]  # noqa: E731
    return statistics.median(s), at(0.1), at(0.9)


def calibrated_run(model: torch.nn.Module, x: tuple, rounds: int, streams: tuple[int, int], stream_repeats: int,
                   quick: bool, run_no: int) -> dict[str, Any]:
    """One calibrated run: calibrate this machine (one thread, with a process hop), plan on it, measure.

    Returns the rows ``(what, estimate_ms or None, measured samples in ms)`` and the run's facts."""
    tmp = Path(tempfile.mkdtemp(prefix="rotafx-deploy-cal-"))
    load_before = os.getloadavg()[0]
    say = lambda m: print(f"[run {run_no}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    cal = rotafx.calibrate("cpu", threads=1, quick=quick, processes=True, progress=say)
    cal_s = time.perf_counter() - t0
    cal_path = cal.save(tmp / "cpu.json")
    msg_ms = cal.process_message_ms or 0.0
    topo = topology(model, x, None, calibration=str(cal_path), message_ms=msg_ms)
    plan = tmp / "plan"
    spec = rotafx.export(model, x, path=plan, topology=topo)
    est = spec.estimate
    say(f"plan: {[s.node for s in spec.stages]}, estimate {est['total_ms']:.2f} ms, message_ms {msg_ms:.4f}")
    n_long = max(streams)
    reqs = [(torch.randint(0, 256, x[0].shape, generator=torch.Generator().manual_seed(i)),) for i in range(n_long)]
    with torch.no_grad():
        want = [model(*r) for r in reqs]
    loaded = rotafx.load(plan)
    assert all(torch.equal(loaded(*r), w) for r, w in zip(reqs, want)), "the loaded plan differs from the model"
    del loaded
    hops = len(est["transfers"])
    ser_ms = sum(t["transfer_ms"] for t in est["transfers"]) - hops * msg_ms  # a hop's transfer_ms includes message_ms
    by_stage: dict[int, float] = {}
    for row in est.get("by_layer", []):
        by_stage[int(row["stage"])] = by_stage.get(int(row["stage"]), 0.0) + float(row["ms"])
    est_links = ser_ms + est["propagation_ms"]  # what the emulation holds each request back, links idle
    on, off, single, links, overhead, overhead_on, inproc_total = [], [], [], [], [], [], []
    stage_ms: list[list[float]] = [[] for _ in spec.stages]
    period: dict[tuple[str, int], list[float]] = {}
    windows = {"links on, default window (6 in flight)": (True, None),
               f"links on, window {n_long} (all in flight)": (True, n_long),
               f"links off, window {n_long} (all in flight)": (False, n_long)}
    with launch_local(plan, timeout=120, join_timeout=300, threads=1) as cluster:
        outs = cluster.run(reqs)
        assert all(torch.equal(o, w) for o, w in zip(outs, want)), "the three-process pipeline differs from the model"
        for emulate in (False, True):
            cluster.run(reqs[:4], emulate_links=emulate)  # warm
        for i in range(rounds):  # one request at a time; every measure in every round, the order turned each round
            r = reqs[i % len(reqs)]
            got: dict[str, float] = {}

            def lat(emulate: bool) -> float:
                t = time.perf_counter()
                cluster.run([r], emulate_links=emulate)
                return 1e3 * (time.perf_counter() - t)

            def one() -> float:
                with torch.no_grad():
                    t = time.perf_counter()
                    model(*r)
                    return 1e3 * (time.perf_counter() - t)

            steps = [("on", lambda: lat(True)), ("off", lambda: lat(False)), ("single", one), ("inproc", None)]
            k = i % len(steps)
            for name, fn in steps[k:] + steps[:k]:
                if fn is not None:
                    got[name] = fn()
                else:  # each stage's compute in this process (rotafx.estimate_vs_measured, links not emulated)
                    cmp = rotafx.estimate_vs_measured(plan, r, repeats=3, warmup=1, emulate_links=False, threads=1)
                    for j in range(len(spec.stages)):
                        stage_ms[j].append(cmp.rows[j].measured_ms)
                    got["inproc"] = sum(cmp.rows[j].measured_ms for j in range(len(spec.stages)))
            on.append(got["on"]); off.append(got["off"]); single.append(got["single"])
            inproc_total.append(got["inproc"])
            links.append(got["on"] - got["off"])
            overhead.append(got["off"] - got["inproc"])
            overhead_on.append(got["on"] - got["inproc"] - est_links)
        for _ in range(stream_repeats):  # a long and a short stream, interleaved: the period is the difference
            for wname, (emulate, w) in windows.items():
                ts = {}
                for n in streams:
                    t = time.perf_counter()
                    cluster.run(reqs[:n], emulate_links=emulate, window=w)
                    ts[n] = 1e3 * (time.perf_counter() - t)
                period.setdefault((wname, 0), []).append((ts[n_long] - ts[min(streams)]) / (n_long - min(streams)))
                period.setdefault((wname, 1), []).append(ts[n_long] / n_long)
    est_msg = hops * msg_ms
    rows: list[tuple[str, float | None, list[float]]] = [
        ("latency of one request, links on", est["total_ms"], on),
        ("links: serialisation + propagation (measured: links on - links off, paired)", est_links, links),
        ("compute, all stages (measured: each stage in one process, `estimate_vs_measured`)", est["compute_ms"],
         inproc_total),
        *((f"compute, stage {s.index} on {s.node}", by_stage.get(s.chain_index, 0.0), stage_ms[j])
          for j, s in enumerate(spec.stages)),
        (f"per-hop message cost, {hops} links x {msg_ms:.3f} ms (measured: links off - compute in one process)",
         est_msg, overhead),
        (f"per-hop message cost, links on (measured: links on - compute in one process - the emulated "
         f"{est_links:.2f} ms)", est_msg, overhead_on),
        ("latency of one request, links off (compute + process hops)", est["compute_ms"] + est_msg, off),
        *((f"period, {wname} (long - short stream, per extra request)", est["period_ms"], period[(wname, 0)])
          for wname, (emulate, _) in windows.items() if emulate),
        *((f"period, {wname} (estimate: the slowest stage's compute, links left out)", max(by_stage.values()),
           period[(wname, 0)]) for wname, (emulate, _) in windows.items() if not emulate),
        *((f"time per request of the {n_long}-request stream, {wname}", est["period_ms"], period[(wname, 1)])
          for wname, (emulate, _) in windows.items() if emulate),
        ("whole model in one process (reference, not estimated)", None, single),
    ]
    return {"rows": rows, "msg_ms": msg_ms, "load": (load_before, os.getloadavg()[0]), "hop": dict(cal.transfers.get("process", {})), "cal_s": cal_s,
            "plan": ", ".join(f"stage {s.index} on {s.node} ({s.weight_bytes / 1e6:.2f} MB)" for s in spec.stages),
            "transfers": "; ".join(f"{t['src']} -> {t['dst']} {t['bytes'] / 1e3:.1f} kB, {t['transfer_ms']:.2f} ms "
                                   f"(incl. {msg_ms:.3f} ms per message) + {t['propagation_ms']:g} ms" for t in est["transfers"]),
            "peak": cal.peak_flops() or 0.0, "context_us": 1e6 * cal.op_context_s}


def _bw(bps: float) -> str:
    return (f"{bps / 1e9:.2f} GB/s" if bps < 1e12 else
            "no growth with size (the fitted slope was not positive; bandwidth clamped at 1e15 B/s)")


def _table(run: dict[str, Any]) -> str:
    out = ["| | estimator (calibrated) | measured median | p10-p90 | n | error (est/meas - 1) |",
           "|---|---:|---:|---:|---:|---:|"]
    for what, e, xs in run["rows"]:
        m, lo, hi = _q(xs)
        err = f"{100 * (e / m - 1):+.1f}%" if e is not None and m > 0 else "-"
        out.append(f"| {what} | {'-' if e is None else f'{e:.2f} ms'} | {m:.2f} ms | {lo:.2f}-{hi:.2f} ms | {len(xs)} | {err} |")
    return "\n".join(out)


def _machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor() or platform.machine())
    return (f"{cpu}, nproc {os.cpu_count()} (shared with other work while measuring), torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}, no GPU")


def calibrated_main(args: argparse.Namespace) -> int:
    """``--calibrated``: the deployment priced with this machine's calibration and its process hop, against measurement."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = small_gpt(vocab=256, d=128, heads=4, layers=6, seq=64).eval()
    x = (torch.randint(0, 256, (args.batch, 64)),)
    streams = tuple(int(c) for c in args.streams.split(","))
    runs = [calibrated_run(model, x, args.rounds, streams, args.stream_repeats, args.quick_calibration, i + 1)
            for i in range(args.runs)]
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = (f".venv/bin/python benchmarks/deploy.py --calibrated --runs {args.runs} --rounds {args.rounds} "
           f"--streams {args.streams} --stream-repeats {args.stream_repeats} --batch {args.batch}"
           + (" --quick-calibration" if args.quick_calibration else ""))
    parts = []
    for i, r in enumerate(runs, 1):
        hop = r["hop"]
        parts.append(f"""### Run {i} of {len(runs)}

Calibration ({r['cal_s']:.0f} s, one thread{', quick' if args.quick_calibration else ''}): best matmul
{r['peak'] / 1e9:.1f} GFLOP/s, {r['context_us']:.1f} us per op in a forward; process hop (gloo, 127.0.0.1)
{1e3 * hop.get('latency_s', 0.0):.3f} ms per message + {_bw(hop.get('bandwidth_Bps', 0.0))}, put on both links as
`message_ms: {r['msg_ms']:.4f}`. Load average (1 min) {r['load'][0]:.2f} before the run, {r['load'][1]:.2f} after. Plan: {r['plan']}. Hops: {r['transfers']}.

{_table(r)}
""")
    block = f"""{BEGIN}
## Calibrated estimate against measurement (issue 13: within 20%, links emulated, per-hop cost included)

The same model, batch {args.batch}, and the same three nodes and links, but every device carries this
machine's calibration (`rotafx.calibrate("cpu", threads=1, processes=True)`, saved to a temporary
`cpu.json` that each device names as `calibration:`) and each link the measured per-message cost of a
process hop (`message_ms` = `Calibration.process_message_ms`); re-planned and exported as above, every
output checked bit-identical first. Latency: {args.rounds} rounds, each timing one request with links on,
one with links off, the whole model in this process, and each stage's compute in this process
(`rotafx.estimate_vs_measured` on the plan directory, links not emulated, median of 3), the order turned
each round; "links" and "per-hop message cost" are per-round differences. Period: streams of
{' and '.join(map(str, streams))} requests, links on (two windows) and off, interleaved, {args.stream_repeats} times each; the period is
(time of the long stream - time of the short) / {max(streams) - min(streams)}, which leaves out filling
and draining the pipeline. Each stage process, the driver and the model run 1 torch thread.

Command: `{cmd}` ({date}).

Machine: {_machine()}.

{chr(10).join(parts)}{END}"""
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.write_text(text)
    print(block)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4,8,16,32", help="requests per stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_deploy.md"))
    ap.add_argument("--calibrated", action="store_true",
                    help="calibrate this machine (one thread, with a process hop), plan on it and compare the "
                         "estimate with measurement; writes its own section of --out")
    ap.add_argument("--runs", type=int, default=1, help="--calibrated: separate runs, each calibrating afresh")
    ap.add_argument("--rounds", type=int, default=21, help="--calibrated: interleaved latency rounds (at least 15)")
    ap.add_argument("--streams", default="8,40", help="--calibrated: the short and the long stream for the period")
    ap.add_argument("--stream-repeats", type=int, default=5)
    ap.add_argument("--quick-calibration", action="store_true", help="--calibrated: rotafx.calibrate(quick=True)")
    args = ap.parse_args(argv)
    if args.calibrated:
        return calibrated_main(args)
    counts = [int(c) for c in args.counts.split(",")]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = small_gpt(vocab=256, d=128, heads=4, layers=6, seq=64).eval()
    x = (torch.randint(0, 256, (args.batch, 64)),)
    flops = calibrate_flops()
    topo = topology(model, x, flops)
    tmp = Path(tempfile.mkdtemp(prefix="rotafx-deploy-"))
    spec = rotafx.export(model, x, path=tmp / "plan", topology=topo)
    print(f"plan: {[s.node for s in spec.stages]}, estimate {spec.estimate['total_ms']:.2f} ms", file=sys.stderr)
    reqs = [(torch.randint(0, 256, x[0].shape, generator=torch.Generator().manual_seed(i)),) for i in range(max(counts))]
    with torch.no_grad():
        want = [model(*r) for r in reqs]
    loaded = rotafx.load(tmp / "plan")
    assert all(torch.equal(loaded(*r), w) for r, w in zip(reqs, want)), "the loaded plan differs from the model"

    # the single-process model
    single: dict[int, float] = {}
    with torch.no_grad():
        for n in counts:
            single[n] = timed(lambda: [model(*r) for r in reqs[:n]], args.repeats)

    piped: dict[tuple[bool, int], float] = {}
    latency: dict[bool, list[float]] = {False: [], True: []}
    with launch_local(tmp / "plan", timeout=120, join_timeout=300, threads=1) as cluster:
        outs = cluster.run(reqs)
        assert all(torch.equal(o, w) for o, w in zip(outs, want)), "the three-process pipeline differs from the model"
        for emulate in (False, True):
            cluster.run(reqs[:4], emulate_links=emulate)  # warm
            for n in counts:
                piped[(emulate, n)] = timed(lambda: cluster.run(reqs[:n], emulate_links=emulate), args.repeats)
        for i in range(15):  # one request at a time, links on and off in turn so that load falls on both alike
            for emulate in (False, True):
                t = time.perf_counter()
                cluster.run(reqs[i:i + 1], emulate_links=emulate)
                latency[emulate].append(time.perf_counter() - t)

    est = spec.estimate
    lat_on, lat_off = statistics.median(latency[True]), statistics.median(latency[False])
    min_on, min_off = min(latency[True]), min(latency[False])
    links_ms = est["transfer_ms"] + est["propagation_ms"]
    n_max = max(counts)
    rows = ["| requests in the stream | single process req/s | 3 processes, links off req/s | 3 processes, links on req/s |",
            "|---:|---:|---:|---:|"]
    for n in counts:
        rows.append(f"| {n} | {n / single[n]:.1f} | {n / piped[(False, n)]:.1f} | {n / piped[(True, n)]:.1f} |")
    period_meas_ms = 1e3 * piped[(True, n_max)] / n_max
    transfers = "; ".join(f"{t['src']} -> {t['dst']} ({t['link_kind']}) {t['bytes'] / 1e3:.1f} kB, "
                          f"{t['transfer_ms']:.2f} ms + {t['propagation_ms']:g} ms" for t in est["transfers"])
    stages = ", ".join(f"stage {s.index} on {s.node}: {s.weight_bytes / 1e6:.2f} MB of weights" for s in spec.stages)
    text = f"""# Deployed plan: three processes against one

Small GPT (`rotafx.models.small_gpt(vocab=256, d=128, heads=4, layers=6, seq=64)`), batch {args.batch},
sequence 64, fp32, partitioned by `rotafx.export` for ground0 -> orbital0 -> ground1 (uplink 100 Mbit/s,
downlink 500 Mbit/s, 25 ms each way; each node's memory a third of the model, so every node runs a
stage; device speed {flops / 1e9:.1f} GFLOP/s, a one-thread 256x256 matmul measured on this machine).
Plan: {stages}. Hops: {transfers}.

Each configuration was checked first: the loaded plan and the three-process pipeline give outputs
bit-identical to the model for all {n_max} requests. Throughputs are from the best of {args.repeats} runs (the
machine is shared with other work, which only ever slows a run down); each stage process and the model use
1 torch thread; the driver is the benchmark process. Three stage processes and the driver share
{os.cpu_count()} CPUs here, so "links off" measures the runtime's overhead, not a speed-up from more hardware.

## Throughput by requests in the stream

{chr(10).join(rows)}

"Links off": the processes exchange activations over gloo on 127.0.0.1 as fast as they can.
"Links on": every hop is held back as the topology's links would (serialisation at the link's
bandwidth, then 25 ms of propagation; see `rotafx.runtime.links`).

## Estimate against measurement (links on)

| | estimator | measured |
|---|---:|---:|
| latency of one request | {est['total_ms']:.2f} ms | {1e3 * lat_on:.2f} ms median, {1e3 * min_on:.2f} ms best of {len(latency[True])} |
| of which links (transfer + propagation) | {links_ms:.2f} ms | {1e3 * (lat_on - lat_off):.2f} ms median, {1e3 * (min_on - min_off):.2f} ms best (links on minus links off) |
| of which compute | {est['compute_ms']:.2f} ms | {1e3 * lat_off:.2f} ms median, {1e3 * min_off:.2f} ms best (links off: compute, copies and three hops between processes) |
| period (time per request in a long stream) | {est['period_ms']:.2f} ms | {period_meas_ms:.2f} ms ({n_max} requests, best of {args.repeats}) |

Command: `.venv/bin/python benchmarks/deploy.py --counts {args.counts} --repeats {args.repeats} --batch {args.batch}`

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs visible (shared with other
work while measuring), torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}. No GPU.
"""
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    if BEGIN in old:  # the calibrated section and what follows it stay
        text = text.rstrip("\n") + "\n\n" + old[old.index(BEGIN):]
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
