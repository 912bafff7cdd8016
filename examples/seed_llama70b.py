"""The seed's "Example: LLaMA-70B Partitioning", run as written with the import changed to rotafx.

`llama_70b` is rotafx's LLaMA-70B-shaped model (80 blocks, hidden 8192, 64 heads, 8 KV heads, MLP 28672,
vocab 32000) built on the meta device: it profiles without allocating its 138 GB of fp16 weights.
The seed's "Result" comment is an illustration; the figures printed below are rotafx's own.
"""

import torch

from rotafx.models import example_inputs, llama70b

llama_70b = llama70b()

from rotafx import PartitionOptimizer, ModelProfile

optimizer = PartitionOptimizer()

# LLaMA-70B architecture
profile = ModelProfile.from_pytorch(llama_70b, example_inputs("llama70b"), dtype=torch.float16)
# 80 transformer layers, ~70B parameters

topology = {
    "ground_nodes": 3,
    "orbital_nodes": 5,
    "ground_flops": 200e12,      # A100 equivalent
    "orbital_flops": 50e12,      # Space-qualified GPU
    "uplink_bandwidth": 200e6,
    "downlink_bandwidth": 1e9,
    "isl_bandwidth": 25e9
}

partition = optimizer.optimize(
    model=profile,
    topology=topology,
    objective="minimize_latency"
)

print(f"{profile.total_params:,} parameters, {profile.num_layers} layers")
print(partition.report())
