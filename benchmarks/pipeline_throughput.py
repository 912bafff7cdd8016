"""Per-request time of a three-process pipeline on 127.0.0.1, for comparing two checkouts of rotafx.

    PYTHONPATH=ROOT .venv/bin/python benchmarks/pipeline_throughput.py ROOT

ROOT is the checkout to time (this one, or a `git worktree` of an older commit; PYTHONPATH makes the stage
processes import the same one). Exports the small GPT on ground0 -> orbital0 -> ground1, starts the stages
with `launch_local` (one thread each), sends 20 warm-up requests, then times 5 runs of 200 requests and
prints the median and every run in ms per request. Alternate the checkouts over several pairs: the
machine's noise is of the order of the differences.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

root = sys.argv[1] if len(sys.argv) > 1 else "."
sys.path.insert(0, root)

import torch  # noqa: E402

import rotafx  # noqa: E402
from rotafx.runtime.distributed import launch_local  # noqa: E402
from tests.test_export import build, three_stage_topology  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model, x = build("small-gpt")
    path = f"{tempfile.mkdtemp(prefix='rotafx-tput-')}/plan"
    rotafx.export(model, x, path=path, topology=three_stage_topology(model, x))
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, 256, x[0].shape, generator=g),) for _ in range(200)]
    with launch_local(path, timeout=60, join_timeout=120) as cluster:
        cluster.run(reqs[:20])
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            cluster.run(reqs)
            runs.append(1e3 * (time.perf_counter() - t0) / len(reqs))
    print(f"{root}: {statistics.median(runs):.3f} ms per request (runs {', '.join(f'{r:.3f}' for r in runs)})")


if __name__ == "__main__":
    main()
