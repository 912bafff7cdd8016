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

# --- rotafx's addition to the seed's sample: the same model generating tokens -------------------------------
# A 128-token prompt and 128 new tokens at batch 1: the prefill (TTFT) and one decode step per token (TPOT),
# each token coming back to the first ground node; the KV cache counts in every node's memory.
from rotafx import LatencyEstimator, LayerPlacement

generation = ModelProfile.for_generation(llama_70b, prompt_len=128, new_tokens=128, dtype=torch.float16)
fastest = optimizer.optimize(model=generation, topology=topology, objective="minimize_tpot")
last = generation.num_layers
orbital = (LayerPlacement().assign_ground(range(0, 10))        # embed_tokens, layers 0-8
           .assign_orbital(range(10, 74))                       # layers 9-72 in orbit, as the seed's result says
           .assign_ground(range(74, last)))
in_orbit = LatencyEstimator(topology).estimate(orbital, generation)
print(f"\ngenerating 128 tokens after a 128-token prompt ({generation.kv_bytes_per_token / 1e3:.0f} kB of KV cache "
      f"per token):")
for name, est in (("optimizer, minimize_tpot", fastest.estimate), ("layers 9-72 in orbit", in_orbit)):
    g = est.generation
    print(f"  {name:<26} TTFT {g.ttft_ms:8,.1f} ms  TPOT {g.tpot_ms:7,.1f} ms  {g.tokens_per_s:6.2f} tokens/s  "
          f"{g.energy_per_token_j:6.2f} J/token")
