"""The layer-wise paper's setting (examples/paper_l2.py): rotafx's numbers against an analytic count, the L2
verdicts that follow from them, and the plan under capacity='memory' as the estimator prices it."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "paper_l2.py"))


@pytest.fixture(scope="module")
def prof():
    return EXAMPLE["profile"]()


def test_the_numbers_are_the_analytic_counts(prof) -> None:
    d, f = EXAMPLE["HIDDEN"], EXAMPLE["MLP"]
    block = prof.layers[prof.layer_index("layers.0")]
    # qkv (3 d x d + 3 d), out projection (d x d + d), MLP (d x f + f, f x d + d), two layer norms (4 d), FP16
    assert block.weight_bytes == 2 * (3 * d * d + 3 * d + d * d + d + d * f + f + f * d + d + 4 * d)
    assert block.kv_bytes_per_token == 2 * 32 * 128 * 2, "keys and values of 32 heads x 128 at FP16"
    assert prof.kv_bytes_per_token == 16 * block.kv_bytes_per_token
    lines = EXAMPLE["fits_l2"](prof)
    l2 = EXAMPLE["L2"]
    assert l2 == 50e6
    verdict = {line.split("  ")[1].strip(): "does not fit" not in line for line in lines[:5]}
    assert verdict == {"one block's weights": block.weight_bytes <= l2,
                       "the MLP's 4096 x 16384 matrix alone": d * f * 2 <= l2,
                       "one attention projection (4096 x 4096)": d * d * 2 <= l2,
                       "one block's KV cache (128 x 10,128 tokens)": block.kv_bytes_per_token * 128 * 10128 <= l2,
                       "one block's live activations in the prefill": block.peak_bytes <= l2}
    assert verdict["one attention projection (4096 x 4096)"] and not verdict["one block's weights"]


def test_the_paper_batch_has_no_plan_and_a_smaller_one_is_priced_by_the_estimator(prof) -> None:
    from rotafx import LatencyEstimator, LayerPlacement, preset

    why = EXAMPLE["best_plan"](prof)
    assert isinstance(why, str) and "80.000 GB (memory)" in why and "KV cache 21.240 GB" in why
    small = EXAMPLE["profile"](8)
    plan = EXAMPLE["best_plan"](small)
    assert not isinstance(plan, str) and plan.status == "optimal"
    est = LatencyEstimator(preset("h100x16-l2").with_capacity("memory")).estimate(
        LayerPlacement.from_stages(plan.stages), small)
    assert plan.estimate.generation.tpot_ms == pytest.approx(est.generation.tpot_ms)
    assert plan.estimate.generation.tokens_per_s == pytest.approx(8 * 1000 / est.generation.token_period_ms)
