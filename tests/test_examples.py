"""The examples run, and what they print is what a hand computation gives."""

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_seed_samples_run_as_written(capsys):
    ns = runpy.run_path(str(EXAMPLES / "seed_samples.py"), run_name="__main__")
    out = capsys.readouterr().out
    profile, partition = ns["profile"], ns["partition"]
    assert f"Total parameters: {80 * (512 * 512 + 512):,}" in out
    assert "Total layers: 80" in out and profile.num_layers == 80
    # by hand: each Linear(512, 512) at batch 1 does 2*512*512 FLOPs and reads and writes its weights, bias, input
    # and output (fp32); the roofline on a ground node (100 TFLOP/s, 2 TB/s) and an orbital one (20, 1)
    flops, moved, act = 2 * 512 * 512, (512 * 512 + 512 + 2 * 512) * 4, 512 * 4
    ground = max(flops / 100e12, moved / 2e12) * 1e3
    orbital = max(flops / 20e12, moved / 1e12) * 1e3
    # the optimum stays on the ground and sends the output over the ground link (100 Gbit/s, 1 ms)
    all_ground = 80 * ground + act * 8 / 100e9 * 1e3 + 1.0
    assert f"Estimated latency: {all_ground:.1f} ms" in out
    assert f"Total latency: {all_ground:.1f} ms" in out  # layer 15 moved to the ground it was on
    # the hand placement: 10 layers on the ground, 70 in orbit, up at 100 Mbit/s, three 10 Gbit/s ISL hops, down at 500
    hand = (10 * ground + 70 * orbital + act * 8 * (1 / 100e6 + 3 / 10e9 + 1 / 500e6) * 1e3 + 2 * 25.0)
    assert f"Hand placement: {hand:.1f} ms" in out
    # the sample moved layer 15 of an all-ground plan to ground: still valid
    assert partition.validation is not None and partition.validation.is_valid
    assert ns["validation"].is_valid


@pytest.mark.slow
def test_seed_llama70b_example(capsys):
    ns = runpy.run_path(str(EXAMPLES / "seed_llama70b.py"), run_name="__main__")
    part = ns["partition"]
    assert part.status == "optimal"
    assert ns["profile"].total_params == 68_976_648_192
    out = capsys.readouterr().out
    assert f"cut points: {part.cut_points}" in out
    # the generation lines: a decode step at batch 1 is memory-bound, so its compute is every node's weights and
    # KV cache read at that node's memory bandwidth, and TPOT adds the hops' latencies and the token's return
    from rotafx import Topology

    topo = Topology.coerce(ns["topology"])
    generation = ns["generation"]
    for name, est, stages in (("optimizer, minimize_tpot", ns["fastest"].estimate, ns["fastest"].stages),
                              ("layers 9-72 in orbit", ns["in_orbit"], ns["orbital"].resolve(generation, topo)[0])):
        g = est.generation
        assert re.search(rf"{re.escape(name)} +TTFT +{g.ttft_ms:,.1f} ms +TPOT +{g.tpot_ms:,.1f} ms", out)
        read_s = sum((layer.weight_bytes + layer.kv_bytes_per_token * (128 + 128 // 2))
                     / topo.devices[topo.chain[s]].memory_bandwidth for layer, s in zip(generation.layers, stages))
        hops = g.decode.propagation_ms + g.return_ms + g.decode.transfer_ms
        assert g.tpot_ms == pytest.approx(1e3 * read_s + hops, rel=0.005), name
        assert g.return_ms == pytest.approx(1.0, abs=0.01), "the token comes back over the 1 ms ground link"
    assert ns["fastest"].estimate.generation.tpot_ms < ns["in_orbit"].generation.tpot_ms
    assert ns["in_orbit"].generation.decode.propagation_ms == pytest.approx(2 * 25.0), "up and down once per token"
