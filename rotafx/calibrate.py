"""Measured device figures: what a device achieves, timed with torch's own ops, saved as a file a topology can name.

:func:`calibrate` times, on one torch device and with the threads it will run with:

* matmuls over a grid of shapes ``(M, K, N)`` per dtype: achieved FLOP/s (``2·M·K·N`` per call);
* attention (``scaled_dot_product_attention``) over ``(batch·heads, sequence, head dim)``:
  achieved FLOP/s counted as the profile counts it (``4·BH·S²·D``, causal or not);
* convolutions (3x3, ``conv2d``) over their GEMM shape ``(M, K, N)``: a convolution runs
  at its own rate, not a matmul's;
* memory bandwidth by working-set size (copies into a buffer made once, 256 kB to 64 MB:
  bytes read + written per second; an op is priced at the bandwidth of its own size);
* the time per call of each op kind (:data:`OP_KINDS`: pointwise arithmetic, each family of
  transcendentals, layer norms, batch norms, reductions, softmax, gathers, copies, creation, and the launch of
  a matmul, a convolution and attention) from 16 elements to a few MB, by the bytes the
  profile says the call moves;
* the cost an op pays in a model's forward beyond its own call (module calls, the
  interpreter, cold caches): a net of tiny layers timed whole, less its ops priced by
  the tables above, per op; and the launch cost of one view;
* each codec's encode and decode time per input byte;
* with ``compiled=True``, the launch cost of code compiled by inductor (``torch.compile``): a
  compiled call's fixed cost, and each kernel's in it (pointwise ops fuse into their neighbours);
* for each other device of the host (``cpu`` and ``cuda:i``), transfer latency and bandwidth.

Each figure is the median of ``torch.utils.benchmark``'s blocked runs, with its spread
(inter-quartile range over the median); the full calibration times every shape and probe
in two passes and keeps the faster (a burst of other work slows one pass, not both). :class:`Calibration` looks figures up (rates
interpolated in log-space between measured shapes; above the grid the edge's rate, below it
the edge's time per call: a kernel never runs faster than its smallest measured call) and
reads and writes JSON or YAML with the machine it came from. A calibration file is input
from others: every field is checked (finite, positive, the right shape) when read.
"""

from __future__ import annotations

import bisect
import datetime
import functools
import json
import math
import os
import platform
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .units import first_line

__all__ = ["Calibration", "CalibrationError", "calibrate", "op_kind", "OP_KINDS", "MATMUL_M", "MATMUL_KN"]

FORMAT = "rotafx-calibration"
VERSION = 1
MATMUL_M = (1, 4, 16, 64, 256, 1024)
MATMUL_KN = (64, 256, 1024, 4096)
ATTENTION_BH = (2, 8, 32)
ATTENTION_S = (16, 64, 256, 1024)
ATTENTION_D = (32, 64, 128)
CONV_C = (3, 16, 64)  # 3x3 convolutions: input channels (K = 9 * C), output channels (N), output side (M = side^2)
CONV_N = (16, 64)
CONV_SIDE = (8, 32, 64)
KIND_NUMEL = (16, 1024, 16384, 262144, 2097152)  # elements per op-kind probe (quick: 16, 16384, 262144)

# Op kinds: ops that launch and stream alike. A frontend's op type (aten's ``add.Tensor``, ONNX's ``Add``) names
# its kind through these lists (lower case, overload and leading underscores dropped); a kind has its own time per
# call, measured by a probe of that kind. An op of no kind keeps the launch + roofline price.
_KIND_NAMES: dict[str, tuple[str, ...]] = {
    "pointwise": ("add", "sub", "rsub", "mul", "div", "neg", "relu", "relu6", "leaky_relu", "leakyrelu", "prelu",
                  "hardtanh", "clamp", "clamp_min", "clamp_max", "clip", "abs", "where", "masked_fill", "eq", "ne",
                  "lt", "le", "gt", "ge", "equal", "less", "lessorequal", "greater", "greaterorequal", "and", "or",
                  "xor", "not", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "logical_and", "logical_or",
                  "logical_not", "minimum", "maximum", "pow", "square", "floor", "ceil", "round", "sign", "trunc",
                  "remainder", "fmod", "mod", "floor_divide", "addcmul", "addcdiv", "lerp", "hardsigmoid", "hardswish",
                  "threshold", "diff", "isnan", "isinf", "nan_to_num", "dropout"),
    "tanh": ("tanh",),
    "gelu": ("gelu", "fastgelu", "biasgelu", "gelu_new"),
    "silu": ("silu", "sigmoid", "swish", "mish", "softplus", "elu", "selu", "celu", "log_sigmoid", "logsigmoid"),
    "exp": ("exp", "exp2", "expm1"),
    "sin": ("sin", "cos", "tan", "erf", "erfc", "erfinv", "log", "log1p", "log2", "log10", "atan", "asin", "acos",
            "sinh", "cosh", "atan2", "asinh", "acosh", "atanh"),
    "rsqrt": ("rsqrt", "sqrt", "reciprocal"),
    "norm": ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm", "instance_norm",
             "fused_rms_norm", "layernormalization", "groupnormalization", "instancenormalization", "simplifiedlayernormalization",
             "skiplayernormalization", "rmsnormalization", "skipsimplifiedlayernormalization"),
    # a batch norm at inference is a per-channel scale and shift (no statistics over the row): its own kind
    "batch_norm": ("batch_norm", "native_batch_norm", "native_batch_norm_legit_no_training", "native_batch_norm_legit",
                   "native_batch_norm_legit_functional", "cudnn_batch_norm", "miopen_batch_norm", "batchnorm",
                   "batchnormalization", "batch_norm_with_update", "batch_norm_no_update", "batch_norm_impl_index"),
    "reduction": ("sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "prod", "var", "std", "var_mean",
                  "std_mean", "cumsum", "cumprod", "logsumexp", "norm", "linalg_vector_norm", "all", "any",
                  "count_nonzero", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                  "adaptive_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
                  "max_pool3d", "max_pool2d_with_indices", "reducemean", "reducesum", "reducemax", "reducemin",
                  "reduceprod", "reducel1", "reducel2", "reducesumsquare", "reducelogsumexp",
                  "globalaveragepool", "averagepool", "maxpool", "globalmaxpool", "topk", "sort"),
    "softmax": ("softmax", "log_softmax", "softmin", "logsoftmax", "safe_softmax"),
    "gather": ("embedding", "index", "index_select", "gather", "take", "embedding_bag", "gatherelements",
               "gathernd"),
    "copy": ("cat", "concat", "stack", "clone", "contiguous", "copy", "to_copy", "to", "reshape", "flatten",
             "repeat", "repeat_interleave", "tile", "expand", "pad", "constant_pad_nd", "reflection_pad2d",
             "replication_pad2d", "roll", "flip", "tril", "triu", "trilu", "scatter", "scatter_add", "index_put",
             "index_copy", "slice_scatter", "select_scatter", "masked_scatter", "cast", "castlike", "transpose",
             "permute", "split", "slice", "squeeze", "unsqueeze", "identity", "scatternd", "scatterelements",
             "unfold", "col2im", "im2col", "pixel_shuffle", "channel_shuffle", "type_as", "view", "unbind"),
    "creation": ("arange", "zeros", "ones", "full", "empty", "new_ones", "new_zeros", "new_full", "new_empty",
                 "zeros_like", "ones_like", "full_like", "empty_like", "rand", "randn", "randint", "rand_like",
                 "randn_like", "scalar_tensor", "lift_fresh_copy", "linspace", "eye", "tensor", "constantofshape",
                 "range", "constant", "eyelike", "randomnormal", "randomuniform", "fill", "zero"),
    "matmul": ("linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum", "addbmm", "addmv", "mv", "dot",
               "gemm", "fusedmatmul", "matmulinteger", "qlinearmatmul", "grouped_mm"),
    "conv": ("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
             "conv", "convtranspose", "convinteger", "qlinearconv"),
    "attention": ("scaled_dot_product_attention", "scaled_dot_product_flash_attention_for_cpu",
                  "scaled_dot_product_efficient_attention", "scaled_dot_product_flash_attention",
                  "scaled_dot_product_cudnn_attention", "attention", "multiheadattention", "groupqueryattention"),
}
OP_KINDS = tuple(_KIND_NAMES)
_KIND_OF = {name: kind for kind, names in _KIND_NAMES.items() for name in names}
_KERNEL_KINDS = ("matmul", "conv", "attention")  # their work comes from a rate table; their probe is the launch
# a kind added after calibrations were written: priced by the kind it was part of when a file has no table for it
_EARLIER_KIND = {"batch_norm": "norm"}
# kinds inductor fuses into the kernel of a neighbour: in compiled code they launch nothing of their own
_FUSED_KINDS = ("pointwise", "tanh", "gelu", "silu", "exp", "sin", "rsqrt", "copy")


