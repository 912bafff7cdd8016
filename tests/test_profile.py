"""rotafx.profile: layers, parameters, FLOPs, bytes and boundaries against analytic counts."""

from __future__ import annotations

import resource
import time

import pytest
import torch
import torch.fx.config
import torch.nn as nn

from rotafx.frontends.pytorch import read_module
from rotafx.profile import ModelProfile, ProfileError
from tests.models import (EXAMPLES, ZOO, LlamaConfig, TransformerBlock, convnet, example_inputs, llama, llama70b, mlp,
                          small_gpt, tiny_llama)

aten = torch.ops.aten


def unique_params(model: nn.Module) -> int:
    """Parameters counted once each (``parameters()`` yields a tied weight once)."""
    return sum(p.numel() for p in model.parameters())


def names(profile: ModelProfile) -> list[str]:
    return [l.name for l in profile.layers]


# ---------------------------------------------------------------------------
# analytic FLOP counts (rules: matmul 2*M*K*N, bias not counted; conv 2*B*Cout*Hout*Wout*Cin/g*kh*kw;
# attention 2*B*H*Lq*Lk*(Dqk+Dv); LayerNorm, BatchNorm 5 per element; pointwise 1 per output element;
# reductions and adaptive pooling 1 per input element; views, copies, gathers 0)


def rmsnorm_flops(tokens: int, h: int) -> int:
    # pow, mean (over its input), mul by rsqrt, mul by weight: 4 per element; add eps and rsqrt: 1 per token
    return 4 * tokens * h + 2 * tokens


def llama_block_flops(cfg: LlamaConfig, b: int, s: int) -> int:
    t, h, d = b * s, cfg.hidden, cfg.head_dim
    kv = cfg.kv_heads * d
    proj = 2 * t * h * h * 2 + 2 * t * h * kv * 2  # q, o; k, v
    # rotary: outer(pos, inv_freq) s*d/2, cos and sin s*d each; per rotated tensor x*cos, neg (half), *sin, add
    rope = s * d // 2 + 2 * s * d + (3 * t * h + t * h // 2) + (3 * t * kv + t * kv // 2)
    attn = 2 * b * cfg.heads * s * s * (d + d)
    mlp_ = 3 * 2 * t * h * cfg.mlp + 2 * t * cfg.mlp  # gate, up, down; silu and the gating product
    return 2 * rmsnorm_flops(t, h) + proj + rope + attn + mlp_ + 2 * t * h  # two residual adds


