"""`python examples/pictures.py`: the demo's LLaMA-70B plans on the seed's topology as pictures in docs/.

docs/placement.png (and .svg): the optimizer's minimize_latency plan; docs/breakdown.png: that plan, all-ground
and the hand placement (ground0: layers 0-5, orbital: 6-75, ground1: 76-82), TTFT and TPOT; docs/timeline.png:
4 pipelined requests of the hand placement; docs/tradeoffs.png: TPOT vs energy per token of LLaMA-70B on
'seed' (every point a proven-optimal balance plan). Needs matplotlib (pip install rotafx[plot]).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rotafx import LatencyEstimator, LayerPlacement, ModelProfile, PartitionOptimizer, preset
from rotafx import plot
from rotafx.models import llama70b

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    topology = preset("seed")
    profile = ModelProfile.for_generation(llama70b(), prompt_len=128, new_tokens=128, dtype=torch.float16)
    L = profile.num_layers
    estimator = LatencyEstimator(topology)
    hand = LayerPlacement().assign_ground(range(0, 6)).assign_orbital(range(6, 76)).assign_ground(range(76, L))
    ground = LayerPlacement().assign(range(0, L // 2), "ground0").assign(range(L // 2, L), "ground1")
    best = PartitionOptimizer(time_limit=30).optimize(profile, topology, "minimize_latency")
    plans = {"optimizer (latency)": best.estimate, "all ground": estimator.estimate(ground, profile),
             "ground-orbit-ground": estimator.estimate(hand, profile)}

    fig = plot.placement(best, title=f"LLaMA-70B on 'seed', minimize_latency: {best.estimated_latency_ms:,.1f} ms")
    for suffix in (".png", ".svg"):
        print("wrote", plot.save(fig, DOCS / f"placement{suffix}"))
    print("wrote", plot.save(plot.breakdown(plans, title="LLaMA-70B on 'seed' (128 + 128 tokens)"),
                             DOCS / "breakdown.png"))
    print("wrote", plot.save(plot.timeline(plans["ground-orbit-ground"], 4), DOCS / "timeline.png"))

    print("wrote", plot.save(plot.tradeoffs(profile, topology, "tpot", "energy_per_token", 15, chosen=best,
                                            title="LLaMA-70B on 'seed': TPOT vs energy per token "
                                                  "(star: the minimize_latency plan)"), DOCS / "tradeoffs.png"))


if __name__ == "__main__":
    main()
