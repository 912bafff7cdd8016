"""Orbits in time: satellites from TLEs (SGP4), ground stations, contact windows, sunlight and batteries.

Needs the ``orbits`` extra (``pip install rotafx[orbits]``: ``sgp4``); ``import rotafx`` does not
import it.
"""

from .geometry import EARTH_RADIUS_KM, GroundStation, OrbitError, Satellite, elevation_deg, sun_direction, sunlit
from .schedule import Interval, Power, Schedule, Window, contact_windows, parse_time, sunlight

__all__ = ["Satellite", "GroundStation", "OrbitError", "Window", "Power", "Interval", "Schedule", "contact_windows",
           "sunlight", "parse_time", "elevation_deg", "sun_direction", "sunlit", "EARTH_RADIUS_KM"]
