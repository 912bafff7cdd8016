"""rotafx.frontends.onnx: ONNX profiles against the PyTorch profile, analytic counts, per-stage export and bad input."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch.onnx.export (dynamo) needs it

from onnx import TensorProto, helper  # noqa: E402

from rotafx import ModelProfile, PartitionOptimizer  # noqa: E402
from rotafx.layers import CostRuleError  # noqa: E402
from rotafx.frontends.onnx import export_stages, run_stages, stage_ranges  # noqa: E402
from rotafx.layers import ProfileError  # noqa: E402
from tests.models import ZOO, convnet, example_inputs, mlp, small_gpt  # noqa: E402

OPSET = 21


def export(model: torch.nn.Module, args: tuple, path: Path, **kwargs: object) -> Path:
    """torch.onnx.export (dynamo) without the graph optimizer, which folds batch norms and merges equal initializers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, args, dynamo=True, optimize=False, verbose=False, **kwargs)
    prog.save(str(path))
    return path


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[torch.nn.Module, tuple, Path]]:
    """Every model of the test zoo, each with its inputs and its ONNX export (batch 2)."""
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    out = {}
    for name, (factory, inputs) in ZOO.items():
        model = factory().eval()
        args = inputs(2)
        out[name] = (model, args, export(model, args, root / f"{name}.onnx"))
    return out


def make_model(nodes: list, inputs: list, outputs: list, inits: list = (), opset: int = OPSET) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def vi(name: str, shape: list, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name: str, shape: list) -> onnx.TensorProto:
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


# ---------------------------------------------------------------------------
# the zoo: ONNX and PyTorch profiles agree


@pytest.mark.parametrize("name", list(ZOO))
def test_onnx_profile_agrees_with_pytorch(zoo: dict, name: str) -> None:
    """Two frontends, one grouping function: the same layers, FLOPs, activations, workspace and liveness peaks."""
    model, args, path = zoo[name]
    tp = ModelProfile.from_pytorch(model, args)
    op = ModelProfile.from_onnx(path)
    assert isinstance(op, ModelProfile) and op.source == "onnx"
    assert [l.name for l in op.layers] == [l.name for l in tp.layers], "layers differ"
    # ONNX cannot tell a buffer from a parameter: a buffer other than batch-norm statistics (the rotary inv_freq)
    # counts as one there
    extra = sum(b.numel() for n, b in model.named_buffers() if not n.endswith(("running_mean", "running_var",
                                                                                "num_batches_tracked")))
    assert op.total_params == tp.total_params + extra, "parameter counts differ"
    assert tp.total_params == sum(p.numel() for p in model.parameters())
    if not extra:
        assert [l.params for l in op.layers] == [l.params for l in tp.layers]
    for lo, lt in zip(op.layers, tp.layers):
        assert lo.flops == lt.flops, f"{lo.name}: FLOPs {lo.flops} (ONNX) != {lt.flops} (PyTorch)"
        assert lo.activation_bytes == lt.activation_bytes, lo.name
        assert lo.buffer_bytes == lt.buffer_bytes, lo.name  # im2col, attention scores
        assert lo.peak_bytes == lt.peak_bytes, f"{lo.name}: peak {lo.peak_bytes} (ONNX) != {lt.peak_bytes} (PyTorch)"
    # the tensors that cross every cut weigh the same (residual streams and model inputs included)
    assert [op.boundary_bytes(p) for p in range(op.num_layers + 1)] == [tp.boundary_bytes(p) for p in range(tp.num_layers + 1)]
    assert op.batch_size == 2 and not op.unknown_ops
    # the kernel shapes a calibrated device's rates are looked up at: matmuls, convolutions as GEMMs, attention
    for lo, lt in zip(op.layers, tp.layers):
        assert [c.kernel for c in lo.op_costs if c.kernel] == [c.kernel for c in lt.op_costs if c.kernel], lo.name


def test_mlp_flops_are_exact(zoo: dict) -> None:
    """Gemm 2*B*in*out (bias not counted), ReLU 1 per element: the same figures as the PyTorch profile."""
    _, _, path = zoo["mlp"]
    p = ModelProfile.from_onnx(path)
    b = 2
    assert [l.flops for l in p.layers] == [2 * b * 64 * 128, b * 128, 2 * b * 128 * 128, b * 128, 2 * b * 128 * 10]
    assert p.output_shapes == [((2, 128),), ((2, 128),), ((2, 128),), ((2, 128),), ((2, 10),)]


