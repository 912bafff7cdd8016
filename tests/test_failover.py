"""Failover across routes: a route whose link window closes mid-stream takes no new requests, a route whose stage is
killed mid-generation hands its sequences to the next one (prefilled again with the tokens made so far); every
request answered once with the model's outputs, every sequence the model's greedy tokens."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.models import small_gpt
from rotafx.orbits.horizon import export_routes, plan_horizon
from rotafx.orbits.schedule import Schedule, Window
from rotafx.plan.schema import read_plan
from rotafx.plan.write import export_pipeline
from rotafx.runtime.distributed import DistributedError, Failover, LinkDownError, launch_local
from tests import faulty_stage
from tests.test_backend import three_cpus
from tests.test_export import build, three_stage_topology
from tests.test_generate import _cache_bytes, _ids, _recompute, _split


def _gpt_routes(root: Path, latency_ms: float | None = None) -> tuple[nn.Module, Path, Path]:
    """The small GPT as three stages on cpu0 -> cpu1 -> cpu2 (the preferred route) and as one stage on cpu0, with
    generation programs for one sequence per call; ``latency_ms``: cpu0 -> cpu1's latency (emulated when asked)."""
    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    example = _ids(1, 8, 128, seed=0)
    if latency_ms is None:
        three = _split(m, example, batch=1)
    else:
        prof = rotafx.ModelProfile.from_pytorch(m, (example,))
        topo = three_cpus(0.45 * prof.weight_bytes + max(l.peak_bytes for l in prof.layers) + _cache_bytes(m, 1, 64))
        topo["links"][0]["latency_ms"] = latency_ms
        three = rotafx.partition(m, (example,), topology=topo, devices={n: "cpu" for n in topo["chain"]},
                                 objective="maximize_throughput")
    assert len(three.stages) == 3
    export_pipeline(three, (example,), path=root / "three", max_context=48)
    one = rotafx.partition(m, (example,), topology={"devices": [{"name": "cpu0", "flops": 1e12, "memory": 1e9}]},
                           devices={"cpu0": "cpu"})
    export_pipeline(one, (example,), path=root / "one", max_context=48)
    return m, root / "three", root / "one"


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    return _gpt_routes(tmp_path_factory.mktemp("routes"))


def test_a_window_closing_mid_stream_moves_the_next_requests_to_the_other_route(plans: Any) -> None:
    m, three, one = plans
    # cpu0 -> cpu1 is up for the first 5 s of the schedule; the clock moves 1 s every time the route is checked
    # (1000 "wall" s at a thousandth: the emulated links, which count the real time a batch takes from its check,
    # see a batch checked at 4 s arrive before 5 s unless it takes 1000 s)
    day = Schedule("2026-12-07T00:00:00Z", 100.0, windows={("cpu0", "cpu1"): [Window(0.0, 5.0)]})
    requests = [(_ids(1, 8, 128, seed=s),) for s in range(10)]
    with launch_local(three, timeout=20) as a, launch_local(one, timeout=20) as b:
        f = Failover([a, b], schedule=day, batch=2, clock=itertools.count(0, 1000).__next__, time_scale=1e-3)
        outs = f.run(requests)
        served = (a.driver._next_id, b.driver._next_id)
    assert len(outs) == 10
    for (x,), out in zip(requests, outs):
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    assert [(e.t_s, e.src, e.dst, e.why) for e in f.events] == [(1.0, None, 0, "first call"), (5.0, 0, 1, "links down")]
    assert served == (8, 2)  # each request once: four checks on the three-stage route, then the one-stage route


def test_a_stage_killed_mid_generation_hands_its_sequences_to_the_next_route(plans: Any) -> None:
    m, three, one = plans
    prompt = _ids(4, 11, 128)
    want = _recompute(m, prompt, 12)
    with launch_local(three, timeout=20, stage_commands={1: faulty_stage.command("die@30")}) as a, \
            launch_local(one, timeout=20) as b:
        f = Failover([a, b])
        got = f.generate(prompt, max_new_tokens=12)
        handed_over = b.driver._next_id
        # the failed route is not tried again; the next call goes to the one that works
        again = rotafx.generate(f, prompt[:1], max_new_tokens=3)
    assert torch.equal(got, want)
    assert torch.equal(again, want[:1, :14])
    # the tokens made on the failed route were kept: starting over would take 4 x (2 prefills + 11 decodes + 1 free)
    # messages on the next route
    assert handed_over < 4 * 14, handed_over
    assert [(e.src, e.dst) for e in f.events] == [(None, 0), (0, 1)]
    assert f.events[1].why.startswith("failed: ") and "stage 1" in f.events[1].why and f.failed == {0}
    with pytest.raises(rotafx.GenerationError, match="one length"):
        f.generate(prompt[:2], max_new_tokens=2, attention_mask=torch.tensor([[1] * 11, [0] + [1] * 10]))
    with pytest.raises(rotafx.GenerationError, match="no timings"):
        f.generate(prompt[:2], max_new_tokens=2, timings=True)


