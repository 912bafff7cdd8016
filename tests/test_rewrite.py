"""rotafx::transfer, its codecs, and the split of a graph into stages."""

from __future__ import annotations

import operator
from typing import Any

import pytest
import torch
import torch.fx as fx

import rotafx.ops
from rotafx.ops import transfer_value
from rotafx.wire import check_codec, error_bound
from rotafx.rewrite import RewriteError, rewrite

CPU = torch.device("cpu")
transfer = torch.ops.rotafx.transfer


def _activations() -> torch.Tensor:
    """Values across many magnitudes, with zeros and a zero row, as activations look."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g) * torch.logspace(-4, 4, 64)
    x[3] = 0.0
    x[5, :7] = 0.0
    return x


# ---------------------------------------------------------------------------
# the op


def test_transfer_without_codec_is_an_exact_copy() -> None:
    x = _activations()
    y = transfer(x, CPU, None)
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    assert torch.equal(y, x)
    assert y.data_ptr() != x.data_ptr(), "a custom op's output must not alias its input"


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8"])
def test_codec_error_within_documented_bound(codec: str) -> None:
    x = _activations()
    y = transfer(x, CPU, codec)
    assert y.dtype == torch.float32 and y.shape == x.shape, "the receiver gets the original dtype and shape back"
    err = (y.double() - x.double()).abs()
    bound = error_bound(x, codec)
    assert bool((err <= bound).all()), f"{codec}: worst excess {(err - bound).max().item():.3g}"
    assert err.max() > 0, f"{codec} should be lossy on these values"
    assert torch.equal(y[3], x[3]), "a zero row stays zero"


def test_int8_bound_by_hand() -> None:
    # one row, max |x| = 1.27 -> scale 0.01, error at most 0.005
    x = torch.tensor([[1.27, 0.004, -0.016, 0.5]])
    y = transfer(x, CPU, "int8")
    assert torch.allclose(y, torch.tensor([[1.27, 0.0, -0.02, 0.5]]), atol=1e-6)
    assert float((y - x).abs().max()) <= 0.005 + 1e-6


def test_codec_leaves_integer_and_narrow_tensors_alone() -> None:
    ids = torch.randint(0, 1000, (4, 8))
    assert torch.equal(transfer(ids, CPU, "int8"), ids)
    h = torch.randn(4, 8, dtype=torch.float16)
    assert torch.equal(transfer(h, CPU, "fp16"), h)
    for shape in ((3, 0), (0, 8), (0,)):  # empty tensors, and rows with no element to take a scale of
        for codec in ("fp16", "int8"):
            empty = torch.randn(shape)
            got = transfer(empty, CPU, codec)
            assert got.shape == shape and got.dtype == torch.float32


def test_codec_keeps_strides_of_a_transposed_tensor() -> None:
    x = torch.randn(8, 4).t()
    for codec in (None, "fp16", "int8"):
        assert transfer(x, CPU, codec).stride() == x.stride()


@pytest.mark.parametrize("codec", [None, "bf16", "int8"])
def test_opcheck(codec: str | None) -> None:
    # schema, fake (meta) kernel, autograd registration and dispatch, as torch.library checks them
    x = torch.randn(3, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.rotafx.transfer.default, (x, CPU, codec))


def test_gradient_flows_back_through_transfer() -> None:
    x = torch.randn(3, 5, requires_grad=True)
    (transfer(x, CPU, "fp16") * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def _reference(x: torch.Tensor, codec: str | None) -> torch.Tensor:
    """What a transfer should deliver, written out from the codec table (the op's docstring)."""
    if codec is None or not x.is_floating_point() or x.element_size() <= (1 if codec == "int8" else 2):
        return x.clone()
    if codec in ("fp16", "bf16"):
        return x.to(torch.float16 if codec == "fp16" else torch.bfloat16).to(x.dtype)
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.round(xf / s).clamp(-127, 127).to(torch.int8).float() * s).to(x.dtype)


