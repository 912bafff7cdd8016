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

Faults: every wait has a timeout. A stage whose neighbour dies sees the connection close
at once, records ``lost stage k`` in the store and exits; the driver then raises
:class:`DistributedError` naming the stage, with the requests that completed. A stage that
hangs is found by the driver's timeout: the first stage that has not passed the oldest
unfinished request on is named. The driver then sets ``rotafx/abort`` in the store, and a
watchdog thread in every stage process exits on it (or when the driver's store is gone).
"""

from .driver import Driver
from .launch import LocalCluster, launch_local
from .stage import StageServer, serve
from .transport import HEADER_BYTES, DistributedError, free_port

__all__ = ["Driver", "DistributedError", "LocalCluster", "launch_local", "serve", "StageServer", "free_port",
           "HEADER_BYTES"]
