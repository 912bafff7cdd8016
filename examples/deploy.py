"""Export a plan, load it, and run it as three processes (ground -> orbit -> ground) on this machine with emulated links.

    .venv/bin/python examples/deploy.py [PLAN_DIR]

On real hosts the same plan directory and the cluster's secret file are copied to every node, and
each runs its stage:

    # ground station A (the driver, rank 0): Driver(PLAN_DIR, master_addr=..., secret_file="cluster.key")
    #   (a missing cluster.key is created with a new secret; copy it to the other hosts, mode 0600)
    # satellite:  rotafx serve --plan PLAN_DIR --stage 1 --master-addr GROUND_A --master-port 29500 --secret-file cluster.key
    # ground B:   rotafx serve --plan PLAN_DIR --stage 2 --master-addr GROUND_A --master-port 29500 --secret-file cluster.key
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import rotafx
from rotafx.models import small_gpt
from rotafx.runtime.distributed import launch_local

# the seed's links (uplink 100 Mbit/s, downlink 500 Mbit/s, 25 ms each way); small orbital memory
TOPOLOGY = {
    "devices": [
        {"name": "ground0", "kind": "ground", "flops": 50e9, "memory": 420e3, "memory_bandwidth": 20e9},
        {"name": "orbital0", "kind": "orbital", "flops": 50e9, "memory": 420e3, "memory_bandwidth": 20e9},
        {"name": "ground1", "kind": "ground", "flops": 50e9, "memory": 420e3, "memory_bandwidth": 20e9},
    ],
    "links": [
        {"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": "100 Mbps", "latency_ms": 25},
        {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": "500 Mbps", "latency_ms": 25},
    ],
    "chain": ["ground0", "orbital0", "ground1"],
}


def main(plan_dir: str | None = None) -> None:
    torch.manual_seed(0)
    model = small_gpt().eval()                       # vocab 256, d 64, 2 blocks, 32 tokens
    x = (torch.randint(0, 256, (2, 32)),)
    path = Path(plan_dir or tempfile.mkdtemp(prefix="rotafx-plan-")) / "plan"

    plan = rotafx.export(model, x, path=path, topology=TOPOLOGY, overwrite=True)
    print(f"wrote {path}: " + ", ".join(f"stage {s.index} on {s.node}" for s in plan.stages))
    print(f"estimated latency {plan.estimate['total_ms']:.2f} ms "
          f"(links {plan.estimate['transfer_ms'] + plan.estimate['propagation_ms']:.2f} ms)")

    pipeline = rotafx.load(path)                     # every stage in this process
    assert torch.equal(pipeline(*x), model(*x))
    stage1 = rotafx.load(path, stage=1)              # what the orbital node loads
    print(f"stage 1 alone takes {[s.describe() for s in stage1.input_specs]}")

    requests = [(torch.randint(0, 256, (2, 32)),) for _ in range(16)]
    with launch_local(path, emulate_links=True) as cluster:   # three processes on 127.0.0.1
        outputs = cluster.run(requests)
        assert all(torch.equal(y, model(*r)) for r, y in zip(requests, outputs))
        times = []
        for r in requests[:5]:
            t = time.perf_counter()
            cluster.run([r])
            times.append(time.perf_counter() - t)
    print(f"three processes, emulated links: {1e3 * statistics.median(times):.2f} ms per request "
          f"(estimated {plan.estimate['total_ms']:.2f} ms); outputs equal the model's")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