@pytest.mark.parametrize("codec", [None, "fp16", "bf16", "int8"])
def test_transfer_delivers_the_codec_tables_values(codec: str | None) -> None:
    acts = _activations()
    for x in (acts, acts.t(), acts.half(), acts.clamp(-1e4, 1e4).bfloat16(), torch.randint(0, 9, (3, 4))):
        want = _reference(x, codec)
        for fn in (transfer, rotafx.ops.transfer):  # the op, and the function the runtime calls
            got = fn(x, CPU, codec)
            assert got.dtype == x.dtype and got.stride() == x.stride(), (fn, x.dtype)
            assert torch.equal(got, want), f"{fn}: {x.dtype} {codec}: worst {(got.double() - want.double()).abs().max()}"
            assert got.data_ptr() != x.data_ptr()


class _Seen(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher's Python key."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_eager_transfer_function_skips_the_dispatcher_only_where_nothing_would_see_the_op(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class Counted:  # the op, counting the calls made through it
        def __getattr__(self, name: str) -> Any:
            return getattr(torch.ops.rotafx.transfer.default, name)

        def __call__(self, *args: Any) -> Any:
            calls.append(args)
            return torch.ops.rotafx.transfer.default(*args)

    monkeypatch.setattr(rotafx.ops, "_op", Counted())
    x = torch.randn(3, 5)
    rotafx.ops.transfer(x, CPU, None)
    assert calls == [], "a plain tensor with nothing watching runs the kernel directly"
    with _Seen() as seen:  # a dispatch mode (tracers, FakeTensorMode, FlopCounterMode work this way)
        rotafx.ops.transfer(x, CPU, "fp16")
    assert len(calls) == 1 and "rotafx.transfer.default" in seen.ops
    w = torch.randn(3, 5, requires_grad=True)
    y = rotafx.ops.transfer(w, CPU, "int8")  # autograd must record the op (straight-through gradient)
    assert len(calls) > 1 and y.grad_fn is not None
    (y * 2).sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2.0))
    before = len(calls)
    with torch.no_grad():
        rotafx.ops.transfer(w, CPU, None)
    assert len(calls) == before
    traced = torch.fx.experimental.proxy_tensor.make_fx(lambda t: rotafx.ops.transfer(t, CPU, None))(x)
    assert [n.target for n in traced.graph.nodes if n.op == "call_function"] == [torch.ops.rotafx.transfer.default]


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap runs clamp_ slice by slice
def test_eager_transfer_function_under_torch_func() -> None:
    x = _activations()[:4, :8]
    g = torch.func.grad(lambda t: (rotafx.ops.transfer(t, CPU, "int8") * 3).sum())(x)
    assert torch.equal(g, torch.full_like(x, 3.0)), "straight-through gradient, as the op's"
    per_row = torch.func.vmap(lambda t: rotafx.ops.transfer(t, CPU, "int8"))(x)
    assert torch.equal(per_row, transfer(x, CPU, "int8"))
    _, tangent = torch.func.jvp(lambda t: rotafx.ops.transfer(t, CPU, "int8"), (x,), (torch.ones_like(x),))
    assert torch.equal(tangent, torch.ones_like(x)), "straight-through tangent"
    traced = torch.fx.experimental.proxy_tensor.make_fx(
        torch.func.functionalize(lambda t: rotafx.ops.transfer(t, CPU, None) * 2))(x)
    assert torch.ops.rotafx.transfer.default in [n.target for n in traced.graph.nodes], "functionalize keeps the op"
    with pytest.raises(RuntimeError, match=r"rotafx: torch.ops.rotafx.transfer cannot be differentiated under torch.func.*"
                                           r"rotafx.ops.transfer"):
        torch.func.grad(lambda t: transfer(t, CPU, None).sum())(x)


def test_transfer_value_maps_tuples_and_passes_other_values() -> None:
    a, b = torch.randn(2), torch.randn(3)
    out = transfer_value((a, [b, 4], None), CPU, None)
    assert torch.equal(out[0], a) and torch.equal(out[1][0], b) and out[1][1] == 4 and out[2] is None


def test_unknown_codec_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"rotafx: unknown transfer codec 'int4'.*fp16.*bf16.*int8"):
        check_codec("int4")
    assert check_codec("none") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transfer_to_cuda_and_back() -> None:
    x = _activations()
    dev = torch.device("cuda", 0)
    for codec in (None, "fp16", "bf16", "int8"):
        y = transfer(x, dev, codec)
        assert y.device == dev
        assert bool(((y.cpu().double() - x.double()).abs() <= error_bound(x, codec)).all())


