"""Where satellites, ground stations and the Sun are: SGP4 for the satellites, the rest in closed form.

Frames and accuracy: positions are in SGP4's TEME frame (km); a ground station is placed in it by
rotating its WGS-84 position by the Greenwich mean sidereal time (IAU 1982), leaving out polar
motion and the equation of the equinoxes (a few hundred metres: well under a second of a pass);
the Sun's direction is the Astronomical Almanac's low-precision formula (0.01 degree from 1950 to
2050), so no ephemeris file is read and nothing is downloaded. Earth's shadow is a cylinder of
Earth's radius along the Sun's direction (the penumbra, under 10 s per eclipse at 550 km, counts
as sunlight).

Times are seconds since a start instant (a timezone-aware ``datetime``); arrays are numpy.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EARTH_RADIUS_KM", "Satellite", "GroundStation", "julian", "gmst", "sun_direction", "sunlit",
           "elevation_deg", "slant_range_km"]

EARTH_RADIUS_KM = 6378.137  # WGS-84 equatorial radius
_FLATTENING = 1 / 298.257223563
_MU_KM3_S2 = 398600.4418
SPEED_OF_LIGHT_KM_S = 299792.458


class OrbitError(ValueError):
    """A TLE, a station or a time that rotafx cannot use; the message starts with ``rotafx:`` and says why."""


def julian(start: _dt.datetime, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Julian date of ``start + seconds`` as SGP4 takes it: whole part and fraction."""
    if start.tzinfo is None:
        raise OrbitError(f"rotafx: the start time {start.isoformat()} has no timezone; give a UTC time "
                         f"(datetime(..., tzinfo=datetime.timezone.utc) or '2026-12-03T00:00:00Z')")
    t = start.astimezone(_dt.timezone.utc)
    midnight = _dt.datetime(t.year, t.month, t.day, tzinfo=_dt.timezone.utc)
    jd0 = 2440587.5 + (midnight - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)).days
    fr = ((t - midnight).total_seconds() + np.asarray(seconds, dtype=float)) / 86400.0
    whole = np.floor(fr)
    return jd0 + whole, fr - whole


