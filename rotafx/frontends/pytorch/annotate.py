"""Annotate every fx node with its cost: FLOPs, weight, activation and workspace bytes, bytes moved.

The graph is executed once on ``meta`` tensors (no memory, no arithmetic) under a
dispatch mode that prices every aten op the node decomposes into:

* ops that ``torch.utils.flop_counter`` has a formula for (matmuls, convolutions,
  fused attention on GPU) use that formula;
* scaled-dot-product attention is priced at the fx node, on any device, as its two
  matmuls ``2*B*H*Lq*Lk*(Dqk + Dv)`` (on CPU it dispatches to an op with no formula,
  and on ``meta`` it decomposes, so pricing the node keeps one figure everywhere);
* pointwise ops (``torch.Tag.pointwise``) cost 1 FLOP per output element, reductions
  1 FLOP per input element, softmax and normalisations a fixed count per element
  (``PER_ELEMENT_FLOPS``), pooling one per window element;
* data movement (views, copies, indexing, embedding gathers, tensor creation) costs
  0 FLOPs; any other op is reported as having no cost rule.

Workspace (``buffer_bytes``) rules: attention keeps its score matrix
(B*H*Lq*Lk elements, as the unfused path does); a convolution its im2col buffer
(B * Cin/groups * prod(kernel) * prod(output spatial) elements); other ops none.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

from ...layers import ProfileError, report_unknown_ops
from ...units import first_line

__all__ = ["NodeCost", "annotate", "PER_ELEMENT_FLOPS", "tensor_bytes", "node_cost", "node_value"]

aten = torch.ops.aten

# FLOPs per element of the input for ops that carry no pointwise/reduction tag.
PER_ELEMENT_FLOPS: dict[Any, int] = {
    aten._softmax: 5,  # max, subtract, exp, sum, divide
    aten._log_softmax: 5,
    aten._safe_softmax: 5,
    aten.native_layer_norm: 5,  # mean, subtract, variance, normalise, affine
    aten.native_group_norm: 5,
    aten.native_batch_norm: 5,
    aten._native_batch_norm_legit: 5,
    aten._native_batch_norm_legit_no_training: 5,
    aten._fused_rms_norm: 4,  # square, mean, rsqrt-multiply, affine
}

# Ops that only move or create data: 0 FLOPs.
_ZERO_COST_NAMES = {
    "embedding", "index_select", "gather", "index", "cat", "stack", "slice", "select", "clone", "copy", "copy_",
    "_to_copy", "to", "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
    "full_like", "arange", "expand", "detach", "alias", "lift_fresh", "lift_fresh_copy", "scalar_tensor",
    "_unsafe_view", "unsqueeze", "squeeze", "split", "split_with_sizes", "chunk", "unbind", "narrow",
    "constant_pad_nd", "pad", "repeat", "roll", "flip", "tril", "triu", "contiguous", "new_zeros", "new_ones",
    "new_empty", "new_full", "masked_fill", "index_put", "index_put_", "scatter", "fill", "fill_", "zero_",
    "_assert_tensor_metadata", "dropout", "native_dropout", "feature_dropout", "sym_size", "sym_stride",
    "sym_numel", "repeat_interleave", "embedding_dense_backward", "_local_scalar_dense", "item", "rand", "randn",
    "bernoulli", "bernoulli_", "_assert_async", "lt", "t", "permute", "transpose", "view", "reshape", "as_strided",
    "_reshape_alias", "unfold", "diagonal", "movedim", "resize_", "set_", "_pin_memory", "detach_", "one_hot",
    "bucketize", "argmax", "argmin", "sort", "topk", "cumsum", "cumprod", "unsafe_split", "unsafe_split_with_sizes",
    "unsafe_chunk",
}
# elementwise ops that carry no pointwise tag: one FLOP per output element
_POINTWISE_NAMES = {"floor_divide", "true_divide", "fmod", "logical_and", "logical_or", "logical_not", "logical_xor"}
# reductions that carry no reduction tag: one FLOP per input element
_REDUCTION_NAMES = {"histc", "bincount"}

_POOL_NAMES = {"max_pool2d_with_indices", "max_pool1d_with_indices", "max_pool3d_with_indices", "avg_pool2d",
               "avg_pool1d", "avg_pool3d", "max_pool2d", "max_pool1d", "max_pool3d"}
_ADAPTIVE_POOL_NAMES = {"_adaptive_avg_pool2d", "adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d",
                        "adaptive_max_pool2d", "_adaptive_avg_pool1d"}

_SDPA_TARGETS = {aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention}
try:  # torch._C._nn.scaled_dot_product_attention is what dynamo records
    _SDPA_TARGETS.add(torch._C._nn.scaled_dot_product_attention)
except AttributeError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class NodeCost:
    """What one fx node costs. Bytes are bytes; ``flops`` counts a multiply-add as 2.

    ``weight_bytes`` is set on weight placeholders (parameters, buffers) to their own
    size; ``activation_bytes`` is the memory the node newly allocates (0 for views and
    weights); ``output_bytes`` is what a transfer of its outputs would send;
    ``buffer_bytes`` its workspace; ``bytes_moved`` the bytes it reads and writes.
    """

    flops: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    output_bytes: int = 0
    buffer_bytes: int = 0
    bytes_moved: int = 0
    is_weight: bool = False
    is_input: bool = False
    is_view: bool = False
    kernel: tuple[str, int, int, int] | None = None  # its largest matmul-like kernel, for a calibrated rate
    kv_bytes_per_token: int = 0  # self-attention: bytes of the keys and values one token of one sequence adds


def tensor_bytes(t: torch.Tensor, float_itemsize: int | None = None) -> int:
    """Bytes of a tensor; floating tensors use ``float_itemsize`` when given (the profile's dtype)."""
    size = float_itemsize if (float_itemsize is not None and t.is_floating_point()) else t.element_size()
    return int(t.numel()) * int(size)


def _tensors(x: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def _numel(x: Any) -> int:
    return sum(int(t.numel()) for t in _tensors(x))


def _is_view_op(func: Any) -> bool:
    rets = func._schema.returns
    return bool(rets) and all(r.alias_info is not None for r in rets)


class _CostMode(TorchDispatchMode):
    """Prices every aten op dispatched while a node runs; one instance per graph."""

    def __init__(self, float_itemsize: int | None) -> None:
        super().__init__()
        self.float_itemsize = float_itemsize
        self.reset()
        self.unknown: dict[str, str] = {}  # op name -> first node that used it
        self.node_name = ""

    def reset(self) -> None:
        self.gathers = False  # a gather (embedding, index_select) reads the rows it returns, not its whole table
        self.flops = 0
        self.workspace = 0
        self.allocates = False
        self.kernel: tuple[int, tuple[str, int, int, int]] | None = None  # (FLOPs, kernel) of the largest

    def _kernel(self, kind: str, a: int, b: int, c: int, flops: int) -> None:
        if flops > 0 and (self.kernel is None or flops > self.kernel[0]):
            self.kernel = (flops, (kind, int(a), int(b), int(c)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in _GATHER_NAMES:
            self.gathers = True
        if not _is_view_op(func) and name not in _CHECK_NAMES:
            self.allocates = True
        rule = _FUSED_RULES.get(func._overloadpacket.__name__)
        if rule is not None:  # ops that do several ops' work: their FLOPs and workspace by formula
            flops, ws = rule(args, kwargs, out, self.float_itemsize)
            self.flops += flops
            self.workspace = max(self.workspace, ws)
            return out
        flops = self._op_flops(func, args, kwargs, out)
        self.flops += flops
        packet = func._overloadpacket
        if packet is aten.convolution and len(args) >= 2:
            x, w = args[0], args[1]
            groups = int(args[8]) if len(args) > 8 else 1
            spatial = math.prod(out.shape[2:]) if out.dim() > 2 else 1
            cols = (w.shape[1] * math.prod(w.shape[2:])) * spatial * x.shape[0]
            ws = int(cols) * (self.float_itemsize or x.element_size())
            self.workspace = max(self.workspace, ws if groups >= 1 else 0)
            # as the GEMM it is: (batch x output positions) x (input channels per group x kernel) x (output channels per group)
            self._kernel("mm", x.shape[0] * spatial * max(groups, 1), w.shape[1] * math.prod(w.shape[2:]),
                         max(w.shape[0] // max(groups, 1), 1), flops)
        elif packet in _MM_OPERANDS:
            a, b = (args[i] for i in _MM_OPERANDS[packet])
            batch = a.shape[0] if a.dim() == 3 else 1
            self._kernel("mm", batch * a.shape[-2], a.shape[-1], b.shape[-1], flops)
        elif packet is aten._scaled_dot_product_flash_attention_for_cpu:
            q, k = args[0], args[1]
            self._kernel("sdpa", math.prod(q.shape[:-2]), k.shape[-2], q.shape[-1], flops)
        return out

    def _op_flops(self, func: Any, args: tuple, kwargs: dict, out: Any) -> int:
        packet = func._overloadpacket
        if packet in flop_registry:
            return int(flop_registry[packet](*args, **kwargs, out_val=out))
        if packet is aten._scaled_dot_product_flash_attention_for_cpu:
            return _sdpa_flops(args[0], args[1], args[2])
        if packet in PER_ELEMENT_FLOPS:
            return PER_ELEMENT_FLOPS[packet] * _numel(args[0])
        name = packet.__name__
        # data movement first: clone, masked_fill, lt, argmax carry pointwise/reduction tags but are listed as 0
        if _is_view_op(func) or name in _ZERO_COST_NAMES or name.rstrip("_") in _ZERO_COST_NAMES:
            return 0
        tags = func.tags
        if torch.Tag.pointwise in tags or name in _POINTWISE_NAMES:
            return _numel(out)
        if torch.Tag.reduction in tags or name in _REDUCTION_NAMES:
            return _numel(args[0])
        if name in _POOL_NAMES:
            kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", [1])
            k = math.prod(kernel) if isinstance(kernel, (list, tuple)) else int(kernel) ** max(1, _out_dims(out) - 2)
            return _numel(out if not isinstance(out, tuple) else out[0]) * int(k)
        if name in _ADAPTIVE_POOL_NAMES:
            return _numel(args[0])
        self.unknown.setdefault(str(packet), self.node_name)
        return 0


# ops that read rows of a table by index: they move what they return (twice: read, written) and the indices
_GATHER_NAMES = {"embedding", "index_select", "gather", "index", "take", "embedding_bag", "_embedding_bag"}
# ops that check metadata and compute nothing (torch.export leaves them in the graph; eager never runs them)
_CHECK_NAMES = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
                "sym_constrain_range_for_size", "_functional_assert_async"}

# matmul-like aten ops -> the positions of their two operands (a: (..., M, K), b: (..., K, N))
_MM_OPERANDS = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2)}


def _grouped_mm(args: tuple, kwargs: dict, out: Any, itemsize: int | None) -> tuple[int, int]:
    """A grouped matmul of MoE experts (input rows sorted by expert, one weight matrix per expert): every row is
    multiplied by its expert's matrix once, 2 FLOPs per multiply-add, whatever the routing."""
    x = args[0] if args else kwargs["input"]
    return 2 * _numel(out) * int(x.shape[-1]), 0


def _encoder_layer(args: tuple, kwargs: dict, out: Any, itemsize: int | None) -> tuple[int, int]:
    """``aten._transformer_encoder_layer_fwd`` (the fast path of ``nn.TransformerEncoderLayer``): qkv and output
    projections, attention, two layer norms (5 per element), the two FFN matmuls, the activation (1 per element)
    and the two residual adds, by the same rules as the ops it fuses; the score matrix as workspace."""
    src, embed_dim, heads = args[0], int(args[1]), int(args[2])
    ffn = int(args[14].shape[0])
    b, seq = (int(src.shape[0]), int(src.shape[1])) if src.dim() == 3 else (1, int(src.shape[0]))
    t = b * seq
    d = embed_dim // heads
    flops = (2 * t * embed_dim * 3 * embed_dim + 2 * b * heads * seq * seq * 2 * d + 2 * t * embed_dim * embed_dim
             + 2 * 2 * t * embed_dim * ffn + 2 * 5 * t * embed_dim + t * ffn + 2 * t * embed_dim)
    return flops, b * heads * seq * seq * (itemsize or src.element_size())


def _native_mha(args: tuple, kwargs: dict, out: Any, itemsize: int | None) -> tuple[int, int]:
    """``aten._native_multi_head_attention`` (the fast path of ``nn.MultiheadAttention``): the q, k, v and output
    projections and the attention's two matmuls; the score matrix as workspace."""
    q, k, embed_dim, heads = args[0], args[1], int(args[3]), int(args[4])
    lq, lk = int(q.shape[-2]), int(k.shape[-2])
    b = _numel(q) // (lq * embed_dim)
    d = embed_dim // heads
    flops = 2 * b * embed_dim * embed_dim * (2 * lq + 2 * lk) + 2 * b * heads * lq * lk * 2 * d
    return flops, b * heads * lq * lk * (itemsize or q.element_size())


def _nll_loss(args: tuple, kwargs: dict, out: Any, itemsize: int | None) -> tuple[int, int]:
    """A negative log-likelihood: one pick and one add per target."""
    return _numel(args[1]), 0


# fused and composite ops priced by formula: op name -> (args, kwargs, output, itemsize) -> (FLOPs, workspace bytes)
_FUSED_RULES: dict[str, Callable[[tuple, dict, Any, int | None], tuple[int, int]]] = {
    "grouped_mm_fallback": _grouped_mm, "_grouped_mm": _grouped_mm, "grouped_mm": _grouped_mm,
    "_transformer_encoder_layer_fwd": _encoder_layer, "_native_multi_head_attention": _native_mha,
    "nll_loss_forward": _nll_loss, "nll_loss2d_forward": _nll_loss,
}


def _out_dims(out: Any) -> int:
    """Dimensions of an op's (first) output."""
    t = out[0] if isinstance(out, tuple) else out
    return t.dim()


def _sdpa_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """The two matmuls of attention: Q K^T and (softmax) V; batch and head dims are all but the last two."""
    batch_heads = math.prod(q.shape[:-2])
    lq, dqk = q.shape[-2], q.shape[-1]
    lk, dv = k.shape[-2], v.shape[-1]
    return int(2 * batch_heads * lq * lk * (dqk + dv))


def _sdpa_workspace(q: torch.Tensor, k: torch.Tensor, itemsize: int) -> int:
    return int(math.prod(q.shape[:-2]) * q.shape[-2] * k.shape[-2] * itemsize)


# ops whose output holds no more data than their input: the keys reach attention through these from what a
# KV cache would hold (grouped-query attention repeats each KV head with expand + reshape/clone)
_KV_PASS_THROUGH = {"view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "transpose", "permute",
                    "clone", "contiguous", "slice", "alias", "repeat_interleave", "repeat", "t", "detach", "_to_copy",
                    "to", "type_as", "getitem", "__getitem__"}


_SELECT = frozenset({"select"})  # one of q, k, v out of a fused projection: also passed through to find its source


def _base_name(node: fx.Node) -> str:
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def _chain(node: Any, through: frozenset[str] = frozenset()) -> Any:
    """``node``, then each node up the chain of pass-through ops (:data:`_KV_PASS_THROUGH`, and ``through``) to the
    first that is not one (the last yielded)."""
    while isinstance(node, fx.Node):
        yield node
        if node.op not in ("call_function", "call_method") or _base_name(node) not in _KV_PASS_THROUGH | through \
                or not node.args:
            return
        node = node.args[0]


def _kv_source_numel(node: Any, env: Mapping[fx.Node, Any]) -> int:
    """Elements of the smallest tensor on the chain of pass-through ops that ends at ``node``: the keys (or
    values) as a KV cache holds them, before grouped-query attention repeats them per query head."""
    sizes = [int(v.numel()) for n in _chain(node) if isinstance(v := env.get(n), torch.Tensor)]
    return min(sizes) if sizes else 0


def _kv_bytes_per_token(node: fx.Node, env: Mapping[fx.Node, Any], itemsize: int | None) -> int:
    """What a KV cache holds for this attention per token of one sequence: the bytes of its keys and values as
    they were before any repeat (``2 * kv_heads * head_dim * itemsize`` for MHA, GQA and MQA alike).

    Self-attention only (query and key of one length): a cross-attention's keys come from another sequence and do
    not grow with the generated tokens. Batch is the leading dims of a ``(batch, heads, seq, dim)`` key, else 1."""
    get = lambda i, name: node.kwargs.get(name, node.args[i] if len(node.args) > i else None)  # noqa: E731
    qn, kn, vn = get(0, "query"), get(1, "key"), get(2, "value")
    q, k = env.get(qn), env.get(kn)
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or k.dim() < 3 or q.shape[-2] != k.shape[-2]:
        return 0
    tokens = int(k.shape[-2]) * (math.prod(k.shape[:-3]) if k.dim() >= 4 else 1)
    if tokens == 0:
        return 0
    size = itemsize if (itemsize is not None and k.is_floating_point()) else k.element_size()
    return (_kv_source_numel(kn, env) + _kv_source_numel(vn, env)) * size // tokens


# eager attention (matmul, softmax, matmul): what lies between the scores' matmul and the softmax (scale, mask,
# soft-capping, casts), and between the softmax and the matmul with the values (casts, dropout)
_SCORE_OPS = {"add", "sub", "mul", "div", "where", "masked_fill", "tanh", "to", "_to_copy", "type_as", "float", "view",
              "reshape", "_unsafe_view", "clone", "contiguous", "alias", "__add__", "__mul__", "__truediv__", "truediv",
              "add_", "mul_", "div_", "masked_fill_", "clamp", "clamp_min", "clamp_max", "detach"}
_PROB_OPS = {"to", "type", "_to_copy", "type_as", "float", "dropout", "native_dropout", "getitem", "__getitem__", "view",
             "reshape", "_unsafe_view", "clone", "contiguous", "alias", "detach"}
_SOFTMAX = {"softmax", "_softmax", "_safe_softmax"}
_MATMUL = {"matmul", "bmm", "__matmul__", "baddbmm"}


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]


def _chain_root(node: Any) -> Any:
    """The first node up the chain of pass-through ops (and ``select``) to ``node`` that is not one."""
    root = node
    for root in _chain(node, _SELECT):
        pass
    return root


def _eager_attention_kv(node: fx.Node, env: Mapping[fx.Node, Any], itemsize: int | None,
                        weights: Mapping[str, str] = {}) -> int:  # noqa: B006 - read only
    """:func:`_kv_bytes_per_token` of attention written as ops (``softmax(q @ k^T * scale + mask) @ v``, as
    transformers' ``eager`` attention, GPT2 and Bloom's ``baddbmm`` run it), found at the matmul with the values.

    Keys and values made from the tokens only: a product with a weight (a soft mixture-of-experts router,
    ``softmax(x @ W) @ E``) is not attention. Batch: the scores' leading dim when they have heads (``[B, H, T, S]``,
    ``[B, Hkv, G, T, S]``); for ``[B*H, T, S]`` the leading dim of a 4-d tensor the keys came through, else the
    scores' leading dim (one head)."""
    if node.op not in ("call_function", "call_method") or _base_name(node) not in ("matmul", "bmm", "__matmul__"):
        return 0
    probs = node.kwargs.get("input", node.args[0] if node.args else None)
    vn = node.kwargs.get("other", node.kwargs.get("mat2", node.args[1] if len(node.args) > 1 else None))
    while isinstance(probs, fx.Node) and _base_name(probs) in _PROB_OPS and probs.args:
        probs = probs.args[0]
    if not isinstance(probs, fx.Node) or _base_name(probs) not in _SOFTMAX or not probs.args:
        return 0
    scores = env.get(probs)
    if not isinstance(scores, torch.Tensor) or scores.dim() < 3 or scores.shape[-1] != scores.shape[-2]:
        return 0  # not self-attention over one sequence (a cross-attention, a decode step)
    frontier, seen, kt = [probs.args[0]], set(), None
    while frontier and kt is None and len(seen) < 64:  # back to the matmul that made the scores
        n = frontier.pop(0)
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        val = env.get(n)
        if not isinstance(val, torch.Tensor) or tuple(val.shape[-2:]) != tuple(scores.shape[-2:]):
            continue
        name = _base_name(n)
        if name in _MATMUL:
            kt = n.kwargs.get("batch2", n.args[2] if len(n.args) > 2 else None) if name == "baddbmm" \
                else n.kwargs.get("other", n.kwargs.get("mat2", n.args[1] if len(n.args) > 1 else None))
        elif name in _SCORE_OPS:
            frontier.extend(_tensor_args(n))
    k, v = env.get(kt) if isinstance(kt, fx.Node) else None, env.get(vn)
    if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor):
        return 0
    for root in (_chain_root(kt), _chain_root(vn)):
        if not isinstance(root, fx.Node) or root.op == "get_attr" or (root.op == "placeholder" and root.name in weights):
            return 0
    batch = int(scores.shape[0]) if scores.dim() >= 4 else _leading_batch(kt, env, default=int(scores.shape[0]))
    tokens = int(scores.shape[-1]) * batch
    size = itemsize if (itemsize is not None and k.is_floating_point()) else k.element_size()
    return (_kv_source_numel(kt, env) + _kv_source_numel(vn, env)) * size // tokens if tokens else 0


def _leading_batch(node: Any, env: Mapping[fx.Node, Any], default: int = 1) -> int:
    """The leading dim of the first 4-d tensor up the chain of pass-through ops to ``node`` (attention run as
    ``bmm`` over batch x heads folds the batch in), else ``default``."""
    return next((int(v.shape[0]) for n in _chain(node, _SELECT) if isinstance(v := env.get(n), torch.Tensor)
                 and v.dim() >= 4), default)


def _to_meta(x: Any) -> Any:
    def conv(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            if t.device.type == "meta" and not _is_fake(t):
                return t
            return torch.empty_strided(tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()),
                                       dtype=t.dtype, device="meta")
        if isinstance(t, torch.SymInt):
            return int(t.node.hint) if t.node.hint is not None else int(t)
        return t

    return tree_map(conv, x)


def _meta_devices(x: Any) -> Any:
    """Every ``torch.device`` in ``x`` replaced by ``meta``."""
    return tree_map(lambda a: torch.device("meta") if isinstance(a, torch.device) else a, x)


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def node_value(node: fx.Node) -> Any:
    """The example value fx or dynamo recorded for a node (``val`` or ``example_value``)."""
    return node.meta.get("val", node.meta.get("example_value"))


def annotate(
    gm: fx.GraphModule,
    weights: Mapping[str, str],
    *,
    dtype: torch.dtype | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Write a :class:`NodeCost` into ``node.meta["rotafx"]`` for every node of ``gm``.

    ``weights`` maps weight placeholder names to parameter or buffer names. ``dtype``,
    when given, prices every floating tensor at that dtype's size (FP16 = 2 bytes).
    Returns the ops that had no cost rule (op name -> first node), after a warning that
    lists them; with ``strict=True`` such an op raises :class:`~rotafx.layers.CostRuleError`.

    >>> import torch
    >>> ep = torch.export.export(torch.nn.Linear(4, 3), (torch.randn(2, 4),))
    >>> _ = annotate(ep.graph_module, ep.graph_signature.inputs_to_parameters)
    >>> [n.meta["rotafx"].flops for n in ep.graph.nodes if n.op == "call_function"]
    [48]
    """
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype is not None else None
    mode = _CostMode(itemsize)
    env: dict[fx.Node, Any] = {}
    nodes = list(gm.graph.nodes)
    moved = [0, 0]  # bytes moved by the nodes with an op of no rule, and by all nodes
    with torch.no_grad(), torch.device("meta"), mode:  # a factory with no device makes a meta tensor too
        for i, node in enumerate(nodes):
            if progress is not None and (i % 256 == 0 or i == len(nodes) - 1):
                progress(i + 1, len(nodes))
            mode.node_name = node.name
            mode.reset()
            known = len(mode.unknown)
            cost = _run_node(gm, node, env, weights, mode, itemsize)
            node.meta["rotafx"] = cost
            moved[1] += cost.bytes_moved
            if len(mode.unknown) > known or node.name in mode.unknown.values():
                moved[0] += cost.bytes_moved
    report_unknown_ops(mode.unknown, "op(s)", strict, moved=(moved[0], moved[1]))
    return dict(mode.unknown)


def _run_node(gm: fx.GraphModule, node: fx.Node, env: dict[fx.Node, Any], weights: Mapping[str, str],
              mode: _CostMode, itemsize: int | None) -> NodeCost:
    nb: Callable[[torch.Tensor], int] = lambda t: tensor_bytes(t, itemsize)
    if node.op == "placeholder":
        val = node_value(node)
        env[node] = _to_meta(val)
        size = sum(nb(t) for t in _tensors(val))
        if node.name in weights:
            return NodeCost(weight_bytes=size, output_bytes=size, is_weight=True)
        return NodeCost(activation_bytes=size, output_bytes=size, is_input=True)
    if node.op == "get_attr":
        val = operator.attrgetter(str(node.target))(gm)
        env[node] = _to_meta(val)
        size = sum(nb(t) for t in _tensors(val))
        return NodeCost(weight_bytes=size, output_bytes=size, is_weight=True)
    if node.op == "output":
        return NodeCost()

    # factory ops recorded with a real device (arange(..., device=cpu)) must run on meta like their inputs
    args = _meta_devices(fx.node.map_arg(node.args, lambda n: env[n]))
    kwargs = _meta_devices(fx.node.map_arg(node.kwargs, lambda n: env[n]))
    if "device" in kwargs:
        kwargs = {**kwargs, "device": torch.device("meta")}
    recorded = node_value(node)
    extra_flops, workspace, kv_per_token = 0, 0, 0
    if node.op == "call_function" and node.target in _SDPA_TARGETS:
        q, k, v = (kwargs.get(name, args[i] if len(args) > i else None) for i, name in enumerate(("query", "key", "value")))
        extra_flops = _sdpa_flops(q, k, v)
        workspace = _sdpa_workspace(q, k, itemsize or q.element_size())
        kv_per_token = _kv_bytes_per_token(node, env, itemsize)
        mode._kernel("sdpa", math.prod(q.shape[:-2]), k.shape[-2], q.shape[-1], extra_flops)
        out = _execute_uncounted(gm, node, args, kwargs, recorded, mode)
        mode.allocates = True
    else:
        try:
            out = _execute(gm, node, args, kwargs)
        except Exception as e:  # an op with no meta kernel: keep the recorded shape, count nothing
            if recorded is None:
                raise RuntimeError(f"rotafx: cannot run node {node.format_node()} on meta tensors: {e}") from e
            mode.unknown.setdefault(f"{_target_name(node)} (no meta kernel)", node.name)
            try:
                out = _to_meta(recorded)
            except RuntimeError as unknown_size:  # a number read from a tensor's values (.item(), nonzero)
                raise ProfileError(
                    f"rotafx: node {node.name} ({_target_name(node)}) gives a number read from a tensor's values, "
                    f"which a profile on meta tensors cannot know ({first_line(unknown_size)}); compute that number "
                    f"from sizes or pass it in as an argument") from unknown_size
            mode.allocates = True
        kv_per_token = _eager_attention_kv(node, {**env, node: out}, itemsize, weights)
    env[node] = out
    val = recorded if recorded is not None else out
    out_bytes = sum(nb(t) for t in _tensors(val))
    in_tensors: dict[int, torch.Tensor] = {}
    for t in _tensors((args, kwargs)):
        in_tensors.setdefault(id(t), t)
    is_view = not mode.allocates
    if is_view:
        moved = 0
    elif mode.gathers:  # the rows it returns, read and written, and the (integer) indices
        moved = 2 * out_bytes + sum(nb(t) for t in in_tensors.values() if not t.is_floating_point())
    else:
        moved = sum(nb(t) for t in in_tensors.values()) + out_bytes
    return NodeCost(
        flops=mode.flops + extra_flops,
        activation_bytes=0 if is_view else out_bytes,
        output_bytes=out_bytes,
        buffer_bytes=max(workspace, mode.workspace),
        bytes_moved=moved,
        is_view=is_view,
        kernel=mode.kernel[1] if mode.kernel is not None else None,
        kv_bytes_per_token=kv_per_token,
    )


def _execute(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any) -> Any:
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return mod.to("meta")(*args, **kwargs) if _has_real_params(mod) else mod(*args, **kwargs)
    raise RuntimeError(f"rotafx: unexpected node kind {node.op!r} at {node.format_node()}")


def _execute_uncounted(gm: fx.GraphModule, node: fx.Node, args: Any, kwargs: Any, recorded: Any, mode: _CostMode) -> Any:
    if recorded is not None:
        return _to_meta(recorded)
    flops = mode.flops
    out = _execute(gm, node, args, kwargs)
    mode.flops = flops
    return out


def _has_real_params(mod: torch.nn.Module) -> bool:
    return any(p.device.type != "meta" for p in mod.parameters())


def _target_name(node: fx.Node) -> str:
    t = node.target
    return getattr(t, "__name__", str(t))


def node_cost(node: fx.Node) -> NodeCost:
    """The cost annotate wrote on ``node`` (raises when the graph was not annotated)."""
    try:
        return node.meta["rotafx"]
    except KeyError:
        raise RuntimeError(f"rotafx: node {node.format_node()} has no cost; run rotafx.annotate first") from None

