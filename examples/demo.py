"""`make demo`: profile a LLaMA-70B-shaped model on the meta device for token generation (a 128-token prompt,
128 new tokens), place it ground -> orbit -> ground by hand on the seed's topology, and compare with keeping
it on the ground and with the optimizer's plans: time per request (the prefill), TTFT, TPOT and tokens/s.

Every figure printed comes from rotafx's cost model (see the README, "Cost model").
"""

from __future__ import annotations

from pathlib import Path

import torch

from rotafx import LatencyEstimator, LayerPlacement, ModelProfile, PartitionOptimizer, preset
from rotafx.models import llama70b

PROMPT, NEW = 128, 128  # tokens of the prompt, tokens generated
OUT = Path("demo-pictures")  # where the pictures go, beside the printed text


def main() -> None:
    topology = preset("seed")  # 2 ground + 4 orbital nodes, 100/500 Mbps up/down, 25 ms
    print("topology (the seed's Partition Optimizer example, with rotafx's documented defaults):")
    print(topology.describe())

    model = llama70b()  # on the meta device: no weights are allocated
    # the prefill of a 128-token prompt (the layers) and one decode step against the KV cache (profile.decode)
    profile = ModelProfile.for_generation(model, prompt_len=PROMPT, new_tokens=NEW, dtype=torch.float16, progress=True)
    print()
    print(profile.summary(max_rows=8))

    L = profile.num_layers  # embed_tokens, layers.0 .. layers.79, norm, lm_head
    head = profile.layer_index("layers.4") + 1
    tail = profile.layer_index("layers.75")

    # ground -> orbit -> ground, as in the seed's Layer Placement sample
    placement = LayerPlacement()
    placement.assign_ground(layers=range(0, head))          # embed_tokens, layers.0-4
    placement.assign_orbital(layers=range(head, tail))      # layers.5-74, split over the 4 orbital nodes
    placement.assign_ground(layers=range(tail, L))          # layers.75-79, norm, lm_head
    validation = placement.validate(profile, topology)
    print(f"\nhand placement {placement}: valid={validation.is_valid}")
    for issue in validation.issues:
        print("  issue:", issue)
    for node, need in validation.memory_bytes.items():
        cap = topology.capacity_bytes(topology.devices[node])
        print(f"  {node:<9} holds {need / 1e9:7.2f} GB of {cap / 1e9:6.1f} GB")

    estimator = LatencyEstimator(topology)
    estimate = estimator.estimate(placement)
    print()
    print(estimate.report("ground -> orbit -> ground"))

    # all on the ground: one ground node cannot hold 138 GB, so the two ground nodes share it
    ground = LayerPlacement()
    ground.assign(range(0, L // 2), "ground0").assign(range(L // 2, L), "ground1")
    v = ground.validate(profile, topology)
    print()
    if v.is_valid:
        print(estimator.estimate(ground).report("all ground (ground0 + ground1)"))
    else:
        print("all ground does not fit:", *v.issues, sep="\n  ")

    optimizer = PartitionOptimizer(time_limit=30)
    part = optimizer.optimize(model=profile, topology=topology, objective="minimize_latency")
    print()
    print(f"optimizer (minimize_latency): {part.status}, cut points {part.cut_points}, "
          f"{part.estimated_latency_ms:,.1f} ms, {part.transfer_size_mb:.2f} MB transferred")
    print(part.table())

    # generation: every token crosses the chain and comes back to the first node
    tpot = optimizer.optimize(model=profile, topology=topology, objective="minimize_tpot")
    print(f"\ngenerating {NEW} tokens after a {PROMPT}-token prompt (batch 1):")
    print(f"  {'plan':<34} {'TTFT ms':>9} {'TPOT ms':>9} {'tokens/s':>9} {'J/token':>9}")
    for name, est in ((f"optimizer, minimize_tpot ({tpot.status})", tpot.estimate),
                      ("hand ground -> orbit -> ground", estimate)):
        g = est.generation
        print(f"  {name:<34} {g.ttft_ms:>9,.1f} {g.tpot_ms:>9,.1f} {g.tokens_per_s:>9,.2f} {g.energy_per_token_j:>9,.2f}")
    print(f"  the orbital plan's {estimate.generation.report().splitlines()[1].strip()}")

    # the pictures, next to this text (matplotlib: the plot extra, which `make demo` installs)
    try:
        from rotafx import plot
    except ImportError:
        print("\n(no pictures: pip install rotafx[plot])")
        return
    OUT.mkdir(exist_ok=True)
    wrote = [plot.save(plot.placement(part, title=f"LLaMA-70B on 'seed', minimize_latency: "
                                                   f"{part.estimated_latency_ms:,.1f} ms"), OUT / "placement.png"),
             plot.save(plot.breakdown({"optimizer (latency)": part.estimate, "all ground": estimator.estimate(ground),
                                       "ground-orbit-ground": estimate},
                                      title=f"LLaMA-70B on 'seed' ({PROMPT} + {NEW} tokens)"), OUT / "breakdown.png")]
    print("\npictures: " + ", ".join(str(p) for p in wrote))

if __name__ == "__main__":
    main()