def test_optimizer_cuts_mlp_the_same_from_pytorch_and_onnx(zoo: dict) -> None:
    model, args, path = zoo["mlp"]
    tp = ModelProfile.from_pytorch(model, args)
    op = ModelProfile.from_onnx(path)
    # four GPUs whose L2 (80 kB) must hold each stage: the MLP (104 kB of weights) has to be cut
    topo = {"devices": [{"name": "gpu", "count": 4, "kind": "gpu", "flops": 1e12, "memory": 80e9, "cache": 80e3,
                         "memory_bandwidth": 1e12, "cache_bandwidth": 1e13, "power": 300}],
            "links": [{"src": f"gpu{i}", "dst": f"gpu{i + 1}", "bandwidth": 1e9} for i in range(3)],
            "chain": [f"gpu{i}" for i in range(4)], "capacity": "cache"}
    for objective in ("minimize_latency", "maximize_throughput"):
        a = PartitionOptimizer().optimize(model=tp, topology=topo, objective=objective)
        b = PartitionOptimizer().optimize(model=op, topology=topo, objective=objective)
        assert a.cut_points, "the topology should force a cut"
        assert b.cut_points == a.cut_points and b.nodes == a.nodes, objective
        assert b.objective_value == pytest.approx(a.objective_value, rel=1e-9)


