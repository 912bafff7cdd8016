"""Pictures of plans and estimates (``pip install rotafx[plot]``); ``import rotafx`` does not import this."""

from .data import (BreakdownBar, BreakdownData, DayData, LinkLabel, NodeBar, PlacementData, RequestPoint, RouteSpan,
                   Span, TimelineData, TradeoffData, TradeoffPoint, breakdown_data, day_data, placement_data,
                   timeline_data, tradeoffs_data)
from .figures import breakdown, day, placement, save, timeline, tradeoffs

__all__ = ["placement", "breakdown", "timeline", "tradeoffs", "day", "save", "placement_data", "breakdown_data",
           "timeline_data", "tradeoffs_data", "day_data", "NodeBar", "LinkLabel", "PlacementData", "BreakdownBar",
           "BreakdownData", "Span", "TimelineData", "TradeoffPoint", "TradeoffData", "RouteSpan", "RequestPoint",
           "DayData"]
