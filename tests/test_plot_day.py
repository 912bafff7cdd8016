"""rotafx.plot.day: a simulated day's windows, sunlight, routes, batteries and requests, checked against the hand-made
schedule they come from and against the plan and simulation computed here; the figure, its SVG, the command and
the day example."""

from __future__ import annotations

import json
import runpy
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sgp4")

from rotafx import plot  # noqa: E402
from rotafx.orbits import Power, Schedule, Window  # noqa: E402
from rotafx.orbits.horizon import plan_horizon  # noqa: E402
from rotafx.orbits.simulate import simulate  # noqa: E402
from tests.test_horizon import START, _topology, profile  # noqa: E402,F401

UP = [(100.0, 400.0), (700.0, 800.0)]  # ground0 -> orbital0 and orbital0 -> ground1
BYPASS = [(0.0, 450.0), (600.0, 1000.0)]  # ground0 -> ground1: from 450 s to 600 s there is no route at all
SUNLIT = [(0.0, 300.0), (600.0, 900.0)]
ECLIPSE = ((300.0, 600.0), (900.0, 1000.0))
MAX_WAIT = 100.0  # a request arriving 450-500 s is rejected, one arriving 500-600 s waits for the route at 600 s


def _schedule() -> Schedule:
    return Schedule(START, 1000.0, windows={("ground0", "orbital0"): [Window(a, b, 1e8, 20.0) for a, b in UP],
                                            ("orbital0", "ground1"): [Window(a, b) for a, b in UP],
                                            ("ground0", "ground1"): [Window(a, b) for a, b in BYPASS]},
                    power={"orbital0": Power(battery_wh=1, solar_w=10, compute_w=3.6, reserve=0.0)},
                    sunlit={"orbital0": SUNLIT})


@pytest.fixture(scope="module")
def day(profile):  # noqa: F811
    sched = _schedule()
    plan = plan_horizon(profile, _topology(profile, 1.0, 1.0), sched, objective="minimize_energy")
    sim = simulate(plan, rate_per_s=0.3, seed=1, max_wait_s=MAX_WAIT, schedule=sched)
    return sched, plan, sim, plot.day_data(sim, sched, plan)


def _hours(spans) -> list[float]:
    """Spans in seconds as a broken_barh draws them in hours: x, width, x, width ..."""
    return [v for a, b in spans for v in (a / 3600, (b - a) / 3600)]


def test_the_windows_and_sunlight_are_the_schedules(day) -> None:
    _, _, _, d = day
    assert d.satellites == ("orbital0",)
    assert d.windows == {("ground0", "orbital0"): tuple(UP), ("orbital0", "ground1"): tuple(UP),
                         ("ground0", "ground1"): tuple(BYPASS)}
    assert d.sunlit == {"orbital0": tuple(SUNLIT)} and d.eclipse == {"orbital0": ECLIPSE}
    assert [(label, [k for k, _ in parts]) for label, parts in d.rows] == [
        ("orbital0 sunlight", ["sunlight", "eclipse"]), ("ground0 -> orbital0", ["uplink"]),
        ("orbital0 -> ground1", ["downlink"]), ("ground0 -> ground1", ["link"])]


def test_each_interval_shows_the_route_the_plan_takes(day) -> None:
    _, plan, _, d = day
    assert d.routes[0].start_s == 0 and d.routes[-1].end_s == 1000.0
    assert all(a.end_s == b.start_s for a, b in zip(d.routes, d.routes[1:])), "the intervals tile the horizon"
    for r in d.routes:
        p = plan.route_at(0.5 * (r.start_s + r.end_s))
        if p.stages is None:
            assert r.nodes is None and r.label == "no route"
            continue
        chain = p.condition.topology.chain
        assert r.nodes == tuple(chain[s] for s in sorted(set(p.stages)))
        assert r.via_orbit == (1 in p.stages)  # stage 1 is orbital0
    assert [(r.start_s, r.end_s) for r in d.routes if r.nodes is None] == [(450.0, 600.0)]
    assert {r.label for r in d.routes if r.via_orbit} == {"orbital0 (orbit)"}
    assert [(r.start_s, r.end_s) for r in d.routes if r.via_orbit] == UP


