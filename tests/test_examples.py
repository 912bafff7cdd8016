"""The examples run, and what they print is what the library computes."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_seed_samples_run_as_written(capsys):
    ns = runpy.run_path(str(EXAMPLES / "seed_samples.py"), run_name="__main__")
    out = capsys.readouterr().out
    profile, partition, estimate = ns["profile"], ns["partition"], ns["estimate"]
    assert f"Total parameters: {80 * (512 * 512 + 512):,}" in out
    assert f"Total layers: {profile.num_layers}" in out and profile.num_layers == 80
    assert f"Estimated latency: {ns['optimizer'].optimize(model=profile, topology=ns['topology']).estimated_latency_ms:.1f} ms" in out
    assert f"Total latency: {estimate.total_ms:.1f} ms" in out
    # the sample moved layer 15 of an all-ground plan to ground: still valid
    assert partition.validation is not None and partition.validation.is_valid
    assert ns["validation"].is_valid


@pytest.mark.slow
def test_seed_llama70b_example(capsys):
    ns = runpy.run_path(str(EXAMPLES / "seed_llama70b.py"), run_name="__main__")
    part = ns["partition"]
    assert part.status == "optimal"
    assert ns["profile"].total_params == 68_976_648_192
    assert f"cut points: {part.cut_points}" in capsys.readouterr().out
