"""LayerPlacement: resolving ground/orbital/named assignments to chain stages, and the issues validate() reports."""

from __future__ import annotations

import re

import pytest

from rotafx import LayerPlacement, ModelProfile, PlacementError, Topology

GB = 1e9

SEED = {
    "ground_nodes": 2, "orbital_nodes": 4, "ground_flops": 100e12, "orbital_flops": 20e12,
    "uplink_bandwidth": 100e6, "downlink_bandwidth": 500e6, "isl_bandwidth": 10e9, "ground_orbit_latency_ms": 25,
}


def topo(**changes) -> dict:
    d = dict(SEED)
    d.update(changes)
    return d


def profile80() -> ModelProfile:
    return ModelProfile.from_layers(
        [{"name": f"layers.{i}", "params": 1000, "flops": 10**9, "activation_bytes": 4096} for i in range(80)])


def seed_sample() -> LayerPlacement:
    p = LayerPlacement()
    p.assign_ground(layers=[0, 1, 2, 3, 4])
    p.assign_orbital(layers=range(5, 75))
    p.assign_ground(layers=[75, 76, 77, 78, 79])
    return p


def issue_with(issues: list[str], *patterns: str) -> str:
    """The one issue matching every regex pattern; fails with the issues listed otherwise."""
    hits = [i for i in issues if all(re.search(p, i) for p in patterns)]
    assert len(hits) == 1, f"expected one issue matching {patterns}, got {hits} among {issues}"
    return hits[0]


def num(x: int) -> str:
    """A regex for the whole number ``x`` (not part of a longer number)."""
    return rf"(?<![\d.]){x}(?![\d])"


# ---------------------------------------------------------------------------
# resolving


