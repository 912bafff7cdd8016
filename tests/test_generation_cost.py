"""The cost model of token generation: KV bytes per token found from attention, prefill and decode profiles, the KV
cache in every memory check, TTFT / TPOT / tokens/s by hand, and the five generation objectives against brute force."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rotafx
from rotafx import LatencyEstimator, ModelProfile, PartitionOptimizer
from rotafx.costmodel import CostTables, token_return
from rotafx.estimate import evaluate
from rotafx.models import LlamaConfig, llama, small_gpt
from rotafx.objective import GENERATION_OBJECTIVES, objective
from rotafx.profile import Generation
from rotafx.solve.brute_force import solve_brute_force
from rotafx.solve.dp import dp_applies, solve_dp
from rotafx.solve.milp import solve_milp
from rotafx.topology import Topology, TopologyError
from tests.test_solve import ABS, REL, SLOW, Problem, feasible_exists, general_problems, seed_problems


# ---------------------------------------------------------------------------
# KV bytes per token, from the attention ops


def _hf(name: str, attention: str = "sdpa") -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=64, use_cache=False)
    make = {
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, num_key_value_heads=2)),
        "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**common, num_key_value_heads=1,
                                                                                      sliding_window=None)),
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, num_key_value_heads=2)),
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_embd=64, n_layer=3, n_head=4,
                                                                             n_positions=64, use_cache=False)),
        # attention as baddbmm + softmax + bmm over batch x heads, with ALiBi
        "bloom": lambda: transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=128, hidden_size=64, n_layer=3,
                                                                                n_head=4, use_cache=False)),
    }
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = make[name]().eval()
    m.config._attn_implementation = attention
    return m


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name, kv_heads", [("llama", 2), ("mistral", 1), ("qwen2", 2), ("gpt2", 4), ("bloom", 4)])
def test_kv_bytes_per_token_is_two_kv_heads_head_dim_itemsize_per_attention_layer(name: str, kv_heads: int,
                                                                                   attention: str) -> None:
    """MHA (GPT2, Bloom), GQA (Llama, Qwen2) and MQA (Mistral with one KV head): what reaches attention is repeated
    per query head, what a cache holds is not; found in scaled_dot_product_attention and in attention written as
    matmul, softmax, matmul (transformers' "eager", Bloom's baddbmm over batch x heads)."""
    model = _hf(name, attention)
    prof = ModelProfile.from_pytorch(model, (torch.zeros(2, 10, dtype=torch.long),))
    head_dim = 64 // 4
    per_layer = 2 * kv_heads * head_dim * 4
    attn = [l for l in prof.layers if l.kv_bytes_per_token]
    assert len(attn) == 3 and all(l.kv_bytes_per_token == per_layer for l in attn), [
        (l.name, l.kv_bytes_per_token) for l in prof.layers]
    assert prof.kv_bytes_per_token == 3 * per_layer


class _HandWrittenAttention(torch.nn.Module):
    """Self-attention as users write it: scores, a causal mask, softmax, dropout, the values; MQA keys."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.q, self.kv, self.o = torch.nn.Linear(d, d), torch.nn.Linear(d, 2 * self.hd), torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 1, 2 * self.hd).transpose(1, 2).chunk(2, dim=-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.hd)
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.nn.functional.dropout(scores.softmax(-1), 0.1, self.training) @ v
        return x + self.o(a.transpose(1, 2).reshape(b, s, d))


@pytest.mark.parametrize("compiled", [False, True])
def test_kv_bytes_of_attention_written_by_hand(compiled: bool) -> None:
    """One KV head of 8 dims at fp32: 2 x 1 x 8 x 4 = 64 bytes per token per block, exported or compiled; the MLP
    after it, a matmul without a softmax before it, holds no cache."""
    model = torch.nn.Sequential(_HandWrittenAttention(), torch.nn.Linear(32, 32), _HandWrittenAttention()).eval()
    x = torch.randn(3, 6, 32)
    if compiled:
        be = rotafx.backend(inner="eager")
        torch.compile(model, backend=be)(x)
        layers = be.plan.profile.layers
    else:
        layers = ModelProfile.from_pytorch(model, (x,)).layers
    assert [l.kv_bytes_per_token for l in layers] == [64, 0, 64]