def test_no_route_left_is_named(plans: Any) -> None:
    _, three, _ = plans
    day = Schedule("2026-12-07T00:00:00Z", 100.0, windows={("cpu0", "cpu1"): [Window(50.0, 60.0)]})
    route = SimpleNamespace(plan=read_plan(three), run=None, generate=None)  # a route nothing is sent to
    route.run = route.generate = lambda *a, **k: pytest.fail("nothing may be sent on a route that is down")
    f = Failover([route], schedule=day, clock=lambda: 0.0)
    with pytest.raises(DistributedError, match=r"no route at schedule time 0\.0 s: .*\[0\] have a link down"):
        f.run([(_ids(1, 8, 128),)])
    assert Failover([route], schedule=day, start_s=55.0).route() == 0
    with pytest.raises(ValueError, match="at least one route"):
        Failover([])
    with pytest.raises(TypeError, match=r"route 0 is a str, not a running pipeline: give Driver\(plan_dir\)"):
        Failover([str(three)])


# ---------------------------------------------------------------------------
# routes derived from a horizon plan

START = "2026-12-07T00:00:00Z"


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 16)).eval()


def _chain(profile: rotafx.ModelProfile, bypass: bool = True) -> dict:
    """ground0 -> orbital0 -> ground1, each node able to hold the whole model; the orbital node draws 150 W against
    700, so energy goes to orbit while its links are up."""
    mem = profile.weight_bytes + max(l.peak_bytes for l in profile.layers)
    dev = lambda n, kind, flops, power: {"name": n, "kind": kind, "flops": flops, "memory": mem, "power": power}  # noqa: E731
    return {"devices": [dev("ground0", "ground", 2e11, 700), dev("orbital0", "orbital", 1e11, 150),
                        dev("ground1", "ground", 2e11, 700)],
            "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": 1e8, "latency_ms": 25},
                      {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": 5e8, "latency_ms": 25},
                      {"src": "ground0", "dst": "ground1", "kind": "ground", "bandwidth": 1e10, "latency_ms": 1}],
            "chain": ["ground0", "orbital0", "ground1"], "bypasses": [[1, 1]] if bypass else []}


def _day(windows: list[Window] | None, horizon_s: float = 100.0) -> Schedule:
    """Uplink and downlink up in ``windows`` (``None``: always)."""
    if windows is None:
        return Schedule(START, horizon_s)
    return Schedule(START, horizon_s, windows={("ground0", "orbital0"): windows, ("orbital0", "ground1"): windows})


