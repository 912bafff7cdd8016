"""The simulator: reproducible from its seed, each request priced by the route in force when it starts, queued
behind the pipeline's period, delayed or rejected where no route exists."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sgp4")

from rotafx.orbits import Schedule, Window  # noqa: E402
from rotafx.orbits.horizon import plan_horizon  # noqa: E402
from rotafx.orbits.simulate import simulate  # noqa: E402
from tests.test_horizon import START, _schedule, _topology, profile  # noqa: E402,F401


@pytest.fixture(scope="module")
def plan(profile):  # noqa: F811
    return plan_horizon(profile, _topology(profile, 1.0, 1.0), _schedule(), objective="minimize_energy")


def test_the_same_seed_gives_the_same_day(plan) -> None:
    a, b, c = simulate(plan, rate_per_s=0.2, seed=3), simulate(plan, rate_per_s=0.2, seed=3), simulate(plan, rate_per_s=0.2, seed=4)
    assert a.served == b.served and a.rejected == b.rejected
    assert a.served != c.served


def test_each_request_costs_its_routes_estimate_plus_its_wait(plan) -> None:
    sim = simulate(plan, rate_per_s=50.0, seed=1)  # fast enough to queue behind the period
    assert len(sim.served) > 1000 and not sim.rejected
    prev_start, prev_period = -math.inf, 0.0
    for s in sim.served:
        route = plan.route_at(s.start_s)
        assert s.start_s >= s.arrival_s and s.start_s >= prev_start + prev_period - 1e-12
        assert s.latency_ms == pytest.approx(1e3 * (s.start_s - s.arrival_s) + route.estimate.total_ms)
        assert s.via_orbit == (1 in route.stages)
        assert sum(s.energy_j.values()) == pytest.approx(route.estimate.energy_j)
        prev_start, prev_period = s.start_s, route.estimate.period_ms / 1e3
    assert sim.quantile("latency_ms", 0.99) > sim.quantile("latency_ms", 0.5)
    assert 0 < sum(s.via_orbit for s in sim.served) < len(sim.served), "orbit while in view, ground otherwise"
    assert "through orbit" in sim.report()


def test_no_route_delays_then_rejects(profile) -> None:  # noqa: F811
    """The bypass and the uplink are both down from 100 s to 700 s: a request there waits for 700 s, at most
    max_wait_s."""
    down = [Window(0, 100), Window(700, 1000)]
    sched = Schedule(START, 1000.0, windows={("ground0", "orbital0"): down, ("ground0", "ground1"): down})
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), sched)
    sim = simulate(plan, rate_per_s=0.5, seed=2, max_wait_s=200.0)
    assert sim.rejected and all(100 <= a < 500 for a in sim.rejected), "more than 200 s before the route returns"
    waited = [s for s in sim.served if 500 <= s.arrival_s < 700]
    assert waited and waited[0].start_s == pytest.approx(700.0) and sim.delayed == len(waited)


def test_bad_rates_are_refused(plan) -> None:
    with pytest.raises(ValueError, match=r"rate_per_s must be a positive number"):
        simulate(plan, rate_per_s=0)


def test_the_command_prints_the_plan_and_the_day(tmp_path, capsys) -> None:
    import json

    from rotafx import ModelProfile, models
    from rotafx.cli import main

    sched = {"start": START, "horizon_s": 3600,
             "links": [{"src": "ground0", "dst": "orbital0", "windows": [{"start_s": 600, "end_s": 1200}]},
                       {"src": "orbital3", "dst": "ground1", "windows": [{"start_s": 600, "end_s": 1200}]}]}
    (tmp_path / "day.json").write_text(json.dumps(sched))
    args = ["simulate", "mlp", "--quiet", "--topology", "seed", "--schedule", str(tmp_path / "day.json"),
            "--objective", "minimize_energy", "--rate", "0.05", "--seed", "7"]
    assert main(args) == 0
    out = capsys.readouterr().out
    prof = ModelProfile.from_pytorch(models.EXAMPLES["mlp"](), models.example_inputs("mlp", 1))
    import rotafx

    plan = plan_horizon(prof, rotafx.preset("seed"), Schedule.from_dict(sched), objective="minimize_energy")
    sim = simulate(plan, rate_per_s=0.05, seed=7)
    assert plan.report() in out and sim.report().splitlines()[0] in out
    (tmp_path / "bad.json").write_text(json.dumps({**sched, "links": [{"src": "ground9", "dst": "orbital0"}]}))
    assert main([*args[:6], str(tmp_path / "bad.json"), *args[7:]]) == 2
    assert "ground9" in capsys.readouterr().err


def test_the_day_example_runs_and_its_figures_hold_together(capsys) -> None:
    """examples/orbits_day.py on a small LLaMA (meta device) over 8 hours: requests go through orbit only while
    both ends of the satellite train are in view, and orbit saves ground energy."""
    import runpy
    from pathlib import Path

    from rotafx.models import LlamaConfig, llama

    ns = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "orbits_day.py"))
    model = llama(LlamaConfig(vocab=512, hidden=256, layers=4, heads=8, kv_heads=2, mlp=512, max_seq=512), "meta")
    res = ns["main"](["--hours", "8", "--rate", "0.05", "--seed", "1"], model=model)
    out = capsys.readouterr().out
    sched = ns["day"](8)
    both = [(max(a.start_s, b.start_s), min(a.end_s, b.end_s)) for a in sched.windows[("ground0", "orbital0")]
            for b in sched.windows[("orbital3", "ground1")] if min(a.end_s, b.end_s) > max(a.start_s, b.start_s)]
    orbit = [s for s in res["with orbit"]["sim"].served if s.via_orbit]
    assert orbit, "some requests go up"
    assert all(any(a <= s.start_s < b for a, b in both) for s in orbit)
    assert res["with orbit"]["ground_j_per_request"] < res["ground only"]["ground_j_per_request"]
    assert not any(s.via_orbit for s in res["ground only"]["sim"].served)
    assert "go through orbit" in out


def test_a_generation_request_costs_its_prefill_and_every_decode_step() -> None:
    from rotafx import ModelProfile
    from rotafx.models import small_gpt
    from tests.test_horizon import _topology as topo_of

    gen = ModelProfile.for_generation(small_gpt(layers=2), prompt_len=16, new_tokens=8)
    plan = plan_horizon(gen, topo_of(gen, 1.0, 1.0), _schedule(), objective="minimize_tpot")
    sim = simulate(plan, rate_per_s=0.05, seed=0)
    for s in sim.served:
        g = plan.route_at(s.start_s).estimate.generation
        assert s.tpot_ms == g.tpot_ms
        assert s.latency_ms == pytest.approx(1e3 * (s.start_s - s.arrival_s) + g.generation_ms)
        total = g.energy_per_token_j * g.batch_size * g.new_tokens
        assert sum(s.energy_j.values()) == pytest.approx(total)
        # the test topology's links cost no energy: the nodes spend it all, the prefill and every decode step
        assert sum(j for n, j in s.energy_j.items() if n != "links") == pytest.approx(total, rel=1e-6)


def test_the_battery_drains_by_the_compute_the_requests_ask_for(profile) -> None:  # noqa: F811
    """In the dark all day, orbital0 draws 5 W idle and 50 W while it computes: its charge at the end is what the
    served requests' compute there (each its route's layers on that node) and the idle draw take, by hand."""
    from rotafx.orbits import Power

    up = [Window(100, 400, 1e8, 20.0), Window(700, 800, 5e7, 30.0)]
    power = Power(battery_wh=100.0, solar_w=0.0, compute_w=50.0, idle_w=5.0, reserve=0.0)
    sched = Schedule(START, 1000.0, windows={("ground0", "orbital0"): up, ("orbital0", "ground1"): list(up)},
                     power={"orbital0": power}, sunlit={"orbital0": []})
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), sched, objective="minimize_energy")
    sim = simulate(plan, rate_per_s=20.0, seed=5, schedule=sched)
    busy = 0.0
    for s in sim.served:
        route = plan.route_at(s.start_s)
        mine = sum(le.total_ms for le in route.estimate.by_layer if le.node == "orbital0") / 1e3
        assert s.busy_s.get("orbital0", 0.0) == pytest.approx(mine)
        busy += mine
    assert busy > 0 and any(s.via_orbit for s in sim.served)
    times, charge = sim.battery["orbital0"]
    assert times[-1] == 1000.0
    assert charge[-1] == pytest.approx(100.0 - (5.0 * 1000.0 + 45.0 * busy) / 3600.0, rel=1e-9)
    assert sim.battery_refused_s["orbital0"] == 0.0
    # 1 Wh above its reserve: the idle draw alone takes it there after 720 s, and the compute the requests of the
    # 700-800 s pass ask of it then is counted as refused
    low = Schedule(START, 1000.0, windows=sched.windows, sunlit={"orbital0": []},
                   power={"orbital0": Power(battery_wh=100.0, solar_w=0.0, compute_w=50.0, idle_w=5.0, reserve=0.99)})
    short = simulate(plan, rate_per_s=20.0, seed=5, schedule=low)
    assert short.battery_refused_s["orbital0"] > 0 and "at its reserve" in short.report()