def check_seed_split(stages, n_layers=80, orbital_stages=(1, 2, 3, 4), last=5):
    assert list(stages[:5]) == [0] * 5
    assert list(stages[75:]) == [last] * 5
    mid = list(stages[5:75])
    # contiguous: the orbital stages never go back
    assert mid == sorted(mid)
    assert set(mid) == set(orbital_stages)
    counts = [mid.count(s) for s in orbital_stages]
    assert sum(counts) == 70
    # as even as integers allow: 70 over 4 nodes is 17 or 18 each
    assert max(counts) - min(counts) <= 1
    assert set(counts) <= {70 // len(orbital_stages), -(-70 // len(orbital_stages))}


def test_seed_sample_resolves():
    prof = profile80()
    v = seed_sample().validate(prof, SEED)
    assert v.is_valid, v.issues
    assert v.issues == []
    assert bool(v)
    check_seed_split(v.stages)
    t = Topology.from_dict(SEED)
    assert t.chain[v.stages[0]] == "ground0"
    assert t.chain[v.stages[-1]] == "ground1"


def test_seed_sample_with_one_ground_node():
    prof = profile80()
    t = Topology.from_dict(topo(ground_nodes=1))
    stages = seed_sample().stages(prof, t)
    check_seed_split(stages)
    assert t.chain[stages[0]] == t.chain[stages[-1]] == "ground0"


def test_seed_sample_on_five_orbital_nodes():
    prof = profile80()
    stages = seed_sample().stages(prof, topo(orbital_nodes=5))
    check_seed_split(stages, orbital_stages=(1, 2, 3, 4, 5), last=6)


def test_layers_by_name_match_layers_by_index():
    prof = profile80()
    by_name = LayerPlacement()
    by_name.assign_ground([f"layers.{i}" for i in range(5)])
    by_name.assign_orbital([f"layers.{i}" for i in range(5, 75)])
    by_name.assign_ground([f"layers.{i}" for i in range(75, 80)])
    assert by_name.stages(prof, SEED) == seed_sample().stages(prof, SEED)


def test_mixed_names_and_indices():
    prof = profile80()
    p = LayerPlacement().assign_ground([0, "layers.1", 2, 3, 4]).assign_orbital(range(5, 75))
    p.assign_ground(["layers.75", 76, 77, 78, "layers.79"])
    assert p.stages(prof, SEED) == seed_sample().stages(prof, SEED)


def test_from_spec_and_dict_constructor_match():
    prof = profile80()
    expected = seed_sample().stages(prof, SEED)
    assert LayerPlacement.from_spec("ground:0-4,orbital:5-74,ground:75-79").stages(prof, SEED) == expected
    assert LayerPlacement({**{i: "ground" for i in range(5)}, **{i: "orbital" for i in range(5, 75)},
                           **{i: "ground" for i in range(75, 80)}}).stages(prof, SEED) == expected


def test_named_nodes():
    prof = profile80()
    t = Topology.from_dict(SEED)
    p = LayerPlacement().assign_ground(range(5)).assign(range(5, 40), "orbital1").assign(range(40, 75), "orbital3")
    p.assign_ground(range(75, 80))
    stages = p.stages(prof, t)
    assert [t.chain[s] for s in stages] == ["ground0"] * 5 + ["orbital1"] * 35 + ["orbital3"] * 35 + ["ground1"] * 5


def test_all_ground():
    prof = profile80()
    assert LayerPlacement().assign_ground(range(80)).stages(prof, SEED) == [0] * 80


def test_all_orbital():
    prof = profile80()
    stages = LayerPlacement().assign_orbital(range(80)).stages(prof, SEED)
    assert stages == sorted(stages)
    assert [stages.count(s) for s in (1, 2, 3, 4)] == [20, 20, 20, 20]


def test_from_stages_round_trip():
    prof = profile80()
    stages = [0] * 3 + [1] * 20 + [2] * 20 + [4] * 30 + [5] * 7
    assert LayerPlacement.from_stages(stages).stages(prof, SEED) == stages


# ---------------------------------------------------------------------------
# issues


def test_layer_assigned_twice():
    prof = profile80()
    p = seed_sample().assign_orbital([3])
    v = p.validate(prof, SEED)
    assert not v.is_valid
    assert v.stages is None
    issue_with(v.issues, num(3), r"2 times|twice", "ground", "orbital")


def test_layers_not_assigned():
    prof = profile80()
    p = LayerPlacement().assign_ground(range(10)).assign_orbital(list(range(15, 20)) + list(range(21, 75)))
    p.assign_ground(range(75, 80))
    v = p.validate(prof, SEED)
    assert not v.is_valid
    issue_with(v.issues, r"10-14, 20(?!\d)", "not assigned")


def test_index_out_of_range():
    prof = profile80()
    v = seed_sample().assign_ground([85]).validate(prof, SEED)
    assert not v.is_valid
    issue_with(v.issues, num(85), num(80))


def test_unknown_layer_name():
    prof = profile80()
    v = seed_sample().assign_ground(["layers.99"]).validate(prof, SEED)
    issue_with(v.issues, "layers.99")


def test_unknown_node():
    prof = profile80()
    p = LayerPlacement().assign(range(10), "mars").assign_ground(range(10, 80))
    v = p.validate(prof, SEED)
    assert not v.is_valid
    issue_with(v.issues, "mars", r"0-9(?!\d)")


def test_node_not_in_the_chain():
    # three ground nodes: the chain is ground0 -> orbit -> ground2, so ground1 never runs a stage
    prof = profile80()
    p = LayerPlacement().assign(range(80), "ground1")
    v = p.validate(prof, topo(ground_nodes=3))
    assert not v.is_valid
    issue_with(v.issues, "ground1", r"0-79")


def test_back_and_forth():
    prof = profile80()
    p = LayerPlacement().assign_ground(range(10)).assign_orbital(range(10, 20)).assign_ground(range(20, 30))
    p.assign_orbital(range(30, 80))
    v = p.validate(prof, SEED)
    assert not v.is_valid
    issue_with(v.issues, num(30), "orbital", "back|earlier")
    with pytest.raises(PlacementError, match="30"):
        p.stages(prof, SEED)


def test_back_and_forth_one_ground_node():
    prof = profile80()
    p = LayerPlacement().assign_ground(range(10)).assign_orbital(range(10, 20)).assign_ground(range(20, 30))
    p.assign_orbital(range(30, 80))
    v = p.validate(prof, topo(ground_nodes=1))
    assert not v.is_valid
    issue_with(v.issues, num(30), "orbital")


def test_orbital_without_orbital_nodes():
    prof = profile80()
    v = seed_sample().validate(prof, topo(orbital_nodes=0))
    assert not v.is_valid
    issue_with(v.issues, "orbital", r"5-74", r"orbital_nodes\s*=\s*0")


def test_all_ground_without_orbital_nodes_is_valid():
    prof = profile80()
    v = LayerPlacement().assign_ground(range(80)).validate(prof, topo(orbital_nodes=0))
    assert v.is_valid, v.issues


# ---------------------------------------------------------------------------
# memory

# ten layers with different weights, outputs and workspaces (bytes)
W = [3e9, 1e9, 5e9, 4e9, 6e9, 2e9, 7e9, 3e9, 1e9, 2e9]
A = [2e8, 1e8, 6e8, 3e8, 9e8, 2e8, 4e8, 5e8, 1e8, 3e8]
B = [1e7, 5e7, 2e7, 8e7, 1e7, 3e7, 6e7, 1e7, 4e7, 2e7]
INPUT = 7e8


def profile10() -> ModelProfile:
    return ModelProfile.from_layers(
        [{"name": f"blk{i}", "weight_bytes": W[i], "activation_bytes": A[i], "buffer_bytes": B[i], "flops": 10**9}
         for i in range(10)], input_bytes=int(INPUT))


def placement10() -> LayerPlacement:
    # 6 orbital layers over 2 orbital nodes: 2-4 on orbital0, 5-7 on orbital1
    return LayerPlacement().assign_ground([0, 1]).assign_orbital(range(2, 8)).assign_ground([8, 9])


def peak(l: int) -> float:
    """Live bytes while a from_layers layer runs: its input, its output and its workspace."""
    inp = INPUT if l == 0 else A[l - 1]
    return inp + A[l] + B[l]


def need_liveness(layers) -> float:
    return sum(W[l] for l in layers) + max(peak(l) for l in layers)


def need_sum(layers) -> float:
    return sum(W[l] + A[l] + B[l] for l in layers)


def check_memory_issue(issues, node, layers_text, need, cap):
    issue = issue_with(issues, rf"^{node}\b")
    assert layers_text in issue
    for value in (need, cap, need - cap):
        # sizes are printed in the largest decimal unit that is at least 1 (README: readable sizes)
        unit, scale = next((u, f) for u, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1))
                           if abs(value) >= f or u == "B")
        text = f"{value / scale:,.3f} {unit}" if unit != "B" else f"{value:,.0f} B"
        assert text in issue, f"{text} not in {issue!r}"
    return issue