def test_small_gpt_attention_is_priced_as_fused(zoo: dict) -> None:
    """MatMul -> scale/mask -> Softmax -> MatMul: the two matmuls, and the score matrix as workspace, not activation."""
    _, _, path = zoo["small-gpt"]
    p = ModelProfile.from_onnx(path)
    b, s, d, h = 2, 32, 64, 4
    scores = b * h * s * s
    block = p.layers[p.layer_index("layers.0")]
    assert block.buffer_bytes == scores * 4
    attention = 2 * b * h * s * s * (d // h + d // h)
    linears = 2 * b * s * d * (3 * d + d + 4 * d + 4 * d)
    # + 2 LayerNorms, GELU and two residual adds (the PyTorch profile's rules)
    t = b * s
    assert block.flops == attention + linears + 2 * 5 * t * d + 4 * t * d + 2 * t * d


# ---------------------------------------------------------------------------
# dynamic shapes


@pytest.fixture(scope="module")
def dynamic_gpt(zoo: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small GPT with a dynamic batch and sequence length, from the TorchScript exporter (fast; its node names
    carry the module paths, and it merges equal initializers through Identity nodes)."""
    model, args, _ = zoo["small-gpt"]
    path = tmp_path_factory.mktemp("dyn") / "gpt.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=["input_ids"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    except Exception:  # a torch without the TorchScript exporter: the dynamo one with dynamic shapes (slower)
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=32)}
        export(model, args, path, dynamic_shapes=(dims,))
    return path


def test_dynamic_dimensions_need_bindings(dynamic_gpt: Path) -> None:
    with pytest.raises(ProfileError, match=r"input 'input_ids' has a dynamic dimension 'batch' at axis 0.*input_shapes"):
        ModelProfile.from_onnx(dynamic_gpt)
    with pytest.raises(ProfileError, match="dimension 'seq' at axis 1"):
        ModelProfile.from_onnx(dynamic_gpt, input_shapes={"batch": 2})
    with pytest.raises(ProfileError, match="neither an input"):
        ModelProfile.from_onnx(dynamic_gpt, input_shapes={"tokens": (2, 32)})
    with pytest.raises(ProfileError, match="has 2 dimensions"):
        ModelProfile.from_onnx(dynamic_gpt, input_shapes={"input_ids": (2, 32, 1)})


def test_dynamic_dimensions_bound_by_name_or_by_input(zoo: dict, dynamic_gpt: Path) -> None:
    model, args, _ = zoo["small-gpt"]
    static = ModelProfile.from_pytorch(model, args)
    by_dim = ModelProfile.from_onnx(dynamic_gpt, input_shapes={"batch": 2, "seq": 32})
    by_input = ModelProfile.from_onnx(dynamic_gpt, input_shapes={"input_ids": (2, 32)})
    for p in (by_dim, by_input):
        assert [l.name for l in p.layers] == [l.name for l in static.layers]
        # the TorchScript exporter writes its own graph (q/k scaled apart, no scope metadata): FLOPs within 3%
        assert p.total_flops == pytest.approx(static.total_flops, rel=0.03)
        assert p.output_shapes[-1] == ((2, 32, 256),)
        assert [p.boundary_bytes(i) for i in range(p.num_layers + 1)] == \
            [static.boundary_bytes(i) for i in range(static.num_layers + 1)]
    one = ModelProfile.from_onnx(dynamic_gpt, input_shapes={"batch": 1, "seq": 32})
    assert one.layers[1].flops == pytest.approx(by_dim.layers[1].flops / 2, rel=1e-3)  # the causal mask does not scale
    # chained stages of the dynamic model run at another batch size
    stages = export_stages(dynamic_gpt, by_dim, [2, 4])
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 256, (3, 16)).astype(np.int64)}
    whole = ort.InferenceSession(str(dynamic_gpt)).run(None, feeds)[0]
    np.testing.assert_allclose(run_stages(stages, feeds)[by_dim.output_names[0]], whole, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# per-stage export


@pytest.mark.parametrize("name, cuts", [("mlp", [1, 3]), ("convnet", [2]), ("convnet", [1, 2, 3, 4]),
                                        ("small-gpt", [1, 3]), ("small-gpt", [2, 4])])
def test_chained_stages_match_the_whole_model(zoo: dict, tmp_path: Path, name: str, cuts: list[int]) -> None:
    model, args, path = zoo[name]
    prof = ModelProfile.from_onnx(path)
    stages = export_stages(path, prof, cuts, tmp_path)
    assert [(s.start, s.end) for s in stages] == stage_ranges(prof, cuts)
    assert all(s.path is not None and s.path.exists() for s in stages)
    for s in stages:
        onnx.checker.check_model(s.model)
        assert set(s.inputs) <= {t.name for t in prof.boundaries[s.start]}
    feeds = {i.name: a.numpy() for i, a in zip(ort.InferenceSession(str(path)).get_inputs(), args)}
    whole = ort.InferenceSession(str(path)).run(None, feeds)
    chained = run_stages(stages, feeds)
    for out_name, expected in zip(prof.output_names, whole):
        got = chained[out_name]
        assert got.shape == expected.shape and got.dtype == expected.dtype, f"{out_name}: shape or dtype differs"
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # each parameter lands in exactly one stage
    params = [w for s in stages for w in (i.name for i in s.model.graph.initializer) if w in prof.param_names]
    assert sorted(params) == sorted(prof.param_names)
    # and the PyTorch model agrees with the chain
    with torch.no_grad():
        ref = model(*args).numpy()
    np.testing.assert_allclose(chained[prof.output_names[0]], ref, rtol=1e-4, atol=1e-4)


def test_export_a_partition_from_the_optimizer(zoo: dict) -> None:
    _, args, path = zoo["mlp"]
    prof = ModelProfile.from_onnx(path)
    topo = {"devices": [{"name": "gpu", "count": 3, "flops": 1e12, "memory": 80e9, "cache": 80e3,
                         "memory_bandwidth": 1e12, "cache_bandwidth": 1e13}],
            "links": [{"src": f"gpu{i}", "dst": f"gpu{i + 1}", "bandwidth": 1e9} for i in range(2)],
            "chain": ["gpu0", "gpu1", "gpu2"], "capacity": "cache"}
    part = PartitionOptimizer().optimize(model=prof, topology=topo, objective="maximize_throughput")
    stages = export_stages(path, prof, part)
    assert len(stages) == len(part.cut_points) + 1 > 1
    assert [s.device for s in stages] == [part.nodes[s.start] for s in stages]
    feeds = {"input": args[0].numpy()}
    out = run_stages(stages, feeds)[prof.output_names[0]]
    np.testing.assert_allclose(out, ort.InferenceSession(str(path)).run(None, feeds)[0], rtol=1e-6)


def test_stage_ranges_rejects_bad_cuts(zoo: dict) -> None:
    prof = ModelProfile.from_onnx(zoo["mlp"][2])
    assert stage_ranges(prof, []) == [(0, 5)]
    assert stage_ranges(prof, [0, 0, 1, 1, 1]) == [(0, 2), (2, 5)]
    with pytest.raises(ValueError, match="increasing layer indices in 1..4"):
        stage_ranges(prof, [3, 1])


# ---------------------------------------------------------------------------
# hand-built graphs against analytic counts


def test_conv_gemm_pool_norm_rules() -> None:
    b, cin, cout, hw, k, groups = 2, 4, 8, 10, 3, 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "wb"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1], group=groups),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["n"], name="/bn/BatchNormalization"),
        helper.make_node("MaxPool", ["n"], ["p"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="/flat/Flatten"),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="/fc/Gemm", transB=1),
        helper.make_node("Softmax", ["y"], ["z"], name="/sm/Softmax"),
    ]
    feat = cout * (hw // 2) ** 2
    inits = [weight("w", [cout, cin // groups, k, k]), weight("wb", [cout]), weight("s", [cout]), weight("bb", [cout]),
             weight("mean", [cout]), weight("var", [cout]), weight("g", [5, feat]), weight("gb", [5])]
    p = ModelProfile.from_onnx(make_model(nodes, [vi("x", [b, cin, hw, hw])], [vi("z", [b, 5])], inits))
    assert [l.name for l in p.layers] == ["conv", "bn", "pool", "flat", "fc", "sm"]
    out = b * cout * hw * hw
    conv, bn, pool, flat, fc, sm = p.layers
    assert conv.flops == 2 * out * (cin // groups) * k * k  # torch's convention: bias not counted
    assert conv.buffer_bytes == b * (cin // groups) * k * k * hw * hw * 4  # im2col
    assert bn.flops == 5 * out and bn.params == 2 * cout  # running mean and variance are buffers
    assert pool.flops == (out // 4) * 4
    assert flat.flops == 0
    assert fc.flops == 2 * b * feat * 5
    assert sm.flops == 5 * b * 5
    assert p.total_params == sum(math.prod(i.dims) for i in inits) - 2 * cout
    assert p.weight_bytes == 4 * sum(math.prod(i.dims) for i in inits)


def test_matmul_einsum_reduce_and_pointwise_rules() -> None:
    nodes = [
        helper.make_node("MatMul", ["a", "bm"], ["m"], name="/mm/MatMul"),                     # (3, 5, 7) @ (7, 4)
        helper.make_node("Einsum", ["m", "e"], ["en"], name="/ein/Einsum", equation="bij,jk->bik"),
        helper.make_node("Add", ["en", "en"], ["s"], name="/add/Add"),
        helper.make_node("ReduceMean", ["s"], ["r"], name="/mean/ReduceMean", keepdims=0),
        helper.make_node("Sigmoid", ["r"], ["o"], name="/act/Sigmoid"),
    ]
    m = make_model(nodes, [vi("a", [3, 5, 7])], [vi("o", [])], [weight("bm", [7, 4]), weight("e", [4, 6])], opset=17)
    p = ModelProfile.from_onnx(m)
    assert [l.flops for l in p.layers] == [2 * 3 * 5 * 7 * 4, 2 * 3 * 5 * 6 * 4, 3 * 5 * 6, 3 * 5 * 6, 1]


def test_attention_subgraph_and_attention_op() -> None:
    b, h, lq, lk, d = 2, 3, 5, 7, 4
    q, k, v = vi("q", [b, h, lq, d]), vi("k", [b, h, d, lk]), vi("v", [b, h, lk, d])
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"], name="/attn/MatMul"),
             helper.make_node("Div", ["s", "scale"], ["s2"], name="/attn/Div"),
             helper.make_node("Softmax", ["s2"], ["pr"], name="/attn/Softmax", axis=-1),
             helper.make_node("MatMul", ["pr", "v"], ["o"], name="/attn/MatMul_1")]
    scale = onnx.numpy_helper.from_array(np.array(2.0, dtype=np.float32), "scale")
    p = ModelProfile.from_onnx(make_model(nodes, [q, k, v], [vi("o", [b, h, lq, d])], [scale]))
    (layer,) = p.layers
    assert layer.flops == 2 * b * h * lq * lk * (d + d)
    assert layer.buffer_bytes == b * h * lq * lk * 4
    qkv = (b * h * lq * d + 2 * b * h * lk * d) * 4
    out = b * h * lq * d * 4
    # one fused op, as PyTorch's scaled_dot_product_attention: while it runs, q, k, v and its output are live,
    # and its score matrix is workspace
    assert layer.peak_bytes == qkv + out + b * h * lq * lk * 4
    assert layer.activation_bytes == out and layer.ops == ("/attn/MatMul_1",)
    # the same attention as one ONNX Attention op (opset 23)
    k4 = vi("k", [b, h, lk, d])
    att = make_model([helper.make_node("Attention", ["q", "k", "v"], ["o"], name="/attn/Attention")],
                     [q, k4, v], [vi("o", [b, h, lq, d])], opset=23)
    p2 = ModelProfile.from_onnx(att)
    assert p2.layers[0].flops == layer.flops and p2.layers[0].buffer_bytes == layer.buffer_bytes
    assert p2.layers[0].peak_bytes == layer.peak_bytes


def test_shared_initializer_counted_once_per_stage() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/a/MatMul"),
             helper.make_node("Relu", ["h"], ["r"], name="/b/Relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="/c/MatMul")]
    p = ModelProfile.from_onnx(make_model(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])], [weight("w", [8, 8])]))
    a, _, c = p.layers
    assert a.weight_names == c.weight_names == ("w",) and a.weight_bytes == c.weight_bytes == 256
    assert p.total_params == 64 and p.weight_bytes == 256


def test_grouping_without_torch_metadata() -> None:
    mk = lambda names: make_model(  # noqa: E731
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name=names[0]),
         helper.make_node("Relu", ["h"], ["r"], name=names[1]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name=names[2])],
        [vi("x", [2, 8])], [vi("y", [2, 8])], [weight("w1", [8, 8]), weight("w2", [8, 8])])
    # TorchScript-exporter names
    assert [l.name for l in ModelProfile.from_onnx(mk(["/layers.0/fc/MatMul", "/layers.0/Relu", "/layers.1/fc/MatMul"])).layers] \
        == ["layers.0", "layers.1"]
    # a Keras-style wrapper scope is dropped when it would make one layer of everything
    assert [l.name for l in ModelProfile.from_onnx(mk(["seq/dense/MatMul", "seq/act/Relu", "seq/dense_1/MatMul"])).layers] \
        == ["dense", "act", "dense_1"]
    # no scopes at all: every op that reads a weight starts a layer
    p = ModelProfile.from_onnx(mk(["mm0", "relu", "mm1"]))
    assert [l.name for l in p.layers] == ["mm0", "mm1"] and p.layer_ops == [("mm0", "relu"), ("mm1",)]
    # or a callable
    p = ModelProfile.from_onnx(mk(["a", "b", "c"]), group_by=lambda n: "all")
    assert [l.name for l in p.layers] == ["all"]


def test_data_dependent_shapes_are_measured_once() -> None:
    """NonZero's output size depends on the data: onnxruntime runs the model once to measure it."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/act/Relu"),
             helper.make_node("NonZero", ["r"], ["nz"], name="/pick/NonZero"),
             helper.make_node("Cast", ["nz"], ["y"], name="/pick/Cast", to=TensorProto.FLOAT)]
    m = make_model(nodes, [vi("x", [2, 3])], [vi("y", None)])
    with pytest.warns(UserWarning, match="measured them by running the model once in onnxruntime"):
        p = ModelProfile.from_onnx(m)
    assert p.output_shapes[-1][0][0] == 2  # (rank, count)


def test_dtype_prices_floats_at_its_size(zoo: dict) -> None:
    p32 = ModelProfile.from_onnx(zoo["mlp"][2])
    p16 = ModelProfile.from_onnx(zoo["mlp"][2], dtype="float16")
    assert p16.total_params == p32.total_params
    assert p16.weight_bytes * 2 == p32.weight_bytes
    assert [l.activation_bytes * 2 for l in p16.layers] == [l.activation_bytes for l in p32.layers]
    assert p16.dtype == torch.float16


def test_measure_fills_times_per_layer(zoo: dict) -> None:
    p = ModelProfile.from_onnx(zoo["small-gpt"][2], measure=True, measure_runs=2)
    assert p.measured_ms is not None and len(p.measured_ms) == p.num_layers
    assert all(t >= 0 for t in p.measured_ms) and sum(p.measured_ms) > 0
    assert p.op_ms and all(t >= 0 for t in p.op_ms.values())
    # onnxruntime's times are this host's cpu's: a calibrated cpu of this host prices the layers by them
    import socket

    from rotafx.calibrate import Calibration

    assert p.measured_on == f"cpu@{socket.gethostname()}"
    cal = Calibration(device="cpu", threads=1, bandwidth_Bps=1e10, machine={"host": socket.gethostname()})
    topo = {"devices": [{"name": "cpu", "memory": "8 GB", "flops": 1e12, "calibration": cal.to_dict()}], "links": [],
            "chain": ["cpu"]}
    from rotafx import LatencyEstimator

    est = LatencyEstimator(topo).estimate([0] * p.num_layers, p)
    assert est.figures == {"cpu": "measured"} and est.compute_ms == pytest.approx(sum(p.measured_ms))


def test_model_proto_and_bytes_are_accepted(zoo: dict) -> None:
    path = zoo["mlp"][2]
    proto = onnx.load(str(path))
    a = ModelProfile.from_onnx(proto)
    b = ModelProfile.from_onnx(proto.SerializeToString())
    c = ModelProfile.from_onnx(str(path))
    assert a.total_flops == b.total_flops == c.total_flops and a.total_params == c.total_params


def test_external_data_is_not_loaded_to_profile(zoo: dict, tmp_path: Path) -> None:
    """Weights stored beside the model (as models over 2 GB must be): profiling reads their shapes only."""
    _, args, path = zoo["convnet"]
    proto = onnx.load(str(path))
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    p = ModelProfile.from_onnx(tmp_path / "ext.onnx")
    assert p.total_params == ModelProfile.from_onnx(path).total_params
    stages = export_stages(tmp_path / "ext.onnx", p, [2], tmp_path / "stages")
    feeds = {"x": args[0].numpy()}
    np.testing.assert_allclose(run_stages(stages, feeds)[p.output_names[0]],
                               ort.InferenceSession(str(path)).run(None, feeds)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# bad input


def test_path_that_is_not_onnx(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ONNX file at"):
        ModelProfile.from_onnx(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ProfileError, match="is not an ONNX model"):
        ModelProfile.from_onnx(text)
    with pytest.raises(ProfileError, match="is a directory"):
        ModelProfile.from_onnx(tmp_path)
    with pytest.raises(TypeError, match="from_pytorch"):
        ModelProfile.from_onnx(mlp())


def test_unknown_ops_warn_or_raise() -> None:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
             helper.make_node("Mystery", ["h"], ["y"], name="/odd/Mystery", domain="custom.ops")]
    m = make_model(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])], [weight("w", [8, 8])])
    m.opset_import.append(helper.make_opsetid("custom.ops", 1))
    m.graph.value_info.append(vi("y", [2, 8]))  # custom ops have no shape inference: declare the output
    with pytest.warns(UserWarning, match=r"no cost rule for ONNX op\(s\) custom.ops::Mystery \(first at node /odd/Mystery\)"):
        p = ModelProfile.from_onnx(m)
    assert p.unknown_ops == {"custom.ops::Mystery": "/odd/Mystery"}
    assert p.layers[1].flops == 0 and p.layers[0].flops == 2 * 2 * 8 * 8
    with pytest.raises(CostRuleError, match="custom.ops::Mystery"):
        ModelProfile.from_onnx(m, strict=True)


