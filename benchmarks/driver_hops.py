"""The driver's two hops of a plan deployed as processes, priced as a calibrated process hop, against the trace.

``rotafx.estimate_vs_measured(plan, x, processes=True)`` runs the plan as it is deployed (a process per stage
and a driver in this process) and prices the driver's hop to the first stage and from the last as process hops
of this machine (``Comparison.driver_hops``). Each run: calibrate this CPU (one thread, quick, with a process
hop), export the small GPT over benchmarks/deploy.py's three-node chain (links emulated, each link's
``message_ms`` the calibrated one), and time ``--repeats`` requests one at a time. Prints a markdown table and
writes it as a section of ``--out``:

    .venv/bin/python benchmarks/driver_hops.py [--runs 3] [--repeats 30] [--out benchmarks/RESULTS_deploy.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from benchmarks.deploy import topology  # noqa: E402
from benchmarks.sections import machine, write_section  # noqa: E402
from rotafx.models import example_inputs, small_gpt  # noqa: E402

SECTION = "## The driver's two hops (`benchmarks/driver_hops.py`)"


def one_run(repeats: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="rotafx-driver-hops-"))
    cal = rotafx.calibrate("cpu", threads=1, quick=True, processes=True)
    torch.manual_seed(0)
    model, x = small_gpt().eval(), example_inputs("small-gpt", 2)
    topo = topology(model, x, None, calibration=str(cal.save(tmp / "cpu.json")), message_ms=cal.process_message_ms or 0.0)
    rotafx.export(model, x, path=tmp / "plan", topology=topo)
    load = os.getloadavg()[0]
    cmp = rotafx.estimate_vs_measured(tmp / "plan", x, repeats=repeats, warmup=3, processes=True, threads=1)
    d = cmp.driver_hops
    return {"est": d.estimate_ms, "med": d.measured_ms, "p10": d.p10_ms, "p90": d.p90_ms, "figures": d.figures,
            "whole_err": cmp.total.error, "hop_us": 1e6 * cal.transfers["process"]["latency_s"], "load": load}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_deploy.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    runs = [one_run(args.repeats) for _ in range(args.runs)]
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/driver_hops.py --runs {args.runs} --repeats {args.repeats}`; "
             f"{machine()}, one thread per process. The small GPT (batch 2) over "
             f"the three-node chain of `deploy.py --calibrated`, links emulated; each run calibrates the machine "
             f"anew (quick, with a process hop) and times {args.repeats} requests one at a time after 3 warm-up. "
             f"Measured: the first stage's \"in flight\" span (the request) plus the driver's own (the output), "
             f"from the driver's trace, no emulated delay in either.", "",
             "| run | calibrated hop | driver's hops estimated | measured median | p10-p90 | error | whole request error | load (1 min) |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['hop_us']:.0f} us | {r['est']:.3f} ms | {r['med']:.3f} ms | {r['p10']:.3f}-{r['p90']:.3f} ms "
                     f"| {100 * (r['est'] / r['med'] - 1):+.0f}% | {100 * r['whole_err']:+.1f}% | {r['load']:.2f} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