def test_the_batteries_are_the_simulations(day) -> None:
    sched, _, sim, d = day
    assert set(d.battery) == set(sim.battery) == {"orbital0"}
    for name, (times, charge) in sim.battery.items():
        assert np.array_equal(d.battery[name][0], times) and np.array_equal(d.battery[name][1], charge)
    # a simulation without batteries takes them from the schedule
    bare = simulate(day[1], rate_per_s=0.3, seed=1, max_wait_s=MAX_WAIT)
    times, charge, _ = sched.battery("orbital0")
    got = plot.day_data(bare, sched).battery["orbital0"]
    assert np.array_equal(got[0], times) and np.array_equal(got[1], charge)


def test_the_requests_are_the_simulations(day) -> None:
    _, plan, sim, d = day
    assert d.metric == "latency_ms"
    orbit = [s for s in sim.served if 1 in plan.route_at(s.start_s).stages]  # by the route, not the flag
    ground = [s for s in sim.served if 1 not in plan.route_at(s.start_s).stages]
    assert orbit and ground
    assert [(p.arrival_s, p.value_ms) for p in d.requests if p.via_orbit] == [(s.arrival_s, s.latency_ms) for s in orbit]
    assert [(p.arrival_s, p.value_ms) for p in d.requests if not p.via_orbit] == [(s.arrival_s, s.latency_ms)
                                                                                 for s in ground]
    assert d.rejected and list(d.rejected) == sim.rejected and all(450 <= t < 500 for t in d.rejected)
    waited = [s.arrival_s for s in sim.served if 450 <= s.arrival_s < 600]
    assert waited and list(d.delayed) == waited and len(d.delayed) == sim.delayed == d.delayed_count


def test_a_generation_day_shows_tpot(day) -> None:
    from rotafx import ModelProfile
    from rotafx.models import small_gpt

    gen = ModelProfile.for_generation(small_gpt(layers=2), prompt_len=16, new_tokens=8)
    plan = plan_horizon(gen, _topology(gen, 1.0, 1.0), day[0], objective="minimize_tpot")
    sim = simulate(plan, rate_per_s=0.05, seed=0, max_wait_s=MAX_WAIT)
    d = plot.day_data(sim, day[0], plan)
    assert d.metric == "tpot_ms"
    assert [p.value_ms for p in d.requests] == [s.tpot_ms for s in sim.served]
    assert [p.value_ms for p in d.requests] != [s.latency_ms for s in sim.served]
    req = plot.day(sim, day[0], plan).axes[3]
    assert req.get_ylabel() == "TPOT (ms)"


def test_the_figure_stacks_four_panels_on_one_time_axis(day) -> None:
    sched, plan, sim, d = day
    fig = plot.day(sim, sched, plan)
    win, route, bat, req = fig.axes
    assert [a.get_title(loc="left") for a in fig.axes] == ["windows and sunlight", "route", "battery (Wh)",
                                                           "per request"]
    assert all(a.get_shared_x_axes().joined(a, req) for a in (win, route, bat))
    assert req.get_xlabel() == "time (hours)" and bat.get_ylabel() == "charge (Wh)"
    assert req.get_ylabel() == "latency (ms)"
    assert req.get_xlim() == pytest.approx((0, 1000 / 3600))
    assert [t.get_text() for t in win.get_yticklabels()] == [label for label, _ in d.rows]
    assert [t.get_text() for t in route.get_yticklabels()] == ["ground1 (ground only)", "orbital0 (orbit)", "no route"]

    def gid(ax, name):
        found = [c for c in ax.get_children() if c.get_gid() == name]
        assert found, name
        return found

    def bars(ax, name):  # each broken_barh's rectangles as x, width (hours), left to right
        out = []
        for coll in gid(ax, name):
            for path in coll.get_paths():
                xs = path.vertices[:, 0]
                out.append((xs.min(), xs.max() - xs.min()))
        return [v for bar in sorted(out) for v in bar]

    assert bars(win, "uplink:ground0 -> orbital0") == pytest.approx(_hours(UP))
    assert bars(win, "eclipse:orbital0 sunlight") == pytest.approx(_hours(ECLIPSE))
    assert bars(win, "link:ground0 -> ground1") == pytest.approx(_hours(BYPASS))
    assert bars(route, "route:no route") == pytest.approx(_hours([(450, 600)]))
    line = gid(bat, "battery:orbital0")[0]
    assert np.allclose(line.get_xdata(), sim.battery["orbital0"][0] / 3600)
    assert np.array_equal(line.get_ydata(), sim.battery["orbital0"][1])
    pts = gid(req, "requests:orbital")[0].get_offsets()
    assert np.allclose(pts, [(p.arrival_s / 3600, p.value_ms) for p in d.requests if p.via_orbit])
    assert len(gid(req, "requests:ground")[0].get_offsets()) == sum(not p.via_orbit for p in d.requests)
    assert len(gid(req, "rejected")[0].get_offsets()) == len(sim.rejected)
    assert len(gid(req, "delayed")[0].get_offsets()) == sim.delayed
    assert f"{sim.delayed} delayed" in fig.get_suptitle() and f"{len(sim.rejected)} rejected" in fig.get_suptitle()


