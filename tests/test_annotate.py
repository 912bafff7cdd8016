"""rotafx.frontends.pytorch.annotate: per-node costs against analytic counts and torch's own FLOP counter."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rotafx.frontends.pytorch.annotate import NodeCost, annotate, node_cost, tensor_bytes
from rotafx.layers import CostRuleError
from rotafx.frontends.pytorch.trace import trace
from tests.models import TransformerBlock

aten = torch.ops.aten


def annotated(model: nn.Module, *inputs: torch.Tensor, dtype: torch.dtype | None = None, strict: bool = True):
    """Export ``model`` and annotate its graph; strict so that an op with no rule fails the test."""
    traced = trace(model, inputs)
    annotate(traced.graph_module, traced.weights, dtype=dtype, strict=strict)
    return traced.graph_module


def nodes_of(gm, target) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def one(gm, target) -> NodeCost:
    found = nodes_of(gm, target)
    assert len(found) == 1, f"expected one {target} node, found {len(found)} in\n{gm.graph}"
    return node_cost(found[0])


def torch_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """What torch.utils.flop_counter counts for one eager run (matmuls and convolutions only)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------
# matmuls and pointwise ops


@pytest.mark.parametrize("batch,fin,fout,bias", [(1, 4, 3, True), (5, 16, 7, True), (3, 8, 8, False)])
def test_linear_counts_the_matmul_only(batch: int, fin: int, fout: int, bias: bool) -> None:
    # torch.utils.flop_counter's addmm formula is mm's, 2*M*K*N: the bias add is not counted
    lin = nn.Linear(fin, fout, bias=bias)
    x = torch.randn(batch, fin)
    cost = one(annotated(lin, x), aten.linear.default)
    assert cost.flops == 2 * batch * fin * fout
    assert cost.flops == torch_flops(lin, x)
    assert cost.activation_bytes == cost.output_bytes == batch * fout * 4
    # reads input, weight and bias, writes output
    assert cost.bytes_moved == 4 * (batch * fin + fin * fout + (fout if bias else 0) + batch * fout)
    assert cost.buffer_bytes == 0 and not cost.is_view


def test_linear_on_3d_input_counts_every_token() -> None:
    lin = nn.Linear(16, 24)
    x = torch.randn(2, 5, 16)
    assert one(annotated(lin, x), aten.linear.default).flops == 2 * (2 * 5) * 16 * 24


def test_pointwise_ops_cost_one_flop_per_output_element() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.gelu(torch.relu(x) * y + 1.0)

    x, y = torch.randn(3, 7), torch.randn(7)  # broadcast: the output has 3*7 elements
    gm = annotated(M(), x, y)
    for target in (aten.relu.default, aten.mul.Tensor, aten.add.Tensor, aten.gelu.default):
        assert one(gm, target).flops == 3 * 7, target


def test_reduction_costs_one_flop_per_input_element() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(-1)

    assert one(annotated(M(), torch.randn(4, 6, 5)), aten.sum.dim_IntList).flops == 4 * 6 * 5


def test_views_cost_nothing_and_copies_cost_no_flops() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.transpose(0, 1).reshape(-1)  # transpose: a view; reshape of it: a copy

    gm = annotated(M(), torch.randn(3, 4))
    t = one(gm, aten.transpose.int)
    assert t.is_view and t.flops == 0 and t.activation_bytes == 0 and t.bytes_moved == 0
    assert t.output_bytes == 3 * 4 * 4  # a transfer of it would still send its bytes
    r = one(gm, aten.reshape.default)
    assert r.flops == 0  # data movement (aten.clone carries a pointwise tag, but copies cost no FLOPs)
    assert not r.is_view and r.activation_bytes == 3 * 4 * 4


# ---------------------------------------------------------------------------
# normalisations


def test_layer_norm_costs_five_flops_per_element() -> None:
    ln = nn.LayerNorm(12)
    cost = one(annotated(ln, torch.randn(2, 3, 12)), aten.layer_norm.default)
    assert cost.flops == 5 * 2 * 3 * 12


def test_batch_norm_in_eval_costs_five_flops_per_element() -> None:
    bn = nn.BatchNorm2d(6).eval()
    cost = one(annotated(bn, torch.randn(2, 6, 5, 5)), aten.batch_norm.default)
    assert cost.flops == 5 * 2 * 6 * 5 * 5


def test_softmax_costs_five_flops_per_element() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.softmax(-1)

    assert one(annotated(M(), torch.randn(3, 10)), aten.softmax.int).flops == 5 * 3 * 10


