"""LatencyEstimator and evaluate(): every part of an estimate checked against a hand computation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotafx import CostTables, LatencyEstimator, LayerPlacement, ModelProfile, Topology
from rotafx.estimate import evaluate
from rotafx.objective import objective
from rotafx.solve.dp import solve_dp
from rotafx.solve.milp import solve_milp
from rotafx.layers import LayerProfile, TensorInfo

# ---------------------------------------------------------------------------
# a two-layer model on one ground node and one orbital node, every figure given explicitly

G_FLOPS, O_FLOPS = 1e12, 2e11  # FLOP/s
G_BW, O_BW = 2e12, 1e12  # memory bandwidth, bytes/s
G_POWER, O_POWER = 400.0, 150.0  # W
UP_BPS, DOWN_BPS = 1e6, 5e6  # bits/s
UP_EPB, DOWN_EPB = 2e-8, 5e-9  # J/bit
PROP_MS = 25.0  # one ground-orbit crossing

TOPO = {
    "ground_nodes": 1, "orbital_nodes": 1,
    "ground_flops": G_FLOPS, "orbital_flops": O_FLOPS,
    "uplink_bandwidth": UP_BPS, "downlink_bandwidth": DOWN_BPS, "isl_bandwidth": 1e9,
    "ground_orbit_latency_ms": PROP_MS,
    "ground_memory_bandwidth": G_BW, "orbital_memory_bandwidth": O_BW,
    "ground_power_w": G_POWER, "orbital_power_w": O_POWER,
    "uplink_energy_per_bit": UP_EPB, "downlink_energy_per_bit": DOWN_EPB,
}

# layer a is compute-bound, layer b memory-bound
FLOPS = [4e9, 1e6]
MOVED = [1e6, 4e8]  # bytes read and written
IN_BYTES, OUT_BYTES = 2000, [3000, 1000]  # model input; output of each layer


def two_layers() -> ModelProfile:
    return ModelProfile.from_layers(
        [{"name": "a", "params": 1000, "flops": FLOPS[0], "bytes_moved": MOVED[0], "activation_bytes": OUT_BYTES[0]},
         {"name": "b", "params": 2000, "flops": FLOPS[1], "bytes_moved": MOVED[1], "activation_bytes": OUT_BYTES[1]}],
        input_bytes=IN_BYTES)


def roofline_ms(l: int, flops: float, bw: float) -> float:
    return max(FLOPS[l] / flops, MOVED[l] / bw) * 1e3


def tg(l: int) -> float:
    return roofline_ms(l, G_FLOPS, G_BW)


def to(l: int) -> float:
    return roofline_ms(l, O_FLOPS, O_BW)


def ser_ms(nbytes: float, bps: float) -> float:
    return nbytes * 8 / bps * 1e3


def check_parts_add_up(est) -> None:
    assert sum(est.parts().values()) == pytest.approx(est.total_ms, rel=1e-12)
    assert est.compute_ms + est.transfer_ms + est.propagation_ms == pytest.approx(est.total_ms, rel=1e-12)
    assert sum(l.total_ms for l in est.by_layer) == pytest.approx(est.compute_ms, rel=1e-12)
    assert sum(t.transfer_ms for t in est.transfers) == pytest.approx(est.transfer_ms, rel=1e-12)
    assert sum(t.propagation_ms for t in est.transfers) == pytest.approx(est.propagation_ms, rel=1e-12)


def test_the_roofline_picks_the_binding_limit():
    # the model is built so that each layer exercises a different side of the roofline
    assert FLOPS[0] / G_FLOPS > MOVED[0] / G_BW and FLOPS[0] / O_FLOPS > MOVED[0] / O_BW
    assert FLOPS[1] / G_FLOPS < MOVED[1] / G_BW and FLOPS[1] / O_FLOPS < MOVED[1] / O_BW


def test_all_ground():
    prof = two_layers()
    est = LatencyEstimator(TOPO).estimate(LayerPlacement().assign_ground([0, 1]), prof)
    compute = tg(0) + tg(1)
    assert est.ground_compute_ms == pytest.approx(compute)
    assert est.orbital_compute_ms == 0
    assert est.uplink_ms == 0 and est.downlink_ms == 0 and est.propagation_ms == 0
    assert est.total_ms == pytest.approx(compute)
    assert est.stages == (0, 0)
    assert est.transfer_bytes == 0
    assert est.bandwidth_bytes == 0
    assert est.energy_j == pytest.approx(compute / 1e3 * G_POWER)
    assert est.period_ms == pytest.approx(compute)
    assert est.throughput_rps == pytest.approx(1000 / compute)
    assert [(l.name, l.node) for l in est.by_layer] == [("a", "ground0"), ("b", "ground0")]
    assert [l.total_ms for l in est.by_layer] == pytest.approx([tg(0), tg(1)])
    check_parts_add_up(est)


def test_ground_then_orbit():
    prof = two_layers()
    est = LatencyEstimator(TOPO).estimate(LayerPlacement().assign_ground([0]).assign_orbital([1]), prof)
    up, down = ser_ms(OUT_BYTES[0], UP_BPS), ser_ms(OUT_BYTES[1], DOWN_BPS)
    assert up == pytest.approx(24.0) and down == pytest.approx(1.6)  # 3000 B at 1 Mbps, 1000 B at 5 Mbps
    assert est.ground_compute_ms == pytest.approx(tg(0))
    assert est.orbital_compute_ms == pytest.approx(to(1))
    assert est.uplink_ms == pytest.approx(up)
    assert est.downlink_ms == pytest.approx(down)
    assert est.propagation_ms == pytest.approx(2 * PROP_MS)
    assert est.total_ms == pytest.approx(tg(0) + to(1) + up + down + 2 * PROP_MS)
    check_parts_add_up(est)

    assert [(l.index, l.name, l.node, l.stage) for l in est.by_layer] == [(0, "a", "ground0", 0), (1, "b", "orbital0", 1)]
    assert [l.total_ms for l in est.by_layer] == pytest.approx([tg(0), to(1)])

    hops = [(t.boundary, t.src, t.dst, t.link_kind, t.bytes) for t in est.transfers]
    assert hops == [(1, "ground0", "orbital0", "uplink", OUT_BYTES[0]), (2, "orbital0", "ground0", "downlink", OUT_BYTES[1])]
    assert [t.transfer_ms for t in est.transfers] == pytest.approx([up, down])
    assert [t.propagation_ms for t in est.transfers] == [PROP_MS, PROP_MS]
    assert est.transfer_bytes == sum(OUT_BYTES)
    assert est.bandwidth_bytes == sum(OUT_BYTES)
    assert est.transfer_size_mb == pytest.approx(sum(OUT_BYTES) / 1e6)

    # pipelined: the slowest of ground0's compute, orbital0's compute and each link's serialisation
    period = max(tg(0), to(1), up, down)
    assert period == pytest.approx(up)
    assert est.period_ms == pytest.approx(period)
    assert est.throughput_rps == pytest.approx(1000 / period)

    energy = tg(0) / 1e3 * G_POWER + to(1) / 1e3 * O_POWER + OUT_BYTES[0] * 8 * UP_EPB + OUT_BYTES[1] * 8 * DOWN_EPB
    assert est.energy_j == pytest.approx(energy)


def test_all_orbital():
    prof = two_layers()
    est = LatencyEstimator(TOPO).estimate(LayerPlacement().assign_orbital([0, 1]), prof)
    up, down = ser_ms(IN_BYTES, UP_BPS), ser_ms(OUT_BYTES[1], DOWN_BPS)
    assert est.ground_compute_ms == 0
    assert est.orbital_compute_ms == pytest.approx(to(0) + to(1))
    assert est.uplink_ms == pytest.approx(up)
    assert est.downlink_ms == pytest.approx(down)
    assert est.propagation_ms == pytest.approx(2 * PROP_MS)
    assert est.total_ms == pytest.approx(to(0) + to(1) + up + down + 2 * PROP_MS)
    assert [(t.boundary, t.link_kind, t.bytes) for t in est.transfers] == [(0, "uplink", IN_BYTES),
                                                                           (2, "downlink", OUT_BYTES[1])]
    period = max(to(0) + to(1), up, down)
    assert est.period_ms == pytest.approx(period)
    assert est.throughput_rps == pytest.approx(1000 / period)
    energy = (to(0) + to(1)) / 1e3 * O_POWER + IN_BYTES * 8 * UP_EPB + OUT_BYTES[1] * 8 * DOWN_EPB
    assert est.energy_j == pytest.approx(energy)
    check_parts_add_up(est)


def test_orbit_then_ground_at_the_far_end():
    prof = two_layers()
    est = LatencyEstimator(TOPO).estimate([1, 2], prof)
    assert [l.node for l in est.by_layer] == ["orbital0", "ground0"]
    up, down = ser_ms(IN_BYTES, UP_BPS), ser_ms(OUT_BYTES[0], DOWN_BPS)
    assert est.orbital_compute_ms == pytest.approx(to(0))
    assert est.ground_compute_ms == pytest.approx(tg(1))
    assert est.uplink_ms == pytest.approx(up)
    assert est.downlink_ms == pytest.approx(down)
    assert est.total_ms == pytest.approx(to(0) + tg(1) + up + down + 2 * PROP_MS)
    check_parts_add_up(est)


def test_estimate_a_validated_placement_without_passing_the_profile():
    prof = two_layers()
    p = LayerPlacement().assign_ground([0]).assign_orbital([1])
    assert p.validate(prof, TOPO).is_valid
    est = LatencyEstimator(TOPO).estimate(p)
    assert est.total_ms == pytest.approx(tg(0) + to(1) + ser_ms(3000, UP_BPS) + ser_ms(1000, DOWN_BPS) + 2 * PROP_MS)


def test_placement_without_profile_is_an_error():
    with pytest.raises(ValueError, match="profile"):
        LatencyEstimator(TOPO).estimate(LayerPlacement().assign_ground([0, 1]))


def test_bad_stage_lists():
    prof = two_layers()
    est = LatencyEstimator(TOPO)
    with pytest.raises(ValueError, match="non-decreasing|order"):
        est.estimate([1, 0], prof)
    with pytest.raises(ValueError, match="3"):
        est.estimate([0, 0, 0], prof)


# ---------------------------------------------------------------------------
# a ground node at both ends is one device: its busy time is the sum of its two stages


def test_period_sums_the_stages_of_one_device():
    layers = [{"name": f"l{i}", "flops": f, "bytes_moved": 0, "activation_bytes": 100} for i, f in enumerate([4e9, 6e9, 4e9])]
    prof = ModelProfile.from_layers(layers, input_bytes=100)
    t = {"ground_nodes": 1, "orbital_nodes": 1, "ground_flops": 1e12, "orbital_flops": 1e12,
         "uplink_bandwidth": 1e9, "downlink_bandwidth": 1e9, "isl_bandwidth": 1e9}
    est = LatencyEstimator(t).estimate([0, 1, 2], prof)
    ground_busy = 4e9 / 1e12 * 1e3 + 4e9 / 1e12 * 1e3  # layers 0 and 2, both on ground0
    orbital_busy = 6e9 / 1e12 * 1e3
    link = 100 * 8 / 1e9 * 1e3
    assert ground_busy > orbital_busy > link
    assert est.period_ms == pytest.approx(ground_busy)
    assert est.throughput_rps == pytest.approx(1000 / ground_busy)


# ---------------------------------------------------------------------------
# two ground nodes: all-ground traffic takes the ground link (the bypass)


def test_all_ground_with_two_ground_nodes_uses_the_ground_link():
    prof = two_layers()
    gbps, glat, gepb = 40e9, 3.0, 1e-10
    t = {**TOPO, "ground_nodes": 2, "orbital_nodes": 2, "ground_bandwidth": gbps, "ground_latency_ms": glat,
         "ground_energy_per_bit": gepb}
    est = LatencyEstimator(t).estimate(LayerPlacement().assign_ground([0, 1]), prof)
    assert est.uplink_ms == 0 and est.downlink_ms == 0 and est.isl_ms == 0
    g = ser_ms(OUT_BYTES[1], gbps)
    assert est.ground_link_ms == pytest.approx(g)
    assert est.propagation_ms == pytest.approx(glat)
    assert est.total_ms == pytest.approx(tg(0) + tg(1) + g + glat)
    assert [(t.boundary, t.src, t.dst, t.link_kind, t.bytes) for t in est.transfers] == [
        (2, "ground0", "ground1", "ground", OUT_BYTES[1])]
    assert est.energy_j == pytest.approx((tg(0) + tg(1)) / 1e3 * G_POWER + OUT_BYTES[1] * 8 * gepb)
    assert est.bandwidth_bytes == 0  # nothing crossed a ground-orbit link
    check_parts_add_up(est)

    # everything on the far ground node: the input crosses the ground link
    est = LatencyEstimator(t).estimate([3, 3], prof)
    assert [(t.boundary, t.link_kind, t.bytes) for t in est.transfers] == [(0, "ground", IN_BYTES)]
    assert est.total_ms == pytest.approx(tg(0) + tg(1) + ser_ms(IN_BYTES, gbps) + glat)


def test_two_orbital_nodes_use_the_isl():
    prof = two_layers()
    isl_bps, isl_lat = 1e8, 2.0
    t = {**TOPO, "ground_nodes": 2, "orbital_nodes": 2, "isl_bandwidth": isl_bps, "isl_latency_ms": isl_lat}
    est = LatencyEstimator(t).estimate(LayerPlacement().assign_orbital([0, 1]), prof)  # one layer per orbital node
    assert [l.node for l in est.by_layer] == ["orbital0", "orbital1"]
    up, isl, down = ser_ms(IN_BYTES, UP_BPS), ser_ms(OUT_BYTES[0], isl_bps), ser_ms(OUT_BYTES[1], DOWN_BPS)
    assert est.isl_ms == pytest.approx(isl)
    assert est.propagation_ms == pytest.approx(2 * PROP_MS + isl_lat)
    assert est.total_ms == pytest.approx(to(0) + to(1) + up + isl + down + 2 * PROP_MS + isl_lat)
    assert [t.link_kind for t in est.transfers] == ["uplink", "isl", "downlink"]
    check_parts_add_up(est)


# ---------------------------------------------------------------------------
# codecs: floating tensors are sent at 2 (fp16, bf16) or 1 (int8) bytes per element


def codec_profile() -> ModelProfile:
    def layer(i: int, name: str, flops: float, moved: float) -> LayerProfile:
        return LayerProfile(index=i, name=name, params=10, flops=int(flops), weight_bytes=40, activation_bytes=0,
                            buffer_bytes=0, peak_bytes=0, bytes_moved=int(moved), work=((int(flops), int(moved)),),
                            weight_names=(f"{name}.w",))

    boundaries = [
        (TensorInfo("x", 1000, 4, True), TensorInfo("ids", 100, 8, False)),  # fp32 input and int64 ids
        (TensorInfo("h", 2000, 4, True), TensorInfo("mask", 500, 1, False), TensorInfo("r", 300, 2, True)),
        (TensorInfo("y", 250, 4, True),),
    ]
    return ModelProfile(layers=[layer(0, "a", 1e9, 1e3), layer(1, "b", 2e9, 1e3)], boundaries=boundaries,
                        weights={"a.w": (10, 40), "b.w": (10, 40)}, param_names=frozenset({"a.w", "b.w"}))


# bytes of each boundary, by hand: floating tensors shrink to the codec's size (never grow); others stay
CODEC_BYTES = {
    None: [1000 * 4 + 100 * 8, 2000 * 4 + 500 * 1 + 300 * 2, 250 * 4],
    "fp16": [1000 * 2 + 100 * 8, 2000 * 2 + 500 * 1 + 300 * 2, 250 * 2],
    "bf16": [1000 * 2 + 100 * 8, 2000 * 2 + 500 * 1 + 300 * 2, 250 * 2],
    "int8": [1000 * 1 + 100 * 8, 2000 * 1 + 500 * 1 + 300 * 1, 250 * 1],
}


@pytest.mark.parametrize("codec", [None, "fp16", "bf16", "int8"])
def test_codecs_change_the_bytes_of_floating_tensors(codec):
    prof = codec_profile()
    expected = CODEC_BYTES[codec]
    assert [prof.boundary_bytes(p, codec) for p in range(3)] == expected

    est = LatencyEstimator(TOPO, codec=codec).estimate([0, 1], prof)
    assert est.codec == codec
    assert [(t.boundary, t.bytes) for t in est.transfers] == [(1, expected[1]), (2, expected[2])]
    assert [ti.name for ti in est.transfers[0].tensors] == ["h", "mask", "r"]
    assert est.uplink_ms == pytest.approx(ser_ms(expected[1], UP_BPS))
    assert est.downlink_ms == pytest.approx(ser_ms(expected[2], DOWN_BPS))
    compute = 1e9 / G_FLOPS * 1e3 + 2e9 / O_FLOPS * 1e3
    assert est.total_ms == pytest.approx(compute + ser_ms(expected[1], UP_BPS) + ser_ms(expected[2], DOWN_BPS)
                                         + 2 * PROP_MS)
    assert est.energy_j == pytest.approx(1e9 / G_FLOPS * G_POWER + 2e9 / O_FLOPS * O_POWER
                                         + expected[1] * 8 * UP_EPB + expected[2] * 8 * DOWN_EPB)

    est = LatencyEstimator(TOPO, codec=codec).estimate([1, 1], prof)
    assert [(t.boundary, t.bytes) for t in est.transfers] == [(0, expected[0]), (2, expected[2])]
    check_parts_add_up(est)


def test_codec_none_string_is_no_codec():
    prof = codec_profile()
    a = LatencyEstimator(TOPO, codec="none").estimate([0, 1], prof)
    b = LatencyEstimator(TOPO).estimate([0, 1], prof)
    assert a.total_ms == b.total_ms
    assert a.transfer_bytes == b.transfer_bytes == CODEC_BYTES[None][1] + CODEC_BYTES[None][2]


def test_unknown_codec():
    with pytest.raises(ValueError, match="zip"):
        LatencyEstimator(TOPO, codec="zip").estimate([0, 1], codec_profile())


# ---------------------------------------------------------------------------
# a bigger profile on the seed topology, against an independent reference

SEED = {
    "ground_nodes": 2, "orbital_nodes": 4, "ground_flops": 100e12, "orbital_flops": 20e12,
    "uplink_bandwidth": 100e6, "downlink_bandwidth": 500e6, "isl_bandwidth": 10e9, "ground_orbit_latency_ms": 25,
    "isl_latency_ms": 0.5, "ground_bandwidth": 50e9, "ground_latency_ms": 2,
    "ground_memory_bandwidth": 2e12, "orbital_memory_bandwidth": 1e12,
    "ground_power_w": 700, "orbital_power_w": 300,
    "uplink_energy_per_bit": 1e-8, "downlink_energy_per_bit": 2e-8, "isl_energy_per_bit": 1e-9,
    "ground_energy_per_bit": 1e-10,
}
N = 12
BIG_FLOPS = [(3 + (7 * i) % 5) * 1e11 for i in range(N)]
BIG_MOVED = [(1 + (5 * i) % 7) * 1e8 for i in range(N)]
BIG_OUT = [(2 + (3 * i) % 4) * 10**6 for i in range(N)]
BIG_IN = 5 * 10**5


def big_profile() -> ModelProfile:
    return ModelProfile.from_layers(
        [{"name": f"layers.{i}", "params": 10**6, "flops": BIG_FLOPS[i], "bytes_moved": BIG_MOVED[i],
          "activation_bytes": BIG_OUT[i]} for i in range(N)], input_bytes=BIG_IN)


def reference(stages: list[int]) -> dict[str, float]:
    """The seed chain ground0 -> orbital0..3 -> ground1 priced by hand."""
    kinds = ["ground", "orbital", "orbital", "orbital", "orbital", "ground"]
    flops = {"ground": SEED["ground_flops"], "orbital": SEED["orbital_flops"]}
    bw = {"ground": SEED["ground_memory_bandwidth"], "orbital": SEED["orbital_memory_bandwidth"]}
    power = {"ground": SEED["ground_power_w"], "orbital": SEED["orbital_power_w"]}
    out = {"ground": 0.0, "orbital": 0.0, "uplink": 0.0, "downlink": 0.0, "isl": 0.0, "ground_link": 0.0,
           "propagation": 0.0, "energy": 0.0}
    busy = [0.0] * 6
    for l, s in enumerate(stages):
        k = kinds[s]
        t = max(BIG_FLOPS[l] / flops[k], BIG_MOVED[l] / bw[k]) * 1e3
        out[k] += t
        busy[s] += t
        out["energy"] += t / 1e3 * power[k]
    # ground0 and ground1 are different devices here, so busy time is per stage
    boundary = [BIG_IN] + BIG_OUT

    def crossed(b: int) -> int:  # bytes after the layers on stages 0..b
        return boundary[sum(1 for s in stages if s <= b)]

    if all(s in (0, 5) for s in stages):
        hops = [("ground_link", SEED["ground_bandwidth"], SEED["ground_latency_ms"], SEED["ground_energy_per_bit"], 0)]
    else:
        hops = [("uplink", SEED["uplink_bandwidth"], SEED["ground_orbit_latency_ms"], SEED["uplink_energy_per_bit"], 0)]
        hops += [("isl", SEED["isl_bandwidth"], SEED["isl_latency_ms"], SEED["isl_energy_per_bit"], b) for b in (1, 2, 3)]
        hops += [("downlink", SEED["downlink_bandwidth"], SEED["ground_orbit_latency_ms"],
                  SEED["downlink_energy_per_bit"], 4)]
    link_busy = 0.0
    for kind, bps, lat, epb, b in hops:
        nbytes = crossed(b)
        t = nbytes * 8 / bps * 1e3
        out[kind] += t
        out["propagation"] += lat
        out["energy"] += nbytes * 8 * epb
        link_busy = max(link_busy, t)
    out["total"] = out["ground"] + out["orbital"] + out["uplink"] + out["downlink"] + out["isl"] + \
        out["ground_link"] + out["propagation"]
    out["period"] = max(busy + [link_busy])
    return out


stage_lists = st.lists(st.integers(0, 5), min_size=N, max_size=N).map(sorted)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(stage_lists)
def test_random_placements_match_the_reference(stages):
    prof = big_profile()
    est = LatencyEstimator(SEED).estimate(stages, prof)
    ref = reference(stages)
    assert est.ground_compute_ms == pytest.approx(ref["ground"])
    assert est.orbital_compute_ms == pytest.approx(ref["orbital"])
    assert est.uplink_ms == pytest.approx(ref["uplink"])
    assert est.downlink_ms == pytest.approx(ref["downlink"])
    assert est.isl_ms == pytest.approx(ref["isl"])
    assert est.ground_link_ms == pytest.approx(ref["ground_link"])
    assert est.propagation_ms == pytest.approx(ref["propagation"])
    assert est.total_ms == pytest.approx(ref["total"])
    assert est.energy_j == pytest.approx(ref["energy"])
    assert est.period_ms == pytest.approx(ref["period"])
    assert est.throughput_rps == pytest.approx(1000 / ref["period"])
    check_parts_add_up(est)
    assert [l.name for l in est.by_layer] == [f"layers.{i}" for i in range(N)]
    chain = Topology.from_dict(SEED).chain
    assert [l.node for l in est.by_layer] == [chain[s] for s in stages]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(stage_lists, st.sampled_from([None, "fp16", "int8"]))
def test_parts_add_up_with_codecs(stages, codec):
    est = LatencyEstimator(SEED, codec=codec).estimate(stages, big_profile())
    check_parts_add_up(est)


@pytest.mark.parametrize("name", ["minimize_latency", "maximize_throughput", "minimize_bandwidth", "minimize_energy"])
def test_the_solvers_price_their_plan_as_the_estimator_does(name):
    """One cost model: the value the MILP's and the DP's own formulations give their plan is the estimator's value
    of that plan, and the estimator's is the hand reference's (a wrong coefficient in either formulation shows)."""
    prof = big_profile()
    topo = Topology.from_dict({**SEED, "ground_memory": 5e6})  # two layers per ground node: the plan must use orbit
    tables = CostTables(prof, topo)
    obj = objective(name)
    res = solve_milp(tables, obj, time_limit=60)
    dp_stages, dp_value = solve_dp(tables, obj)
    for stages, value in ((res.stages, res.value), (dp_stages, dp_value)):
        assert any(0 < s < 5 for s in stages), stages
        est = LatencyEstimator(topo).estimate(stages, prof)
        ref = reference(stages)
        ref_terms = {"latency": ref["total"], "period": ref["period"], "energy": ref["energy"],
                     "bandwidth": float(sum(t.bytes for t in est.transfers if t.link_kind in ("uplink", "downlink")))}
        assert est.terms() == pytest.approx(ref_terms)
        assert value == pytest.approx(obj.value(est), rel=1e-6, abs=1e-9), (name, stages)


def test_report_names_the_parts():
    est = LatencyEstimator(TOPO).estimate([0, 1], two_layers())
    text = est.report()
    for word in ("ground compute", "orbital compute", "uplink", "downlink", "propagation"):
        assert word in text


def test_default_bytes_moved_is_weights_input_and_output():
    # from_layers: bytes moved default to weight + input + output bytes; itemsize 2 bytes per parameter
    params, inp, out = 10**9, 3 * 10**6, 5 * 10**6
    prof = ModelProfile.from_layers([{"name": "big", "params": params, "flops": 10**6, "activation_bytes": out}],
                                    input_bytes=inp, itemsize=2)
    est = LatencyEstimator(TOPO).estimate([0], prof)
    expected = max(10**6 / G_FLOPS, (2 * params + inp + out) / G_BW) * 1e3
    assert est.ground_compute_ms == pytest.approx(expected)


def test_a_links_message_cost_adds_to_each_hop_and_keeps_the_link_busy():
    """``message_ms`` on a link: every hop over it pays it once on the way (transfer) and in the link's busy time
    (period); the MILP and the DP price it as the estimator does."""
    prof = two_layers()
    msg = 7.0
    topo = {"devices": [{"name": "a", "flops": G_FLOPS, "memory": 1e9, "memory_bandwidth": G_BW},
                        {"name": "b", "flops": G_FLOPS, "memory": 1e9, "memory_bandwidth": G_BW}],
            "links": [{"src": "a", "dst": "b", "bandwidth": UP_BPS, "latency_ms": 2.0, "message_ms": msg}],
            "chain": ["a", "b"]}
    est = LatencyEstimator(topo).estimate(LayerPlacement({0: "a", 1: "b"}), prof)
    ser = ser_ms(OUT_BYTES[0], UP_BPS)
    (hop,) = est.transfers
    assert hop.transfer_ms == pytest.approx(ser + msg) and hop.propagation_ms == 2.0
    assert est.total_ms == pytest.approx(tg(0) + tg(1) + ser + msg + 2.0)
    assert est.period_ms == pytest.approx(max(tg(0), tg(1), ser + msg))
    check_parts_add_up(est)
    assert Topology.coerce(topo).to_dict()["links"][0]["message_ms"] == msg
    tables = CostTables(prof, Topology.coerce(topo))
    for name in ("minimize_latency", "maximize_throughput"):
        obj = objective(name)
        best = min((obj.value(evaluate(tables, s).terms()), s) for s in ([0, 0], [0, 1], [1, 1]))
        assert solve_milp(tables, obj).value == pytest.approx(best[0], rel=1e-6), name
        assert solve_dp(tables, obj)[1] == pytest.approx(best[0], rel=1e-6), name
    with pytest.raises(Exception, match=r"links\[0\] .*message_ms must be zero or positive \(milliseconds\), got -1"):
        Topology.coerce({**topo, "links": [{**topo["links"][0], "message_ms": -1}]})
