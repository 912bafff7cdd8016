"""rotafx: split a neural network across machines that differ in speed, memory and links."""

from . import ops as _ops  # registers torch.ops.rotafx.transfer
from .backend import (BackendError, Plan, RotaStellarBackend, backend, last_plan, partition, partitioned,  # noqa: F401
                      plans)
from .calibrate import Calibration, CalibrationError, calibrate  # rotafx.calibrate is the function
from .costmodel import CostTables
from .estimate import Estimate, LatencyEstimator
from .frontends.pytorch import NodeCost, annotate
from .layers import CostRuleError, LayerProfile, ProfileError, TensorInfo
from .measured import Comparison, estimate_vs_measured
from .placement import LayerPlacement, PlacementError, Validation
from .plan.load import load
from .plan.schema import PlanError
from .plan.write import export
from .profile import ModelProfile
from .runtime.generate import GenerationError, GenerationTimings, generate
from .runtime.local import PipelineModule
from .solve import InfeasibleError, Partition, PartitionOptimizer
from .topology import Device, Link, Topology, TopologyError, preset

__version__ = "0.1.0"

__all__ = [
    # profiles
    "ModelProfile", "LayerProfile", "TensorInfo", "ProfileError", "CostRuleError", "NodeCost", "annotate",
    # topologies
    "Topology", "Device", "Link", "TopologyError", "preset",
    # placing, estimating, optimising
    "LayerPlacement", "Validation", "PlacementError", "LatencyEstimator", "Estimate", "CostTables",
    "PartitionOptimizer", "Partition", "InfeasibleError",
    # measured figures: devices calibrated, the estimator's own error
    "calibrate", "Calibration", "CalibrationError", "estimate_vs_measured", "Comparison",
    # the torch.compile backend and the rewritten module
    "backend", "partition", "partitioned", "last_plan", "plans", "Plan", "BackendError", "RotaStellarBackend",
    "PipelineModule",
    # generating tokens
    "generate", "GenerationTimings", "GenerationError",
    # plans
    "export", "load", "PlanError",
]