# ---------------------------------------------------------------------------
# convolution


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,groups,bias",
    [(3, 8, 3, 1, 1, 1, True), (4, 6, 3, 2, 0, 1, False), (8, 8, 3, 1, 1, 4, True), (6, 6, 5, 2, 2, 6, False)],
)
def test_conv2d_flops_and_im2col_workspace(cin: int, cout: int, k: int, stride: int, pad: int, groups: int, bias: bool) -> None:
    batch, h, w = 2, 11, 9
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups, bias=bias)
    x = torch.randn(batch, cin, h, w)
    hout, wout = conv_out(h, k, stride, pad), conv_out(w, k, stride, pad)
    for dtype, itemsize in ((None, 4), (torch.float16, 2)):
        cost = one(annotated(conv, x, dtype=dtype), aten.conv2d.default)
        # torch's convolution formula: 2 * B * Cout * Hout * Wout * (Cin / groups) * kh * kw, bias ignored
        assert cost.flops == 2 * batch * cout * hout * wout * (cin // groups) * k * k
        # im2col: one column of (Cin/groups)*kh*kw values per output position
        assert cost.buffer_bytes == batch * (cin // groups) * k * k * hout * wout * itemsize
        assert cost.activation_bytes == batch * cout * hout * wout * itemsize
    assert one(annotated(conv, x), aten.conv2d.default).flops == torch_flops(conv, x)


# ---------------------------------------------------------------------------
# attention


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_is_priced_as_its_two_matmuls(causal: bool) -> None:
    batch, heads, lq, lk, dqk, dv = 2, 3, 5, 7, 8, 4

    class M(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    q, k, v = torch.randn(batch, heads, lq, dqk), torch.randn(batch, heads, lk, dqk), torch.randn(batch, heads, lk, dv)
    for dtype, itemsize in ((None, 4), (torch.float16, 2)):
        cost = one(annotated(M(), q, k, v, dtype=dtype), aten.scaled_dot_product_attention.default)
        assert cost.flops == 2 * batch * heads * lq * lk * (dqk + dv)  # Q K^T, then P V
        assert cost.buffer_bytes == batch * heads * lq * lk * itemsize  # the score matrix
        assert cost.activation_bytes == batch * heads * lq * dv * itemsize


def test_transformer_block_attention_node() -> None:
    b, l, d, h = 2, 6, 32, 4
    gm = annotated(TransformerBlock(d, h, 64), torch.randn(b, l, d))
    cost = one(gm, aten.scaled_dot_product_attention.default)
    assert cost.flops == 2 * b * h * l * l * (d // h + d // h)
    assert cost.buffer_bytes == b * h * l * l * 4
    linears = [node_cost(n).flops for n in nodes_of(gm, aten.linear.default)]
    assert sorted(linears) == sorted([2 * b * l * d * d] * 4 + [2 * b * l * d * 64, 2 * b * l * 64 * d])


# ---------------------------------------------------------------------------
# placeholders, dtype, devices, unknown ops


def test_weight_and_input_placeholders() -> None:
    lin = nn.Linear(6, 5)
    x = torch.randn(3, 6)
    for dtype, itemsize in ((None, 4), (torch.float16, 2), (torch.bfloat16, 2)):
        gm = annotated(lin, x, dtype=dtype)
        ph = {n.name: node_cost(n) for n in gm.graph.nodes if n.op == "placeholder"}
        weights = {name: c for name, c in ph.items() if c.is_weight}
        inputs = {name: c for name, c in ph.items() if c.is_input}
        assert sorted(c.weight_bytes for c in weights.values()) == sorted([6 * 5 * itemsize, 5 * itemsize])
        assert [c.activation_bytes for c in inputs.values()] == [3 * 6 * itemsize]
        assert all(c.activation_bytes == 0 for c in weights.values())


def test_integer_tensors_keep_their_size_under_a_float_dtype() -> None:
    assert tensor_bytes(torch.zeros(4, dtype=torch.long), float_itemsize=2) == 4 * 8
    assert tensor_bytes(torch.zeros(4), float_itemsize=2) == 4 * 2
    assert tensor_bytes(torch.zeros(4, dtype=torch.float64)) == 4 * 8


def test_factory_ops_recorded_on_cpu_run_on_meta() -> None:
    # torch.arange(..., device=x.device) records device=cpu; annotate must not mix it with meta tensors
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.outer(torch.arange(x.shape[-1], device=x.device, dtype=x.dtype), x[0])

    gm = annotated(M(), torch.randn(2, 5))  # strict: an op that could not run would raise
    assert one(gm, aten.outer.default).flops == 5 * 5


def test_op_without_a_rule_warns_or_raises() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(x).abs()

    traced = trace(M(), (torch.randn(2, 8),))
    gm, weights = traced.graph_module, traced.weights
    with pytest.raises(CostRuleError, match="no cost rule"):
        annotate(gm, weights, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unknown = annotate(gm, weights)
    assert unknown and any("no cost rule" in str(w.message) for w in caught)


def test_every_node_is_annotated() -> None:
    gm = annotated(TransformerBlock(16, 2, 32), torch.randn(1, 4, 16))
    assert all(isinstance(n.meta.get("rotafx"), NodeCost) for n in gm.graph.nodes)
