"""A day of LLaMA-70B generation on the seed's topology with real orbits: what orbit can do, and what it costs.

Four satellites in one 550 km, 53-degree plane, 1.5 degrees apart (about 180 km: a chain joined by
inter-satellite links), pass over two ground stations 120 km apart (Boulder and Colorado Springs):
ground0 uplinks to the first satellite while ground1 takes the downlink from the last. The
schedule of the day (SGP4 passes above 10 degrees of elevation, sunlight, batteries) is computed;
`plan_horizon` picks the layers each node holds and each interval's route for the lowest energy per
token; the ground-only plan is the same planner with the uplink never up. Both serve the same seeded
day of requests (128-token prompt, 128 new tokens). Every figure printed comes from rotafx's cost
model and its schedule.

    .venv/bin/python examples/orbits_day.py [--hours 24] [--rate 0.02] [--seed 0] [--plot day.png]

``--plot PATH`` (.png or .svg) also draws the day with orbit: windows and sunlight, each interval's route,
the batteries and every request's TPOT (``rotafx.plot.day``).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from rotafx import ModelProfile, preset
from rotafx.models import llama70b
from rotafx.orbits import GroundStation, Power, Satellite, Schedule
from rotafx.orbits.horizon import plan_horizon
from rotafx.orbits.simulate import simulate

START = "2026-12-03T00:00:00Z"
SATELLITES = {f"orbital{i}": Satellite.circular(f"train-{i}", 550, 53.0, phase_deg=-1.5 * i) for i in range(4)}
STATIONS = {"ground0": GroundStation("boulder", 40.01, -105.27, min_elevation_deg=10),
            "ground1": GroundStation("colorado-springs", 38.83, -104.82, min_elevation_deg=10)}
POWER = Power(battery_wh=3000, solar_w=2500, compute_w=300, idle_w=50)  # the seed's orbital node draws 300 W


def day(hours: float) -> Schedule:
    """The schedule: ground0's uplinks to the first satellite, the last one's downlinks to ground1 (the
    topology's 100 / 500 Mbit/s and 25 ms in every window), sunlight and batteries."""
    full = Schedule.from_orbits(START, hours * 3600.0, satellites=SATELLITES, stations=STATIONS,
                                power={s: POWER for s in SATELLITES})
    keep = {("ground0", "orbital0"), ("orbital3", "ground1")}
    windows = {k: [dataclasses.replace(w, latency_ms=None) for w in ws] for k, ws in full.windows.items() if k in keep}
    return Schedule(full.start, full.horizon_s, windows=windows, power=full.power, sunlit=full.sunlit)


def main(argv: list[str] | None = None, model: torch.nn.Module | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--rate", type=float, default=0.02, help="requests per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=None, metavar="PATH", help="draw the day with orbit to a .png or .svg")
    args = ap.parse_args(argv)
    if args.plot is not None and not args.plot.lower().endswith((".png", ".svg")):
        ap.error(f"--plot {args.plot}: write a .png or a .svg file")
    sched = day(args.hours)
    up = [w for w in sched.windows[("ground0", "orbital0")]]
    down = [w for w in sched.windows[("orbital3", "ground1")]]
    both = sum(max(0.0, min(a.end_s, b.end_s) - max(a.start_s, b.start_s)) for a in up for b in down)
    print(f"{args.hours:g} h from {START}: {len(up)} uplink passes ({sum(w.duration_s for w in up):,.0f} s), "
          f"{len(down)} downlink passes; both up together {both:,.0f} s ({both / sched.horizon_s:.1%} of the time)")
    topo = preset("seed")
    profile = ModelProfile.for_generation(model if model is not None else llama70b(), prompt_len=128, new_tokens=128,
                                          dtype=torch.float16)
    plans = {"with orbit": plan_horizon(profile, topo, sched, objective="minimize_energy_per_token"),
             "ground only": plan_horizon(profile, topo, dataclasses.replace(
                 sched, windows={k: [] for k in sched.windows}), objective="minimize_energy_per_token")}
    results = {}
    for name, plan in plans.items():
        print(f"\n{name}: {plan.report()}")
        sim = simulate(plan, rate_per_s=args.rate, seed=args.seed, schedule=sched)
        print(sim.report())
        energy = sim.energy_by_node()
        ground = sum(v for k, v in energy.items() if k.startswith("ground")) / max(len(sim.served), 1)
        results[name] = {"plan": plan, "sim": sim, "ground_j_per_request": ground}
    a, b = results["with orbit"], results["ground only"]
    n = len(a["sim"].served)
    print(f"\nwith orbit, {sum(s.via_orbit for s in a['sim'].served) / max(n, 1):.1%} of the requests go through orbit; "
          f"ground energy per request {a['ground_j_per_request']:,.0f} J against {b['ground_j_per_request']:,.0f} J "
          f"ground-only ({1 - a['ground_j_per_request'] / b['ground_j_per_request']:.1%} saved); TPOT p50 "
          f"{a['sim'].quantile('tpot_ms', 0.5):,.1f} ms / p99 {a['sim'].quantile('tpot_ms', 0.99):,.1f} ms against "
          f"{b['sim'].quantile('tpot_ms', 0.5):,.1f} / {b['sim'].quantile('tpot_ms', 0.99):,.1f} ms")
    if args.plot is not None:
        from rotafx import plot

        print(f"wrote {plot.save(plot.day(a['sim'], sched, a['plan']), args.plot)}")
    return results


if __name__ == "__main__":
    main()