@pytest.fixture(scope="module")
def horizon(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The MLP over a 100 s horizon whose orbit is in view 30-60 s, planned for energy, its routes exported."""
    m = _mlp()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    profile = rotafx.ModelProfile.from_pytorch(m, (x,))
    day = _day([Window(30.0, 60.0)])
    plan = plan_horizon(profile, _chain(profile), day, objective="minimize_energy")
    root = tmp_path_factory.mktemp("horizon")
    export_routes(m, (x,), plan, directory=root, devices="cpu")
    return SimpleNamespace(model=m, x=x, profile=profile, day=day, plan=plan, root=root)


def _best_by_enumeration(profile: rotafx.ModelProfile, topology: dict, allowed: dict[str, tuple[int, ...]],
                         skip: set[int]) -> tuple[int, ...]:
    """The independent reference: every non-decreasing placement enumerated, each layer on a node that holds it and
    off the skipped stages, the least energy by the estimator."""
    topo = rotafx.Topology.coerce(topology)
    best = None
    for stages in itertools.combinations_with_replacement(range(len(topo.chain)), profile.num_layers):
        if any(s in skip or l not in allowed[topo.chain[s]] for l, s in enumerate(stages)):
            continue
        e = rotafx.LatencyEstimator(topo).estimate(list(stages), profile).energy_j
        if best is None or e < best[0] - 1e-15:
            best = (e, stages)
    assert best is not None
    return best[1]


def test_horizon_routes_are_the_distinct_placements_of_its_intervals_by_enumeration() -> None:
    """Uplink and downlink in view 100-400 s and 700-800 s (with other figures): both windows run one route, the rest
    of the day another; each the enumerated best given the resident layers, with the time it serves by hand."""
    m = _mlp()
    profile = rotafx.ModelProfile.from_pytorch(m, (torch.randn(4, 64),))
    topo = _chain(profile)
    day = Schedule(START, 1000.0, windows={("ground0", "orbital0"): [Window(100, 400, 1e8, 20.0), Window(700, 800, 5e7, 30.0)],
                                           ("orbital0", "ground1"): [Window(100, 400), Window(700, 800)]})
    plan = plan_horizon(profile, topo, day, objective="minimize_energy")
    assert len([p for p in plan.plans if p.stages is not None]) == 3, "two conditions in view (their figures), one not"
    routes = plan.routes()
    up = _best_by_enumeration(profile, topo, plan.resident, set())
    down = _best_by_enumeration(profile, topo, plan.resident, {1})
    assert up == (1,) * 5, "everything in orbit while it is in view: 150 W against 700"
    assert [(r.stages, r.seconds, [(iv.start_s, iv.end_s) for iv in r.intervals], r.fallback) for r in routes] == [
        (down, 600.0, [(0.0, 100.0), (400.0, 700.0), (800.0, 1000.0)], False),
        (up, 400.0, [(100.0, 400.0), (700.0, 800.0)], False)]
    assert routes[1].nodes == ("orbital0",) and routes[1].layers == {"orbital0": (0, 1, 2, 3, 4)}
    assert routes[1].topology.link("ground0", "orbital0").latency_ms == 20.0, "the figures of its longest window"
    assert routes[0].on_ground and not routes[1].on_ground
    for r in routes:  # every route runs only layers resident on its nodes
        for node, layers in r.layers.items():
            assert set(layers) <= set(plan.resident[node]), (r.describe(), node)
    for t, r in ((50.0, 0), (150.0, 1), (750.0, 1), (999.0, 0)):
        assert routes[r].serves(t) and not routes[1 - r].serves(t)
        assert plan.route_at(t).stages == routes[r].stages


def test_a_ground_only_fallback_is_added_where_the_ground_holds_the_layers() -> None:
    """Orbit always in view: one route, all in orbit. What the ground holds decides the fallback (by hand)."""
    m = _mlp()
    profile = rotafx.ModelProfile.from_pytorch(m, (torch.randn(4, 64),))
    plan = plan_horizon(profile, _chain(profile), _day(None), objective="minimize_energy")
    assert [r.stages for r in plan.routes()] == [(1,) * 5] and plan.resident["ground0"] == ()
    held = lambda **ground: dataclasses.replace(plan, resident={**plan.resident, **ground})  # noqa: E731
    (_, spare) = held(ground0=(0, 1, 2, 3, 4)).routes()
    assert (spare.stages, spare.fallback, spare.intervals, spare.describe()) == ((0,) * 5, True, (), "ground0[0-4]")
    (_, spare) = held(ground0=(0, 1, 2), ground1=(1, 2, 3, 4)).routes()
    assert spare.stages == (0, 0, 0, 2, 2) and spare.on_ground, "each layer on the first ground node that holds it"
    assert len(held(ground0=(3, 4), ground1=(0, 1, 2)).routes()) == 1, "ground1 holds the first layers: no order"
    assert len(held(ground0=(0, 1, 2, 3)).routes()) == 1, "no ground node holds layer 4"
    assert len(held(ground0=(0, 1, 2, 3, 4)).routes(ground_fallback=False)) == 1
    # without a bypass past the orbital node the "ground" route would still cross the uplink and downlink
    nobypass = plan_horizon(profile, _chain(profile, bypass=False), _day(None), objective="minimize_energy")
    assert len(dataclasses.replace(nobypass, resident={**nobypass.resident, "ground0": (0, 1, 2, 3, 4)}).routes()) == 1


def test_a_route_using_a_layer_not_resident_is_refused(horizon: SimpleNamespace) -> None:
    plan = horizon.plan
    orbit = next(r for r in plan.routes() if "orbital0" in r.nodes)
    broken = dataclasses.replace(plan, resident={**plan.resident, "orbital0": (0, 1, 3, 4)})
    with pytest.raises(ValueError, match=r"runs layer\(s\) 2 on orbital0, which holds 0-1, 3-4 \(resident\['orbital0'\]\); "
                                         r"every route must use layers resident"):
        broken.routes()
    with pytest.raises(ValueError, match=rf"the route {re.escape(orbit.describe())} \(serving 30-60 s\)"):
        broken.routes()
    bad = dataclasses.replace(plan, plans=tuple(dataclasses.replace(p, stages=(2, 2, 0, 0, 0)) if p.stages else p
                                                for p in plan.plans))
    with pytest.raises(ValueError, match=r"gives stages \[2, 2, 0, 0, 0\]; a route is one chain stage in 0\.\.2 per layer, "
                                         r"non-decreasing"):
        bad.routes()
    # a route on a stage its interval leaves empty (a node without power, or past a link that is down)
    unpowered = dataclasses.replace(plan, plans=tuple(
        dataclasses.replace(p, condition=dataclasses.replace(p.condition, empty=frozenset({1})))
        if p.stages and 1 in p.stages else p for p in plan.plans))
    with pytest.raises(ValueError, match=r"runs layers on \['orbital0'\], which its interval leaves empty"):
        unpowered.routes()
    with pytest.raises(ValueError, match="directory must name the folder"):
        export_routes(horizon.model, (horizon.x,), plan, directory="")
    with pytest.raises(ValueError, match=r"the horizon plan places 5 layers but Sequential traced .* has 3"):
        export_routes(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 16)).eval(), (horizon.x,), plan,
                      directory=horizon.root / "other")


def test_from_horizon_refuses_what_does_not_match(horizon: SimpleNamespace, tmp_path: Path) -> None:
    plan, root, day = horizon.plan, horizon.root, horizon.day
    nothing = lambda d: pytest.fail("nothing may be launched")  # noqa: E731
    with pytest.raises(TypeError, match="takes a HorizonPlan"):
        Failover.from_horizon(plan.plans[0], root, schedule=day, launch=nothing)
    with pytest.raises(ValueError, match="directory must name the folder export_routes wrote"):
        Failover.from_horizon(plan, "", schedule=day, launch=nothing)
    with pytest.raises(ValueError, match="needs the Schedule the plan was made for"):
        Failover.from_horizon(plan, root, schedule=None, launch=nothing)
    with pytest.raises(ValueError, match=r"spans 200 s, the plan 100 s; give the schedule plan_horizon was given"):
        Failover.from_horizon(plan, root, schedule=_day([Window(30.0, 60.0)], 200.0), launch=nothing)
    orbit = next(i for i, r in enumerate(plan.routes()) if "orbital0" in r.nodes)
    with pytest.raises(ValueError, match=rf"serves 30-60 s on route {orbit} \(orbital0\[0-4\]\), but the schedule has the "
                                         r"link ground0 -> orbital0 down at 45 s"):
        Failover.from_horizon(plan, root, schedule=_day([Window(50.0, 60.0)]), launch=nothing)
    with pytest.raises(ValueError, match=r"route0 holds no plan \(route 0 of the horizon plan, .*\); write the routes "
                                         r"with export_routes"):
        Failover.from_horizon(plan, tmp_path, schedule=day, launch=nothing)
    (tmp_path / "route0").symlink_to(root / "route1")
    (tmp_path / "route1").symlink_to(root / "route0")
    with pytest.raises(ValueError, match=r"route0 holds the plan of another route"):
        Failover.from_horizon(plan, tmp_path, schedule=day, launch=nothing)
    # a route directory is input from others: one whose hops claim no links (always up) or whose fields are not
    # what they say is refused before anything is launched
    import json
    import shutil

    for k, (i, edit, match) in enumerate(((orbit, lambda d: [h.update(links=[]) for h in d["hops"]], r"its hops cross the links \[\]"),
                           (0, lambda d: d["partition"].update(stages=["x"] * 5), "must be a list of integers"),
                           (0, lambda d: d["topology"].update(chain=5), "must be a list of integers"),
                           (orbit, lambda d: d["hops"][0]["links"][0].pop("src"), "its hops cross the links None"))):
        bad = tmp_path / f"bad{k}"
        shutil.copytree(root, bad, symlinks=False)
        data = json.loads((bad / f"route{i}" / "plan.json").read_text())
        edit(data)
        (bad / f"route{i}" / "plan.json").write_text(json.dumps(data))
        with pytest.raises((ValueError, rotafx.PlanError), match=match):
            Failover.from_horizon(plan, bad, schedule=day, launch=nothing)
    # a launch that fails on the second route closes the first one (aborted), and the error comes through
    closed: list[bool] = []

    def launch(d: Path) -> Any:
        if d.name == "route1":
            raise RuntimeError("no room for route 1")
        return SimpleNamespace(close=lambda stop=True: closed.append(stop), driver=None, plan=read_plan(d))

    with pytest.raises(RuntimeError, match="no room for route 1"):
        Failover.from_horizon(plan, root, schedule=day, launch=launch)
    assert closed == [False]


def test_horizon_failover_sends_each_request_to_the_route_the_plan_names_for_its_time(horizon: SimpleNamespace) -> None:
    """The orbit is in view 30-60 s; the clock moves 10 s at each check and one request goes per check: the first two
    on the ground (route 0, the most time), three through orbit (the plan's route there, though the ground is up),
    then the window closes and the rest go back to the ground. Every output is the model's, each request sent once."""
    plan, m = horizon.plan, horizon.model
    routes = plan.routes()
    assert [r.seconds for r in routes] == [70.0, 30.0] and routes[1].nodes == ("orbital0",)
    requests = [(torch.randn(4, 64, generator=torch.Generator().manual_seed(s)),) for s in range(8)]
    want_route = [0 if plan.route_at(t).stages == routes[0].stages else 1 for t in range(10, 90, 10)]
    assert want_route == [0, 0, 1, 1, 1, 0, 0, 0]
    with Failover.from_horizon(plan, horizon.root, schedule=horizon.day, batch=1, clock=itertools.count(0, 10).__next__,
                               launch=functools.partial(launch_local, timeout=20)) as f:
        outs = f.run(requests)
        served = [r.driver._next_id for r in f.routes]
        clusters = list(f.routes)
    assert all(p.poll() is not None for c in clusters for p in c.processes), "leaving the block stops the routes"
    for (x,), out in zip(requests, outs):
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    assert served == [want_route.count(0), want_route.count(1)]
    assert [(e.t_s, e.src, e.dst, e.why) for e in f.events] == [
        (10.0, None, 0, "first call"), (30.0, 0, 1, "preferred"), (60.0, 1, 0, "links down")]


def test_horizon_failover_leaves_a_route_whose_stage_dies_for_the_next_one(horizon: SimpleNamespace) -> None:
    """The orbital stage dies at its second request (40 s): that request and the rest of the window go to the ground
    route, though the plan names orbit until 60 s; the failed route is not tried again."""
    plan, m = horizon.plan, horizon.model
    routes = plan.routes()

    def launch(plan_dir: Path) -> Any:
        faulty = {0: faulty_stage.command("die@1")} if plan_dir.name == "route1" else None
        return launch_local(plan_dir, timeout=20, stage_commands=faulty)

    requests = [(torch.randn(4, 64, generator=torch.Generator().manual_seed(s)),) for s in range(8)]
    with Failover.from_horizon(plan, horizon.root, schedule=horizon.day, batch=1, clock=itertools.count(0, 10).__next__,
                               launch=launch) as f:
        assert routes[1].nodes == ("orbital0",) and f.routes[1].driver.plan.num_stages == 1
        outs = f.run(requests)
        served = [r.driver._next_id for r in f.routes]
    for (x,), out in zip(requests, outs):
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    # orbit answered the request of 30 s only; the ground the other seven (10, 20 s, the one lost at 40 s again at
    # 50 s, then 60-90 s): each request answered once
    assert served == [7, 1], served
    assert [(e.t_s, e.src, e.dst) for e in f.events] == [(10.0, None, 0), (30.0, 0, 1), (50.0, 1, 0)]
    assert f.events[2].why.startswith("failed: ") and f.failed == {1}


# ---------------------------------------------------------------------------
# emulated links that go down with the schedule: what is in flight when a window closes is lost, and sent again


@pytest.fixture(scope="module")
def slow_uplink(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The convolution net over ground0 -> orbital0 -> ground1 whose uplink puts one message on the wire in 0.5 s
    (emulated), and the same net on ground0 alone."""
    m, x = build("convnet")
    root = tmp_path_factory.mktemp("slow")
    probe = rotafx.export(m, x, path=root / "probe", topology=three_stage_topology(m, x))
    up_bytes = probe.hop_bytes(probe.hops[1])
    topo = three_stage_topology(m, x)
    topo["links"][0]["bandwidth"] = up_bytes * 8 / 0.5
    three = rotafx.export(m, x, path=root / "three", topology=topo)
    assert [s.node for s in three.stages] == ["ground0", "orbital0", "ground1"]
    assert [(l["src"], l["dst"]) for l in three.hops[1].links] == [("ground0", "orbital0")]
    assert three.hop_bytes(three.hops[1]) == up_bytes, "the same cut: 0.5 s a message on the uplink"
    rotafx.export(m, x, path=root / "one", topology={"devices": [{"name": "ground0", "flops": 1e12, "memory": 1e9}]})
    return SimpleNamespace(model=m, x=x, three=root / "three", one=root / "one")


def test_a_window_closing_while_a_batch_is_in_flight_loses_its_tail_which_goes_again_on_the_other_route(
        slow_uplink: SimpleNamespace) -> None:
    """The uplink carries one message per 0.5 s, so request k of a batch sent at schedule time 2 reaches orbital0 no
    earlier than 2 + 0.5 (k + 1) s (the emulated link is a lower bound whatever the machine's load): with the
    window closing at 2.95 s and reopening at 5 s, requests 1 and 2 of the first batch are lost in flight (request
    0 too on a machine slow enough; all three arrive before 5 s unless a message takes 1.5 s more than its link).
    Lost, not failed: they go again on the ground route at 4 s, and the orbit route takes the next batches once its
    window has reopened (6 s). Every request answered once, with the model's outputs."""
    m, x = slow_uplink.model, slow_uplink.x
    day = Schedule(START, 100.0, windows={("ground0", "orbital0"): [Window(0.0, 2.95), Window(5.0, 100.0)]})
    requests = [(torch.randn(x[0].shape, generator=torch.Generator().manual_seed(s)),) for s in range(8)]
    with launch_local(slow_uplink.three, timeout=20, emulate_links=True) as a, launch_local(slow_uplink.one, timeout=20) as b:
        f = Failover([a, b], schedule=day, batch=3, clock=itertools.count(0, 2).__next__)
        outs = f.run(requests)
        served = (a.driver._next_id, b.driver._next_id)
    for (r,), out in zip(requests, outs):
        torch.testing.assert_close(out, m(r), rtol=0, atol=0)
    assert [(e.t_s, e.src, e.dst) for e in f.events] == [(2.0, None, 0), (4.0, 0, 1), (6.0, 1, 0)]
    assert [f.events[0].why, f.events[2].why] == ["first call", "preferred"]
    lost = re.fullmatch(r"links down: (\d) lost in flight \(ground0 -> orbital0 at ([\d.]+) s\), sent again on the "
                        r"next route", f.events[1].why)
    assert lost is not None, f.events[1].why
    n_lost = int(lost[1])
    assert n_lost in (2, 3) and 2.95 <= float(lost[2]) < 5.0, f.events[1].why
    # the ground route took the lost requests (the oldest pending) at 4 s; the orbit route sent 3 at 2 s, the lost ones
    # among them, and the 8 - 3 - (3 - lost) left after the window reopened
    assert served == (3 + 8 - 6 + n_lost, 3), served
    assert f.failed == set() and f.lost_at.keys() == {0}


def test_the_last_hop_into_the_driver_is_checked_as_a_stage_checks_its_own(horizon: SimpleNamespace) -> None:
    """The orbital route's output comes down orbital0 -> ground1 to the driver: lost there when that link is down."""
    x = horizon.x
    with launch_local(horizon.root / "route1", timeout=20) as c:
        d = c.driver
        assert [(l["src"], l["dst"]) for l in d.plan.hops[-1].links] == [("orbital0", "ground1")]
        d.set_link_windows({("orbital0", "ground1"): [(0.0, 10.0)]}, time_scale=1e-6)
        torch.testing.assert_close(d.run([(x,)], at_s=5.0)[0], horizon.model(x), rtol=0, atol=0)
        with pytest.raises(LinkDownError, match=r"2 request\(s\) lost \(0-1\): link orbital0 -> ground1 down") as e:
            d.run([(x,), (x,)], at_s=12.0)
        assert e.value.lost == [0, 1] and e.value.links == ["orbital0 -> ground1"]


@pytest.fixture(scope="module")
def slow_gpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """The small GPT's routes with 200 ms of latency on cpu0 -> cpu1."""
    return _gpt_routes(tmp_path_factory.mktemp("slowgpt"), latency_ms=200.0)


def test_a_window_closing_mid_generation_prefills_the_sequences_again_on_the_next_route(slow_gpt: Any) -> None:
    """Each step of a sequence waits for the one before it to come back over the 200 ms link, so step i (0: the
    prefill) reaches cpu1 no earlier than 1 + 0.2 (i + 1) s: with the window closing at 1.5 s, every step from the
    second decode on is lost, each sequence has at most two tokens when its route goes down, and the one-stage
    route goes on from the tokens it had. The tokens are the model's."""
    m, three, one = slow_gpt
    prompt = _ids(2, 9, 128, seed=4)
    want = _recompute(m, prompt, 6)
    day = Schedule(START, 100.0, windows={("cpu0", "cpu1"): [Window(0.0, 1.5), Window(50.0, 60.0)]})
    with launch_local(three, timeout=20, emulate_links=True) as a, launch_local(one, timeout=20) as b:
        f = Failover([a, b], schedule=day, recheck_tokens=6, clock=itertools.count().__next__)
        got = f.generate(prompt, max_new_tokens=6)
        handed_over = b.driver._next_id
    assert torch.equal(got, want)
    assert [(e.t_s, e.src, e.dst) for e in f.events] == [(1.0, None, 0), (2.0, 0, 1)]
    assert re.fullmatch(r"links down: 2 lost in flight \(cpu0 -> cpu1 at [\d.]+ s\), sent again on the next route",
                        f.events[1].why), f.events[1].why
    # at least 4 of the 12 tokens come from the ground route: each sequence a prefill, 3+ decodes and a free there
    assert handed_over >= 2 * 5, handed_over


def test_a_route_through_a_node_whose_battery_is_spent_is_down(horizon: SimpleNamespace) -> None:
    """orbital0 on a 0.05 Wh battery with no sun, drawing 3.6 W while it computes: 50 s of compute, then below its
    reserve. The orbit route is up while its links are and the node may compute, down after; the ground route,
    on nodes with no power model, is always up."""
    from rotafx.orbits import Power

    plan, root = horizon.plan, horizon.root
    routes = plan.routes()
    orbit = next(i for i, r in enumerate(routes) if "orbital0" in r.nodes)
    specs = [read_plan(root / f"route{i}") for i in range(len(routes))]
    pipes = [SimpleNamespace(plan=spec, run=lambda *a, **k: pytest.fail("nothing is sent"), generate=None)
             for spec in specs]
    windows = {("ground0", "orbital0"): [Window(0.0, 100.0)], ("orbital0", "ground1"): [Window(0.0, 100.0)]}
    tired = Schedule(START, 100.0, windows=windows,
                     power={"orbital0": Power(battery_wh=0.05, solar_w=0.0, compute_w=3.6, reserve=0.0)},
                     sunlit={"orbital0": []})
    ((start, end),) = tired.available_spans("orbital0")  # 50 s of charge, on the schedule's 10 s grid
    assert start == 0.0 and 30.0 <= end <= 50.0
    f = Failover(pipes, schedule=tired)
    times = (0.0, end - 1.0, end, 90.0)
    assert [f.up(orbit, t) for t in times] == [True, True, False, False]
    assert all(f.up(1 - orbit, t) for t in times)
    rested = Failover(pipes, schedule=Schedule(START, 100.0, windows=windows))
    assert all(rested.up(orbit, t) for t in times)
