"""Options of the ``rotastellar`` backend, checked once: ``torch.compile(..., options={...})`` and ``rotafx.backend(...)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..costmodel import MEMORY_RULES
from ..runtime.local import INNER_BACKENDS
from ..objective import OBJECTIVES
from ..solve.optimizer import SOLVERS
from ..topology import Topology, TopologyError
from ..wire import check_codec
from .devices import BackendError, resolve_devices

__all__ = ["OPTIONS", "LOCAL_TOPOLOGY", "Config", "local_topology", "CALIBRATION_ENV"]

# the default: one local device that holds anything, so plain backend="rotastellar" works
LOCAL_TOPOLOGY: dict[str, Any] = {
    "devices": [{"name": "local", "kind": "ground", "flops": 1e14, "memory": 1e18}],
    "links": [],
    "chain": ["local"],
}

CALIBRATION_ENV = "ROTAFX_CALIBRATION"


def local_topology() -> dict[str, Any]:
    """The default topology: one local device; calibrated by the file ``$ROTAFX_CALIBRATION`` names, when it is set
    (``rotafx calibrate -o FILE`` writes one), else priced by its datasheet figures."""
    import os

    path = os.environ.get(CALIBRATION_ENV)
    if not path:
        return LOCAL_TOPOLOGY
    device = {**LOCAL_TOPOLOGY["devices"][0], "calibration": path}
    del device["flops"]  # the measured rate stands in
    return {**LOCAL_TOPOLOGY, "devices": [device]}


OPTIONS: dict[str, str] = {
    "topology": "a Topology, a topology dict, a preset name or a file path (default: one local device)",
    "objective": f"one of {', '.join(OBJECTIVES)} (default minimize_latency)",
    "objective_weights": "weights of the terms of the 'balance' objective",
    "devices": "torch device of each topology node: a dict node -> device, a list (one per chain stage) or one device",
    "inner": f"backend that compiles each stage: one of {', '.join(INNER_BACKENDS)} (default inductor, as torch.compile; eager for debugging)",
    "codec": "compression of tensors between stages: None, 'fp16', 'bf16' or 'int8'",
    "solver": f"one of {', '.join(SOLVERS)} (default milp; dp on a single device)",
    "time_limit": "seconds the MILP solver may take",
    "memory_rule": f"one of {', '.join(MEMORY_RULES)} (default liveness)",
}


@dataclass(frozen=True)
class Config:
    """Validated options."""

    topology: Topology
    objective: str = "minimize_latency"
    objective_weights: Mapping[str, float] | None = None
    devices: Any = None
    inner: str = "inductor"
    codec: str | None = None
    solver: str | None = None
    time_limit: float = 60.0
    memory_rule: str = "liveness"

    @classmethod
    def make(cls, options: Mapping[str, Any]) -> "Config":
        """Check every option; a bad one raises :class:`BackendError` naming it, the value and the choices."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            known = "\n  ".join(f"{k}: {v}" for k, v in OPTIONS.items())
            raise BackendError(f"rotafx: unknown option(s) {unknown} for the rotastellar backend; the options are:\n  {known}")
        topo_spec = options.get("topology")
        try:
            topo = Topology.coerce(topo_spec if topo_spec is not None else local_topology())
        except (TopologyError, OSError) as e:
            if topo_spec is None:
                raise BackendError(f"rotafx: the default local device's calibration (${CALIBRATION_ENV}): {e}; "
                                   f"unset it or point it at a file `rotafx calibrate -o FILE` wrote") from e
            raise BackendError(f"rotafx: option topology: {e}") from e
        objective = str(options.get("objective") or "minimize_latency")
        if objective not in OBJECTIVES:
            raise BackendError(f"rotafx: option objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        inner = str(options.get("inner") or "inductor")
        if inner not in INNER_BACKENDS:
            raise BackendError(f"rotafx: option inner={inner!r} is not supported; use one of {', '.join(INNER_BACKENDS)}")
        try:
            codec = check_codec(options.get("codec"))
        except ValueError as e:
            raise BackendError(f"rotafx: option codec: {str(e).removeprefix('rotafx: ')}") from None
        solver = options.get("solver")
        if solver is not None and solver not in SOLVERS:
            raise BackendError(f"rotafx: option solver={solver!r} is not known; use one of {', '.join(SOLVERS)}")
        time_limit = options.get("time_limit", 60.0)
        if not isinstance(time_limit, (int, float)) or isinstance(time_limit, bool) or not time_limit > 0:
            raise BackendError(f"rotafx: option time_limit={time_limit!r} must be a positive number of seconds")
        rule = options.get("memory_rule", "liveness")
        if rule not in MEMORY_RULES:
            raise BackendError(f"rotafx: option memory_rule={rule!r} is not known; use one of {', '.join(map(repr, MEMORY_RULES))}")
        cfg = cls(topology=topo, objective=objective, objective_weights=options.get("objective_weights"),
                  devices=options.get("devices"), inner=inner, codec=codec, solver=solver,
                  time_limit=float(time_limit), memory_rule=rule)
        if cfg.devices is not None:
            resolve_devices(topo, cfg.devices, None)  # fail now, not at the first compile
        return cfg