def test_panels_without_their_data_say_so_and_bad_input_is_refused(day) -> None:
    sched, plan, sim, _ = day
    fig = plot.day(sim)
    notes = {t.get_text() for a in fig.axes for t in a.texts}
    assert {"no schedule given", "no plan given"} <= notes
    assert "no plan given" not in {t.get_text() for a in plot.day(sim, sched, plan).axes for t in a.texts}
    from matplotlib.figure import Figure

    mine = Figure()
    axes = mine.subplots(4, 1)
    assert plot.day(sim, sched, plan, ax=axes) is mine and axes[2].get_lines()
    with pytest.raises(ValueError, match=r"four Axes, got 2"):
        plot.day(sim, ax=axes[:2])
    with pytest.raises(TypeError, match=r"draws a Simulation, got HorizonPlan"):
        plot.day_data(plan)
    other = Schedule(START, 500.0)
    with pytest.raises(ValueError, match=r"the schedule covers 500 s but the simulation 1000 s"):
        plot.day_data(sim, other)


def test_an_svg_keeps_its_text(day, tmp_path: Path) -> None:
    sched, plan, sim, _ = day
    out = plot.save(plot.day(sim, sched, plan), tmp_path / "day.svg")
    text = "".join(ET.parse(out).getroot().itertext())
    for label in ("ground0 -> orbital0", "orbital0 sunlight", "orbital0 (orbit)", "no route", "time (hours)",
                  "charge (Wh)", "latency (ms)", "through orbit"):
        assert label in text


def test_the_command_writes_the_picture(tmp_path: Path, capsys) -> None:
    from rotafx.cli import main

    spans = [{"start_s": a, "end_s": b} for a, b in UP]  # the hand-made day on the seed's chain, written out
    (tmp_path / "day.json").write_text(json.dumps({
        "start": START, "horizon_s": 1000, "links": [{"src": "ground0", "dst": "orbital0", "windows": spans},
                                                     {"src": "orbital3", "dst": "ground1", "windows": spans}],
        "devices": {"orbital0": {"power": {"battery_wh": 1, "solar_w": 10, "compute_w": 3.6}, "sunlit": SUNLIT}}}))
    args = ["simulate", "mlp", "--quiet", "--schedule", str(tmp_path / "day.json"), "--rate", "0.2"]
    out = tmp_path / "pics" / "day.png"
    assert main([*args, "--plot", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert w > 500 and h > 400
    assert f"wrote {out}" in capsys.readouterr().out
    assert main([*args, "--plot", str(tmp_path / "day.pdf")]) == 2
    assert "--plot" in capsys.readouterr().err and not (tmp_path / "day.pdf").exists()


def test_the_day_example_draws_its_day_and_prints_the_same(tmp_path: Path, capsys) -> None:
    from rotafx.models import LlamaConfig, llama

    ns = runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "orbits_day.py"))
    model = llama(LlamaConfig(vocab=512, hidden=256, layers=4, heads=8, kv_heads=2, mlp=512, max_seq=512), "meta")
    argv = ["--hours", "4", "--rate", "0.05", "--seed", "1"]
    ns["main"](argv, model=model)
    plain = capsys.readouterr().out
    out = tmp_path / "day.svg"
    ns["main"]([*argv, "--plot", str(out)], model=model)
    drawn = capsys.readouterr().out
    assert drawn == plain + f"wrote {out}\n"
    text = "".join(ET.parse(out).getroot().itertext())
    assert "orbital3 -> ground1" in text and "TPOT (ms)" in text