def test_memory_liveness_rule():
    prof = profile10()
    cap = 13e9
    v = placement10().validate(prof, topo(orbital_nodes=2, orbital_memory=cap))
    n0, n1 = need_liveness([2, 3, 4]), need_liveness([5, 6, 7])
    assert n0 > cap and n1 > cap
    assert v.memory_bytes["orbital0"] == pytest.approx(n0)
    assert v.memory_bytes["orbital1"] == pytest.approx(n1)
    assert v.memory_bytes["ground0"] == pytest.approx(need_liveness([0, 1]))
    assert v.memory_bytes["ground1"] == pytest.approx(need_liveness([8, 9]))
    assert not v.is_valid
    check_memory_issue(v.issues, "orbital0", "2-4", n0, cap)
    check_memory_issue(v.issues, "orbital1", "5-7", n1, cap)
    assert not any(i.startswith("ground") for i in v.issues)


def test_memory_liveness_one_node_over():
    prof = profile10()
    n0, n1 = need_liveness([2, 3, 4]), need_liveness([5, 6, 7])
    cap = (n0 + n1) / 2
    lo, hi = sorted([n0, n1])
    assert lo < cap < hi
    over = "orbital0" if n0 > n1 else "orbital1"
    v = placement10().validate(prof, topo(orbital_nodes=2, orbital_memory=cap))
    assert len(v.issues) == 1
    check_memory_issue(v.issues, over, "2-4" if over == "orbital0" else "5-7", hi, cap)


