"""rotafx: split a neural network across machines that differ in speed, memory and links."""

from .annotate import NodeCost, annotate
from .costmodel import CostTables
from .estimate import Estimate, LatencyEstimator
from .placement import LayerPlacement, PlacementError, Validation
from .profile import LayerProfile, ModelProfile, ProfileError
from .solve import InfeasibleError, Partition, PartitionOptimizer
from .topology import Device, Link, Topology, TopologyError, preset

__version__ = "0.1.0"

__all__ = [
    "ModelProfile", "LayerProfile", "ProfileError", "NodeCost", "annotate",
    "Topology", "Device", "Link", "TopologyError", "preset",
    "LayerPlacement", "Validation", "PlacementError",
    "LatencyEstimator", "Estimate", "CostTables",
    "PartitionOptimizer", "Partition", "InfeasibleError",
]

# the torch.compile backend and the rewrite (the name rotafx.backend is the factory; `from rotafx.backend import ...` reaches the module)
from . import ops as _ops  # registers torch.ops.rotafx.transfer
from .backend import (BackendError, Plan, RotaStellarBackend, backend, last_plan, partition, partitioned,  # noqa: E402
                      plans)
from .runtime import PipelineModule  # noqa: E402

__all__ += ["backend", "partition", "partitioned", "last_plan", "plans", "Plan", "BackendError",
            "RotaStellarBackend", "PipelineModule"]

# plan export and loading (rotafx.export, rotafx.load); the multi-process runtime is rotafx.runtime.distributed
from .export import PlanError, export, load  # noqa: E402

__all__ += ["export", "load", "PlanError"]
