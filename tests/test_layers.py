"""rotafx.layers: the one grouping function, against peaks and boundaries derived by hand.

Every frontend's profile is computed by :func:`rotafx.layers.group_layers`, so a wrong liveness
rule would be wrong in all of them alike (the ONNX-against-PyTorch test cannot see it): the
expected values here are counted by hand from the tensors each op holds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx import ModelProfile, PartitionOptimizer
from rotafx.layers import OpGraph, OpRecord, ProfileError, TensorInfo, group_layers
from tests.models import ZOO

F32 = 4


def graph(ops: list[OpRecord], sizes: dict[str, int], inputs: tuple[str, ...], outputs: tuple[str, ...],
          weights: dict[str, tuple[int, int]] | None = None) -> OpGraph:
    return OpGraph(ops=ops, tensors={n: TensorInfo(n, b, 1) for n, b in sizes.items()}, inputs=inputs,
                   outputs=outputs, weights=weights or {})


def test_peak_counts_every_live_tensor_and_the_workspace() -> None:
    # x -> a (layer A) -> b (layer B) -> y (layer B), x also read by the last op (a skip connection)
    ops = [OpRecord("a", "A", inputs=("x",), outputs=("a",), buffer_bytes=7),
           OpRecord("b", "B", inputs=("a",), outputs=("b",)),
           OpRecord("y", "B", inputs=("b", "x"), outputs=("y",))]
    layers, boundaries = group_layers(graph(ops, {"x": 10, "a": 20, "b": 30, "y": 40}, ("x",), ("y",)))
    # A: x + a + a's workspace; B: while b runs x, a, b are live (30 + 20 + 10), while y runs x, b, y (80)
    assert [l.peak_bytes for l in layers] == [10 + 20 + 7, 10 + 30 + 40]
    assert [sorted(t.name for t in b) for b in boundaries] == [["x"], ["a", "x"], ["y"]]
    assert [l.activation_bytes for l in layers] == [20, 40]


def test_a_view_shares_its_input_storage_and_a_view_of_a_weight_allocates_nothing() -> None:
    ops = [OpRecord("h", "A", inputs=("x",), outputs=("h",)),
           OpRecord("v", "A", inputs=("h",), outputs=("v",), view=True),  # h's storage, kept alive by v's reader
           OpRecord("wt", "B", outputs=("wt",), weights=("w",), view=True),  # w.t(): no new memory
           OpRecord("y", "B", inputs=("v", "wt"), outputs=("y",))]
    layers, _ = group_layers(graph(ops, {"x": 8, "h": 16, "v": 16, "wt": 64, "y": 4}, ("x",), ("y",), {"w": (16, 64)}))
    # B while y runs: h (through v) and y; x died at h's op
    assert [l.peak_bytes for l in layers] == [8 + 16, 16 + 4]
    assert layers[1].weight_bytes == 64


def test_transient_outputs_are_workspace_not_activations() -> None:
    ops = [OpRecord("s", "A", inputs=("q",), outputs=("s",), transient=("s",), buffer_bytes=100),
           OpRecord("o", "A", inputs=("s", "q"), outputs=("o",), buffer_bytes=100)]
    layers, _ = group_layers(graph(ops, {"q": 10, "s": 100, "o": 10}, ("q",), ("o",)))
    assert layers[0].peak_bytes == 10 + 10 + 100


def test_keys_join_the_next_layer_and_repeats_get_a_suffix() -> None:
    ops = [OpRecord(n, k, inputs=(i,), outputs=(n,)) for n, k, i in
           (("a", None, "x"), ("b", "blk", "a"), ("c", "head", "b"), ("d", "blk", "c"), ("e", None, "d"))]
    layers, _ = group_layers(graph(ops, {t: 1 for t in "xabcde"}, ("x",), ("e",)))
    assert [(l.name, l.ops) for l in layers] == [("blk", ("a", "b")), ("head", ("c",)), ("blk#2", ("d", "e"))]


def test_no_ops_is_an_error() -> None:
    with pytest.raises(ProfileError, match="no operations to place"):
        group_layers(graph([], {"x": 1}, ("x",), ("x",)))


# ---------------------------------------------------------------------------
# traced models, counted by hand


def test_mlp_peaks_by_hand() -> None:
    b = 3
    p = ModelProfile.from_pytorch(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), (torch.randn(b, 8),))
    x, h, y = b * 8 * F32, b * 16 * F32, b * 4 * F32
    # linear: its input and output; relu: h and its output; the last linear: relu's output and y
    assert [l.peak_bytes for l in p.layers] == [x + h, h + h, h + y]


class _Residual(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.fc1(x).relu())


def test_residual_peaks_and_boundary_by_hand() -> None:
    b, d = 2, 8
    p = ModelProfile.from_pytorch(_Residual(d), (torch.randn(b, d),))
    t = b * d * F32  # every tensor here is one (b, d) float tensor
    assert [l.name for l in p.layers] == ["fc1", "fc2"]  # relu and the add (root ops) join the next / last layer
    # fc1: x and its output; fc2: x stays live for the add, with two of fc1's output, relu's, fc2's and the sum
    assert [l.peak_bytes for l in p.layers] == [2 * t, 3 * t]
    assert p.boundary_bytes(1) == 2 * t, "the cut before fc2 carries fc1's output and the skip connection"


def test_the_peak_is_what_the_memory_constraint_uses() -> None:
    """A node that holds the model's weights plus its peak fits it; one byte less does not."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    p = ModelProfile.from_pytorch(model, (torch.randn(3, 8),))
    need = sum(t.numel() * F32 for t in model.parameters()) + max(l.peak_bytes for l in p.layers)
    topo = lambda mem: {"devices": [{"name": "a", "flops": 1e12, "memory": mem}], "links": [], "chain": ["a"]}  # noqa: E731
    assert PartitionOptimizer().optimize(p, topo(need)).status == "optimal"
    with pytest.raises(rotafx.InfeasibleError):
        PartitionOptimizer().optimize(p, topo(need - 1))


# ---------------------------------------------------------------------------
# the two torch.export paths


def test_profile_and_partition_agree_on_the_tied_gpt() -> None:
    factory, inputs = ZOO["small-gpt-tied"]
    model = factory().eval()
    x = inputs(2)
    direct = ModelProfile.from_pytorch(model, x)
    planned = rotafx.partition(model, x).plan.profile
    assert direct.total_params == planned.total_params == sum(t.numel() for t in model.parameters())
    assert direct.weight_bytes == planned.weight_bytes
    assert direct.memory_mb == planned.memory_mb
    assert [l.weight_names for l in direct.layers] == [l.weight_names for l in planned.layers]
    embed, head = direct.layers[0], direct.layers[-1]
    assert set(embed.weight_names) & set(head.weight_names), "the tied weight is read by both, under one name"
