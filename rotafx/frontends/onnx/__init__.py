"""The ONNX frontend: load (:mod:`.load`), infer shapes (:mod:`.shapes`), price ops (:mod:`.costs`), read the records
(:mod:`.read`), measure in onnxruntime (:mod:`.measure`), and cut a partition into one ONNX model per stage (:mod:`.stages`)."""

from .costs import PER_ELEMENT_OPS, POINTWISE_OPS, ZERO_COST_OPS
from .load import load_onnx
from .read import read_onnx
from .stages import OnnxStage, export_stages, run_stages, stage_ranges

__all__ = ["read_onnx", "load_onnx", "export_stages", "run_stages", "OnnxStage", "stage_ranges", "ZERO_COST_OPS",
           "POINTWISE_OPS", "PER_ELEMENT_OPS"]
