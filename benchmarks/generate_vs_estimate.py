"""The decode step stage by stage: each stage's measured time in rotafx.generate's decode program beside the estimate's.

benchmarks/generate_estimate.py sets TTFT/TPOT beside the estimate; this one splits the decode step's gap by
stage (forward hooks on each stage module of the decode program, median of the rounds, one thread) to show which
stage (so which layers) the cost model under-prices. Reuses generate_estimate's models and calibrated topology.

    .venv/bin/python benchmarks/generate_vs_estimate.py [--rounds 7] [--batches 1,8] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from generate_estimate import models, topology  # noqa: E402


def stage_times(progs, ids: torch.Tensor, prompt_len: int, new: int, rounds: int) -> list[list[float]]:
    """Per decode call, each stage module's wall time (ms), from forward pre/post hooks."""
    mods = [st.module for st in progs.decode.stages]
    t0: dict[int, float] = {}
    cur: list[float] = [0.0] * len(mods)
    hs = []
    for i, mm in enumerate(mods):
        hs.append(mm.register_forward_pre_hook(lambda _m, _a, i=i: t0.__setitem__(i, time.perf_counter())))
        hs.append(mm.register_forward_hook(lambda _m, _a, _o, i=i: cur.__setitem__(i, 1e3 * (time.perf_counter() - t0[i]))))
    out = []
    tok = ids[:, -1:]
    try:
        with torch.no_grad():
            for r in range(rounds * new):
                pos = torch.tensor([prompt_len + r % new])
                a = time.perf_counter()
                progs.decode(input_ids=tok, cache_position=pos)
                out.append(cur[:] + [1e3 * (time.perf_counter() - a)])
    finally:
        for h in hs:
            h.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--quick", action="store_true", help="a quick calibration")
    args = ap.parse_args()
    torch.set_num_threads(1)
    topo = topology(rotafx.calibrate("cpu", threads=1, quick=args.quick))
    gen = {"new_tokens": 32, "prompt_len": 64}
    for name, m, vocab in models():
        for b in (int(x) for x in args.batches.split(",")):
            ids = torch.randint(0, vocab, (b, 64), generator=torch.Generator().manual_seed(b))
            pm = rotafx.partition(m, (ids,), generation=gen, topology=topo, devices="cpu", objective="minimize_tpot")
            rotafx.generate(pm, ids, max_new_tokens=gen["new_tokens"], eos_token_id=[])  # builds the programs
            (progs,) = pm._generation_programs.values()
            d = pm.generation_plan.estimate.generation.decode
            nodes = [st.node for st in progs.decode.stages]
            est = [sum(le.total_ms for le in d.by_layer if le.node == n) for n in nodes]
            rows = stage_times(progs, ids, gen["prompt_len"], gen["new_tokens"], args.rounds)
            cols = list(zip(*rows))
            meas = [statistics.median(c) for c in cols]
            spread = [(min(c), max(c)) for c in cols]
            parts = " | ".join(f"{nodes[i]}: {meas[i]:.3f} ms ({spread[i][0]:.2f}-{spread[i][1]:.2f}) est {est[i]:.3f}"
                               for i in range(len(est)))
            print(f"| {name} | {b} | {parts} | call {meas[-1]:.3f} ms, est step {d.total_ms:.3f} "
                  f"(compute {d.compute_ms:.3f}, transfer {d.transfer_ms:.3f}) |", flush=True)


if __name__ == "__main__":
    main()