class _SoftRouter(torch.nn.Module):
    """softmax(x @ W) @ E: a product of probabilities and a table, as square as attention when T = E, and no cache."""

    def __init__(self, d: int = 16, experts: int = 8) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.randn(d, experts))
        self.experts = torch.nn.Parameter(torch.randn(experts, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.softmax(x @ self.gate, -1) @ self.experts


class _OneHead(torch.nn.Module):
    """Single-head self-attention on [B, T, d]: no heads dim, the batch leads."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.q(x) @ self.k(x).transpose(-1, -2) / 4).softmax(-1) @ self.v(x)


class _GroupedScores(torch.nn.Module):
    """GQA written with a group dim: scores [B, Hkv, G, T, T], keys [B, Hkv, 1, T, hd]."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2) -> None:
        super().__init__()
        self.h, self.hkv, self.hd = heads, kv_heads, d // heads
        self.q, self.kv = torch.nn.Linear(d, d), torch.nn.Linear(d, 2 * kv_heads * self.hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q(x).view(b, t, self.hkv, self.h // self.hkv, self.hd).permute(0, 2, 3, 1, 4)
        k, v = self.kv(x).view(b, t, self.hkv, 1, 2 * self.hd).permute(0, 2, 3, 1, 4).chunk(2, -1)
        a = (q @ k.transpose(-1, -2) / math.sqrt(self.hd)).softmax(-1) @ v
        return x + a.permute(0, 3, 1, 2, 4).reshape(b, t, d)


@pytest.mark.parametrize("module, batch, want", [
    (_SoftRouter, 2, 0),  # 8 tokens, 8 experts: square probabilities, but the "keys" are a weight
    (_OneHead, 1, 2 * 16 * 4), (_OneHead, 4, 2 * 16 * 4),  # per sequence, whatever the batch
    (_GroupedScores, 3, 2 * 2 * 8 * 4),  # two KV heads of 8, not counted once per group or per KV head as batch
])
def test_kv_bytes_of_eager_attention_shapes_and_look_alikes(module: type, batch: int, want: int) -> None:
    torch.manual_seed(0)
    prof = ModelProfile.from_pytorch(module().eval(), (torch.randn(batch, 8, 32 if module is _GroupedScores else 16),))
    assert prof.kv_bytes_per_token == want, [l.kv_bytes_per_token for l in prof.layers]


def test_kv_bytes_of_llama70b_on_meta_at_fp16() -> None:
    """80 layers x 2 x 8 KV heads x 128 x 2 bytes = 327,680 bytes per token (LLaMA-70B's published GQA shape)."""
    cfg = LlamaConfig(vocab=256, hidden=1024, layers=3, heads=16, kv_heads=4, mlp=256, max_seq=64)
    prof = ModelProfile.from_pytorch(llama(cfg, device="meta"), (torch.zeros(1, 8, dtype=torch.long),),
                                     dtype=torch.float16)
    assert prof.kv_bytes_per_token == 3 * 2 * 4 * 64 * 2
    # no self-attention, no cache
    mlp = ModelProfile.from_pytorch(rotafx.models.mlp())
    assert mlp.kv_bytes_per_token == 0


# ---------------------------------------------------------------------------
# for_generation: prefill and one decode step


def test_for_generation_prices_a_decode_step_against_the_cache() -> None:
    d, heads, layers, batch, prompt, new = 64, 4, 2, 3, 40, 16
    model = small_gpt(d=d, heads=heads, layers=layers, seq=128)
    prof = ModelProfile.for_generation(model, prompt_len=prompt, new_tokens=new, batch_size=batch)
    assert prof.generation == Generation(prompt, new, batch, 1)
    assert prof.layers[1].kv_bytes_per_token == 2 * d * 4
    plain = ModelProfile.from_pytorch(model, (torch.zeros(batch, prompt, dtype=torch.long),))
    assert [l.flops for l in prof.layers] == [l.flops for l in plain.layers]  # the prefill is the plain forward
    step = ModelProfile.from_pytorch(model, (torch.zeros(batch, 1, dtype=torch.long),))
    ctx = prompt + new / 2
    for a, b in zip(prof.decode.layers, step.layers):
        if not b.kv_bytes_per_token and a.name.startswith("layers."):
            # attention of one query per head against ctx keys: Q K^T and P V, 2 FLOPs a multiply-add each
            one_key = 2 * batch * heads * 1 * 1 * 2 * (d // heads)
            assert a.flops - b.flops == pytest.approx(4 * batch * d * ctx - one_key, rel=1e-6)
            kv_read = prof.layers[a.index].kv_bytes_per_token * batch * ctx
            assert a.bytes_moved - b.bytes_moved == pytest.approx(kv_read, abs=2)
        elif not a.name.startswith("layers."):
            assert a.flops == b.flops
    # a decode step sends one token's hidden state per sequence between blocks
    assert prof.decode.boundary_bytes(2) == batch * 1 * d * 4


def test_for_generation_refuses_what_it_cannot_price() -> None:
    with pytest.raises(rotafx.ProfileError, match="no self-attention"):
        ModelProfile.for_generation(torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10)),
                                    prompt_len=4, new_tokens=2)
    for bad in ({"prompt_len": 0}, {"new_tokens": -1}, {"batch_size": 1.5}, {"sequences": True}):
        kw = {"prompt_len": 4, "new_tokens": 2, **bad}
        with pytest.raises(rotafx.ProfileError, match=next(iter(bad))):
            ModelProfile.for_generation(small_gpt(), **kw)


# ---------------------------------------------------------------------------
# hand-built generation profiles: every figure worked out by hand


def _gen_profile(prefill_flops: list[float], decode_flops: list[float], kv: list[int], act: int, decode_act: int,
                 gen: Generation, params: int = 1000) -> ModelProfile:
    pre = ModelProfile.from_layers([{"name": f"l{i}", "params": params, "flops": f, "activation_bytes": act,
                                     "bytes_moved": 0} for i, f in enumerate(prefill_flops)], input_bytes=act, itemsize=4)
    dec = ModelProfile.from_layers([{"name": f"l{i}", "params": params, "flops": f, "activation_bytes": decode_act,
                                     "bytes_moved": 0} for i, f in enumerate(decode_flops)], input_bytes=decode_act,
                                   itemsize=4)
    layers = tuple(dataclasses.replace(l, kv_bytes_per_token=k) for l, k in zip(pre.layers, kv))
    return dataclasses.replace(pre, layers=layers, generation=gen, decode=dec)


def _two_nodes(memory: float = 1e12, back: bool = True) -> Topology:
    links = [{"src": "a", "dst": "b", "bandwidth_bps": 8e6, "latency_ms": 10, "energy_per_bit": 1e-9}]
    if back:
        links.append({"src": "b", "dst": "a", "bandwidth_bps": 8e3, "latency_ms": 30, "energy_per_bit": 1e-6})
    for link in links:
        link["bidirectional"] = False
    return Topology.from_dict({"devices": [{"name": "a", "flops": 1e9, "memory": memory, "power_w": 100},
                                           {"name": "b", "flops": 2e9, "memory": memory, "power_w": 10}],
                               "links": links, "chain": ["a", "b"]})


def test_ttft_tpot_tokens_per_s_and_energy_by_hand() -> None:
    gen = Generation(prompt_len=10, new_tokens=5, batch_size=2, sequences=3)
    prof = _gen_profile([1e9, 2e9, 4e9], [1e7, 2e7, 4e7], [100, 0, 300], act=10_000, decode_act=1_000, gen=gen)
    est = LatencyEstimator(_two_nodes()).estimate([0, 1, 1], prof)
    g = est.generation
    # prefill: 1 s on a, 3 s on b, 10,000 bytes over 8 Mbit/s (10 ms) + 10 ms
    assert g.ttft_ms == pytest.approx(1000 + 3000 + 10 + 10)
    # decode: 10 ms on a, 30 ms on b, 1,000 bytes (1 ms) + 10 ms; the token (2 sequences x 8 bytes) back over
    # 8 kbit/s (16 ms) + 30 ms
    assert g.decode.total_ms == pytest.approx(10 + 30 + 1 + 10)
    assert g.return_ms == pytest.approx(16 + 30)
    assert g.tpot_ms == pytest.approx(51 + 46)
    assert g.generation_ms == pytest.approx(g.ttft_ms + 4 * g.tpot_ms)
    # three micro-batches in flight: max(97 / 3, slowest device (b: 30 ms), link) = 32.33 ms; 2 rows each
    assert g.token_period_ms == pytest.approx(97 / 3)
    assert g.tokens_per_s == pytest.approx(2 * 1000 / (97 / 3))
    # energy: busy x power + bits x J/bit, the prefill once and 4 decode steps, over 2 x 5 tokens
    e_pre = 1 * 100 + 3 * 10 + 10_000 * 8 * 1e-9
    e_step = 0.01 * 100 + 0.03 * 10 + 1_000 * 8 * 1e-9 + 16 * 8 * 1e-6
    assert g.energy_per_token_j == pytest.approx((e_pre + 4 * e_step) / 10)
    # the KV cache: 2 x 3 sequences x 15 tokens x bytes per token, on the node of its layer
    assert g.kv_bytes == {"a": 100 * 6 * 15, "b": 300 * 6 * 15}
    assert est.memory_bytes["b"] == pytest.approx(2 * 4000 + 300 * 90 + max(l.peak_bytes for l in prof.layers[1:]))
    assert est.terms()["tpot"] == g.tpot_ms and "TPOT" in est.report()
    # the slowest stage bounds tokens/s once enough sequences are in flight
    many = dataclasses.replace(prof, generation=Generation(10, 5, 2, 8))
    assert LatencyEstimator(_two_nodes()).estimate([0, 1, 1], many).generation.token_period_ms == pytest.approx(30)


def test_the_token_goes_back_the_chain_when_there_is_no_direct_link() -> None:
    topo = Topology.from_dict({"devices": [{"name": n, "flops": 1e9, "memory": 1e9} for n in "abc"],
                               "links": [{"src": x, "dst": y, "bandwidth_bps": 1e9, "latency_ms": 5}
                                         for x, y in ("ab", "bc", "cb", "ba")], "chain": ["a", "b", "c"]})
    topo = Topology.from_dict({**topo.to_dict(), "links": [{"src": x, "dst": y, "bandwidth_bps": 1e9, "latency_ms": 5,
                                                            "bidirectional": False} for x, y in ("ab", "bc", "cb", "ba")]})
    assert [(l.src, l.dst) for l in token_return(topo)] == [("c", "b"), ("b", "a")]
    one_way = Topology.from_dict({"devices": [{"name": n, "flops": 1e9, "memory": 1e9} for n in "ab"],
                                  "links": [{"src": "a", "dst": "b", "bandwidth_bps": 1e9, "bidirectional": False}],
                                  "chain": ["a", "b"]})
    with pytest.raises(TopologyError, match="'b' .* back .*'a'|from 'b' .*to 'a'"):
        token_return(one_way)


def test_kv_cache_counts_in_every_memory_check() -> None:
    """A placement that holds the weights but not the cache is refused by the validator, the solvers and the
    estimator's memory figure alike, and the verdict names the KV cache and the fix."""
    gen = Generation(prompt_len=100, new_tokens=100, batch_size=4)
    prof = _gen_profile([1e6] * 4, [1e4] * 4, [1000] * 4, act=100, decode_act=10, gen=gen, params=100)
    kv_layer = 1000 * 4 * 200  # 800 kB per layer
    weights_layer = 400
    # each node holds two layers' weights and activations, but only one layer's cache
    topo = _two_nodes(memory=2 * weights_layer + kv_layer + 2_000)
    tables = CostTables(prof, topo)
    assert tables.device_memory([0, 0, 1, 1])["a"] == pytest.approx(2 * weights_layer + 2 * kv_layer
                                                                    + max(l.peak_bytes for l in prof.layers[:2]))
    issues = rotafx.placement.memory_issues(tables, [0, 0, 1, 1])
    assert issues and "KV cache 1.600 MB" in issues[0] and "200 tokens" in issues[0] and "smaller batch" in issues[0]
    with pytest.raises(rotafx.InfeasibleError, match="KV cache"):
        PartitionOptimizer().optimize(prof, topo, "minimize_tpot")
    # without the cache the same plan fits
    plain = dataclasses.replace(prof, generation=None, decode=None)
    assert not rotafx.placement.memory_issues(CostTables(plain, topo), [0, 0, 1, 1])


def test_a_generation_objective_needs_a_generation_profile() -> None:
    prof = ModelProfile.from_layers([{"name": "a", "params": 10}, {"name": "b", "params": 10}])
    with pytest.raises(ValueError, match="for_generation"):
        PartitionOptimizer().optimize(prof, _two_nodes(), "minimize_tpot")
    with pytest.raises(ValueError, match="for_generation"):
        PartitionOptimizer().optimize(prof, _two_nodes(), "balance", weights={"latency": 1, "tpot": 1})


# ---------------------------------------------------------------------------
# the five objectives: MILP and DP equal brute force


@st.composite
def generation_problems(draw: st.DrawFn) -> tuple[Problem, ModelProfile]:
    problem = draw(st.one_of(seed_problems(), general_problems()))
    gen = Generation(prompt_len=draw(st.integers(1, 64)), new_tokens=draw(st.integers(1, 32)),
                     batch_size=draw(st.integers(1, 4)), sequences=draw(st.sampled_from([1, 1, 2, 5])))
    specs = problem.specs
    shrink = draw(st.sampled_from([1, 10, 1000]))
    dec = ModelProfile.from_layers([{**s, "flops": s["flops"] // shrink, "activation_bytes": s["activation_bytes"] // shrink,
                                     "buffer_bytes": 0} for s in specs], input_bytes=problem.input_bytes // shrink)
    kv = [draw(st.sampled_from([0, 0, 10, 1000])) for _ in specs]
    layers = tuple(dataclasses.replace(l, kv_bytes_per_token=k) for l, k in zip(problem.profile.layers, kv))
    return problem, dataclasses.replace(problem.profile, layers=layers, generation=gen, decode=dec)


def close_milp(a: float, b: float, tables: CostTables, obj) -> bool:  # type: ignore[no-untyped-def]
    """Equal up to ties and the MILP's big-M slack: a bypass hop switched by a big-M as large as the hop's largest
    cost, with a binary HiGHS accepts within 1e-6 of 0 or 1 (as tests.test_solve.close_milp, for these terms)."""
    slack = 1e-6 * sum(w * sum(float(tables.hop_terms(link)[t][0].max(initial=0.0))
                                for link in [*tables.links, *tables.bypass_links])
                       for t, w in obj.weights.items())
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS + slack)


@pytest.mark.parametrize("name", GENERATION_OBJECTIVES)
@SLOW
@given(case=generation_problems())
def test_generation_objectives_equal_brute_force(name: str, case: tuple[Problem, ModelProfile]) -> None:
    problem, prof = case
    topo = problem.topology
    try:
        tables = CostTables(prof, topo, memory_rule=problem.memory_rule)
    except TopologyError:  # a chain with no way back for the token (general form, links one way)
        return
    obj = objective(name)
    if not feasible_exists(tables):
        with pytest.raises(rotafx.InfeasibleError):
            PartitionOptimizer(memory_rule=problem.memory_rule).optimize(prof, topo, name)
        return
    ref, best = solve_brute_force(tables, obj)
    part = PartitionOptimizer(memory_rule=problem.memory_rule).optimize(prof, topo, name)
    assert part.status == "optimal"
    assert close_milp(part.objective_value, best[0], tables, obj), (part.stages, part.objective_value, ref, best)
    milp = solve_milp(tables, obj, time_limit=60)
    assert milp.status == "optimal" and close_milp(obj.value(evaluate(tables, milp.stages)), best[0], tables, obj)
    if dp_applies(tables, obj) is None:
        st_, value = solve_dp(tables, obj)
        assert math.isclose(value, best[0], rel_tol=1e-6, abs_tol=1e-9), (st_, value, best)
        assert math.isclose(obj.value(evaluate(tables, st_)), best[0], rel_tol=1e-6, abs_tol=1e-9)
    if name == "maximize_tokens_per_s" and prof.generation.sequences > 1:  # max(sum / S, maximum): MILP only
        assert dp_applies(tables, obj) is not None


def test_orbit_costs_tpot_two_crossings_of_the_ground_orbit_link() -> None:
    """On the seed's chain a decode step through the orbit pays the uplink and the downlink; the token's trip back
    is the same for every placement, so TPOT through orbit exceeds TPOT on the ground by the two propagations."""
    prof = ModelProfile.for_generation(small_gpt(), prompt_len=8, new_tokens=4)
    est = LatencyEstimator("seed")
    ground = est.estimate([0] * prof.num_layers, prof).generation
    orbit = est.estimate([0, 1, 1, 1, 5], prof).generation
    topo = Topology.coerce("seed")
    up, down = topo.link("ground0", "orbital0"), topo.link("orbital3", "ground1")
    assert orbit.return_ms == ground.return_ms > 0
    assert orbit.tpot_ms - ground.tpot_ms == pytest.approx(orbit.decode.total_ms - ground.decode.total_ms)
    assert orbit.decode.propagation_ms >= up.latency_ms + down.latency_ms
    assert ground.decode.propagation_ms == topo.link("ground0", "ground1").latency_ms
    assert orbit.tpot_ms > ground.tpot_ms + up.latency_ms
