"""rotafx.frontends.keras: Keras profiles against analytic counts, Keras's own parameter count and PyTorch."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: no C++ log noise

import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if not hasattr(keras, "KerasTensor"):  # pragma: no cover
    pytest.skip("rotafx reads Keras 3 models", allow_module_level=True)

import torch  # noqa: E402

from rotafx import ModelProfile, PartitionOptimizer  # noqa: E402
from rotafx.layers import CostRuleError  # noqa: E402
from rotafx.layers import ProfileError  # noqa: E402
from tests.models import example_inputs, mlp  # noqa: E402

L = keras.layers


def names(p: ModelProfile) -> list[str]:
    return [l.name for l in p.layers]


def test_sequential_mlp_matches_analytic_counts() -> None:
    m = keras.Sequential([keras.Input((32,), name="x"), L.Dense(64, activation="relu", name="fc1"), L.Dense(10, name="fc2")],
                         name="mlp")
    b = 4
    p = ModelProfile.from_tensorflow(m, batch_size=b)
    assert isinstance(p, ModelProfile) and p.source == "keras" and p.name == "mlp" and p.batch_size == b
    assert names(p) == ["fc1", "fc2"]
    assert p.total_params == m.count_params() == 32 * 64 + 64 + 64 * 10 + 10
    assert [l.params for l in p.layers] == [32 * 64 + 64, 64 * 10 + 10]
    # Dense: 2*B*in*out (bias not counted) plus its activation, 1 per output element
    assert [l.flops for l in p.layers] == [2 * b * 32 * 64 + b * 64, 2 * b * 64 * 10]
    assert p.output_shapes == [((b, 64),), ((b, 10),)]
    assert [p.boundary_bytes(i) for i in range(3)] == [b * 32 * 4, b * 64 * 4, b * 10 * 4]
    assert p.weight_bytes == 4 * m.count_params()


def test_functional_cnn_matches_analytic_counts() -> None:
    inp = keras.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    x = L.MaxPooling2D(2, name="pool")(x)
    x = L.Conv2D(16, 3, strides=2, name="conv2")(x)          # valid: 8x8 -> 3x3
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(10, name="head")(x)
    m = keras.Model(inp, out, name="cnn")
    b = 2
    p = ModelProfile.from_tensorflow(m, batch_size=b)
    assert names(p) == ["conv1", "bn", "relu", "pool", "conv2", "gap", "head"]
    assert p.total_params == m.count_params()  # Keras's count: batch-norm moving statistics included
    conv1_out, conv2_out = b * 16 * 16 * 8, b * 3 * 3 * 16
    expected = [2 * conv1_out * 3 * 3 * 3, 5 * conv1_out, conv1_out, (conv1_out // 4) * 4,
                2 * conv2_out * 8 * 3 * 3, conv2_out, 2 * b * 16 * 10]
    assert [l.flops for l in p.layers] == expected
    # im2col: B * Cin/groups * prod(kernel) * prod(output spatial) elements
    assert p.layers[0].buffer_bytes == b * 3 * 9 * 16 * 16 * 4
    assert p.layers[4].buffer_bytes == b * 8 * 9 * 3 * 3 * 4
    assert p.output_shapes[4] == ((b, 3, 3, 16),)


def transformer(seq: int | None = 8) -> keras.Model:
    tokens = keras.Input((seq,), dtype="int32", name="tokens")
    x = L.Embedding(100, 16, name="embed")(tokens)
    a = L.MultiHeadAttention(num_heads=2, key_dim=8, name="attn")(x, x)
    x = L.Add(name="residual")([x, a])
    x = L.LayerNormalization(name="norm")(x)
    block = keras.Sequential([keras.Input((seq, 16)), L.Dense(32, activation="gelu", name="up"), L.Dense(16, name="down")],
                             name="mlp_block")
    return keras.Model(tokens, block(x), name="tiny_transformer")


def test_attention_residual_and_nested_block() -> None:
    m = transformer()
    b, s, d, h, kd = 3, 8, 16, 2, 8
    p = ModelProfile.from_tensorflow(m, batch_size=b)
    assert names(p) == ["embed", "attn", "residual", "norm", "mlp_block"]
    assert p.total_params == m.count_params()
    t = b * s
    attn = 4 * 2 * t * d * h * kd + 2 * b * h * s * s * (kd + kd)  # q, k, v, output projections + the two matmuls
    assert [l.flops for l in p.layers] == [0, attn, t * d, 5 * t * d, 2 * t * d * 32 + t * 32 + 2 * t * 32 * d]
    assert p.layers[1].buffer_bytes == b * h * s * s * 4  # the score matrix
    # the residual stream crosses the cut after the attention: the embedding and the attention output
    assert [t.name for t in p.boundaries[2]] == ["embed", "attn"]
    # the nested Sequential is one layer, priced op by op
    assert p.layer_ops[-1] == ("mlp_block/up", "mlp_block/down")


def test_keras_mlp_places_like_the_pytorch_mlp() -> None:
    """The zoo's MLP written in Keras has the PyTorch profile's layers and costs, so the optimizer cuts it the same."""
    k = keras.Sequential([keras.Input((64,)), L.Dense(128, name="0"), L.ReLU(name="1"), L.Dense(128, name="2"),
                          L.ReLU(name="3"), L.Dense(10, name="4")])
    kp = ModelProfile.from_tensorflow(k, batch_size=2)
    tp = ModelProfile.from_pytorch(mlp(), example_inputs("mlp", 2))
    assert names(kp) == names(tp)
    for a, b in zip(kp.layers, tp.layers):
        assert (a.params, a.flops, a.weight_bytes, a.activation_bytes, a.bytes_moved) == \
            (b.params, b.flops, b.weight_bytes, b.activation_bytes, b.bytes_moved), a.name
    topo = {"devices": [{"name": "gpu", "count": 4, "kind": "gpu", "flops": 1e12, "memory": 80e9, "cache": 80e3,
                         "memory_bandwidth": 1e12, "cache_bandwidth": 1e13, "power": 300}],
            "links": [{"src": f"gpu{i}", "dst": f"gpu{i + 1}", "bandwidth": 1e9} for i in range(3)],
            "chain": [f"gpu{i}" for i in range(4)], "capacity": "cache"}
    a = PartitionOptimizer().optimize(model=kp, topology=topo, objective="maximize_throughput")
    b = PartitionOptimizer().optimize(model=tp, topology=topo, objective="maximize_throughput")
    assert a.cut_points and a.cut_points == b.cut_points


def test_dynamic_sequence_needs_a_shape() -> None:
    m = transformer(seq=None)
    with pytest.raises(ProfileError, match=r"input 'tokens' has an unknown dimension at axis 1.*input_shapes=\{'tokens': \(1, N\)\}"):
        ModelProfile.from_tensorflow(m)
    p8 = ModelProfile.from_tensorflow(m, input_shapes={"tokens": (None, 8)}, batch_size=3)
    p16 = ModelProfile.from_tensorflow(m, input_shapes=[(3, 16)])
    assert p8.total_flops == ModelProfile.from_tensorflow(transformer(), batch_size=3).total_flops
    assert p16.layers[4].flops == 2 * p8.layers[4].flops  # the MLP scales with tokens
    assert p16.layers[1].buffer_bytes == 4 * p8.layers[1].buffer_bytes  # the score matrix with tokens squared
    with pytest.raises(ProfileError, match="has size 8 at axis 1"):
        ModelProfile.from_tensorflow(transformer(), input_shapes={"tokens": (3, 9)})


def test_unbuilt_sequential_and_bad_models() -> None:
    s = keras.Sequential([L.Dense(8, name="a"), L.Dense(2, name="b")])
    with pytest.raises(ProfileError, match="is not built.*input_shapes"):
        ModelProfile.from_tensorflow(s)
    p = ModelProfile.from_tensorflow(s, input_shapes=(4, 5))
    assert p.total_params == 5 * 8 + 8 + 8 * 2 + 2 and p.layers[0].flops == 2 * 4 * 5 * 8

    class Sub(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.fc = L.Dense(3)

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.fc(x)

    with pytest.raises(ProfileError, match="subclassed Keras model"):
        ModelProfile.from_tensorflow(Sub())
    with pytest.raises(TypeError, match="from_pytorch"):
        ModelProfile.from_tensorflow(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="wrap it in keras.Sequential"):
        ModelProfile.from_tensorflow(L.Dense(3))


def test_unknown_layers_warn_or_raise() -> None:
    m = keras.Sequential([keras.Input((4,)), L.Dense(4, name="fc"), L.Lambda(lambda z: z * 2, name="double")])
    with pytest.warns(UserWarning, match=r"no cost rule for Keras layer\(s\) Lambda \(first at layer 'double'\)"):
        p = ModelProfile.from_tensorflow(m)
    assert p.unknown_ops == {"Lambda": "double"} and p.layers[1].flops == 0 and p.layers[1].activation_bytes == 16
    with pytest.raises(CostRuleError, match="Lambda"):
        ModelProfile.from_tensorflow(m, strict=True)


def test_dtype_prices_floats_at_its_size() -> None:
    m = transformer()
    p32 = ModelProfile.from_tensorflow(m)
    p16 = ModelProfile.from_tensorflow(m, dtype="float16")
    assert p16.weight_bytes * 2 == p32.weight_bytes and p16.dtype == torch.float16
    # int32 token ids are not floating: the input boundary keeps its size
    assert p16.boundary_bytes(0) == p32.boundary_bytes(0) and p16.boundary_bytes(1) * 2 == p32.boundary_bytes(1)
