"""Shapes: bind the model's symbolic input dimensions, infer every tensor's static shape and type, fold shape arithmetic.

Every activation needs a static shape: ``onnx.shape_inference`` (with data propagation)
after the inputs are bound from ``input_shapes``; while some shapes stay unknown, small
constant subgraphs (shape arithmetic) are folded with onnx's reference evaluator and
inference runs again; what is still unknown (data-dependent ops such as ``NonZero``) is
measured by running the model once in onnxruntime, with a warning.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ...layers import ProfileError
from ..sizes import dimensions, positive_int
from .load import ELEM, attrs, first_line, import_onnx, import_ort, load_onnx, subgraph_inputs

__all__ = ["bind_inputs", "skeleton", "TensorTable", "infer_types", "static_shape", "fill_missing_shapes",
           "random_feeds", "constant_numel", "RANDOM_OPS"]

log = logging.getLogger("rotafx")

# ops whose output differs from run to run: never folded
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"}


def bind_inputs(graph: Any, input_shapes: Any) -> dict[str, tuple[int, ...]]:
    """Concrete shape of every graph input, with symbolic dimensions bound from ``input_shapes``."""
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    by_input: dict[str, tuple[int, ...]] = {}
    by_dim: dict[str, int] = {}
    params = sorted({d.dim_param for i in inputs for d in i.type.tensor_type.shape.dim if d.dim_param})
    if input_shapes is None:
        input_shapes = {}
    if isinstance(input_shapes, Mapping):
        for key, value in input_shapes.items():
            if key in names:
                by_input[key] = dimensions(value, f"input_shapes[{key!r}] (the shape of input {key!r})")
            elif key in params or isinstance(value, (int, np.integer)):
                # a name no input has is allowed (one binding for several models), but not a bad size
                by_dim[key] = positive_int(value, f"input_shapes[{key!r}] (the size of dimension {key!r})")
            else:
                raise ProfileError(f"rotafx: input_shapes has {key!r}, which is neither an input ({names}) nor a "
                                   f"dimension name ({params}) of this model")
    elif isinstance(input_shapes, Sequence) and not isinstance(input_shapes, (str, bytes)):
        if len(input_shapes) != len(inputs):
            raise ProfileError(f"rotafx: input_shapes gives {len(input_shapes)} shapes for {len(inputs)} inputs {names}")
        by_input = {n: dimensions(v, f"input_shapes[{i}] (the shape of input {n!r})")
                    for i, (n, v) in enumerate(zip(names, input_shapes))}
    else:
        raise TypeError(f"rotafx: input_shapes must map input names to shapes (or dimension names to sizes), "
                        f"got {type(input_shapes).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        tt = inp.type.tensor_type
        declared = [(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)) for d in tt.shape.dim]
        if inp.name in by_input:
            given = by_input[inp.name]
            if tt.HasField("shape") and len(given) != len(declared):
                raise ProfileError(f"rotafx: input {inp.name!r} has {len(declared)} dimensions {tuple(declared)}, "
                                   f"but input_shapes gives {len(given)}: {given}")
            for axis, (g, d) in enumerate(zip(given, declared)):
                if isinstance(d, int) and d != g:
                    raise ProfileError(f"rotafx: input {inp.name!r} has size {d} at axis {axis}, but input_shapes "
                                       f"gives {g}")
                if isinstance(d, str):
                    if by_dim.setdefault(d, int(g)) != int(g):
                        raise ProfileError(f"rotafx: dimension {d!r} is bound to {by_dim[d]} but input {inp.name!r} "
                                           f"gives {g} at axis {axis}")
            shapes[inp.name] = tuple(int(g) for g in given)
            continue
        if not tt.HasField("shape"):
            raise ProfileError(f"rotafx: input {inp.name!r} has no declared shape; pass "
                               f"input_shapes={{{inp.name!r}: (...)}}")
        out = []
        for axis, d in enumerate(declared):
            if isinstance(d, int):
                out.append(d)
            elif d is not None and d in by_dim:
                out.append(by_dim[d])
            else:
                what = f"dimension {d!r}" if d else "an unnamed dimension"
                fix = f"input_shapes={{{d!r}: N}} or " if d else ""
                raise ProfileError(f"rotafx: input {inp.name!r} has a dynamic {what} at axis {axis} "
                                   f"(shape {tuple(x if x is not None else '?' for x in declared)}) and no value for it; "
                                   f"pass {fix}input_shapes={{{inp.name!r}: (...)}}")
        shapes[inp.name] = tuple(out)
    return shapes


def skeleton(proto: Any, shapes: Mapping[str, tuple[int, ...]]) -> Any:
    """A copy of the model without large weight data, its inputs fixed to ``shapes`` (for shape inference)."""
    onnx = import_onnx()
    sk = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(sk, f, getattr(proto, f))
    sk.opset_import.extend(proto.opset_import)
    sk.functions.extend(proto.functions)
    g, src = sk.graph, proto.graph
    g.name = src.name
    g.node.extend(src.node)
    for init in src.initializer:
        if math.prod(init.dims) > 4096 or init.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(_empty_tensor(init))
        else:
            g.initializer.append(init)
    g.sparse_initializer.extend(src.sparse_initializer)
    for inp in src.input:
        if inp.name in shapes:
            elem = inp.type.tensor_type.elem_type
            g.input.append(onnx.helper.make_tensor_value_info(inp.name, elem, list(shapes[inp.name])))
        else:
            g.input.append(inp)
    # declared types keep their fixed dimensions (custom ops have no shape inference); symbolic ones are dropped,
    # inference recomputes them from the bound inputs
    g.output.extend(_fixed_dims_only(vi) for vi in src.output)
    g.value_info.extend(_fixed_dims_only(vi) for vi in src.value_info)
    if sk.functions and hasattr(onnx, "inliner"):
        sk = onnx.inliner.inline_local_functions(sk)
    return sk


def _fixed_dims_only(vi: Any) -> Any:
    """A copy of a value info with its symbolic dimensions cleared."""
    onnx = import_onnx()
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    if out.type.HasField("tensor_type") and out.type.tensor_type.HasField("shape"):
        for d in out.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
    return out


def _empty_tensor(init: Any) -> Any:
    """An initializer's name, dims and type without its data."""
    onnx = import_onnx()
    t = onnx.TensorProto()
    t.name = init.name
    t.dims.extend(init.dims)
    t.data_type = init.data_type
    return t


