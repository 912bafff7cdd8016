"""The horizon planner against brute force: every residency enumerated, each condition's best route enumerated, on
small chains whose uplink, downlink or orbital power come and go."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sgp4")

import rotafx  # noqa: E402
from rotafx import ModelProfile  # noqa: E402
from rotafx.orbits import Power, Schedule, Window  # noqa: E402
from rotafx.orbits.horizon import brute_force_horizon, conditions, plan_horizon  # noqa: E402
from rotafx.solve.feasibility import InfeasibleError  # noqa: E402

START = "2026-12-03T00:00:00Z"


@pytest.fixture(scope="module")
def profile() -> ModelProfile:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 512), torch.nn.Linear(512, 64)).eval()
    return ModelProfile.from_pytorch(m, (torch.randn(16, 256),))


def _topology(profile: ModelProfile, ground_share: float, orbit_share: float) -> dict:
    w = profile.weight_bytes
    peak = max(l.peak_bytes for l in profile.layers)
    dev = lambda n, kind, flops, share, power: {"name": n, "kind": kind, "flops": flops,  # noqa: E731
                                                "memory": share * w + peak, "power": power}
    return {"devices": [dev("ground0", "ground", 2e11, ground_share, 700), dev("orbital0", "orbital", 1e11, orbit_share, 150),
                        dev("ground1", "ground", 2e11, ground_share, 700)],
            "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": 1e8, "latency_ms": 25},
                      {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": 5e8, "latency_ms": 25},
                      {"src": "ground0", "dst": "ground1", "kind": "ground", "bandwidth": 1e10, "latency_ms": 1},
                      {"src": "ground1", "dst": "ground0", "kind": "ground", "bandwidth": 1e10, "latency_ms": 1}],
            "chain": ["ground0", "orbital0", "ground1"], "bypasses": [[1, 1]]}


def _schedule(power: bool = False) -> Schedule:
    up = [Window(100, 400, 1e8, 20.0), Window(700, 800, 5e7, 30.0)]
    down = [Window(100, 400), Window(700, 800)]
    return Schedule(START, 1000.0, windows={("ground0", "orbital0"): up, ("orbital0", "ground1"): down},
                    power={"orbital0": Power(battery_wh=1, solar_w=0, compute_w=3.6, reserve=0.0)} if power else {},
                    sunlit={"orbital0": []} if power else {})


@pytest.mark.parametrize("objective", ["minimize_energy", "minimize_latency", "maximize_throughput"])
@pytest.mark.parametrize("aggregate", ["mean", "worst"])
@pytest.mark.parametrize("shares", [(1.0, 0.7), (0.7, 0.7), (1.0, 1.0)])
def test_horizon_plan_equals_brute_force(profile, objective, aggregate, shares) -> None:
    topo, sched = _topology(profile, *shares), _schedule()
    want_resident, want = brute_force_horizon(profile, topo, sched, objective=objective, aggregate=aggregate)
    if want_resident is None:
        with pytest.raises(InfeasibleError, match=r"no set of resident layers serves every interval"):
            plan_horizon(profile, topo, sched, objective=objective, aggregate=aggregate)
        return
    plan = plan_horizon(profile, topo, sched, objective=objective, aggregate=aggregate)
    assert plan.status == "optimal"
    assert plan.value == pytest.approx(want, rel=1e-6)
    # each route uses resident layers only, and is each condition's own optimum given them
    for p in plan.plans:
        for l, s in enumerate(p.stages):
            assert l in plan.resident[p.condition.topology.chain[s]]
        assert not set(p.stages) & p.condition.empty
    # the figures are the cost model's own for each condition
    vals = [p.value for p in plan.plans]
    total = sum(p.condition.seconds for p in plan.plans)
    agg = max(vals) if aggregate == "worst" else sum(p.condition.seconds / total * p.value for p in plan.plans)
    assert agg == pytest.approx(plan.value, rel=1e-6)


def test_energy_goes_to_orbit_while_the_links_are_up_and_stays_on_the_ground_otherwise(profile) -> None:
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), _schedule(), objective="minimize_energy")
    up = plan.route_at(150.0)
    down = plan.route_at(500.0)
    assert 1 in up.stages, "the orbital node draws 150 W against 700: energy goes up while it can"
    assert 1 not in down.stages and down.condition.empty == {1}
    assert up.condition.topology.link("ground0", "orbital0").latency_ms == 20.0, "the window's own figures"
    assert plan.route_at(750.0).condition.topology.link("ground0", "orbital0").bandwidth_bps == 5e7
    assert plan.served_s == 1000.0
    assert "resident layers" in plan.report()


def test_a_node_without_power_is_bypassed(profile) -> None:
    """0.5 Wh at 3.6 W and no sun: the orbital node computes for the first 500 s, then every route skips it."""
    sched = Schedule(START, 1000.0, power={"orbital0": Power(battery_wh=0.5, solar_w=0, compute_w=3.6, reserve=0.0)},
                     sunlit={"orbital0": []})
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), sched, objective="minimize_energy")
    early, late = plan.route_at(100.0), plan.route_at(900.0)
    assert 1 in early.stages and late.condition.empty == {1} and 1 not in late.stages
    (cut,) = {iv.end_s for iv in early.condition.intervals}
    assert cut == pytest.approx(500.0, abs=10.0)


def test_no_route_when_the_bypass_is_down_too(profile) -> None:
    sched = Schedule(START, 100.0, windows={("ground0", "orbital0"): [Window(0, 50)], ("ground0", "ground1"): [Window(0, 50)]})
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), sched)
    assert plan.served_s == pytest.approx(50.0)
    (gone,) = [p for p in plan.plans if p.stages is None]
    assert "bypass ground0 -> ground1 is down too" in gone.condition.why


@pytest.mark.parametrize("cost", [0.0, 1e-3, 1e3])
def test_moving_weights_costs_what_it_says_and_equals_brute_force(profile, cost) -> None:
    """The ground holds everything now; uploading a GB costs ``cost`` J: energy goes to orbit only when the saving
    pays for the upload."""
    topo, sched = _topology(profile, 1.0, 1.0), _schedule()
    previous = {"ground0": [0, 1, 2], "ground1": [0, 1, 2]}
    _, want = brute_force_horizon(profile, topo, sched, objective="minimize_energy", previous=previous,
                                  move_cost_per_gb=cost)
    plan = plan_horizon(profile, topo, sched, objective="minimize_energy", previous=previous, move_cost_per_gb=cost)
    assert plan.value == pytest.approx(want, rel=1e-6)
    gb = sum(profile.layers[l].weight_bytes for l in plan.resident["orbital0"]) / 1e9
    assert plan.moved_gb == pytest.approx(gb), "only the orbital node receives weights"
    if cost >= 1e3:
        assert plan.resident["orbital0"] == (), "an upload dearer than any saving: nothing moves"
    if cost == 0.0:
        assert plan.resident["orbital0"], "free to move: energy goes up while in view"
    with pytest.raises(ValueError, match=r"previous names \['ground9'\]"):
        plan_horizon(profile, topo, sched, previous={"ground9": [0]}, move_cost_per_gb=1.0)


def test_horizon_routes_exported_for_generation_generate_the_models_tokens_across_a_window(tmp_path) -> None:
    """export_routes(max_context=...) writes each route's prefill and decode programs, so a Failover over the horizon
    plan generates: the orbit is in view 30-60 s and the clock moves 10 s at each check (every 2 tokens), so the
    sequences start on the ground, go through orbit and come back, and end with the model's greedy tokens."""
    import itertools

    from rotafx.models import small_gpt
    from rotafx.orbits.horizon import export_routes
    from rotafx.plan.schema import read_plan
    from rotafx.runtime.distributed import Failover
    from tests.test_failover import _chain, _day
    from tests.test_generate import _ids, _recompute

    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    example = _ids(1, 8, 128, seed=0)
    profile = ModelProfile.from_pytorch(m, (example,))
    day = _day([Window(30.0, 60.0)])
    chain = _chain(profile)
    for d in chain["devices"]:  # and room for the KV cache of 48 tokens
        d["memory"] *= 2
    plan = plan_horizon(profile, chain, day, objective="minimize_energy")
    routes = plan.routes()
    assert len(routes) == 2 and routes[1].nodes == ("orbital0",), [r.describe() for r in routes]
    export_routes(m, (example,), plan, directory=tmp_path, devices="cpu", max_context=48)
    assert all(read_plan(tmp_path / f"route{i}").generation.max_context == 48 for i in range(2))
    prompt = _ids(2, 11, 128)
    with Failover.from_horizon(plan, tmp_path, schedule=day, recheck_tokens=2,
                               clock=itertools.count(0, 10).__next__) as f:
        got = f.generate(prompt, max_new_tokens=12)
        sent = [r.driver._next_id for r in f.routes]
    assert torch.equal(got, _recompute(m, prompt, 12))
    assert all(n > 0 for n in sent), sent  # both routes generated some of the tokens
    assert [(e.src, e.dst) for e in f.events][:3] == [(None, 0), (0, 1), (1, 0)], f.events
