"""Orbits in time, against closed-form geometry: a circular orbit's period and altitude, the pass of an equatorial
satellite over an equatorial station, the eclipse of an orbit that contains the Sun, a battery drained by hand;
and schedules that refuse what they cannot use."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

pytest.importorskip("sgp4")

from rotafx.orbits import (EARTH_RADIUS_KM, GroundStation, OrbitError, Power, Satellite, Schedule,  # noqa: E402
                           Window, contact_windows, parse_time, sunlight)

MU = 398600.4418
OMEGA_EARTH = 7.2921150e-5  # rad/s
START = "2026-12-03T00:00:00Z"


def _kepler_period_s(h_km: float) -> float:
    return 2 * math.pi * math.sqrt((EARTH_RADIUS_KM + h_km) ** 3 / MU)


def test_a_circular_orbit_keeps_its_altitude_and_period() -> None:
    sat = Satellite.circular("s", 550, 53.0)
    t = np.arange(0.0, 3 * 5800.0, 5.0)
    r = sat.positions(parse_time(START, "start"), t)
    alt = np.linalg.norm(r, axis=1) - EARTH_RADIUS_KM
    assert np.all(np.abs(alt - 550) < 25), "J2 and the Earth's flattening move it by kilometres, not more"
    rising = t[1:][(r[:-1, 2] < 0) & (r[1:, 2] >= 0)]  # ascending node crossings
    assert np.median(np.diff(rising)) == pytest.approx(_kepler_period_s(550), rel=5e-3)


@pytest.mark.parametrize("min_elevation", [0.0, 10.0])
def test_an_overhead_pass_lasts_what_the_geometry_says(min_elevation: float) -> None:
    """An equatorial satellite over a station on the equator: the station sees it while the central angle is under
    acos(R cos(e) / (R + h)) - e, and it sweeps over the turning Earth at n - omega."""
    h = 550.0
    sat = Satellite.circular("s", h, 0.0)
    gs = GroundStation("gs", 0.0, 0.0, min_elevation_deg=min_elevation)
    ws = contact_windows(sat, gs, START, 6 * 3600.0)
    assert len(ws) >= 3
    e = math.radians(min_elevation)
    lam = math.acos(EARTH_RADIUS_KM * math.cos(e) / (EARTH_RADIUS_KM + h)) - e
    n = 2 * math.pi / _kepler_period_s(h)
    full = [w for w in ws if 0 < w.start_s and w.end_s < 6 * 3600.0]
    for w in full:
        assert w.duration_s == pytest.approx(2 * lam / (n - OMEGA_EARTH), rel=0.02)
        assert w.latency_ms == pytest.approx(1e3 * h / 299792.458, rel=0.03), "overhead: the light time over h"
    gaps = [b.start_s - a.start_s for a, b in zip(full, full[1:])]
    assert np.median(gaps) == pytest.approx(2 * math.pi / (n - OMEGA_EARTH), rel=0.01), "one pass per synodic period"


def test_an_orbit_that_contains_the_sun_is_in_shadow_for_the_cylinders_angle() -> None:
    """Equatorial orbit at the March equinox (the Sun in the equator's plane, beta = 0): in shadow for
    2 asin(R / (R + h)) of every 2 pi."""
    h = 550.0
    start = "2027-03-20T12:00:00Z"
    sat = Satellite.circular("s", h, 0.0, epoch=parse_time(start, "epoch"))
    lit = sunlight(sat, start, 4 * 5800.0)
    shadows = [b[0] - a[1] for a, b in zip(lit, lit[1:])]
    period = _kepler_period_s(h)
    want = 2 * math.asin(EARTH_RADIUS_KM / (EARTH_RADIUS_KM + h)) / (2 * math.pi) * period
    assert len(shadows) >= 3
    for s in shadows:
        assert s == pytest.approx(want, rel=0.02)


def test_a_battery_drained_by_compute_stops_at_its_reserve_and_restarts_in_sunlight() -> None:
    """100 Wh, 80% usable, 360 W of compute and no sun for the first 2,000 s: it computes 800 s, idles, and starts
    again when the sunlight comes back."""
    sched = Schedule(START, 4000.0, power={"orbital0": Power(battery_wh=100, solar_w=500, compute_w=360, idle_w=0,
                                                            reserve=0.2)},
                     sunlit={"orbital0": [(2000.0, 4000.0)]})
    spans = sched.available_spans("orbital0", step_s=1.0)
    assert spans[0][0] == 0.0 and spans[0][1] == pytest.approx(800.0, abs=2.0)
    assert spans[1][0] == pytest.approx(2000.0, abs=1.0) and spans[1][1] == 4000.0
    times, charge, _ = sched.battery("orbital0", step_s=1.0)
    i = int(np.searchsorted(times, 3000.0))
    assert charge[i] == pytest.approx(min(100.0, 20.0 + (500 - 360) * 1000 / 3600), abs=0.5)


def test_intervals_cut_the_horizon_where_links_or_power_change() -> None:
    sched = Schedule(START, 1000.0, windows={("ground0", "orbital0"): [Window(100, 300, 1e8, 3.0), Window(500, 600)]},
                     power={"orbital0": Power(100, 0, 0)}, sunlit={"orbital0": []})
    cuts = [(iv.start_s, iv.end_s) for iv in sched.intervals(["ground0", "orbital0"])]
    assert cuts == [(0, 100), (100, 300), (300, 500), (500, 600), (600, 1000)]
    ivs = sched.intervals(["ground0", "orbital0"])
    assert [("ground0", "orbital0") in iv.links for iv in ivs] == [False, True, False, True, False]
    assert ivs[1].links[("ground0", "orbital0")].bandwidth_bps == 1e8
    assert all(iv.available == {"ground0", "orbital0"} for iv in ivs), "no compute draw: always available"


@pytest.mark.parametrize("make, match", [
    (lambda: Window(10, 5), r"a window must end after it starts, got 10 s to 5 s"),
    (lambda: Window(0, 5, bandwidth_bps=0), r"bandwidth_bps must be a finite number > 0, got 0"),
    (lambda: Schedule(START, 100, windows={("a", "b"): [Window(0, 50), Window(40, 60)]}), r"a -> b: windows .* overlap"),
    (lambda: Schedule(dt.datetime(2026, 12, 3), 100), r"has no timezone"),
    (lambda: Schedule("yesterday", 100), r"'yesterday' is not an ISO-8601 time"),
    (lambda: Schedule(START, -1), r"horizon_s must be a positive number of seconds, got -1"),
    (lambda: Schedule(START, 100, power={"o": Power(1, 1, 1)}), r"device 'o' has a power model but no sunlit spans"),
    (lambda: Power(battery_wh=-1, solar_w=0, compute_w=0), r"battery_wh must be a finite number"),
    (lambda: Power(1, 1, 1, reserve=2), r"reserve is a fraction of the battery, 0..1, got 2"),
    (lambda: GroundStation("g", 95, 0), r"ground station 'g': latitude 95"),
    (lambda: Satellite("s", "1 garbage", "2 garbage").positions(parse_time(START, "t"), np.zeros(1)),
     r"satellite 's': its TLE cannot be read|SGP4 refuses"),
    (lambda: Satellite.circular("s", 50, 0), r"altitude 50 km is not an orbit"),
])
def test_bad_schedules_say_what_to_fix(make, match) -> None:
    with pytest.raises(OrbitError, match=match):
        make()


def test_a_schedule_from_orbits_has_both_directions_of_each_pass_and_reads_back_from_a_dict() -> None:
    sats = {"orbital0": Satellite.circular("a", 550, 53.0), "orbital1": Satellite.circular("b", 550, 53.0,
                                                                                           phase_deg=180)}
    stations = {"ground0": GroundStation("boulder", 40.0, -105.3)}
    sched = Schedule.from_orbits(START, 43200.0, satellites=sats, stations=stations, uplink_bps=1e8,
                                 downlink_bps=5e8, power={s: Power(2000, 1500, 800) for s in sats})
    for s, sat in sats.items():
        up, down = sched.windows[("ground0", s)], sched.windows[(s, "ground0")]
        alone = contact_windows(sat, stations["ground0"], START, 43200.0)
        assert [(w.start_s, w.end_s) for w in up] == [(w.start_s, w.end_s) for w in down] == \
               [(w.start_s, w.end_s) for w in alone]
        assert {w.bandwidth_bps for w in up} == {1e8} and {w.bandwidth_bps for w in down} == {5e8}
    doc = {"start": START, "horizon_s": 43200.0,
           "links": [{"src": a, "dst": b, "windows": [vars(w) for w in ws]} for (a, b), ws in sched.windows.items()],
           "devices": {s: {"power": vars(sched.power[s]), "sunlit": sched.sunlit[s]} for s in sats}}
    again = Schedule.from_dict(doc)
    assert again.windows == sched.windows and again.power == sched.power
    names = ["ground0", *sats]
    assert again.intervals(names) == sched.intervals(names)


@pytest.mark.parametrize("doc, match", [
    ({"start": START}, r"start and horizon_s are required"),
    ({"start": START, "horizon_s": 10, "lnks": []}, r"unknown key\(s\) \['lnks'\]"),
    ({"start": START, "horizon_s": 10, "links": [{"src": "a"}]}, r"links\[0\] must name its src and dst"),
    ({"start": START, "horizon_s": 10, "links": [{"src": "a", "dst": "b", "windows": [{"start_s": 0}]}]},
     r"links\[0\] \(a -> b\) windows\[0\] must have start_s and end_s"),
    ({"start": START, "horizon_s": 10, "links": [{"src": "a", "dst": "b", "windows": [{"start_s": 0, "end_s": "x"}]}]},
     r"every figure must be a number"),
    ({"start": START, "horizon_s": 10, "devices": {"o": {"power": {"battery": 1}}}}, r"devices.o.power: .*its keys are"),
])
def test_a_bad_schedule_file_names_the_entry(doc, match) -> None:
    with pytest.raises(OrbitError, match=match):
        Schedule.from_dict(doc)


def test_a_schedule_file_may_give_orbits_and_stations() -> None:
    doc = {"start": START, "horizon_s": 20000.0, "uplink_bps": 1e8,
           "satellites": {"orbital0": {"altitude_km": 550, "inclination_deg": 53}},
           "stations": {"ground0": {"lat_deg": 40.0, "lon_deg": -105.3, "min_elevation_deg": 10}},
           "devices": {"orbital0": {"power": {"battery_wh": 2000, "solar_w": 1500, "compute_w": 800}}}}
    sched = Schedule.from_dict(doc)
    want = contact_windows(Satellite.circular("x", 550, 53), GroundStation("g", 40.0, -105.3), START, 20000.0)
    assert [(w.start_s, w.end_s) for w in sched.windows[("ground0", "orbital0")]] == [(w.start_s, w.end_s) for w in want]
    assert sched.power["orbital0"].compute_w == 800 and sched.sunlit["orbital0"]
    with pytest.raises(OrbitError, match=r"satellites.bad must be"):
        Schedule.from_dict({**doc, "satellites": {"bad": {"altitude_km": 550}}})
