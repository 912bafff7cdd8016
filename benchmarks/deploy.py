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


def topology(model: torch.nn.Module, x: tuple, flops: float, emulate_seed_links: bool = True) -> dict[str, Any]:
    """ground0 -(100 Mbit/s, 25 ms)-> orbital0 -(500 Mbit/s, 25 ms)-> ground1; memory forces a three-way split."""
    def topo(memory: float) -> dict[str, Any]:
        dev = lambda name, kind: {"name": name, "kind": kind, "flops": flops, "memory": memory,  # noqa: E731
                                  "memory_bandwidth": 20e9, "power": 300 if kind == "orbital" else 700}
        return {"devices": [dev("ground0", "ground"), dev("orbital0", "orbital"), dev("ground1", "ground")],
                "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": 100e6, "latency_ms": 25.0},
                          {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": 500e6, "latency_ms": 25.0}],
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="1,2,4,8,16,32", help="requests per stream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_deploy.md"))
    args = ap.parse_args(argv)
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
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
