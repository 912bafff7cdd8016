"""Measure: each op's time in onnxruntime on this machine, from its profiler (``SessionOptions.enable_profiling``)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Sequence

from .load import import_onnx, import_ort
from .shapes import random_feeds

__all__ = ["measure_ops"]


def measure_ops(model: Any, shapes: Mapping[str, tuple[int, ...]], op_names: Sequence[str], runs: int) -> dict[str, float]:
    """Milliseconds per op (by name), averaged over ``runs`` runs after one warm-up.

    onnxruntime folds constants and fuses nodes ("fused node_linear",
    "node_MatMul_6/MatMulAddFusion"): a kernel is matched to an op by name, then by the
    name before its first "/", else charged to the op that ran before it.
    """
    onnx = import_onnx()
    ort = import_ort()
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"rotafx: measure_runs must be a positive integer (got {runs!r})")
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    # basic level folds constants (as the profile does) and keeps node names, so times map back to nodes
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3  # errors only: not every CastLike can be folded, which is fine
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "rotafx")
        src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        feeds = random_feeds(sess, shapes)
        for _ in range(runs + 1):
            sess.run(None, feeds)
        trace = sess.end_profiling()
        with open(trace) as f:
            events = json.load(f)
    known = set(op_names)
    run_events = sorted((ev for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run"),
                        key=lambda ev: ev["ts"])
    cutoff = run_events[0]["ts"] + run_events[0]["dur"] if len(run_events) > 1 else -1  # skip the warm-up run
    counted = max(1, len(run_events) - 1)
    total: dict[str, float] = {}
    current = op_names[0] if op_names else ""
    for ev in sorted((ev for ev in events if ev.get("cat") == "Node"), key=lambda ev: ev.get("ts", 0)):
        name = str(ev.get("name", ""))
        if not name.endswith("_kernel_time") or ev.get("ts", 0) < cutoff:
            continue
        node = name[: -len("_kernel_time")].removeprefix("fused ")
        match = node if node in known else node.split("/")[0]
        if match in known:
            current = match
        total[current] = total.get(current, 0.0) + float(ev.get("dur", 0)) / 1000.0
    return {n: t / counted for n, t in total.items()}