def gpt_block_flops(b: int, s: int, d: int, heads: int) -> int:
    t = b * s
    return (2 * 5 * t * d  # two LayerNorms
            + 2 * t * d * 3 * d + 2 * t * d * d  # qkv, proj
            + 2 * b * heads * s * s * 2 * (d // heads)  # attention
            + 2 * (2 * t * d * 4 * d) + t * 4 * d  # fc, fc_out, gelu
            + 2 * t * d)  # residual adds


def transformer_block_flops(b: int, s: int, d: int, heads: int, m: int) -> int:
    t = b * s
    return (2 * 5 * t * d + 4 * 2 * t * d * d + 2 * b * heads * s * s * 2 * (d // heads)
            + 2 * t * d * m * 2 + t * m + 2 * t * d)


# ---------------------------------------------------------------------------
# MLP


@pytest.mark.parametrize("sizes,batch", [((64, 128, 128, 10), 1), ((5, 7, 3), 6)])
def test_mlp_params_and_flops(sizes: tuple[int, ...], batch: int) -> None:
    p = ModelProfile.from_pytorch(mlp(sizes), batch_size=batch)  # inputs guessed from the first Linear
    pairs = list(zip(sizes[:-1], sizes[1:]))
    assert p.total_params == sum(i * o + o for i, o in pairs)
    assert names(p) == [str(i) for i in range(2 * len(pairs) - 1)]  # Linear, ReLU, ..., Linear
    expected = []
    for j, (i, o) in enumerate(pairs):
        expected.append(2 * batch * i * o)  # addmm: the bias add is not counted
        if j < len(pairs) - 1:
            expected.append(batch * o)  # ReLU
    assert [l.flops for l in p.layers] == expected
    assert p.total_flops == sum(expected)
    assert [l.params for l in p.layers[::2]] == [i * o + o for i, o in pairs]
    assert [l.activation_bytes for l in p.layers] == [batch * o * 4 for _, o in pairs for _ in (0, 1)][: len(expected)]


# ---------------------------------------------------------------------------
# conv net


def test_convnet_params_and_flops() -> None:
    b, w, classes = 2, 16, 10
    model = convnet(classes=classes, width=w)
    p = ModelProfile.from_pytorch(model, example_inputs("convnet", b))
    assert names(p) == ["stem", "down", "res", "pool", "head"]

    def conv(cin: int, cout: int, hw: int) -> int:  # 3x3, bias-free, output hw x hw
        return 2 * b * cout * hw * hw * cin * 3 * 3

    def bn_relu(c: int, hw: int) -> int:
        return 5 * b * c * hw * hw + b * c * hw * hw

    stem = conv(3, w, 32) + bn_relu(w, 32)
    down = conv(w, 2 * w, 16) + bn_relu(2 * w, 16)
    res = (conv(2 * w, 2 * w, 16) + bn_relu(2 * w, 16) + conv(2 * w, 2 * w, 16) + 5 * b * 2 * w * 16 * 16
           + 2 * b * 2 * w * 16 * 16)  # second conv, its BN, the skip add and the ReLU
    pool = b * 2 * w * 16 * 16
    head = 2 * b * 2 * w * classes
    assert [l.flops for l in p.layers] == [stem, down, res, pool, head]

    conv_p = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn_p = lambda c: 2 * c  # noqa: E731
    expected_params = [conv_p(3, w) + bn_p(w), conv_p(w, 2 * w) + bn_p(2 * w),
                       2 * (conv_p(2 * w, 2 * w) + bn_p(2 * w)), 0, 2 * w * classes + classes]
    assert [l.params for l in p.layers] == expected_params
    assert p.total_params == sum(expected_params) == unique_params(model)
    # workspace: the im2col buffer of each layer's convolution (B * Cin * 3*3 * Hout*Wout floats)
    assert [l.buffer_bytes for l in p.layers] == [b * 3 * 9 * 32 * 32 * 4, b * w * 9 * 16 * 16 * 4,
                                                  b * 2 * w * 9 * 16 * 16 * 4, 0, 0]


def test_conv_first_model_needs_example_inputs() -> None:
    with pytest.raises(ProfileError, match="example_inputs"):
        ModelProfile.from_pytorch(convnet())


# ---------------------------------------------------------------------------
# transformer blocks


def test_transformer_block_flops_per_layer_and_total() -> None:
    b, s, d, heads, m = 2, 8, 32, 4, 64
    model = nn.Sequential(TransformerBlock(d, heads, m), TransformerBlock(d, heads, m))
    p = ModelProfile.from_pytorch(model, (torch.randn(b, s, d),))
    assert names(p) == ["0", "1"]
    per_block = transformer_block_flops(b, s, d, heads, m)
    assert [l.flops for l in p.layers] == [per_block, per_block]
    assert p.total_flops == 2 * per_block
    block_params = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    assert [l.params for l in p.layers] == [block_params] * 2
    # the largest workspace is attention's score matrix, B*H*L*L floats
    assert [l.buffer_bytes for l in p.layers] == [b * heads * s * s * 4] * 2


def test_small_gpt_flops_and_workspace() -> None:
    b, s, vocab, d, heads = 2, 16, 256, 64, 4
    p = ModelProfile.from_pytorch(small_gpt(vocab=vocab, d=d, heads=heads, layers=2), (torch.zeros(b, s, dtype=torch.long),))
    assert names(p) == ["embed", "layers.0", "layers.1", "norm", "lm_head"]
    t = b * s
    block = gpt_block_flops(b, s, d, heads)
    assert [l.flops for l in p.layers] == [t * d, block, block, 5 * t * d, 2 * t * d * vocab]
    assert [l.buffer_bytes for l in p.layers] == [0, b * heads * s * s * 4, b * heads * s * s * 4, 0, 0]
    ops = read_module(small_gpt(vocab=vocab, d=d, heads=heads, layers=2), (torch.zeros(b, s, dtype=torch.long),)).ops
    sdpa = [op for op in ops if op.op_type == "scaled_dot_product_attention.default"]
    assert len(sdpa) == 2 and sdpa[0].buffer_bytes == b * heads * s * s * 4 and sdpa[0].name in p.layers[1].ops


# ---------------------------------------------------------------------------
# dtype and batch


@pytest.mark.parametrize("name", ["mlp", "small-gpt-tied", "tiny-llama"])
def test_weight_bytes_follow_dtype(name: str) -> None:
    factory, inputs = ZOO[name]
    model = factory()
    buffers = sum(t.numel() for t in model.buffers())  # tiny-llama: rotary inv_freq
    fp32 = ModelProfile.from_pytorch(model, inputs(1))
    fp16 = ModelProfile.from_pytorch(model, inputs(1), dtype=torch.float16)
    n = unique_params(model)
    assert fp32.total_params == fp16.total_params == n
    assert fp32.weight_bytes == 4 * (n + buffers)
    assert fp16.weight_bytes == 2 * (n + buffers)
    for l32, l16 in zip(fp32.layers, fp16.layers):
        assert l32.weight_bytes == 2 * l16.weight_bytes
    if not buffers:
        assert [l.weight_bytes for l in fp16.layers] == [2 * l.params for l in fp16.layers]
    # the model itself is not converted
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name", ["mlp", "convnet", "small-gpt", "tiny-llama"])
def test_activation_bytes_scale_with_batch(name: str) -> None:
    factory, inputs = ZOO[name]
    model = factory()
    one = ModelProfile.from_pytorch(model, inputs(1))
    four = ModelProfile.from_pytorch(model, inputs(4))
    assert names(one) == names(four)
    assert one.batch_size == 1 and four.batch_size == 4
    assert all(l.activation_bytes > 0 for l in one.layers)
    assert [l.activation_bytes for l in four.layers] == [4 * l.activation_bytes for l in one.layers]
    assert [l.weight_bytes for l in four.layers] == [l.weight_bytes for l in one.layers]


def test_batch_size_conflicting_with_inputs_is_an_error() -> None:
    with pytest.raises(ProfileError, match="batch"):
        ModelProfile.from_pytorch(mlp(), example_inputs("mlp", 2), batch_size=3)


# ---------------------------------------------------------------------------
# LLaMA


def llama_block_params(cfg: LlamaConfig) -> int:
    h, kv = cfg.hidden, cfg.kv_heads * cfg.head_dim
    return 2 * h * h + 2 * h * kv + 3 * h * cfg.mlp + 2 * h


def test_tiny_llama_on_cpu() -> None:
    cfg = LlamaConfig(vocab=128, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, max_seq=64)
    model = llama(cfg)
    b, s = 2, 16
    p = ModelProfile.from_pytorch(model, (torch.randint(0, cfg.vocab, (b, s)),), strict=True)
    assert names(p) == ["embed_tokens", "layers.0", "layers.1", "norm", "lm_head"]
    assert p.total_params == unique_params(model) == 2 * 128 * 64 + 2 * llama_block_params(cfg) + 64
    assert cfg.num_params == p.total_params
    assert [l.params for l in p.layers] == [128 * 64, llama_block_params(cfg), llama_block_params(cfg), 64, 128 * 64]
    block = llama_block_flops(cfg, b, s)
    assert [l.flops for l in p.layers] == [0, block, block, rmsnorm_flops(b * s, 64), 2 * b * s * 64 * 128]
    assert p.unknown_ops == {}


def test_tiny_llama_matches_transformers_llama() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = LlamaConfig(vocab=128, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, max_seq=64)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False)).eval()
    ours = llama(cfg).eval()
    ours.load_state_dict({k.removeprefix("model."): v for k, v in hf.state_dict().items()})
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits)