class TensorTable:
    """Shapes, element types and sizes of every tensor after shape inference."""

    def __init__(self, types: Mapping[str, Any], float_itemsize: int | None) -> None:
        self.types = types
        self.float_itemsize = float_itemsize
        self.extra_numel: dict[str, int] = {}  # sequences: elements of all their tensors

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in t.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                return None
            dims.append(int(d.dim_value))
        return tuple(dims)

    def elem(self, name: str) -> int:
        t = self.types.get(name)
        if t is None:
            return 0
        if t.HasField("tensor_type"):
            return int(t.tensor_type.elem_type)
        if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
            return int(t.sequence_type.elem_type.tensor_type.elem_type)
        return 0

    def floating(self, name: str) -> bool:
        return ELEM.get(self.elem(name), (0, False, ""))[1]

    def dtype(self, name: str) -> str | None:
        return ELEM.get(self.elem(name), (0, False, None))[2]

    def itemsize(self, name: str) -> int:
        size, floating, _ = ELEM.get(self.elem(name), (0, False, ""))
        return self.float_itemsize if (floating and self.float_itemsize is not None) else size

    def numel(self, name: str) -> int:
        if name in self.extra_numel:
            return self.extra_numel[name]
        s = self.shape(name)
        return math.prod(s) if s is not None else 0

    def nbytes(self, name: str) -> int:
        return self.numel(name) * self.itemsize(name)

    def known(self, name: str) -> bool:
        return name in self.extra_numel or self.shape(name) is not None