def test_fusion_never_hides_a_model_output() -> None:
    """Attention probabilities returned beside the result stay a tensor of their own, and every stage hands them on."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"], name="/attn/MatMul"),
             helper.make_node("Softmax", ["s"], ["p"], name="/attn/Softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["o"], name="/attn/MatMul_1"),
             helper.make_node("Relu", ["o"], ["y"], name="/out/Relu")]
    m = make_model(nodes, [vi("q", [1, 4, 8]), vi("kt", [1, 8, 4]), vi("v", [1, 4, 8])],
                   [vi("y", [1, 4, 8]), vi("p", [1, 4, 4])])
    p = ModelProfile.from_onnx(m)
    assert [sorted(t.name for t in b) for b in p.boundaries] == [["kt", "q", "v"], ["o", "p"], ["p", "y"]]
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in (("q", (1, 4, 8)), ("kt", (1, 8, 4)), ("v", (1, 4, 8)))}
    whole = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["p"], feeds)[0]
    np.testing.assert_allclose(run_stages(export_stages(m, p, [1]), feeds)["p"], whole, rtol=1e-6)


def test_a_stage_reading_only_the_shape_of_a_model_input_gets_the_input() -> None:
    """Shape(x) costs nothing in the profile (x's shape is static), but the stage that runs it still needs x."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="/a/Shape"),
             helper.make_node("Gemm", ["x", "w"], ["h"], name="/a/Gemm"),
             helper.make_node("Relu", ["h"], ["r"], name="/b/Relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="/c/Flatten"),
             helper.make_node("Reshape", ["f", "s"], ["y"], name="/c/Reshape")]
    m = make_model(nodes, [vi("x", [2, 8])], [vi("y", [2, 8])], [weight("w", [8, 8])])
    p = ModelProfile.from_onnx(m)
    assert [[t.name for t in b] for b in p.boundaries] == [["x"], ["h"], ["r"], ["y"]], "x's shape does not cross a cut"
    stages = export_stages(m, p, [1, 2])
    assert stages[2].inputs == ("r", "x")
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    whole = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(run_stages(stages, {"x": x})["y"], whole, rtol=1e-6)
