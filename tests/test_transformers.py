"""Models nobody here wrote: transformers' decoder families and decorated forwards, compiled and split over three
CPU nodes into two or more stages, with eager's outputs; greedy generation through the backend gives eager's tokens."""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn

import rotafx
from tests.test_backend import ON_CPU, tight_topology

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def _config(cls: Any, **kw: Any) -> Any:
    cfg = cls(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "llama": lambda: transformers.LlamaForCausalLM(_config(transformers.LlamaConfig, **COMMON)),
    "mistral": lambda: transformers.MistralForCausalLM(_config(transformers.MistralConfig, **COMMON, sliding_window=None)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(_config(transformers.Qwen2Config, **COMMON)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(_config(transformers.GPT2Config, vocab_size=128, n_embd=64, n_layer=3,
                                                         n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)),
    # rotary sin/cos made once for the model and indexed in every block: that indexing runs on the block's stage
    "gptj": lambda: transformers.GPTJForCausalLM(_config(transformers.GPTJConfig, vocab_size=128, n_embd=64, n_layer=3,
                                                         n_head=4, n_positions=64, rotary_dim=8, bos_token_id=0,
                                                         eos_token_id=0)),
    "mixtral": lambda: transformers.MixtralForCausalLM(_config(transformers.MixtralConfig, **COMMON, num_local_experts=4,
                                                               num_experts_per_tok=2)),
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FAMILIES[name]().eval()


def _tokens(b: int = 2, s: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 128, (b, s), generator=torch.Generator().manual_seed(seed))


def _topology(model: nn.Module, ids: torch.Tensor) -> dict[str, Any]:
    """Three CPU nodes too small for the whole model (profiled without the cache it returns by default)."""
    model.config.use_cache = False
    try:
        return tight_topology(model, (ids,))
    finally:
        model.config.use_cache = True


@pytest.mark.parametrize("name", list(FAMILIES))
def test_compiled_family_splits_and_equals_eager(name: str) -> None:
    model = build(name)
    ids = _tokens()
    topo = _topology(model, ids)
    be = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
        got = torch.compile(model, backend=be, fullgraph=True)(ids, use_cache=False).logits
    (plan,) = be.plans
    assert len(plan.stages) >= 2, f"{name}: {len(plan.stages)} stage(s)"
    blocks = [l.name for l in plan.profile.layers if ".layers." in l.name or ".h." in l.name]
    assert len(blocks) == 3, f"{name}: the three decoder blocks are layers of their own, got {blocks}"
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gptj"])
def test_generate_through_the_backend_gives_eager_tokens(name: str) -> None:
    """The supported way: compile ``model.forward``; generate() calls it for the prompt and for every new token."""
    model = build(name)
    ids = _tokens(1, 8)
    topo = _topology(model, ids)
    want = model.generate(ids, max_new_tokens=6, do_sample=False)
    be = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    model.forward = torch.compile(model.forward, backend=be)
    got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want), f"{got.tolist()} != {want.tolist()}"
    assert be.plans and all(len(p.stages) >= 2 for p in be.plans)


def _decorate(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return f(*args, **kwargs)

    return wrapper


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(32, 32) for _ in range(4)])
        self.head = nn.Linear(32, 4)

    @_decorate
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x).relu()
        return self.head(x)


@pytest.mark.parametrize("how", ["module", "bound method"])
def test_decorated_forward_is_grouped_by_its_modules(how: str) -> None:
    model = _Blocks().eval()
    x = torch.randn(3, 32)
    topo = tight_topology(model, (x,))
    be = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    compiled = torch.compile(model if how == "module" else model.forward, backend=be, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=0, atol=0)
    layers = [l.name for l in be.plan.profile.layers]
    assert layers == ["layers.0", "layers.1", "layers.2", "layers.3", "head"], layers
    assert len(be.plan.stages) >= 2
    assert {w for st in be.plan.stages for w in st.weight_names} == {n for n, _ in model.named_parameters()}


# a module no model owns, reached through a global as transformers 5.25 reaches apply_rotary_pos_emb (a function it
# wraps as a module): dynamo's module stack names it G['_LIBRARY'].act, below the block that calls it
_LIBRARY = types.SimpleNamespace(act=nn.GELU())


class _BlockCallingAGlobalModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_LIBRARY.act(self.fc1(x)) * 2.0) + x


class _BlocksCallingAGlobalModule(_Blocks):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_BlockCallingAGlobalModule() for _ in range(4)])


@pytest.mark.parametrize("compiled", [True, False])
def test_a_module_the_model_does_not_own_stays_in_the_block_that_calls_it(compiled: bool) -> None:
    model = _BlocksCallingAGlobalModule().eval()
    x = torch.randn(3, 32)
    topo = tight_topology(model, (x,))
    if compiled:
        be = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
        torch.testing.assert_close(torch.compile(model, backend=be, fullgraph=True)(x), model(x), rtol=0, atol=0)
        layers = [l.name for l in be.plan.profile.layers]
    else:
        layers = [l.name for l in rotafx.ModelProfile.from_pytorch(model, (x,)).layers]
    assert layers == ["layers.0", "layers.1", "layers.2", "layers.3", "head"], layers


# ---------------------------------------------------------------------------
# costs of what real models run