def _collect_types(model: Any) -> dict[str, Any]:
    """The type of every value an inferred model declares (inputs, value infos, outputs, initializers)."""
    onnx = import_onnx()
    types: dict[str, Any] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.ByteSize():
            types[vi.name] = vi.type
    for init in model.graph.initializer:
        types[init.name] = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def static_shape(t: Any) -> tuple[int, ...] | None:
    """The dimensions of a tensor type, or None when one is not a number."""
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def infer_types(sk: Any, label: str, rounds: int = 6) -> tuple[dict[str, Any], str]:
    """Types of every tensor: ``onnx.shape_inference`` with data propagation, then, while some
    shapes stay unknown, fold small constant subgraphs (shape arithmetic) and infer again.
    Also returns why a shape is still missing (strict inference's error), or ''."""
    onnx = import_onnx()
    model = sk
    values: dict[str, np.ndarray] = {}
    types: dict[str, Any] = {}
    for _ in range(rounds):
        try:
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        except Exception as e:
            raise ProfileError(f"rotafx: onnx shape inference failed on {label}: {first_line(e)}") from e
        types = _collect_types(inferred)
        missing = [o for n in model.graph.node for o in n.output if o and static_shape(types.get(o)) is None
                   and (types.get(o) is None or types[o].HasField("tensor_type"))]
        if not missing:
            break
        folded = _fold_small_constants(model, types, values)
        if folded is None:
            break
        model = folded
    why = ""
    if any(static_shape(types.get(o)) is None for n in model.graph.node for o in n.output if o):
        try:  # strict mode says why a shape is missing (non-strict inference stays silent)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as e:
            why = first_line(e)
    return types, why


_FOLD_LIMIT = 4096  # elements: shape vectors, axes, scalars; never weights
# what onnx's reference evaluator raises for an op or input it cannot evaluate
_EVAL_ERRORS = (ValueError, TypeError, KeyError, IndexError, NotImplementedError, RuntimeError, AttributeError)


def _fold_small_constants(model: Any, types: Mapping[str, Any], values: dict[str, np.ndarray]) -> Any | None:
    """The model with every small computable tensor (Shape of a static shape, arithmetic on constants)
    replaced by a Constant node, or None when nothing new folds."""
    onnx = import_onnx()
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    opsets = {o.domain or "": o.version for o in model.opset_import}
    for init in model.graph.initializer:
        if init.name not in values and math.prod(init.dims) <= _FOLD_LIMIT and (init.raw_data or _has_field_data(init)):
            try:
                values[init.name] = numpy_helper.to_array(init)
            except (ValueError, TypeError, KeyError, NotImplementedError) as e:  # an exotic type: left unfolded
                log.debug("rotafx: cannot read initializer %s to fold constants: %s", init.name, first_line(e))
    new_nodes, changed = [], False
    for node in model.graph.node:
        outs = [o for o in node.output if o]
        std = node.domain in ("", "ai.onnx")
        ins = [i for i in node.input if i]
        result: list[np.ndarray] | None = None
        if std and node.op_type == "Constant":
            try:
                values[outs[0]] = np.asarray(_run_node(ReferenceEvaluator(node), {})[0])
            except _EVAL_ERRORS as e:  # a Constant the reference evaluator cannot build: left unfolded
                log.debug("rotafx: cannot evaluate Constant %s: %s", node.name or outs[0], first_line(e))
            new_nodes.append(node)
            continue
        if std and node.op_type in ("Shape", "Size") and ins:
            shape = static_shape(types.get(ins[0]))
            if shape is not None:
                a = attrs(node)
                if node.op_type == "Shape":
                    start, end = a.get("start", 0), a.get("end", len(shape))
                    result = [np.array(shape[slice(start, end)], dtype=np.int64)]
                else:
                    result = [np.array(math.prod(shape), dtype=np.int64)]
        elif (std and ins and all(i in values for i in ins) and node.op_type not in RANDOM_OPS
              and not subgraph_inputs(node) and not any(a.type in (5, 10) for a in node.attribute)):
            try:
                evaluator = ReferenceEvaluator(node, opsets=opsets)
                result = [np.asarray(r) for r in _run_node(evaluator, {i: values[i] for i in ins})]
            except _EVAL_ERRORS as e:  # an op the reference evaluator does not run: shape inference goes without it
                log.debug("rotafx: cannot fold %s %s: %s", node.op_type, node.name, first_line(e))
                result = None
        if result is not None and len(result) == len(outs) and all(r.size <= _FOLD_LIMIT for r in result):
            for o, r in zip(outs, result):
                values[o] = r
                new_nodes.append(onnx.helper.make_node("Constant", [], [o], value=numpy_helper.from_array(r, o)))
            changed = True
        else:
            new_nodes.append(node)
    if not changed:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    del out.graph.value_info[:]
    return out


