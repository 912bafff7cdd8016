"""Inductor-compiled models against the calibrated estimate, priced as compiled code and as eager code.

``calibrate("cpu", compiled=True)`` measures a compiled call's fixed cost and each kernel's launch; a profile
marked ``compiled`` (what the ``rotastellar`` backend makes with ``inner="inductor"``) is priced with them: views
free, pointwise ops fused (their bytes only), every other op one kernel's launch plus its work (one compiled call's
fixed cost per stage is not priced, so not in the estimate either). Each run calibrates this CPU anew (quick,
one thread), then for each held-out (model, shape) times ``torch.compile(model, backend="inductor")`` (medians of
``torch.utils.benchmark`` rounds, the cases interleaved) against the estimate of the whole model on the calibrated device, compiled and eager:

    .venv/bin/python benchmarks/compiled.py [--runs 2] [--rounds 5] [--out benchmarks/RESULTS_calibration.md]

Writes its table as a section of ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from benchmarks.sections import machine, write_section  # noqa: E402
from rotafx.models import convnet, mlp, small_gpt  # noqa: E402

SECTION = "## Compiled code (`benchmarks/compiled.py`)"


def cases() -> list[tuple[str, torch.nn.Module, tuple]]:
    torch.manual_seed(0)
    gpt = small_gpt().eval()
    return [("mlp batch 1", mlp().eval(), (torch.randn(1, 64),)),
            ("mlp batch 128", mlp().eval(), (torch.randn(128, 64),)),
            ("small_gpt 1x8", gpt, (torch.randint(0, 256, (1, 8)),)),
            ("small_gpt 4x32", gpt, (torch.randint(0, 256, (4, 32)),)),
            ("convnet batch 2", convnet().eval(), (torch.randn(2, 3, 32, 32),))]


def one_run(rounds: int) -> list[dict]:
    cal = rotafx.calibrate("cpu", threads=1, quick=True, compiled=True)
    rows = []
    for name, model, x in cases():
        prof = rotafx.ModelProfile.from_pytorch(model, x)
        # the cost model's whole-model figure, its stage's call included (compiled: call_s)
        topo = {"devices": [{"name": "cpu", "memory": "16 GB", "calibration": cal.to_dict()}], "links": [],
                "chain": ["cpu"]}
        est = {mode: rotafx.LatencyEstimator(topo).estimate(
            [0] * prof.num_layers, dataclasses.replace(prof, compiled=mode == "compiled")).total_ms
            for mode in ("compiled", "eager")}
        fn = torch.compile(model, backend="inductor", dynamic=False)
        with torch.no_grad():
            fn(*x)
        rows.append({"name": name, "fn": fn, "x": x, "est": est, "ms": []})
    with torch.no_grad():
        for _ in range(rounds):  # interleaved: the machine is shared
            for r in rows:
                t = Timer("fn(*x)", globals={"fn": r["fn"], "x": r["x"]}).blocked_autorange(min_run_time=0.2)
                r["ms"].append(1e3 * t.median)
    return [{"name": r["name"], "est": r["est"], "ms": statistics.median(r["ms"]),
             "spread": (max(r["ms"]) - min(r["ms"])) / statistics.median(r["ms"]),
             "call_us": 1e6 * cal.compiled["call_s"], "kernel_us": 1e6 * cal.compiled["kernel_s"]} for r in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_calibration.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = [one_run(args.rounds) for _ in range(args.runs)]
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/compiled.py --runs {args.runs} --rounds {args.rounds}`; "
             f"{machine()}, one thread. Each run calibrates anew (quick, "
             f"`compiled=True`); measured: `torch.compile(model, backend=\"inductor\")`, median of {args.rounds} "
             f"interleaved rounds (spread: range over median). Error = estimate / measured - 1.", "",
             "| run | case | compiled call, kernel | measured | spread | priced compiled | error | priced eager | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    errs: dict[str, list[float]] = {"compiled": [], "eager": []}
    for i, run in enumerate(runs, 1):
        for r in run:
            e = {m: r["est"][m] / r["ms"] - 1 for m in errs}
            for m in errs:
                errs[m].append(abs(e[m]))
            lines.append(f"| {i} | {r['name']} | {r['call_us']:.0f} us, {r['kernel_us']:.1f} us | {r['ms']:.3f} ms | "
                         f"{100 * r['spread']:.0f}% | {r['est']['compiled']:.3f} ms | {100 * e['compiled']:+.0f}% | "
                         f"{r['est']['eager']:.3f} ms | {100 * e['eager']:+.0f}% |")
    lines += ["", f"Median |error|: priced as compiled code {100 * statistics.median(errs['compiled']):.0f}%, "
                  f"priced as eager code {100 * statistics.median(errs['eager']):.0f}%.", ""]
    text = "\n".join(lines)
    print(text)
    write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
