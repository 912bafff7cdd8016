"""TTFT and TPOT of rotafx.generate in process, by batch (sequences decoded together), beside the estimate.

For the small GPT and a LLaMA-style model from a transformers config, each partitioned for generation over
three CPU nodes that carry a calibration of this machine (so the estimate prices this CPU, not a datasheet),
`rotafx.estimate_vs_measured(..., generation=...)` times `rotafx.generate` (one thread) and sets each figure
beside the plan's estimate. Writes the table as a section of benchmarks/RESULTS_generate.md.

    .venv/bin/python benchmarks/generate_estimate.py [--repeats 7] [--batches 1,2,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from rotafx.models import small_gpt  # noqa: E402

SECTION = "## In process: measured against the estimate, by batch"


def models():  # noqa: ANN201
    import transformers

    torch.manual_seed(0)
    yield "small_gpt(d=128, layers=4)", small_gpt(d=128, heads=4, layers=4, seq=256).eval(), 256
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    yield "transformers Llama (hidden 128, 4 layers, GQA 4/2)", transformers.LlamaForCausalLM(cfg).eval(), 512


def topology(cal: rotafx.Calibration) -> dict:
    names = ["cpu0", "cpu1", "cpu2"]
    return {"devices": [{"name": n, "memory": "40 MB", "calibration": cal.to_dict()} for n in names],
            "links": [{"src": a, "dst": b, "bandwidth": "10 Gbps", "latency_ms": 0.0} for a, b in zip(names, names[1:])],
            "chain": names}


def decode_parts(m: torch.nn.Module, ids: torch.Tensor, gen: dict, topo: dict) -> dict[str, float]:
    """Where a decode step's time goes: the decode program called alone (its stages and hops, as generate calls it,
    median of 30 calls), beside the estimate's decode step; the rest of TPOT is the generate loop's own (picking
    the token, the position tensor, the Python between calls)."""
    import statistics
    import time

    pm = rotafx.partition(m, (ids,), generation=gen, topology=topo, devices="cpu", objective="minimize_tpot")
    rotafx.generate(pm, ids, max_new_tokens=gen["new_tokens"], eos_token_id=[])  # builds the programs
    (progs,) = pm._generation_programs.values()
    tok = ids[:, -1:]
    times = []
    with torch.no_grad():
        for i in range(35):
            pos = torch.tensor([gen["prompt_len"] + i % gen["new_tokens"]])
            t0 = time.perf_counter()
            progs.decode(input_ids=tok, cache_position=pos)
            times.append(1e3 * (time.perf_counter() - t0))
    est = pm.generation_plan.estimate.generation
    return {"program_ms": statistics.median(times[5:]), "est_step_ms": est.decode.total_ms}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--quick", action="store_true", help="a quick calibration and 3 repeats")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_generate.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 3 if args.quick else args.repeats
    cal = rotafx.calibrate("cpu", threads=1, quick=args.quick)
    topo = topology(cal)
    rows = []
    for name, m, vocab in models():
        for b in (int(x) for x in args.batches.split(",")):
            ids = torch.randint(0, vocab, (b, 64), generator=torch.Generator().manual_seed(b))  # one prefill call
            gen = {"new_tokens": 32, "prompt_len": 64}
            cmp = rotafx.estimate_vs_measured(m, (ids,), generation=gen, topology=topo, devices="cpu",
                                              repeats=repeats, warmup=2, threads=1, objective="minimize_tpot")
            ttft, tpot, _ = cmp.rows
            parts = decode_parts(m, ids, gen, topo)
            rows.append((name, b, ttft, tpot, parts))
            print(f"{name} batch {b}: TTFT {ttft.measured_ms:.2f} ms (est {ttft.estimate_ms:.2f}, {100 * ttft.error:+.0f}%), "
                  f"TPOT {tpot.measured_ms:.2f} ms (est {tpot.estimate_ms:.2f}, {100 * tpot.error:+.0f}%); the decode "
                  f"program alone {parts['program_ms']:.2f} ms (est {parts['est_step_ms']:.2f})", flush=True)
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/generate_estimate.py --repeats {repeats}` "
             f"({datetime.date.today()}; {platform.machine()}, {os.cpu_count()} logical CPUs shared with other work, "
             f"torch {torch.__version__}, one thread). Prompt 64 tokens, 32 new, greedy; each model partitioned "
             f"for generation (`minimize_tpot`) over three CPU nodes carrying this machine's calibration; "
             f"median of {repeats} generations after 2 warm-up, 10th-90th percentile in brackets. Error = "
             f"estimate / measured - 1.", "",
             "| model | batch | TTFT measured ms | TTFT estimate ms | error | TPOT measured ms | TPOT estimate ms | error | tokens/s measured | decode program alone ms (estimate) | loop ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, b, ttft, tpot, parts in rows:
        loop = tpot.measured_ms - parts["program_ms"]
        lines.append(f"| {name} | {b} | {ttft.measured_ms:.2f} ({ttft.p10_ms:.2f}-{ttft.p90_ms:.2f}) | {ttft.estimate_ms:.2f} "
                     f"| {100 * ttft.error:+.0f}% | {tpot.measured_ms:.2f} ({tpot.p10_ms:.2f}-{tpot.p90_ms:.2f}) | "
                     f"{tpot.estimate_ms:.2f} | {100 * tpot.error:+.0f}% | {b * 1000 / tpot.measured_ms:,.0f} | "
                     f"{parts['program_ms']:.2f} ({parts['est_step_ms']:.2f}) | {loop:.2f} |")
    lines += ["", "Columns on the right: the decode program called alone as generate calls it (median of 30 calls), "
              "beside the estimate's decode step, and what is left of the measured TPOT: the generate loop's own "
              "time (picking the token, making the position tensor, the Python between calls), which the cost "
              "model does not price."]
    out = Path(args.out)
    text = out.read_text() if out.exists() else "# Generation\n"
    body = "\n".join(lines) + "\n"
    if SECTION in text:
        text = re.sub(re.escape(SECTION) + r".*?(?=\n## |\Z)", body.rstrip("\n"), text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