class CalibrationError(ValueError):
    """A calibration file or option that cannot be used; the message names the file, the field and the value."""


def _rate_key(m: int, k: int, n: int) -> tuple[float, float, float]:
    return math.log2(m), math.log2(k), math.log2(n)


def op_kind(op_type: str) -> str | None:
    """The kind (one of :data:`OP_KINDS`) of an op named by its frontend, or None when it has none.

    A fused op (ONNX's ``Relu(Conv)(fused)``, ``MatMul+Add(fused)``) is of the kind of the
    matmul, convolution or attention it contains, else of its first op.

    >>> op_kind("layer_norm.default"), op_kind("LayerNormalization"), op_kind("Relu(Conv)(fused)"), op_kind("foo")
    ('norm', 'norm', 'conv', None)
    """
    name = re.sub(r"^(torch\.)?(ops\.)?(aten|prims)\.", "", op_type.split("::")[-1])  # aten.add.Tensor: add
    words = [w.strip("_") for w in re.findall(r"[A-Za-z0-9_]+", name.split(".")[0].lower())]
    kinds = [_KIND_OF.get(w) for w in words if w and w != "fused"]
    return next((k for k in kinds if k in _KERNEL_KINDS), next((k for k in kinds if k is not None), None))


@dataclass
class Calibration:
    """What one device achieves, measured. Rates in FLOP/s, bandwidths in bytes/s, times in seconds.

    ``matmul[dtype]``, ``conv[dtype]`` and ``attention[dtype]`` map a shape to ``(rate, spread)``;
    ``op_times[kind]`` maps the bytes a call of that kind moves to its seconds per call,
    measured alone; ``op_context_s`` is what each op adds inside a model's eager forward (the
    Python around it, module calls included), ``graph_op_s`` inside an fx graph of the same
    calls, ``program_op_s`` inside an exported program's graph module; ``module_call_s`` is
    what one ``nn.Module`` call adds in an eager forward (a figure of the machine: the
    cost model spreads module calls over the ops, in ``op_context_s``);
    ``transfers["cpu->cuda:0"]`` is ``{"latency_s", "bandwidth_Bps"}``; ``codecs[name]`` is
    ``{"encode_s_per_byte", "decode_s_per_byte"}``. A calibration written before ``conv``,
    ``op_times`` and ``op_context_s`` existed has them empty and prices every op as
    ``op_overhead_s`` plus its roofline, as it did.

    >>> c = Calibration("cpu", 1, bandwidth_Bps=1e10, op_times={"tanh": {8: 2e-6, 8 << 20: 4e-3}}, op_context_s=1e-6)
    >>> from rotafx.layers import OpCost
    >>> round(c.op_time_s(OpCost(0, 8 << 20, None, False, "tanh.default")) * 1e3, 6)  # 1 us + the call at 8 MiB
    4.001
    """

    device: str
    threads: int
    matmul: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = field(default_factory=dict)
    attention: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = field(default_factory=dict)
    conv: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = field(default_factory=dict)
    bandwidth_Bps: float = 0.0
    bandwidth: dict[int, float] = field(default_factory=dict)  # bytes copied -> bytes/s (read + written)
    op_overhead_s: float = 0.0
    view_overhead_s: float = 0.0
    op_times: dict[str, dict[int, float]] = field(default_factory=dict)  # kind -> bytes moved -> seconds per call
    op_context_s: float = 0.0
    # what each op adds in an fx graph of plain torch calls, and in an exported program's graph module (torch.export:
    # what rotafx.load runs); 0 when not measured (a file from before them): op_context_s
    graph_op_s: float = 0.0
    program_op_s: float = 0.0
    # one nn.Module call in an eager forward, measured on its own (reported; op_context_s holds it, spread over the ops)
    module_call_s: float = 0.0
    # an exported program's own call (its input checks and pytree code): per stage (CostTables.stage_call_ms)
    program_call_s: float = 0.0
    codecs: dict[str, dict[str, float]] = field(default_factory=dict)
    # code compiled by inductor: {"call_s": a compiled call's fixed cost, "kernel_s": each kernel's launch in it}
    compiled: dict[str, float] = field(default_factory=dict)
    transfers: dict[str, dict[str, float]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    source: str = "measured"

    # -- lookups ------------------------------------------------------------------------------
    def matmul_flops(self, m: int, k: int, n: int, dtype: str = "float32") -> float | None:
        """Achieved FLOP/s of an ``(m, k) @ (k, n)`` matmul: trilinear in log2 of each size between the
        measured shapes, clamped at the grid's edges; None when ``dtype`` was not measured."""
        return _interpolate(self.matmul.get(dtype), (m, k, n))

    def attention_flops(self, batch_heads: int, seq: int, head_dim: int, dtype: str = "float32") -> float | None:
        """Achieved FLOP/s of attention at that size (the profile's FLOP count per second); None if not measured."""
        return _interpolate(self.attention.get(dtype), (batch_heads, seq, head_dim))

    def bandwidth_at(self, nbytes: float) -> float:
        """Bytes/s an op moving ``nbytes`` achieves: log-linear between the measured copy sizes, clamped at their
        ends (small working sets run from cache); ``bandwidth_Bps`` when no table was measured."""
        if not self.bandwidth:
            return self.bandwidth_Bps
        return math.exp(sum(w * math.log(self.bandwidth[s]) for s, w in _bracket(sorted(self.bandwidth), nbytes)))

    def peak_flops(self, dtype: str = "float32") -> float | None:
        """The best measured matmul rate for ``dtype`` (the compute roof of ops with no kernel of their own)."""
        rows = self.matmul.get(dtype)
        return max(r for r, _ in rows.values()) if rows else None

    def conv_flops(self, m: int, k: int, n: int, dtype: str = "float32") -> float | None:
        """Achieved FLOP/s of a convolution whose GEMM is ``(m, k) @ (k, n)``; None when not measured."""
        return _interpolate(self.conv.get(dtype), (m, k, n))

    def kind_time_s(self, kind: str, nbytes: float) -> float | None:
        """Seconds per call of an op of ``kind`` moving ``nbytes``, measured alone: log-log between the measured
        sizes; below the smallest, the smallest call's time; above the largest, the largest's bytes per second.
        A kind newer than the calibration (``batch_norm`` in a file from before it) takes the table of the
        kind it belonged to (``norm``). None when the kind was not measured."""
        rows = self.op_times.get(kind) or self.op_times.get(_EARLIER_KIND.get(kind, ""))
        if not rows:
            return None
        sizes = sorted(rows)
        if nbytes > sizes[-1]:
            return rows[sizes[-1]] * nbytes / sizes[-1]
        return math.exp(sum(w * math.log(rows[s]) for s, w in _bracket(sizes, nbytes)))

    def kernel_time_s(self, op: Any, dtype: str = "float32") -> float | None:
        """Seconds per call of the matmul, convolution or attention kernel ``op`` runs (``op.kernel``), from the
        rate measured at its shape; None when it has no kernel or no table for it.

        Above the measured grid the edge's rate holds; below it, on any axis, the call costs what a
        call at the grid's edge costs (``flops`` scaled up to the edge, at the edge's rate): a kernel
        never runs faster than its smallest measured call.
        """
        if op.kernel is None:
            return None
        kind, *shape = op.kernel
        if kind == "sdpa":
            tables = self.attention
        elif self.conv and op_kind(getattr(op, "op_type", "")) == "conv":
            tables = self.conv
        else:
            tables = self.matmul
        rows = tables.get(self._table(tables, dtype))
        if not rows:
            return None
        edge = [min(k[i] for k in rows) for i in range(3)]
        at = [max(x, e) for x, e in zip(shape, edge)]
        rate = _interpolate(rows, (at[0], at[1], at[2]))
        return op.flops * math.prod(a / max(x, 1) for a, x in zip(at, shape)) / rate if rate else None

    def op_time_s(self, op: Any, dtype: str = "float32", compiled: bool = False, runs_as: str = "modules") -> float:
        """One op's time in a model's forward.

        ``runs_as`` (:attr:`~rotafx.profile.ModelProfile.runs_as`) says what calls the op, which sets
        its context: an eager forward (``"modules"``) ``op_context_s``, an fx graph (``"graph"``)
        ``graph_op_s``, an exported program (``"program"``) ``program_op_s`` (each, when not
        measured, ``op_context_s``).

        ``compiled``: the op runs in code inductor compiled (the ``rotastellar`` backend with an
        inner compiler), priced with the compiled launch costs when this calibration measured them
        (``calibrate(compiled=True)``; else as eager): a view is free, a pointwise op fuses into its
        neighbours (no launch: its bytes at the bandwidth of its size); a matmul, convolution or
        attention costs one compiled kernel's launch (``compiled["kernel_s"]``, a tiny matmul's whole
        time in compiled code) plus what its kernel's time at its shape takes beyond the eager launch
        of its kind (so a call at the grid's edge costs ``kernel_s``); any other op ``kernel_s`` plus
        ``max(flops / best matmul rate, bytes / bandwidth at that size)``. A compiled call's own fixed
        cost (``compiled["call_s"]``, :attr:`compiled_call_s`) is per stage, not per op, and not in a
        layer's time: the cost model charges it once to each stage that runs a layer
        (:attr:`~rotafx.costmodel.CostTables.stage_call_ms`), as it does ``program_call_s``.

        ``op`` is a :class:`~rotafx.layers.OpCost`. A view costs the view's launch only. With
        op-kind tables (:data:`OP_KINDS`, from ``op.op_type``), an op costs ``op_context_s``
        plus its call measured alone: a matmul, convolution or attention its kernel's time at
        its shape (:meth:`kernel_time_s`), at least its kind's launch; any other kind the time
        per call of its kind at the bytes it moves (:meth:`kind_time_s`). Without them (an op of
        no kind, or a calibration from before the tables): ``op_overhead_s`` plus the kernel's
        time, or ``max(flops / best matmul rate, bytes_moved / bandwidth at that many bytes)``.
        The dtype's tables, else float32's.
        """
        kind = op_kind(getattr(op, "op_type", ""))
        if compiled and self.compiled:
            return self._compiled_op_s(op, kind, dtype)
        if op.view:
            return self.view_overhead_s
        alone = self.kind_time_s(kind, op.bytes_moved) if kind is not None else None
        work = self.kernel_time_s(op, dtype)
        if work is not None:
            if alone is None:
                return self.op_overhead_s + work
            return self._context_s(runs_as) + max(work, self.kind_time_s(kind, 0) or 0.0)
        if alone is not None and kind not in _KERNEL_KINDS:
            return self._context_s(runs_as) + alone
        peak = self.peak_flops(self._table(self.matmul, dtype))
        compute = op.flops / peak if peak else 0.0
        memory = op.bytes_moved / self.bandwidth_at(op.bytes_moved) if op.bytes_moved else 0.0
        return self.op_overhead_s + max(compute, memory)

    def _context_s(self, runs_as: str) -> float:
        own = {"graph": self.graph_op_s, "program": self.program_op_s}.get(runs_as, 0.0)
        return own or self.op_context_s

    def _compiled_op_s(self, op: Any, kind: str | None, dtype: str) -> float:
        if op.view:
            return 0.0
        memory = op.bytes_moved / self.bandwidth_at(op.bytes_moved) if op.bytes_moved else 0.0
        if kind in _FUSED_KINDS:
            return memory
        launch = self.compiled["kernel_s"]
        work = self.kernel_time_s(op, dtype)
        if work is not None:  # measured eagerly, launch included: only what the work takes beyond that launch
            eager_launch = self.kind_time_s(kind, 0) if kind is not None else None
            return launch + max(0.0, work - eager_launch) if eager_launch is not None else max(launch, work)
        peak = self.peak_flops(self._table(self.matmul, dtype))
        return launch + max(op.flops / peak if peak else 0.0, memory)

    @property
    def compiled_call_s(self) -> float | None:
        """The fixed cost of one call of inductor-compiled code (a stage), when measured (``compiled=True``)."""
        return self.compiled.get("call_s")

    @staticmethod
    def _table(tables: Mapping[str, Any], dtype: str) -> str:
        """The table for ``dtype``: its own, else float32's, else any measured one."""
        if dtype in tables:
            return dtype
        return "float32" if "float32" in tables else next(iter(tables), dtype)

    def layer_time_s(self, layer: Any, dtype: str = "float32", compiled: bool = False, runs_as: str = "modules") -> float:
        """A layer's time on this device: the sum of its ops' :meth:`op_time_s` (a layer with no op
        records, e.g. from ``from_layers``, as one op per entry of its ``work``), as compiled code
        with ``compiled``, called as ``runs_as`` says (:meth:`op_time_s`).

        >>> from rotafx.layers import LayerProfile, OpCost
        >>> c = Calibration("cpu", 1, bandwidth_Bps=1e10, op_times={"pointwise": {8: 2e-6}}, op_context_s=4e-6,
        ...                 graph_op_s=1e-6, program_op_s=9e-6)
        >>> relu = LayerProfile(0, "act", 0, 0, 0, 0, 0, 0, 8, op_costs=(OpCost(0, 8, None, False, "relu"),))
        >>> [round(c.layer_time_s(relu, runs_as=r) * 1e6, 3) for r in ("modules", "graph", "program")]
        [6.0, 3.0, 11.0]
        """
        from .layers import OpCost

        ops = layer.op_costs or tuple(OpCost(f, b, None, False) for f, b in (layer.work or ((layer.flops, layer.bytes_moved),)))
        return sum(self.op_time_s(op, dtype, compiled, runs_as) for op in ops)

    def codec_s(self, codec: str, nbytes: float) -> float:
        """Seconds to encode ``nbytes`` of activations with ``codec`` and decode them (0 when not measured)."""
        c = self.codecs.get(codec)
        return 0.0 if c is None else nbytes * (c["encode_s_per_byte"] + c["decode_s_per_byte"])

    # -- files ---------------------------------------------------------------------------------
    @property
    def process_message_ms(self) -> float | None:
        """The fixed cost of a message between two processes of the machine (ms), when measured (``processes=True``):
        the ``message_ms`` of the links between stage processes on it."""
        hop = self.transfers.get("process")
        return 1e3 * hop["latency_s"] if hop else None

    def to_dict(self) -> dict[str, Any]:
        def table(t: Mapping[str, Mapping[tuple[int, int, int], tuple[float, float]]]) -> dict[str, list[list[float]]]:
            return {dt: [[*shape, rate, spread] for shape, (rate, spread) in sorted(rows.items())] for dt, rows in t.items()}
        return {"format": FORMAT, "version": VERSION, "device": self.device, "threads": self.threads,
                "source": self.source, "machine": dict(self.machine),
                "bandwidth_Bps": self.bandwidth_Bps,
                "bandwidth": [[n, bps] for n, bps in sorted(self.bandwidth.items())],
                "op_overhead_s": self.op_overhead_s,
                "view_overhead_s": self.view_overhead_s,
                "op_context_s": self.op_context_s,
                "graph_op_s": self.graph_op_s,
                "program_op_s": self.program_op_s,
                "module_call_s": self.module_call_s,
                "program_call_s": self.program_call_s,
                "op_times": {k: [[n, t] for n, t in sorted(rows.items())] for k, rows in self.op_times.items()},
                "matmul": table(self.matmul), "attention": table(self.attention), "conv": table(self.conv),
                "codecs": {k: dict(v) for k, v in self.codecs.items()},
                **({"compiled": dict(self.compiled)} if self.compiled else {}),
                "transfers": {k: dict(v) for k, v in self.transfers.items()}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON (``.json``) or YAML (``.yaml``/``.yml``); returns the path."""
        p = Path(path)
        data = self.to_dict()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        elif p.suffix == ".json":
            text = json.dumps(data, indent=1)
        else:
            raise CalibrationError(f"rotafx: calibration file {p}: unknown suffix {p.suffix!r}; use .json, .yaml or .yml")
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Calibration":
        """Read a calibration file (JSON or YAML), checking every field; :class:`CalibrationError` names what is wrong."""
        p = Path(path)
        where = f"rotafx: calibration file {p}"
        if p.is_dir():
            raise CalibrationError(f"{where} is a directory; give the file `rotafx calibrate -o FILE` wrote")
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise CalibrationError(f"{where}: cannot read it ({e.strerror}); make one with `rotafx calibrate -o {p}`") from None
        if len(raw) > 16 << 20:
            raise CalibrationError(f"{where} is {len(raw)} bytes; a calibration is a few kB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CalibrationError(f"{where} is not text (not UTF-8); give the JSON or YAML file rotafx wrote") from None
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except RecursionError:
            raise CalibrationError(f"{where} is nested too deeply to be a calibration") from None
        except Exception as e:  # noqa: BLE001 - json and yaml errors: name the file and where
            first = first_line(e)
            raise CalibrationError(f"{where} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: "
                                   f"{first}") from None
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "rotafx: calibration") -> "Calibration":
        """A calibration from :meth:`to_dict`'s form, every field checked."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CalibrationError(f"{where}: not a rotafx calibration (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise CalibrationError(f"{where}: version {data.get('version')!r}; this rotafx reads version {VERSION}")

        def num(name: str, v: Any, positive: bool = True) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (positive and v == 0):
                raise CalibrationError(f"{where}: {name} must be a finite number {'> 0' if positive else '>= 0'}, "
                                       f"got {v!r}")
            return float(v)

        def table(name: str) -> dict[str, dict[tuple[int, int, int], tuple[float, float]]]:
            t = data.get(name, {})
            if not isinstance(t, Mapping):
                raise CalibrationError(f"{where}: {name} must map a dtype to rows, got {type(t).__name__}")
            out: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = {}
            for dt, rows in t.items():
                if not isinstance(rows, list):
                    raise CalibrationError(f"{where}: {name}[{dt!r}] must be a list of rows")
                out[str(dt)] = {}
                for i, row in enumerate(rows):
                    if not isinstance(row, list) or len(row) != 5:
                        raise CalibrationError(f"{where}: {name}[{dt!r}][{i}] must be [a, b, c, rate, spread], got {row!r}")
                    dims = row[:3]
                    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
                        raise CalibrationError(f"{where}: {name}[{dt!r}][{i}]: sizes must be positive integers, "
                                               f"got {dims!r}")
                    out[str(dt)][(dims[0], dims[1], dims[2])] = (num(f"{name}[{dt!r}][{i}] rate", row[3]),
                                                                 num(f"{name}[{dt!r}][{i}] spread", row[4], False))
            return out

        def nested(name: str, fields: Sequence[str]) -> dict[str, dict[str, float]]:
            t = data.get(name, {})
            if not isinstance(t, Mapping):
                raise CalibrationError(f"{where}: {name} must be a mapping, got {type(t).__name__}")
            out = {}
            for k, v in t.items():
                if not isinstance(v, Mapping) or set(fields) - set(v):
                    raise CalibrationError(f"{where}: {name}[{k!r}] needs {list(fields)}")
                out[str(k)] = {f: num(f"{name}[{k!r}].{f}", v[f], False) for f in fields}
            return out

        def compiled_figures() -> dict[str, float]:  # optional: measured with compiled=True
            c = data.get("compiled", {})
            if not isinstance(c, Mapping) or (c and {"call_s", "kernel_s"} - set(c)):
                raise CalibrationError(f"{where}: compiled must be a mapping with call_s and kernel_s (seconds), "
                                       f"got {c!r}")
            return {f: num(f"compiled.{f}", c[f], False) for f in ("call_s", "kernel_s")} if c else {}

        device = data.get("device")
        if not isinstance(device, str) or not device:
            raise CalibrationError(f"{where}: device must be a torch device name, got {device!r}")
        threads = data.get("threads")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CalibrationError(f"{where}: threads must be a positive integer, got {threads!r}")
        machine = data.get("machine", {})
        bw_rows = data.get("bandwidth", [])
        if not isinstance(bw_rows, list):
            raise CalibrationError(f"{where}: bandwidth must be a list of [bytes, bytes per second] rows")
        bandwidth: dict[int, float] = {}
        for i, row in enumerate(bw_rows):
            if not isinstance(row, list) or len(row) != 2 or isinstance(row[0], bool) or not isinstance(row[0], int) \
                    or row[0] < 1:
                raise CalibrationError(f"{where}: bandwidth[{i}] must be [bytes (a positive integer), bytes per second], "
                                       f"got {row!r}")
            bandwidth[row[0]] = num(f"bandwidth[{i}] rate", row[1])
        kinds = data.get("op_times", {})  # optional: files from before the op-kind tables have none
        if not isinstance(kinds, Mapping):
            raise CalibrationError(f"{where}: op_times must map an op kind to [bytes, seconds] rows, "
                                   f"got {type(kinds).__name__}")
        op_times: dict[str, dict[int, float]] = {}
        for kind, rows in kinds.items():
            if not isinstance(rows, list) or not rows:
                raise CalibrationError(f"{where}: op_times[{kind!r}] must be a non-empty list of [bytes, seconds] rows, "
                                       f"got {rows!r}")
            op_times[str(kind)] = {}
            for i, row in enumerate(rows):
                if not isinstance(row, list) or len(row) != 2 or isinstance(row[0], bool) or \
                        not isinstance(row[0], int) or row[0] < 1:
                    raise CalibrationError(f"{where}: op_times[{kind!r}][{i}] must be [bytes (a positive integer), "
                                           f"seconds per call], got {row!r}")
                op_times[str(kind)][row[0]] = num(f"op_times[{kind!r}][{i}] seconds", row[1])
        return cls(bandwidth=bandwidth, device=device, threads=threads, matmul=table("matmul"), attention=table("attention"),
                   conv=table("conv"), op_times=op_times,
                   op_context_s=num("op_context_s", data.get("op_context_s", 0.0), False),
                   module_call_s=num("module_call_s", data.get("module_call_s", 0.0), False),
                   graph_op_s=num("graph_op_s", data.get("graph_op_s", 0.0), False),
                   program_op_s=num("program_op_s", data.get("program_op_s", 0.0), False),
                   program_call_s=num("program_call_s", data.get("program_call_s", 0.0), False),
                   bandwidth_Bps=num("bandwidth_Bps", data.get("bandwidth_Bps")),
                   op_overhead_s=num("op_overhead_s", data.get("op_overhead_s"), False),
                   view_overhead_s=num("view_overhead_s", data.get("view_overhead_s"), False),
                   codecs=nested("codecs", ("encode_s_per_byte", "decode_s_per_byte")),
                   compiled=compiled_figures(),
                   transfers=nested("transfers", ("latency_s", "bandwidth_Bps")),
                   machine=dict(machine) if isinstance(machine, Mapping) else {},
                   source=str(data.get("source", "measured")))


def _bracket(grid: Sequence[int], x: float) -> list[tuple[int, float]]:
    """The grid values around ``x`` with their weights, linear in log(x); clamped at the grid's ends."""
    x = min(max(x, grid[0]), grid[-1])
    j = bisect.bisect_left(grid, x)
    if grid[j] == x or j == 0:
        return [(grid[j], 1.0)]
    lo, hi = grid[j - 1], grid[j]
    w = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return [(lo, 1.0 - w), (hi, w)]


def _interpolate(rows: Mapping[tuple[int, int, int], tuple[float, float]] | None, at: tuple[int, int, int]) -> float | None:
    """Trilinear interpolation in log2 of the sizes over the measured grid; missing corners are skipped."""
    if not rows:
        return None
    corners = [_bracket(sorted({k[i] for k in rows}), at[i]) for i in range(3)]  # per axis: (grid value, weight)
    total = weight = 0.0
    for a, wa in corners[0]:
        for b, wb in corners[1]:
            for c, wc in corners[2]:
                if (a, b, c) in rows:
                    total += wa * wb * wc * math.log(rows[(a, b, c)][0])
                    weight += wa * wb * wc
    if weight == 0.0:  # no measured corner around it (a shape past the measured budget): the nearest one
        key = min(rows, key=lambda k: sum((a - b) ** 2 for a, b in zip(_rate_key(*k), _rate_key(*at))))
        return rows[key][0]
    return math.exp(total / weight)


# -- measuring ------------------------------------------------------------------------------------


def _timer(fn: Callable[[], Any], threads: int, min_run_time: float) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and its spread (IQR / median), by torch.utils.benchmark."""
    from torch.utils.benchmark import Timer

    fn()  # warm-up
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return float(m.median), float(m.iqr / m.median) if m.median > 0 else 0.0


def _best_of(jobs: Mapping[Any, Callable[[], Callable[[], Any]]], threads: int, run: float,
             passes: int) -> dict[Any, tuple[float, float]]:
    """Each job (a maker of the call to time) timed in ``passes`` passes over all of them: its fastest pass's median
    seconds per call and that pass's spread (a burst of other work on the machine slows one pass, not every one)."""
    best: dict[Any, tuple[float, float]] = {}
    for _ in range(passes):
        for key, make in jobs.items():
            t = _timer(make(), threads, run)
            if key not in best or t[0] < best[key][0]:
                best[key] = t
    return best


def _machine(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
                            "torch": str(torch.__version__), "threads": threads, "cpu_count": os.cpu_count(),
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def calibrate(device: str | torch.device = "cpu", *, dtypes: Sequence[str] | None = None, threads: int | None = None,
              quick: bool = False, flop_budget: float | None = None, processes: bool = False,
              compiled: bool = False, progress: Callable[[str], None] | None = None) -> Calibration:
    """Measure ``device``; a :class:`Calibration` (save it with ``.save("cpu.yaml")``).

    ``dtypes``: the matmul, convolution and attention dtypes to measure (default float32 on
    CPU; float16, bfloat16 and float32 on CUDA; op kinds are timed in float32). ``threads``: torch intra-op threads while timing (default
    the current setting: calibrate with the threads you deploy with). ``quick``: fewer
    shapes, one pass and shorter runs (about 6 s on a 2-core CPU, against about 25 s; for
    tests and a first look). ``flop_budget``:
    shapes whose one call exceeds this many FLOPs are skipped (default 2e9 on CPU, 1e13 on
    CUDA; lookups beyond use the nearest measured shape). ``processes``: also measure a hop
    between two processes of this host over gloo (what a deployed plan's stages do), as
    ``transfers["process"]``: its fixed cost per message and its bandwidth (a link's
    ``message_ms``, :attr:`Calibration.process_message_ms`). ``compiled``: also measure the launch
    cost of code inductor compiled (``Calibration.compiled``: a compiled call's fixed cost and each
    kernel's in it; two small graphs compiled, a further 10-30 s on a 2-core CPU), which prices
    the stages of the ``rotastellar`` backend with an inner compiler. ``progress`` receives one
    line per step (the CLI prints them to stderr).

    Returns:
        The :class:`Calibration` of ``device``, with the machine it came from.

    Raises:
        CalibrationError: ``device`` is not a device of this machine, ``threads`` is not a
            positive integer, or ``dtypes`` names something that is not a torch dtype.

    >>> cal = calibrate("cpu", quick=True, threads=1)  # doctest: +SKIP
    >>> cal.op_time_s(OpCost(0, 1 << 20, None, False, "tanh.default"))  # doctest: +SKIP
    """
    from .devices import existing_device

    dev = existing_device(device, "device", CalibrationError)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CalibrationError(f"rotafx: threads must be a positive integer, got {threads!r}")
    threads = threads or torch.get_num_threads()
    if dtypes is None:
        dtypes = ("float16", "bfloat16", "float32") if dev.type == "cuda" else ("float32",)
    bad = [d for d in dtypes if not isinstance(d, str) or not isinstance(getattr(torch, d, None), torch.dtype)]
    if bad:
        raise CalibrationError(f"rotafx: dtypes {bad!r} are not torch dtypes; use names such as 'float32', 'float16'")
    budget = flop_budget if flop_budget is not None else (1e13 if dev.type == "cuda" else 2e9)
    run = 0.02 if quick else 0.1
    grid_run = 0.02  # per shape and pass of the rate grids and op kinds (about 250 in all)
    say = progress or (lambda _msg: None)
    cal = Calibration(device=str(dev), threads=threads, machine=_machine(dev, threads))
    passes = 1 if quick else 2
    ms = MATMUL_M[::2] if quick else MATMUL_M
    kns = MATMUL_KN[::2] if quick else MATMUL_KN  # quick: from 64, the launch probe's widths
    F = torch.nn.functional
    with torch.no_grad():
        for dt in dtypes:
            dtype = getattr(torch, dt)

            def full(*shape: int) -> torch.Tensor:
                return torch.full(shape, 0.5, device=dev, dtype=dtype)

            def mm(m: int, k: int, n: int) -> Callable[[], Any]:
                a, b = full(m, k), full(k, n)
                return lambda: torch.mm(a, b)

            def sdpa(bh: int, s: int, d: int) -> Callable[[], Any]:
                q = torch.randn(1, bh, s, d, device=dev).to(dtype)
                return lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)

            def conv(c: int, n: int, side: int) -> Callable[[], Any]:
                x, w = full(1, c, side, side), full(n, c, 3, 3)
                return lambda: F.conv2d(x, w, padding=1)

            grids = {  # table -> {shape as looked up: (FLOPs of one call, the call's maker)}
                "matmul": {(m, k, n): (2 * m * k * n, lambda m=m, k=k, n=n: mm(m, k, n))
                           for m in ms for k in kns for n in kns},
                "attention": {(bh, s, d): (4 * bh * s * s * d, lambda bh=bh, s=s, d=d: sdpa(bh, s, d))
                              for bh in ATTENTION_BH[::2 if quick else 1] for s in ATTENTION_S[:3 if quick else None]
                              for d in ATTENTION_D[:2 if quick else None]},
                "conv": {(side * side, 9 * c, n): (2 * side * side * 9 * c * n, lambda c=c, n=n, side=side: conv(c, n, side))
                         for c in CONV_C for n in CONV_N for side in CONV_SIDE[:2 if quick else None]},
            }
            for name, grid in grids.items():
                jobs = {shape: make for shape, (flops, make) in grid.items() if flops <= budget}
                times = _best_of(jobs, threads, grid_run, passes)
                getattr(cal, name)[dt] = {shape: (grid[shape][0] / t, spread) for shape, (t, spread) in times.items()}
                rates = [r for r, _ in getattr(cal, name)[dt].values()]
                say(f"calibrate {dev}: {name} {dt}: {len(rates)} shapes, {min(rates) / 1e9:.1f}-{max(rates) / 1e9:.1f} "
                    f"GFLOP/s")
        # copies into a buffer made once (a fresh allocation would time page faults), by working-set size

        def copy(numel: int) -> Callable[[], Any]:
            src = torch.randn(numel, device=dev)
            dst = torch.empty_like(src)
            return lambda: dst.copy_(src)

        copies = {8 << log2: (lambda n=1 << log2: copy(n)) for log2 in ((16, 20, 22, 24) if quick else (16, 18, 20, 22, 24))}
        for nbytes, (t, _) in _best_of(copies, threads, run / passes, passes).items():  # 256 kB .. 64 MB of float32
            cal.bandwidth[nbytes] = nbytes / t
        cal.bandwidth_Bps = cal.bandwidth[max(cal.bandwidth)]
        say(f"calibrate {dev}: copy bandwidth {min(cal.bandwidth.values()) / 1e9:.1f}-"
            f"{max(cal.bandwidth.values()) / 1e9:.1f} GB/s ({len(cal.bandwidth)} sizes)")
        # each op kind's time per call, alone, from a few elements to a few MB, by the bytes the profile counts
        sizes = KIND_NUMEL[0:1] + KIND_NUMEL[2:4] if quick else KIND_NUMEL
        probes = {(kind, numel): (lambda kind=kind, numel=numel: _kind_probe(kind, numel, dev)[0])
                  for kind in OP_KINDS for numel in (sizes[:1] if kind in _KERNEL_KINDS else sizes)}
        for (kind, numel), (t, _) in _best_of(probes, threads, grid_run, passes).items():
            # the bytes the profile counts for that call: the same probe built on meta tensors
            cal.op_times.setdefault(kind, {})[_kind_probe(kind, numel, torch.device("meta"))[1]] = t
        for kind, rows in cal.op_times.items():
            say(f"calibrate {dev}: {kind}: " + ", ".join(f"{t * 1e6:.1f} us at {_fmt_bytes(n)}" for n, t in sorted(rows.items())))
        # the launch cost of an op of no kind (a chain of different small ops) and of a view
        a, b, idx = torch.randn(4, 8, device=dev), torch.randn(4, 8, device=dev), torch.tensor([0, 2], device=dev)

        def ops() -> Any:
            x = torch.add(a, b)
            x = torch.mul(x, b)
            x = torch.relu(x)
            x = torch.tanh(x)
            x = torch.neg(x)
            y = x.sum(-1, keepdim=True)
            x = torch.sub(x, y)
            x = x[idx]
            x = torch.cat([x, x])
            return x.clone()

        def views() -> Any:
            x = a.view(8, 4)
            x = x.transpose(0, 1)
            x = x.unsqueeze(0)
            x = x.squeeze(0)
            x = x.expand(4, 8)
            return x.narrow(0, 0, 2)

        net = _launch_probe().to(dev).eval()
        x = torch.randn(1, 16, _PROBE_WIDTH, device=dev)
        # the same forward three ways: the modules (eager), the same code with each module's function called
        # directly (no module call: what an fx graph of the calls runs), and torch.export's program of it
        # (rotafx.load's stages); and a one-op program for a program's own call
        functions = [block.functions() for block in net]

        def functional() -> Any:
            y = x
            for f in functions:
                y = _probe_block(y, *f)
            return y

        jobs = {"ops": lambda: ops, "views": lambda: views, "net": lambda: lambda: net(x),
                "functional": lambda: functional}
        try:
            with torch.no_grad():
                program = torch.export.export(net, (x,)).module()
                one = torch.export.export(_OneOp().to(dev), (x,)).module()
            jobs.update(program=lambda: lambda: program(x), one=lambda: lambda: one(x))
        except Exception as e:  # noqa: BLE001 - torch.export's many errors: the program figures stay unmeasured
            say(f"calibrate {dev}: torch.export failed on the probe ({first_line(e)}); the exported-program "
                f"figures are not measured (priced as eager)")
        best = _best_of(jobs, threads, run / passes, passes)
        t_ops, t_views, t_net, t_fn = (best[k][0] for k in ("ops", "views", "net", "functional"))
        cal.view_overhead_s = t_views / 6
        # what an op adds in a forward: a small transformer-like net (its matmuls and attention inside the measured
        # grids) timed whole, less its ops as this calibration prices them alone, per op, each way (a view is priced
        # view_overhead_s in each); the modules less the functions, per module call
        from .layers import OpCost
        from .profile import ModelProfile

        # profiled on the CPU (the same probe, the same seed): a trace of CUDA weights with a CPU input would fail
        prof = ModelProfile.from_pytorch(net if dev.type == "cpu" else _launch_probe().eval(), (x.to("cpu"),))
        costs = [c for layer in prof.layers for c in layer.op_costs]
        n_ops = max(2, sum(1 for c in costs if not c.view))
        n_calls = max(1, sum(layer.module_calls for layer in prof.layers))
        priced = sum(cal.op_time_s(c) for c in costs)  # no context yet: each op as priced alone
        add = cal.op_time_s(OpCost(0, 3 * x.numel() * x.element_size(), None, False, "add"))
        if priced >= t_fn:
            say(f"calibrate {dev}: the probe ran in {t_fn * 1e6:.0f} us, less than its ops priced alone "
                f"({priced * 1e6:.0f} us): its op contexts come out 0 (a crowded machine, or a grid that misses its "
                f"shapes)")
        cal.op_context_s = max(0.0, (t_net - priced) / n_ops)
        cal.graph_op_s = max(0.0, (t_fn - priced) / n_ops)
        cal.module_call_s = max(0.0, (t_net - t_fn) / n_calls)
        if "program" in best:  # t_prog = call + n_ops * context + priced, and t_one = call + context + add
            t_prog, t_one = best["program"][0], best["one"][0]
            cal.program_op_s = max(0.0, (t_prog - t_one - (priced - add)) / (n_ops - 1))
            cal.program_call_s = max(0.0, t_one - add - cal.program_op_s)
        cal.op_overhead_s = cal.op_context_s + t_ops / 10
        say(f"calibrate {dev}: {cal.op_context_s * 1e6:.1f} us per op in an eager forward ({cal.module_call_s * 1e6:.1f} "
            f"us per module call), {cal.graph_op_s * 1e6:.1f} us in an fx graph, {cal.program_op_s * 1e6:.1f} us in an "
            f"exported program "
            f"({cal.program_call_s * 1e6:.1f} us per program call), {cal.op_overhead_s * 1e6:.1f} us per op of no "
            f"kind, {cal.view_overhead_s * 1e6:.1f} us per view")
        if compiled:
            say(f"calibrate {dev}: compiling two probes with inductor (10-30 s) ...")
            cal.compiled = _compiled_launch(dev, threads, run, passes)
            say(f"calibrate {dev}: compiled code: {cal.compiled['call_s'] * 1e6:.1f} us per call, "
                f"{cal.compiled['kernel_s'] * 1e6:.1f} us per kernel")
        from .wire import CODECS, decode, encode

        x = torch.randn(1 << (18 if quick else 20), device=dev)
        nbytes = x.numel() * x.element_size()
        for codec in CODECS:
            payload, scale = encode(x, codec)
            te, _ = _timer(lambda: encode(x, codec), threads, run)
            td, _ = _timer(lambda: decode(payload, scale, x, dev), threads, run)
            cal.codecs[codec] = {"encode_s_per_byte": te / nbytes, "decode_s_per_byte": td / nbytes}
            say(f"calibrate {dev}: codec {codec}: encode {nbytes / te / 1e9:.2f} GB/s, decode {nbytes / td / 1e9:.2f} GB/s")
        for other in _other_devices(dev):
            tiny, chunk = torch.ones(1, device=dev), torch.randn(1 << 22, device=dev)
            lat, _ = _timer(lambda: tiny.to(other), threads, run)
            tb, _ = _timer(lambda: chunk.to(other), threads, run)
            cal.transfers[f"{dev}->{other}"] = {"latency_s": lat,
                                                "bandwidth_Bps": chunk.numel() * chunk.element_size() / max(tb - lat, 1e-9)}
            say(f"calibrate {dev}: to {other}: {lat * 1e6:.1f} us, "
                f"{_rate(cal.transfers[f'{dev}->{other}']['bandwidth_Bps'])}")
    if processes:
        say("calibrate: a hop between two processes over gloo ...")
        cal.transfers["process"] = measure_process_hop(repeats=15 if quick else 40)
        hop = cal.transfers["process"]
        say(f"calibrate: process hop: {hop['latency_s'] * 1e6:.1f} us per message, {_rate(hop['bandwidth_Bps'])}")
    return cal


# the other end of measure_process_hop: receives each message and sends it back
_ECHO = r"""
import datetime, sys, torch, torch.distributed as dist
port, sizes, reps = int(sys.argv[1]), [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
store = dist.TCPStore("127.0.0.1", port, 2, False, timeout=datetime.timedelta(seconds=60))
pg = dist.ProcessGroupGloo(store, 1, 2, datetime.timedelta(seconds=60))
for n in sizes:
    buf = torch.zeros(n, dtype=torch.uint8)
    for _ in range(reps):
        pg.recv([buf], 0, 0).wait()
        pg.send([buf], 0, 0).wait()
"""

PROCESS_HOP_SIZES = (64, 4096, 1 << 16, 1 << 20, 1 << 22)


def measure_process_hop(sizes: Sequence[int] = PROCESS_HOP_SIZES, repeats: int = 40) -> dict[str, float]:
    """One-way time of a message between two processes of this host over gloo (half a round trip, median after
    a warm-up), for each size in ``sizes``; fitted as ``latency_s + bytes / bandwidth_Bps``.

    Returns:
        ``{"latency_s", "bandwidth_Bps"}``.

    Raises:
        CalibrationError: the second process could not start or join (its message).
    """
    import statistics
    import subprocess
    import time

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", _ECHO, str(port), ",".join(map(str, sizes)), str(repeats)],
                             stderr=subprocess.PIPE, text=True)
    try:
        store = dist.TCPStore("127.0.0.1", port, 2, True, timeout=datetime.timedelta(seconds=60))
        pg = dist.ProcessGroupGloo(store, 0, 2, datetime.timedelta(seconds=60))
        medians = []
        for n in sizes:
            buf = torch.zeros(n, dtype=torch.uint8)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                pg.send([buf], 1, 0).wait()
                pg.recv([buf], 1, 0).wait()
                times.append((time.perf_counter() - t0) / 2)
            medians.append(statistics.median(times[max(1, repeats // 5):]))
        child.wait(timeout=60)
    except Exception as e:  # noqa: BLE001 - gloo or the store: say what the other process said
        child.kill()
        err = (child.communicate()[1] or "").strip().splitlines()
        raise CalibrationError(f"rotafx: the process-hop measurement failed: {first_line(e)}"
                               + (f" (the other process: {err[-1]})" if err else "")) from None
    latency, bandwidth = fit_latency_bandwidth(sizes, medians)
    return {"latency_s": latency, "bandwidth_Bps": bandwidth}


NO_SLOPE_BPS = 1e15  # what fit_latency_bandwidth gives when the time does not grow with the size


def _rate(bps: float) -> str:
    """A fitted bandwidth as people read it; a fit whose times did not grow with the size says so."""
    if bps >= 0.999 * NO_SLOPE_BPS:
        return "time did not grow with the message size (no bandwidth term)"
    return f"{bps / 1e9:.2f} GB/s"


def fit_latency_bandwidth(sizes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """``(latency_s, bandwidth_Bps)`` of ``seconds ~ latency + size / bandwidth``, least squares; the latency no
    lower than zero and no higher than the smallest message's time.

    >>> fit_latency_bandwidth([0, 1e6, 2e6], [1e-4, 1e-4 + 1e-3, 1e-4 + 2e-3])
    (0.0001, 1000000000.0)
    >>> _rate(fit_latency_bandwidth([0, 1e6], [2e-4, 1e-4])[1])  # contention made the larger message faster
    'time did not grow with the message size (no bandwidth term)'
    """
    import numpy as np

    x, y = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    slope = max(float(slope), 1.0 / NO_SLOPE_BPS)
    latency = float(min(max(intercept, 0.0), y[np.argmin(x)]))
    return round(latency, 12), round(1.0 / slope, 3)


def _compiled_launch(dev: torch.device, threads: int, run: float, passes: int) -> dict[str, float]:
    """The launch costs of inductor-compiled code on ``dev``: one tiny matmul compiled, and a chain of eight (they
    do not fuse: a kernel each); each kernel's cost is the chain's extra time per matmul, a call's the rest of one."""
    ws = [torch.randn(16, 16, device=dev) for _ in range(8)]
    x = torch.randn(4, 16, device=dev)

    def chain(n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def f(a: torch.Tensor) -> torch.Tensor:
            for w in ws[:n]:
                a = a @ w
            return a
        return f

    try:
        fns = {n: torch.compile(chain(n), backend="inductor", dynamic=False) for n in (1, 8)}
        for fn in fns.values():
            fn(x)
    except Exception as e:  # noqa: BLE001 - inductor's errors (no C++ compiler, ...) have no common type
        raise CalibrationError(f"rotafx: calibrate(compiled=True) could not compile with inductor on {dev}: "
                               f"{type(e).__name__}: {first_line(e)}; calibrate without compiled=True "
                               f"(stages are then priced as eager code)") from None
    jobs = {n: (lambda fn=fn: lambda: fn(x)) for n, fn in fns.items()}
    for _ in range(3):  # a burst of other work can invert the two: time them again, at most twice more
        best = _best_of(jobs, threads, run / passes, passes)
        (one, _), (eight, _) = best[1], best[8]
        if eight > one:
            kernel = (eight - one) / 7
            return {"call_s": max(one - kernel, 0.0), "kernel_s": kernel}
    raise CalibrationError(f"rotafx: calibrate(compiled=True): eight compiled kernels timed {eight * 1e6:.1f} us, no "
                           f"more than one ({one * 1e6:.1f} us), three times: the machine is too busy to measure a "
                           f"kernel's launch; calibrate again when it is quieter")


class _OneOp(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + x


_PROBE_WIDTH = 64  # the probe's matmuls (16 x 64..128 x 64..192) and attention (BH 2, S 16, D 32) lie in the grids
# (the quick ones too: tests/test_contexts.py)


def _probe_block(x: torch.Tensor, heads: int, ln1: Callable, qkv: Callable, proj: Callable, ln2: Callable,
                 gate: Callable, up: Callable, down: Callable, act: Callable) -> torch.Tensor:
    """A pre-norm attention block with a gated MLP, calling what it is given (modules, or their functions)."""
    b, s, d = x.shape
    q, k, v = qkv(ln1(x)).split(d, dim=-1)
    q, k, v = (t.view(b, s, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + proj(a.transpose(1, 2).reshape(b, s, d))
    h = ln2(x)
    return x + down(act(gate(h)) * up(h))


class _ProbeBlock(torch.nn.Module):
    def __init__(self, d: int = _PROBE_WIDTH, heads: int = 2) -> None:
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.gate, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _probe_block(x, self.heads, self.ln1, self.qkv, self.proj, self.ln2, self.gate, self.up, self.down,
                            self.act)

    def functions(self) -> tuple:
        """The block's arguments to :func:`_probe_block` with each module replaced by its function."""
        F = torch.nn.functional

        def linear(m: torch.nn.Linear) -> Callable:
            return functools.partial(F.linear, weight=m.weight, bias=m.bias)

        def norm(m: torch.nn.LayerNorm) -> Callable:
            return functools.partial(F.layer_norm, normalized_shape=m.normalized_shape, weight=m.weight, bias=m.bias,
                                     eps=m.eps)

        return (self.heads, norm(self.ln1), linear(self.qkv), linear(self.proj), norm(self.ln2), linear(self.gate),
                linear(self.up), linear(self.down), F.silu)


def _launch_probe() -> torch.nn.Module:
    """Four small transformer-like blocks: what a model's forward does around its ops, at small sizes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(*(_ProbeBlock() for _ in range(4)))


def _fmt_bytes(n: int) -> str:
    return f"{n} B" if n < 1 << 10 else f"{n >> 10} kB" if n < 1 << 20 else f"{n >> 20} MB"


def _kind_probe(kind: str, numel: int, dev: torch.device) -> tuple[Callable[[], Any], int]:
    """A call of op kind ``kind`` on about ``numel`` float32 elements, and the bytes the profile counts it moving
    (its inputs, weights included, and its output; a gather the rows it returns, twice, and its indices)."""
    F = torch.nn.functional
    x = torch.rand(numel, device=dev) + 0.5
    y = torch.rand(numel, device=dev)
    cols = min(numel, 256)
    rows = max(1, numel // cols)
    m = x[:rows * cols].view(rows, cols)
    el = 4  # float32 bytes
    if kind == "pointwise":
        return (lambda: torch.add(x, y)), 3 * el * numel
    unary = {"tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu, "exp": torch.exp, "sin": torch.sin,
             "rsqrt": torch.rsqrt}
    if kind in unary:
        f = unary[kind]
        return (lambda: f(x)), 2 * el * numel
    if kind == "norm":
        w, b = torch.ones(cols, device=dev), torch.zeros(cols, device=dev)
        return (lambda: F.layer_norm(m, (cols,), w, b)), el * (2 * rows * cols + 2 * cols)
    if kind == "batch_norm":  # at inference, over 64 channels (NCHW): its input, output and four per-channel vectors
        c = 64 if numel >= 64 else numel
        nchw = x[:numel // c * c].view(1, c, numel // c, 1)
        stats = [torch.rand(c, device=dev) + 0.5 for _ in range(4)]
        return (lambda: F.batch_norm(nchw, stats[0], stats[1], stats[2], stats[3], False)), \
            el * (2 * (numel // c) * c + 4 * c)
    if kind == "reduction":
        return (lambda: m.sum(-1)), el * (rows * cols + rows)
    if kind == "softmax":
        return (lambda: torch.softmax(m, -1)), 2 * el * rows * cols
    if kind == "gather":
        table = torch.randn(1024, cols, device=dev)
        idx = torch.randint(0, 1024, (rows,), device=dev)
        return (lambda: F.embedding(idx, table)), 2 * el * rows * cols + 8 * rows
    if kind == "copy":
        return (lambda: torch.cat([x, y])), 4 * el * numel
    if kind == "creation":
        return (lambda: torch.arange(numel, dtype=torch.float32, device=dev)), el * numel
    if kind == "matmul":
        w, b = torch.randn(16, 16, device=dev), torch.randn(16, device=dev)
        a = torch.randn(1, 16, device=dev)
        return (lambda: F.linear(a, w, b)), el * (16 + 256 + 16 + 16)
    if kind == "conv":
        a, w = torch.randn(1, 3, 4, 4, device=dev), torch.randn(4, 3, 3, 3, device=dev)
        return (lambda: F.conv2d(a, w, padding=1)), el * (48 + 108 + 64)
    if kind == "attention":
        q = torch.randn(1, 1, 4, 8, device=dev)
        return (lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)), el * 4 * 32
    raise CalibrationError(f"rotafx: no probe for op kind {kind!r}; kinds are {list(OP_KINDS)}")


def _other_devices(dev: torch.device) -> Iterable[torch.device]:
    if dev.type != "cpu":
        yield torch.device("cpu")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if torch.device("cuda", i) != dev:
                yield torch.device("cuda", i)