@pytest.fixture(scope="module")
def llama70b_profile() -> tuple[nn.Module, ModelProfile, float]:
    model = llama70b()
    t0 = time.perf_counter()
    profile = ModelProfile.from_pytorch(model, example_inputs("llama70b"))
    return model, profile, time.perf_counter() - t0


@pytest.mark.slow
def test_llama70b_on_meta(llama70b_profile: tuple[nn.Module, ModelProfile, float]) -> None:
    model, p, seconds = llama70b_profile
    print(f"llama70b profiled in {seconds:.1f} s")
    embed, h = 32000 * 8192, 8192
    block = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    assert p.total_params == embed + 80 * block + h + embed == 68_976_648_192
    assert p.num_layers == 83
    assert names(p) == ["embed_tokens"] + [f"layers.{i}" for i in range(80)] + ["norm", "lm_head"]
    assert [l.params for l in p.layers] == [embed] + [block] * 80 + [h, embed]
    # nothing was materialised: the weights are still on meta and the process stayed far below 276 GB
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < 8e9
    assert p.weight_bytes == 4 * (68_976_648_192 + 80 * 64)  # fp32 weights plus each layer's rotary inv_freq
    assert p.unknown_ops == {}


@pytest.mark.slow
def test_llama70b_flops(llama70b_profile: tuple[nn.Module, ModelProfile, float]) -> None:
    from rotafx.models import LLAMA_70B

    _, p, _ = llama70b_profile
    t = 128
    blocks = {l.flops for l in p.layers[1:81]}
    assert blocks == {llama_block_flops(LLAMA_70B, 1, t)}
    assert p.layers[0].flops == 0
    assert p.layers[-1].flops == 2 * t * 8192 * 32000
    # the residual stream (1 x 128 x 8192 floats) crosses every block boundary
    for i in range(2, 81):
        assert [ti.nbytes for ti in p.boundaries[i]] == [t * 8192 * 4]