def _run_node(evaluator: Any, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    """The outputs of a reference evaluator's run, as a list."""
    out = evaluator.run(None, dict(feeds))
    return list(out.values()) if isinstance(out, dict) else list(out)


def _has_field_data(t: Any) -> bool:
    """Whether a TensorProto holds its data in a typed field (not raw_data)."""
    return bool(t.float_data or t.int32_data or t.int64_data or t.double_data or t.uint64_data or t.string_data)


def constant_numel(node: Any) -> int:
    """Elements of the value a Constant node holds."""
    for a in node.attribute:
        if a.name in ("value", "sparse_value"):
            return math.prod(a.t.dims) if a.name == "value" else math.prod(a.sparse_tensor.dims)
        if a.name in ("value_floats", "value_ints"):
            return len(a.floats) or len(a.ints)
        if a.name in ("value_float", "value_int"):
            return 1
    return 0


def fill_missing_shapes(model: Any, shapes: Mapping[str, tuple[int, ...]], missing: list[tuple[str, Any]],
                         types: dict[str, Any], why: str = "") -> None:
    """Shapes that inference could not give (data-dependent ops): run the model once in onnxruntime to read them."""
    onnx = import_onnx()
    listing = ", ".join(f"{t!r} ({n.op_type} {n.name})" for t, n in missing[:5]) + (" ..." if len(missing) > 5 else "")
    try:
        ort = import_ort()
        full = load_onnx(model) if not isinstance(model, onnx.ModelProto) else model
        probe = onnx.ModelProto()
        probe.CopyFrom(full)
        for t, _ in missing:
            vi = onnx.ValueInfoProto()
            vi.name = t
            probe.graph.output.append(vi)
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = random_feeds(sess, shapes)
        values = sess.run([t for t, _ in missing], feeds)
    except Exception as e:
        why = f" (onnx shape inference: {why})" if why else ""
        raise ProfileError(f"rotafx: shape inference left {len(missing)} tensor(s) without a static shape: {listing}"
                           f"{why}; running the model in onnxruntime to measure them failed too ({first_line(e)}). "
                           f"Bind every dynamic dimension with input_shapes, or simplify the model "
                           f"(onnxsim) so that shapes are static") from e
    warnings.warn(f"rotafx: shape inference left {len(missing)} tensor(s) without a static shape ({listing}); "
                  f"measured them by running the model once in onnxruntime", stacklevel=3)
    for (t, _), v in zip(missing, values):
        arr = np.asarray(v)
        types[t] = onnx.helper.make_tensor_type_proto(onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))


def random_feeds(sess: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inputs for one onnxruntime run: random floats, zeros for token ids and indices (always in range)."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        shape = shapes.get(i.name) or tuple(d if isinstance(d, int) else 1 for d in i.shape)
        kind = i.type
        if "float" in kind:
            ftype = "float16" if "float16" in kind else "float64" if "double" in kind else "float32"
            feeds[i.name] = rng.standard_normal(shape).astype(ftype)
        elif "bool" in kind:
            feeds[i.name] = np.zeros(shape, dtype=bool)
        else:  # token ids and indices: zeros are always in range
            feeds[i.name] = np.zeros(shape, dtype="int32" if "int32" in kind else "int64")
    return feeds