def gmst(jd: np.ndarray, fr: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal time (radians), IAU 1982 (as SGP4's own ``gstime``)."""
    tut1 = (jd - 2451545.0 + fr) / 36525.0
    sec = (-6.2e-6 * tut1 ** 3 + 0.093104 * tut1 ** 2 + (876600.0 * 3600 + 8640184.812866) * tut1 + 67310.54841)
    return np.mod(sec * (2 * math.pi / 86400.0), 2 * math.pi)


def sun_direction(jd: np.ndarray, fr: np.ndarray) -> np.ndarray:
    """Unit vectors ``[n, 3]`` from Earth's centre to the Sun (mean equator and equinox of date)."""
    n = jd - 2451545.0 + fr
    L = np.radians(280.460 + 0.9856474 * n)
    g = np.radians(357.528 + 0.9856003 * n)
    lam = L + np.radians(1.915) * np.sin(g) + np.radians(0.020) * np.sin(2 * g)
    eps = np.radians(23.439 - 4e-7 * n)
    return np.stack([np.cos(lam), np.cos(eps) * np.sin(lam), np.sin(eps) * np.sin(lam)], axis=-1)


def sunlit(r_km: np.ndarray, sun: np.ndarray) -> np.ndarray:
    """Whether each position ``[n, 3]`` is outside Earth's cylindrical shadow."""
    along = np.einsum("ij,ij->i", r_km, sun)
    off_axis = np.linalg.norm(r_km - along[:, None] * sun, axis=1)
    return (along > 0) | (off_axis > EARTH_RADIUS_KM)


@dataclass(frozen=True)
class Satellite:
    """A satellite propagated by SGP4 from a two-line element set."""

    name: str
    line1: str
    line2: str

    @classmethod
    def circular(cls, name: str, altitude_km: float, inclination_deg: float, *, raan_deg: float = 0.0,
                 phase_deg: float = 0.0, epoch: _dt.datetime | None = None) -> "Satellite":
        """A satellite on a circular orbit, written as a TLE (no drag): what a constellation designer starts from."""
        epoch = epoch or _dt.datetime(2026, 12, 3, tzinfo=_dt.timezone.utc)
        if not 100 <= altitude_km <= 40000:
            raise OrbitError(f"rotafx: satellite {name!r}: altitude {altitude_km} km is not an orbit SGP4 models "
                             f"(give 100-40,000 km)")
        a = EARTH_RADIUS_KM + altitude_km
        rev_per_day = 86400.0 / (2 * math.pi * math.sqrt(a ** 3 / _MU_KM3_S2))
        t = epoch.astimezone(_dt.timezone.utc)
        day = (t - _dt.datetime(t.year, 1, 1, tzinfo=_dt.timezone.utc)).total_seconds() / 86400.0 + 1
        l1 = f"1 99999U 26001A   {t.year % 100:02d}{day:012.8f}  .00000000  00000-0  00000-0 0  999"
        l2 = (f"2 99999 {inclination_deg:8.4f} {raan_deg % 360:8.4f} 0000001 {0.0:8.4f} {phase_deg % 360:8.4f} "
              f"{rev_per_day:11.8f}    1")
        return cls(name, _with_checksum(l1), _with_checksum(l2))

    def _satrec(self) -> Any:
        from sgp4.api import Satrec  # the field's own propagator (rotafx[orbits])

        try:
            sat = Satrec.twoline2rv(self.line1, self.line2)
        except Exception as e:  # noqa: BLE001 - sgp4 raises ValueError / IndexError on a malformed line
            raise OrbitError(f"rotafx: satellite {self.name!r}: its TLE cannot be read ({e}); give the two "
                             f"69-character lines as published (line 1 starts '1 ', line 2 '2 ')") from None
        if sat.error:
            raise OrbitError(f"rotafx: satellite {self.name!r}: SGP4 refuses its elements (error {sat.error})")
        return sat

    def positions(self, start: _dt.datetime, seconds: np.ndarray) -> np.ndarray:
        """TEME positions ``[n, 3]`` (km) at ``start + seconds``."""
        jd, fr = julian(start, seconds)
        err, r, _ = self._satrec().sgp4_array(jd, fr)
        bad = np.flatnonzero(err)
        if bad.size:
            raise OrbitError(f"rotafx: satellite {self.name!r}: SGP4 fails {bad.size} time(s) after the start "
                             f"(first at +{float(np.asarray(seconds)[bad[0]]):.0f} s, error {int(err[bad[0]])}: decayed "
                             f"or elements too old)")
        return np.asarray(r)


@dataclass(frozen=True)
class GroundStation:
    """A ground station: geodetic latitude and longitude (degrees), height (km) and the lowest elevation (degrees)
    at which it keeps a link."""

    name: str
    lat_deg: float
    lon_deg: float
    height_km: float = 0.0
    min_elevation_deg: float = 10.0

    def __post_init__(self) -> None:
        if not -90 <= self.lat_deg <= 90 or not -180 <= self.lon_deg <= 360:
            raise OrbitError(f"rotafx: ground station {self.name!r}: latitude {self.lat_deg} / longitude "
                             f"{self.lon_deg} out of range (latitude -90..90, longitude -180..360 degrees)")
        if not 0 <= self.min_elevation_deg < 90:
            raise OrbitError(f"rotafx: ground station {self.name!r}: min_elevation_deg {self.min_elevation_deg} must "
                             f"be in 0..90 degrees")

    def _ecef(self) -> tuple[np.ndarray, np.ndarray]:
        """Position (km) and local up (unit) in Earth-fixed axes."""
        lat, lon = math.radians(self.lat_deg), math.radians(self.lon_deg)
        e2 = _FLATTENING * (2 - _FLATTENING)
        n = EARTH_RADIUS_KM / math.sqrt(1 - e2 * math.sin(lat) ** 2)
        pos = np.array([(n + self.height_km) * math.cos(lat) * math.cos(lon),
                        (n + self.height_km) * math.cos(lat) * math.sin(lon),
                        (n * (1 - e2) + self.height_km) * math.sin(lat)])
        up = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        return pos, up

    def positions(self, start: _dt.datetime, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """TEME positions ``[n, 3]`` (km) and local up vectors at ``start + seconds``."""
        theta = gmst(*julian(start, seconds))
        c, s = np.cos(theta), np.sin(theta)
        pos, up = self._ecef()
        rot = lambda v: np.stack([c * v[0] - s * v[1], s * v[0] + c * v[1], np.full_like(c, v[2])], axis=1)  # noqa: E731
        return rot(pos), rot(up)


def elevation_deg(station: GroundStation, sat_km: np.ndarray, start: _dt.datetime, seconds: np.ndarray) -> np.ndarray:
    """The satellite's elevation above the station's horizon (degrees) at each time."""
    pos, up = station.positions(start, seconds)
    rho = sat_km - pos
    return np.degrees(np.arcsin(np.einsum("ij,ij->i", rho, up) / np.linalg.norm(rho, axis=1)))


def slant_range_km(station: GroundStation, sat_km: np.ndarray, start: _dt.datetime, seconds: np.ndarray) -> np.ndarray:
    """Distance from the station to the satellite (km) at each time."""
    pos, _ = station.positions(start, seconds)
    return np.linalg.norm(sat_km - pos, axis=1)


def _with_checksum(line: str) -> str:
    """A TLE line padded to 68 characters with its modulo-10 checksum appended."""
    body = line[:68].ljust(68)
    return body + str(sum(int(ch) if ch.isdigit() else (1 if ch == "-" else 0) for ch in body) % 10)
