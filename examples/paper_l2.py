"""The layer-wise paper's setting, worked through with rotafx's own numbers: what fits in 50 MB of L2, what does not,
and the best plan it can find on 16 H100s.

The paper's model: a 16-layer dense transformer, 32 heads x 128 (hidden 4096), MLP 16384, FP16, batch 128,
sequence 10,000, on 16 H100s (the `h100x16-l2` preset: 50 MB of L2 and 80 GB of HBM each, NVLink between
neighbours). Built here as rotafx's GPT block (attention with biases, a 4096 -> 16384 -> 4096 MLP) with a
32,000-token vocabulary (the paper gives none), on the meta device: nothing is allocated. Every figure printed
comes from rotafx's profile and cost model; none is the paper's.

    .venv/bin/python examples/paper_l2.py
"""

from __future__ import annotations

import torch

from rotafx import ModelProfile, PartitionOptimizer, preset
from rotafx.models import small_gpt
from rotafx.solve import InfeasibleError

HIDDEN, HEADS, LAYERS, MLP, VOCAB = 4096, 32, 16, 16384, 32000
SEQ, BATCH, NEW = 10_000, 128, 128
L2 = preset("h100x16-l2").devices["h100_0"].cache_bytes


def model() -> torch.nn.Module:
    with torch.device("meta"):
        return small_gpt(vocab=VOCAB, d=HIDDEN, heads=HEADS, layers=LAYERS, seq=SEQ + NEW)


def profile(batch: int = BATCH) -> ModelProfile:
    """The prefill of ``SEQ`` tokens and a decode step at that context, ``batch`` sequences, FP16."""
    return ModelProfile.for_generation(model(), prompt_len=SEQ, new_tokens=NEW, batch_size=batch, dtype=torch.float16)


def fits_l2(p: ModelProfile) -> list[str]:
    """One line per kind of thing a stage would hold, against one GPU's L2."""
    block = p.layers[p.layer_index("layers.0")]
    kv_layer = block.kv_bytes_per_token * p.generation.kv_rows * p.generation.context_len
    per_seq_tokens = int(L2 // block.kv_bytes_per_token)
    largest_matrix = HIDDEN * MLP * 2  # the MLP's up (or down) projection, FP16
    rows = [("one block's weights", block.weight_bytes), ("the MLP's 4096 x 16384 matrix alone", largest_matrix),
            ("one attention projection (4096 x 4096)", HIDDEN * HIDDEN * 2),
            (f"one block's KV cache ({p.generation.kv_rows} x {p.generation.context_len:,} tokens)", kv_layer),
            (f"one block's live activations in the prefill", block.peak_bytes)]
    out = [f"  {what:<58} {n / 1e6:>14,.1f} MB  {'fits' if n <= L2 else 'does not fit'} ({n / L2:,.1f}x L2)"
           for what, n in rows]
    out.append(f"  L2 holds one block's keys and values for {per_seq_tokens:,} tokens of one sequence "
               f"({block.kv_bytes_per_token:,} B per token)")
    return out


def best_plan(p: ModelProfile, objective: str = "minimize_tpot"):  # noqa: ANN201
    """The optimizer's plan under capacity="memory" (each stage in its GPU's 80 GB), or the reason there is none."""
    try:
        return PartitionOptimizer(time_limit=60).optimize(model=p, topology=preset("h100x16-l2").with_capacity("memory"),
                                                          objective=objective)
    except InfeasibleError as e:
        return str(e)


def main() -> None:
    p = profile()
    print(f"{p.name}: {p.total_params:,} parameters, {p.weight_bytes / 1e9:.2f} GB at FP16, "
          f"{p.kv_bytes_per_token:,} B of KV cache per token (all layers)")
    print(f"\nin {L2 / 1e6:.0f} MB of L2 (capacity='cache'), batch {BATCH} x {SEQ:,} tokens:")
    print("\n".join(fits_l2(p)))
    print(f"\nunder capacity='memory' (80 GB of HBM per GPU), batch {BATCH}:")
    plan = best_plan(p)
    print(f"  {plan if isinstance(plan, str) else plan.report()}")
    batch = BATCH
    while isinstance(plan, str) and batch > 1:  # the largest batch with a plan
        batch //= 2
        plan = best_plan(profile(batch))
    if not isinstance(plan, str):
        g = plan.estimate.generation
        print(f"\nthe largest batch with a plan: {batch} (halving from {BATCH}), {plan.status}, cut points "
              f"{plan.cut_points}:")
        print(f"  TPS {g.tokens_per_s:,.1f} tokens/s, TPOT {g.tpot_ms:,.2f} ms, TTFT {g.ttft_ms:,.1f} ms")
        print("  " + g.report().replace("\n", "\n  "))


if __name__ == "__main__":
    main()
