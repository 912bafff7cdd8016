"""Run a plan with one process per stage: ``torch.distributed`` point-to-point between neighbours, a driver feeding requests.

Messages go along the chain only (driver -> stage 0 -> ... -> stage n-1 -> driver): a
value that skips a stage is relayed by it (the plan's ``hops`` list, in order, what each
message carries). :mod:`.transport` is the message layout and the waits, :mod:`.stage`
a stage process, :mod:`.driver` rank 0, :mod:`.launch` every stage on this machine.

Why not ``torch.distributed.pipelining``: its ``PipelineStage`` passes one activation
tuple between consecutive stages and infers shapes at run time, and its schedules are
built around training steps; a plan needs values relayed past stages, a codec per value
and per hop, and request ids for fault reports. The transport underneath is the same
(``isend``/``irecv`` on a gloo or NCCL process group).

Trust: only processes holding the cluster's secret join (:mod:`.secret`, :mod:`.store`):
the store authenticates every connection and frame, and each rank proves itself to the
next over the process group before any tensor is exchanged.

Faults: every wait has a timeout, and every stage sends a heartbeat. A stage whose
neighbour dies sees the connection close, records what it lost and exits; the driver
names the stage whose process ended or whose heartbeat stopped first (not one of those
that reported losing it), or, for a stage that hangs while beating, the first one that
has not passed the oldest unfinished request on. The driver then sets ``rotafx/abort``
in the store, and a watchdog thread in every stage process exits on it (or when the
driver's store is gone).
"""

from .driver import Driver
from .failover import ROUTE_DIR, Failover, FailoverEvent
from .launch import LocalCluster, launch_local
from .stage import StageServer, serve
from .transport import HEADER_BYTES, DistributedError, LinkDownError, free_port

__all__ = ["Driver", "DistributedError", "LinkDownError", "Failover", "FailoverEvent", "ROUTE_DIR", "LocalCluster", "launch_local", "serve", "StageServer", "free_port",
           "HEADER_BYTES"]