def test_memory_sum_rule():
    prof = profile10()
    cap = 13e9
    v = placement10().validate(prof, topo(orbital_nodes=2, orbital_memory=cap), memory_rule="sum")
    n0, n1 = need_sum([2, 3, 4]), need_sum([5, 6, 7])
    assert v.memory_bytes["orbital0"] == pytest.approx(n0)
    assert v.memory_bytes["orbital1"] == pytest.approx(n1)
    issues = [i for i in v.issues if i.startswith("orbital")]
    assert len(issues) == (n0 > cap) + (n1 > cap)
    if n0 > cap:
        check_memory_issue(v.issues, "orbital0", "2-4", n0, cap)
    if n1 > cap:
        check_memory_issue(v.issues, "orbital1", "5-7", n1, cap)


def test_memory_fits_exactly():
    prof = profile10()
    cap = max(need_liveness([2, 3, 4]), need_liveness([5, 6, 7]))
    v = placement10().validate(prof, topo(orbital_nodes=2, orbital_memory=cap))
    assert v.is_valid, v.issues


def test_node_at_both_ends_counts_memory_once():
    prof = profile10()
    front, back = need_liveness([0, 1]), need_liveness([8, 9])
    both = need_liveness([0, 1, 8, 9])
    assert both > max(front, back)
    t = topo(ground_nodes=1, orbital_nodes=2, orbital_memory=100e9)

    v = placement10().validate(prof, {**t, "ground_memory": both})
    assert v.is_valid, v.issues
    assert set(v.memory_bytes) == {"ground0", "orbital0", "orbital1"}
    assert v.memory_bytes["ground0"] == pytest.approx(both)

    # each end fits on its own, the two together do not
    cap = (max(front, back) + both) / 2
    v = placement10().validate(prof, {**t, "ground_memory": cap})
    assert not v.is_valid
    assert len(v.issues) == 1
    check_memory_issue(v.issues, "ground0", "0-1, 8-9", both, cap)


def test_node_at_both_ends_sum_rule():
    prof = profile10()
    t = topo(ground_nodes=1, orbital_nodes=2, orbital_memory=100e9, ground_memory=100e9)
    v = placement10().validate(prof, t, memory_rule="sum")
    assert v.memory_bytes["ground0"] == pytest.approx(need_sum([0, 1, 8, 9]))


def test_cache_capacity():
    prof = profile10()
    # with capacity 'cache', a node must hold its layers in its cache, not its memory
    n0, n1 = need_liveness([2, 3, 4]), need_liveness([5, 6, 7])
    cache = (n0 + n1) / 2
    assert n1 < cache < n0
    t = topo(orbital_nodes=2, capacity="cache", ground_cache=100e9, orbital_cache=cache)
    v = placement10().validate(prof, t)
    assert len(v.issues) == 1
    issue = check_memory_issue(v.issues, "orbital0", "2-4", n0, cache)
    assert "cache" in issue


def test_identical_layers_hold_their_own_weights():
    # names must differ (a repeated one is an error, tests/test_bad_input_profile.py); equal figures do not merge weights
    prof = ModelProfile.from_layers([{"name": f"blk{i}", "weight_bytes": 10**9, "activation_bytes": 10} for i in range(3)])
    t = topo(ground_nodes=1, orbital_nodes=0)
    v = LayerPlacement().assign_ground([0, 1, 2]).validate(prof, t)
    # three layers of 1 GB each, plus the largest peak: input 10 + output 10 (no workspace)
    assert v.memory_bytes["ground0"] == pytest.approx(3 * 10**9 + 10 + 10)