# ---------------------------------------------------------------------------
# tied weights and boundaries


def test_tied_embedding_counted_once_and_held_by_both_layers() -> None:
    vocab, d, seq = 256, 64, 32
    tied, untied = small_gpt(vocab=vocab, d=d, seq=seq, tied=True), small_gpt(vocab=vocab, d=d, seq=seq)
    pt = ModelProfile.from_pytorch(tied, example_inputs("small-gpt"))
    pu = ModelProfile.from_pytorch(untied, example_inputs("small-gpt"))
    assert pt.total_params == unique_params(tied) == pu.total_params - vocab * d
    assert pt.weight_bytes == 4 * pt.total_params  # held once in the model
    embed, head = pt.layers[pt.layer_index("embed")], pt.layers[pt.layer_index("lm_head")]
    assert embed.weight_bytes == 4 * (vocab * d + seq * d)  # token and position tables
    assert head.weight_bytes == 4 * vocab * d  # the shared table again: a stage holding lm_head needs it
    assert embed.params == vocab * d + seq * d and head.params == vocab * d
    assert set(embed.weight_names) & set(head.weight_names)


def test_small_gpt_boundaries() -> None:
    b, s, vocab, d = 2, 32, 256, 64
    p = ModelProfile.from_pytorch(small_gpt(vocab=vocab, d=d), example_inputs("small-gpt", b))
    assert len(p.boundaries) == p.num_layers + 1
    (ids,) = p.boundaries[0]  # the token ids
    assert (ids.numel, ids.itemsize, ids.floating) == (b * s, 8, False)
    (logits,) = p.boundaries[-1]
    assert (logits.numel, logits.itemsize) == (b * s * vocab, 4)
    # before layers.1: the residual stream that layers.0 produced
    i = p.layer_index("layers.1")
    produced_by_block0 = set(p.layers[p.layer_index("layers.0")].ops)
    stream = [ti for ti in p.boundaries[i] if ti.name in produced_by_block0]
    assert [(ti.numel, ti.nbytes) for ti in stream] == [(b * s * d, b * s * d * 4)]
    assert p.layers[p.layer_index("layers.0")].activation_bytes == b * s * d * 4


# ---------------------------------------------------------------------------
# the example models themselves


def test_examples_registry() -> None:
    assert set(EXAMPLES) == {"llama70b", "small-gpt", "mlp", "convnet"}
    (tokens,) = example_inputs("llama70b", batch_size=2)
    assert tokens.device.type == "meta" and tuple(tokens.shape) == (2, 128) and tokens.dtype == torch.long
    for name in ("small-gpt", "mlp", "convnet"):
        model = EXAMPLES[name]()
        with torch.no_grad():
            out = model(*example_inputs(name, batch_size=3))
        assert out.shape[0] == 3 and torch.isfinite(out).all(), name
    with pytest.raises(KeyError, match="mlp"):
        example_inputs("resnet")


def test_llama_config_is_checked() -> None:
    with pytest.raises(ValueError, match="divisible"):
        LlamaConfig(hidden=64, heads=5)
    with pytest.raises(ValueError, match="kv_heads"):
        LlamaConfig(hidden=64, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="max_seq"):
        tiny_llama()(torch.zeros(1, 65, dtype=torch.long))


def test_from_layers_reads_ties_weights_and_names_a_bad_reference() -> None:
    p = ModelProfile.from_layers([{"name": "embed", "params": 1000}, {"name": "head", "params": 10, "reads": ["embed"]}])
    assert p.total_params == 1010 and p.weight_bytes == 2020  # the embedding once, fp16
    assert p.layers[1].params == 1010 and p.layers[1].weight_bytes == 2020  # what the head reads
    with pytest.raises(ProfileError, match=r"layer 1 \(head\): reads 'tail', which is not an earlier layer \(embed\)"):
        ModelProfile.from_layers([{"name": "embed"}, {"name": "head", "reads": ["tail"]}])
