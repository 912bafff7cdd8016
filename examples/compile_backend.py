"""Compile a small GPT with the rotastellar backend on a chain of three (simulated) nodes.

    .venv/bin/python examples/compile_backend.py

Each topology node is mapped to the torch device "cpu" here; on a machine with GPUs,
map them to "cuda:0", "cuda:1", ... instead.
"""

import logging

import torch

import rotafx
from rotafx.models import small_gpt

logging.basicConfig(level=logging.INFO, format="%(message)s")  # the placement table is logged at INFO

topology = {
    "devices": [{"name": f"node{i}", "flops": "10 TFLOPS", "memory": "0.45 MB"} for i in range(3)],
    "links": [{"src": "node0", "dst": "node1", "bandwidth": "10 Gbps", "latency_ms": 0.1},
              {"src": "node1", "dst": "node2", "bandwidth": "10 Gbps", "latency_ms": 0.1}],
    "chain": ["node0", "node1", "node2"],
}

model = small_gpt(tied=True).eval()
tokens = torch.randint(0, 256, (2, 32))

# 1. torch.compile, configured through options (the backend is found by its entry point)
compiled = torch.compile(model, backend="rotastellar", fullgraph=True,
                         options={"topology": topology, "devices": {"node0": "cpu", "node1": "cpu", "node2": "cpu"},
                                  "inner": "eager"})  # eager stages: bit-identical to the model
torch.testing.assert_close(compiled(tokens), model(tokens), rtol=0, atol=0)
print(rotafx.last_plan())
print(rotafx.last_plan().module.program.code)

# 2. a configured backend object, with int8 compression between stages
be = rotafx.backend(topology=topology, devices="cpu", codec="int8", inner="eager")
out = torch.compile(model, backend=be, fullgraph=True)(tokens)
print("int8 codec: largest logit difference", float((out - model(tokens)).abs().max().detach()))

# 3. without torch.compile: the rewritten module, holding its weights stage by stage
pm = rotafx.partition(model, (tokens,), topology=topology, devices="cpu")
for st in pm.stages:
    print(f"stage {st.index} on {st.node} ({st.device}): {len(st.weight_names)} weights")
assert torch.equal(pm(tokens), model(tokens))