def test_moe_block_flops_match_an_analytic_count() -> None:
    """Mixtral: each token goes through its top-2 experts; the grouped matmuls are priced by the rows routed."""
    model = build("mixtral")
    b, s = 2, 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every op has a rule
        prof = rotafx.ModelProfile.from_pytorch(model, (_tokens(b, s),), example_kwargs={"use_cache": False})
    cfg = model.config
    t, h, i, kv = b * s, cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // 4)
    attention = 2 * t * h * (h + 2 * kv + h) + 2 * b * cfg.num_attention_heads * s * s * 2 * (h // 4)
    router = 2 * t * h * cfg.num_local_experts
    experts = cfg.num_experts_per_tok * t * (2 * h * 2 * i + 2 * i * h)  # gate and up, then down, per routed token
    block = prof.layers[prof.layer_index("model.layers.0")]
    assert block.flops == pytest.approx(attention + router + experts, rel=0.10)
    assert block.flops > attention + router + experts  # and the rest (norms, rotary, softmax, silu) adds a little


def test_fused_encoder_layer_is_priced_as_its_ops() -> None:
    """nn.TransformerEncoderLayer's fast path (one aten op under torch.compile) costs what its ops cost."""
    d, heads, ffn, b, s = 32, 4, 64, 2, 8
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, ffn, batch_first=True), 2).eval()
    be = rotafx.backend(inner="eager")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.compile(enc, backend=be)(torch.randn(b, s, d))
    t = b * s
    per_layer = (2 * t * d * 3 * d + 2 * b * heads * s * s * 2 * (d // heads) + 2 * t * d * d + 2 * 2 * t * d * ffn
                 + 2 * 5 * t * d + t * ffn + 2 * t * d)
    assert [l.flops for l in be.plan.profile.layers] == [per_layer, per_layer]
    assert be.plan.profile.layers[0].buffer_bytes == b * heads * s * s * 4
    # the unfused path (torch.export) counts the same ops within 1%
    exported = rotafx.ModelProfile.from_pytorch(enc, (torch.randn(b, s, d),))
    assert [l.flops for l in exported.layers] == pytest.approx([per_layer] * 2, rel=0.01)


def test_the_no_rule_warning_says_how_much_work_it_may_hide() -> None:
    class Fft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.rfft(self.fc(x)).abs()

    with pytest.warns(UserWarning, match=r"no cost rule for op\(s\) aten\._fft_r2c .*; counted as 0 FLOPs; the ops that "
                                         r"use them read and write .* B, \d+\.\d% of the bytes the whole model moves"):
        rotafx.ModelProfile.from_pytorch(Fft(), (torch.randn(2, 16),))


def test_recurrent_layers_and_a_loss_have_rules() -> None:
    """LSTM and GRU (their gates' matmuls, and the unsafe_split of the gates) and a cross-entropy loss: no op left
    without a rule, and the recurrent matmuls priced as counted by hand."""
    b, t, i, h = 2, 4, 8, 16

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(i, h, batch_first=True)
            self.gru = nn.GRU(h, h, batch_first=True)
            self.head = nn.Linear(h, 5)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.head(self.gru(self.lstm(x)[0])[0]).flatten(0, 1), y)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = rotafx.ModelProfile.from_pytorch(Net().eval(), (torch.randn(b, t, i), torch.randint(0, 5, (b * t,))))
    assert p.unknown_ops == {} and not [w for w in caught if "no cost rule" in str(w.message)]
    lstm, gru, head = p.layers
    assert 2 * b * t * 4 * h * (i + h) <= lstm.flops <= 1.05 * 2 * b * t * 4 * h * (i + h)
    assert 2 * b * t * 3 * h * (h + h) <= gru.flops <= 1.05 * 2 * b * t * 3 * h * (h + h)
    # the head's matmul, log-softmax (5 per element) and the loss (one per target), with a little for the mean
    assert 2 * b * t * h * 5 + 5 * b * t * 5 + b * t <= head.flops <= 1.05 * (2 * b * t * h * 5 + 5 * b * t * 5 + b * t)


def test_an_lstm_compiles_into_stages_with_allow_rnn() -> None:
    """dynamo leaves nn.LSTM out of its graphs unless torch._dynamo.config.allow_rnn is set; with it, the LSTM is a
    layer of the plan, split from the rest, with eager's outputs."""
    from tests.test_backend import ON_CPU, three_cpus

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.lstm = nn.LSTM(32, 48, num_layers=2, batch_first=True)
            self.head = nn.Linear(48, 100)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.lstm(self.emb(x))
            return self.head(h)

    torch.manual_seed(0)
    m = Net().eval()
    x = torch.randint(0, 100, (2, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = {l.name: l for l in rotafx.ModelProfile.from_pytorch(m, (x,)).layers}
    # a node holds the LSTM, or the embedding and the head, not all three
    need = max(layers["lstm"].weight_bytes, layers["emb"].weight_bytes + layers["head"].weight_bytes)
    be = rotafx.backend(topology=three_cpus(need + max(l.peak_bytes for l in layers.values()) + 4096), devices=ON_CPU,
                        inner="eager")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(allow_rnn=True), torch.no_grad():
        got = torch.compile(m, backend=be, fullgraph=True)(x)
    (plan,) = be.plans
    assert "lstm" in [l.name for l in plan.profile.layers] and len(plan.stages) >= 2
    # dynamo unrolls the LSTM into its gates' ops (not the fused kernel): equal to float rounding
    torch.testing.assert_close(got, m(x))
