"""`make bench`: run every benchmark; each writes its own RESULTS_*.md (indexed by RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["solver.py"],                         # optimizer: time to optimality, scaling, greedy gap
    ["vendor.py"],                         # against rotastellar-distributed 0.1.1 (skipped if not installed)
    ["backend.py", "--inductor"],          # rewrite overhead against eager and against plain inductor
    ["transfers.py"],                      # rotafx::transfer between this machine's devices, against the cost model
    ["deploy.py"],                         # three-process pipeline, link emulation, estimate vs measured
    ["generate.py"],                       # time to a plan: partition, and the first compiled generate() against torch.compile
]


def main() -> int:
    failed = []
    for cmd in BENCHMARKS:
        script = HERE / cmd[0]
        if not script.exists():
            print(f"skipping {cmd[0]}: not present")
            continue
        print(f"== {' '.join(cmd)}", flush=True)
        if subprocess.run([sys.executable, str(script), *cmd[1:]], cwd=HERE.parent).returncode != 0:
            failed.append(cmd[0])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
