"""The PyTorch frontend: ``torch.export`` a model (:mod:`.trace`), price every fx node (:mod:`.annotate`), read the records (:mod:`.graph`, :mod:`.module`)."""

from .annotate import NodeCost, annotate, node_cost, node_value
from .graph import module_path, read_graph
from .module import read_module
from .trace import Traced, as_args, trace

__all__ = ["NodeCost", "annotate", "node_cost", "node_value", "module_path", "read_graph", "read_module", "Traced",
           "as_args", "trace"]