# ---------------------------------------------------------------------------
# rewrite


class Skip(torch.nn.Module):
    """``c(b(a(x))) + a(x)``: the output of stage 0 is read by stages 1 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 8)
        self.b = torch.nn.Linear(8, 8)
        self.c = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(self.b(h).relu()) + h


def _split(gm: fx.GraphModule, stages: dict[str, int], n: int = 3, codec: str | None = None):  # type: ignore[no-untyped-def]
    return rewrite(gm, stages, [CPU] * n, {}, {}, codec=codec)


def test_rewrite_hand_partition_equals_the_graph() -> None:
    torch.manual_seed(0)
    m = Skip()
    gm = fx.symbolic_trace(m)
    names = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert names == ["a", "b", "relu", "c", "add"]
    rw = _split(gm, {"a": 0, "b": 1, "relu": 1, "c": 2, "add": 2})
    x = torch.randn(4, 8)
    assert torch.equal(rw.program(x), m(x))
    assert [s.index for s in rw.stages] == [0, 1, 2]
    # h goes to stage 1 and to stage 2 (one transfer each); stage 1's output to stage 2
    assert len(rw.transfers) == 3
    calls = [n for n in rw.program.graph.nodes if n.op == "call_module"]
    assert [str(c.target) for c in calls] == ["stage0", "stage1", "stage2"]
    for c in calls[1:]:
        assert all(a.target is torch.ops.rotafx.transfer.default or a.target is transfer_value
                   for a in c.args), "every input of a later stage arrives through rotafx::transfer"


def test_rewrite_empty_middle_stage_and_codec() -> None:
    m = Skip()
    gm = fx.symbolic_trace(m)
    rw = _split(gm, {"a": 0, "b": 0, "relu": 0, "c": 2, "add": 2}, codec="bf16")
    assert [s.index for s in rw.stages] == [0, 2]
    assert all(n.args[2] == "bf16" for n in rw.transfers)
    x = torch.randn(4, 8)
    torch.testing.assert_close(rw.program(x), m(x), rtol=2e-2, atol=2e-2)


def test_rewrite_weights_land_where_they_are_read() -> None:
    # weights as placeholders, the way torch.export and dynamo hand them over; w is read on stages 0 and 1
    g = fx.Graph()
    x, w, v = g.placeholder("x"), g.placeholder("w"), g.placeholder("v")
    h = g.call_function(torch.matmul, (x, w))
    r = g.call_function(torch.relu, (h,))
    o = g.call_function(torch.matmul, (r, w))
    o2 = g.call_function(operator.add, (o, v))
    g.output(o2)
    gm = fx.GraphModule(torch.nn.Module(), g)
    W, V = torch.nn.Parameter(torch.randn(4, 4)), torch.randn(4)
    rw = rewrite(gm, {h.name: 0, r.name: 0, o.name: 1, o2.name: 1}, [CPU, CPU], {"w": "lin.weight", "v": "bias"},
                 {"lin.weight": W, "bias": V})
    X = torch.randn(2, 4)
    assert torch.equal(rw.program(X), torch.relu(X @ W) @ W + V)
    assert rw.inputs == ("x",), "weights are held by the stages, not passed in"
    assert [s.weight_names for s in rw.stages] == [("lin.weight",), ("lin.weight", "bias")]
    assert rw.stages[0].parameters()[0] is W, "on the same device the stage holds the weight itself, not a copy"
    slot = next(s for s in rw.weights if s.name == "lin.weight")
    assert len(slot.copies) == 2


def test_rewrite_rejects_decreasing_stages() -> None:
    gm = fx.symbolic_trace(Skip())
    with pytest.raises(RewriteError, match="must not decrease"):
        _split(gm, {"a": 1, "b": 0, "relu": 0, "c": 2, "add": 2})


def test_rewrite_leaves_the_input_graph_alone() -> None:
    gm = fx.symbolic_trace(Skip())
    before = str(gm.graph)
    _split(gm, {"a": 0, "b": 1, "relu": 1, "c": 2, "add": 2})
    assert str(gm.graph) == before
