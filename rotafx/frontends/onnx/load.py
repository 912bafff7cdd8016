"""Load an ONNX model (a path, bytes or a ``ModelProto``) and read its nodes: element types, attributes, subgraph inputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import units
from ...layers import ProfileError

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["ELEM", "import_onnx", "import_ort", "load_onnx", "first_line", "attrs", "subgraph_inputs", "elem_of_dtype"]

# ONNX TensorProto.DataType -> (bytes per element, floating, the dtype's name)
ELEM: dict[int, tuple[int, bool, str]] = {
    1: (4, True, "float32"), 2: (1, False, "uint8"), 3: (1, False, "int8"), 4: (2, False, "uint16"),
    5: (2, False, "int16"), 6: (4, False, "int32"), 7: (8, False, "int64"), 8: (0, False, "string"),
    9: (1, False, "bool"), 10: (2, True, "float16"), 11: (8, True, "float64"), 12: (4, False, "uint32"),
    13: (8, False, "uint64"), 14: (8, False, "complex64"), 15: (16, False, "complex128"), 16: (2, True, "bfloat16"),
    17: (1, True, "float8_e4m3fn"), 18: (1, True, "float8_e4m3fnuz"), 19: (1, True, "float8_e5m2"),
    20: (1, True, "float8_e5m2fnuz"), 21: (1, False, "uint4"), 22: (1, False, "int4"), 23: (1, True, "float4_e2m1"),
    24: (1, True, "float8_e8m0"), 25: (1, False, "uint2"), 26: (1, False, "int2"), 27: (1, True, "float6"),
    28: (1, True, "float6b"),
}


def elem_of_dtype(name: str | None) -> int:
    """The ONNX element type of a dtype name (``"float32"`` -> 1); 1 (float) when unknown."""
    return next((k for k, v in ELEM.items() if v[2] == name), 1)


def import_onnx() -> Any:
    """The ``onnx`` package, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError as e:  # pragma: no cover
        raise ImportError("rotafx: profiling ONNX models needs the onnx package: pip install 'rotafx[onnx]'") from e
    return onnx


def import_ort() -> Any:
    """The ``onnxruntime`` package, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover
        raise ImportError("rotafx: running or measuring ONNX models needs onnxruntime: pip install 'rotafx[onnx]'") from e
    return onnxruntime


def load_onnx(model: Any, *, load_external_data: bool = True) -> "onnx.ModelProto":
    """An ``onnx.ModelProto`` from a path, serialized bytes or a ``ModelProto``; a clear error for anything else.

    >>> load_onnx(b"hello")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rotafx.layers.ProfileError: rotafx: the bytes given are not a serialized ONNX model (...); pass the bytes of a file written by onnx.save
    """
    onnx = import_onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as e:
            raise ProfileError(f"rotafx: the bytes given are not a serialized ONNX model ({first_line(e)}); pass the "
                               f"bytes of a file written by onnx.save") from e
        _check_model(proto, "the bytes given")
        return proto
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"rotafx: no ONNX file at {str(path)!r}")
        if path.is_dir():
            raise ProfileError(f"rotafx: {str(path)!r} is a directory; pass the .onnx file inside it")
        try:
            proto = onnx.load(str(path), load_external_data=load_external_data)
        except Exception as e:
            raise ProfileError(f"rotafx: {path} is not an ONNX model ... ({first_line(e)}); pass a file written by "
                               f"onnx.save or torch.onnx.export") from e
        _check_model(proto, str(path))
        return proto
    kind = type(model).__name__
    hint = " (a PyTorch module: use ModelProfile.from_pytorch)" if hasattr(model, "named_parameters") else ""
    raise TypeError(f"rotafx: from_onnx expects a path to an .onnx file, its bytes or an onnx.ModelProto, got {kind}{hint}")


def _check_model(proto: Any, what: str) -> None:
    # protobuf parses many non-ONNX files without complaint into an empty message
    if proto.ir_version <= 0 or not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ProfileError(f"rotafx: {what} is not an ONNX model ... (it parses, but has no IR version or no graph); "
                           f"pass a file written by onnx.save or torch.onnx.export")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    return units.first_line(e)[:200]


def attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values."""
    onnx = import_onnx()
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def subgraph_inputs(node: Any) -> list[str]:
    """Outer-scope names read inside a node's subgraphs (If, Loop, Scan bodies)."""
    onnx = import_onnx()
    names: list[str] = []
    for a in node.attribute:
        graphs = ([a.g] if a.type == onnx.AttributeProto.GRAPH
                  else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                for i in list(n.input) + subgraph_inputs(n):
                    if i and i not in local:
                        names.append(i)
                local.update(n.output)
    return names
