"""Pictures of plans and estimates (``pip install rotafx[plot]``); ``import rotafx`` does not import this."""

from .data import (BreakdownBar, BreakdownData, LinkLabel, NodeBar, PlacementData, Span, TimelineData,
                   TradeoffData, TradeoffPoint, breakdown_data, placement_data, timeline_data, tradeoffs_data)
from .figures import breakdown, placement, save, timeline, tradeoffs

__all__ = ["placement", "breakdown", "timeline", "tradeoffs", "save", "placement_data", "breakdown_data",
           "timeline_data", "tradeoffs_data", "NodeBar", "LinkLabel", "PlacementData", "BreakdownBar",
           "BreakdownData", "Span", "TimelineData", "TradeoffPoint", "TradeoffData"]
