"""Stages: cut an ONNX model at a partition's layer boundaries into one ONNX model per stage, and chain them in onnxruntime."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...layers import ProfileError, TensorInfo
from .load import elem_of_dtype, import_onnx, import_ort, load_onnx, subgraph_inputs
from .shapes import skeleton

__all__ = ["OnnxStage", "stage_ranges", "export_stages", "run_stages"]

log = logging.getLogger("rotafx")

@dataclass
class OnnxStage:
    """One stage of a partitioned ONNX model: its layers ``[start, end)``, the tensors it reads and hands on."""

    index: int
    start: int
    end: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    model: Any  # onnx.ModelProto
    path: Path | None = None
    device: str | None = None  # the node it runs on, when cut from a Partition


def stage_ranges(profile: Any, partition: Any) -> list[tuple[int, int]]:
    """Layer ranges ``[start, end)`` of the stages of ``partition``.

    ``partition``: a :class:`~rotafx.solve.Partition` (consecutive layers on one stage
    form a stage), a sequence of cut points (the first layer of every stage after the
    first), or one stage label per layer.

    >>> stage_ranges(type("P", (), {"num_layers": 5})(), [2, 4])
    [(0, 2), (2, 4), (4, 5)]
    """
    L = profile.num_layers
    labels = getattr(partition, "stages", None)
    if labels is None:
        cuts = [int(c) for c in partition]
        if len(cuts) == L and L > 1 and sorted(set(cuts)) != cuts:
            labels = cuts
        else:
            bad = [c for c in cuts if not 0 < c < L]
            if bad or cuts != sorted(set(cuts)):
                raise ValueError(f"rotafx: cut points must be increasing layer indices in 1..{L - 1}, got {cuts}")
            edges = [0, *cuts, L]
            return [(a, b) for a, b in zip(edges[:-1], edges[1:])]
    labels = list(labels)
    if len(labels) != L:
        raise ValueError(f"rotafx: the partition has {len(labels)} stage labels for {L} layers")
    ranges, start = [], 0
    for l in range(1, L + 1):
        if l == L or labels[l] != labels[l - 1]:
            ranges.append((start, l))
            start = l
    return ranges


def export_stages(model: Any, profile: Any, partition: Any, directory: str | os.PathLike | None = None,
                  *, prefix: str = "stage") -> list[OnnxStage]:
    """Cut an ONNX model into one ONNX model per stage of ``partition`` (and write ``{prefix}{i}.onnx`` files).

    ``profile`` is this model's :class:`~rotafx.ModelProfile` (``ModelProfile.from_onnx``).
    Each stage reads the tensors that cross the boundary before its first layer
    (``profile.boundaries``) and writes those its layers produce that later stages or the
    model output read; the weights and constant subgraphs it needs go with it. Chaining
    the stages with :func:`run_stages` gives the whole model's outputs.
    """
    onnx = import_onnx()
    if getattr(profile, "source", None) != "onnx":
        raise ValueError("rotafx: export_stages needs the profile of this ONNX model (ModelProfile.from_onnx)")
    full = load_onnx(model)
    if full.functions and hasattr(onnx, "inliner"):
        full = onnx.inliner.inline_local_functions(full)
    graph = full.graph
    inits = {i.name: i for i in graph.initializer}
    produced_by = {o: n for n in graph.node for o in n.output if o}
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(full, {}), check_type=False, strict_mode=False)
        ig = inferred.graph
        vis = {vi.name: vi for vi in list(ig.input) + list(ig.value_info) + list(ig.output)}
    except Exception as e:  # noqa: BLE001 - only for declaring stage inputs/outputs: the profile's types serve then
        log.debug("rotafx: shape inference of the whole model failed (%s); stage types come from the profile", e)
        vis = {}
    info = {t.name: t for b in profile.boundaries for t in b}
    model_inputs = {i.name for i in graph.input if i.name not in inits}
    stages = []
    for si, (a, b) in enumerate(stage_ranges(profile, partition)):
        available = [t.name for t in profile.boundaries[a]]
        # a tensor that crosses boundary b but not boundary a is made by layers a..b-1 (boundaries are contiguous)
        wanted = [t.name for t in profile.boundaries[b] if t.name not in set(available)]
        # nodes that compute the wanted tensors from the available ones, in graph order
        need, stack, seen = set(), list(wanted), set(available)
        while stack:
            t = stack.pop()
            if t in seen or t in inits or t not in produced_by:
                continue
            seen.add(t)
            n = produced_by[t]
            if id(n) in need:
                continue
            need.add(id(n))
            stack.extend(i for i in list(n.input) + subgraph_inputs(n) if i)
        nodes = [n for n in graph.node if id(n) in need]
        read = {i for n in nodes for i in list(n.input) + subgraph_inputs(n) if i}
        made = {o for n in nodes for o in n.output}
        # a model input the profile does not carry to this stage because its ops read only its shape or type
        # (Shape, Size, CastLike: free in the profile) is fed to the stage too: run_stages has every model input
        stage_inputs = [t for t in available if t in read] + sorted(
            t for t in read - made - set(available) - set(inits) if t in model_inputs)
        dangling = sorted(read - made - set(stage_inputs) - set(inits))
        if dangling or any(t not in made for t in wanted):
            raise ProfileError(f"rotafx: stage {si} (layers {a}..{b - 1}) cannot be cut out: "
                               f"{dangling or [t for t in wanted if t not in made]} is neither computed in it nor "
                               f"handed to it; was the profile made from this model?")
        g = onnx.helper.make_graph(
            nodes, f"{graph.name or 'model'}_{prefix}{si}",
            [_value_info(info.get(t, TensorInfo(t, 0, 0)), vis) for t in stage_inputs],
            [_value_info(info[t], vis) for t in wanted],
            [inits[i] for i in dict.fromkeys(i for i in read if i in inits)])
        m = onnx.helper.make_model(g, opset_imports=list(full.opset_import), ir_version=full.ir_version,
                                   producer_name="rotafx")
        m.functions.extend(full.functions)
        path = None
        if directory is not None:
            path = Path(directory) / f"{prefix}{si}.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            big = m.ByteSize() > 1_800_000_000
            onnx.save(m, str(path), save_as_external_data=big, location=f"{prefix}{si}.onnx.data" if big else None)
        device = partition.nodes[a] if hasattr(partition, "nodes") else None
        stages.append(OnnxStage(si, a, b, tuple(stage_inputs), tuple(wanted), m, path, device))
    return stages


def _value_info(t: TensorInfo, vis: Mapping[str, Any]) -> Any:
    """The declared type of a stage's input or output: inferred from the model, else the profile's shape and dtype."""
    onnx = import_onnx()
    if t.name in vis and vis[t.name].type.HasField("tensor_type") and vis[t.name].type.tensor_type.elem_type:
        return vis[t.name]
    return onnx.helper.make_tensor_value_info(t.name, elem_of_dtype(t.dtype), list(t.shape) if t.shape else None)


def run_stages(stages: Sequence[OnnxStage], feeds: Mapping[str, Any], *, providers: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
    """Run the stages one after another in onnxruntime, each fed from the tensors the earlier ones produced.

    Returns every tensor fed or handed on between stages (the model outputs among them).
    """
    ort = import_ort()
    env: dict[str, Any] = dict(feeds)
    for st in stages:
        src = str(st.path) if st.path is not None else st.model.SerializeToString()
        sess = ort.InferenceSession(src, providers=list(providers or ["CPUExecutionProvider"]))
        missing = [t for t in st.inputs if t not in env]
        if missing:
            raise ProfileError(f"rotafx: stage {st.index} needs {missing}, which no input or earlier stage provides")
        values = sess.run(list(st.outputs), {t: env[t] for t in st.inputs})
        env.update(zip(st.outputs, values))
    return env
