"""The ``rotastellar`` torch.compile backend (:mod:`.dynamo`), :func:`partition` and the :func:`partitioned`
decorator (:mod:`.partition`), with their options (:mod:`.options`), devices (:mod:`.devices`), the pass order
(:mod:`.plan`) and caches (:mod:`.cache`)."""

from .devices import BackendError
from .dynamo import RotaStellarBackend, backend, rotastellar
from .options import LOCAL_TOPOLOGY, OPTIONS
from .partition import partition, partitioned
from .plan import Plan, last_plan, plans

__all__ = ["BackendError", "Plan", "RotaStellarBackend", "backend", "rotastellar", "partition", "partitioned",
           "last_plan", "plans", "OPTIONS", "LOCAL_TOPOLOGY"]
