"""rotafx.generate: tokens of a model split by rotafx.partition equal transformers' greedy generate (or a greedy loop
that recomputes the whole sequence with the plain forward), the KV cache stays on the stage of its layer, and bad
input says what to change."""

from __future__ import annotations

import math
import statistics
import warnings
from typing import Any

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.models import LlamaConfig, llama, small_gpt
from rotafx.runtime.generate import decoder_of, filtered_logits, next_tokens
from tests.test_backend import ON_CPU, three_cpus

CACHE_NAMES = ("k_cache", "v_cache", "key_cache", "value_cache")


def _cache_bytes(model: nn.Module, batch: int, max_len: int) -> int:
    dec = decoder_of(model, batch, max_len)
    return sum(b.numel() * b.element_size() for n, b in dec.named_buffers() if n.rsplit(".", 1)[-1].startswith(CACHE_NAMES))


def _split(model: nn.Module, ids: torch.Tensor, *, batch: int, max_len: int = 64, **kw: Any) -> rotafx.PipelineModule:
    """Partition over three CPU nodes each too small for the weights (so 2+ stages), balanced (so that each keeps
    room for the cache of its layers: the pipeline's own plan does not count a cache)."""
    prof = rotafx.ModelProfile.from_pytorch(model, (ids,), example_kwargs=kw.get("example_kwargs"))
    memory = 0.45 * prof.weight_bytes + max(l.peak_bytes for l in prof.layers) + _cache_bytes(model, batch, max_len)
    pm = rotafx.partition(model, (ids,), topology=three_cpus(memory), devices=ON_CPU, objective="maximize_throughput",
                          **kw)
    assert len(pm.stages) >= 2, f"{len(pm.stages)} stage(s)"
    return pm


def _recompute(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    """The independent reference: the plain forward over the whole sequence for every new token."""
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids


def _ids(b: int, s: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def gpt() -> tuple[nn.Module, rotafx.PipelineModule]:
    torch.manual_seed(0)
    m = small_gpt(layers=4, seq=64).eval()
    return m, _split(m, _ids(2, 8, 256, seed=0), batch=2)


# ---------------------------------------------------------------------------
# rotafx's own models


@pytest.mark.parametrize("batch", [1, 2])
def test_small_gpt_equals_recomputing_greedy_loop(batch: int) -> None:
    torch.manual_seed(0)
    m = small_gpt(layers=4, seq=64).eval()
    pm = _split(m, _ids(batch, 8, 256, seed=0), batch=batch)
    prompt = _ids(batch, 13, 256)  # longer than the example's 8 tokens: two prefill chunks
    got = rotafx.generate(pm, prompt, max_new_tokens=12)
    assert torch.equal(got, _recompute(m, prompt, 12))


def test_rotafx_llama_equals_recomputing_greedy_loop() -> None:
    torch.manual_seed(0)
    m = llama(LlamaConfig(vocab=128, hidden=64, layers=3, heads=4, kv_heads=2, mlp=128, max_seq=64)).eval()
    pm = _split(m, _ids(2, 8, 128, seed=0), batch=2)
    prompt = _ids(2, 11, 128)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=10), _recompute(m, prompt, 10))
    # a second call, shorter, reuses the programs: the cache of the first is not read
    short = _ids(2, 3, 128, seed=5)
    assert torch.equal(rotafx.generate(pm, short, max_new_tokens=6), _recompute(m, short, 6))
    assert len(pm._generation_programs) == 1


def test_plain_forward_unchanged_by_cache_support() -> None:
    """The blocks' cache arguments leave the plain forward as it was: compared with a hand-written forward."""
    torch.manual_seed(0)
    m = small_gpt(layers=2).eval()
    ids = _ids(2, 10, 256)
    with torch.no_grad():
        x = m.embed.tokens(ids) + m.embed.positions(torch.arange(10))
        for blk in m.layers:
            h = blk.ln_1(x)
            q, k, v = (t.view(2, 10, blk.heads, -1).transpose(1, 2) for t in blk.qkv(h).split(x.shape[-1], dim=-1))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + blk.proj(a.transpose(1, 2).reshape(2, 10, -1))
            x = x + blk.fc_out(torch.nn.functional.gelu(blk.fc(blk.ln_2(x))))
        want = m.lm_head(m.norm(x))
        assert torch.equal(m(ids), want)


# ---------------------------------------------------------------------------
# transformers' families

transformers = pytest.importorskip("transformers")


def _family(name: str) -> nn.Module:
    """A transformers model from a small config, its matrices scaled up from the default init (std 0.02) so that
    attention is far from uniform: a token at the wrong position or a stale cache entry changes the tokens."""
    from tests.test_transformers import build

    m = build(name)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(8)
    return m


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "gpt2"])
def test_transformers_family_equals_its_greedy_generate(name: str, batch: int) -> None:
    m = _family(name)
    pm = _split(m, _ids(batch, 8, 128, seed=0), batch=batch)
    prompt = _ids(batch, 12, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=8), want)


MORE_FAMILIES = {
    # eager attention with soft-capped scores, and every other layer a sliding window of 6 tokens, shorter than the
    # prompt (transformers keeps the last 6 there; rotafx a full cache and the model's window mask); logits not
    # capped: with weights scaled up, capped logits tie and float noise picks among them
    "gemma2": lambda t: t.Gemma2ForCausalLM(t.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                           num_hidden_layers=3, num_attention_heads=4,
                                                           num_key_value_heads=2, head_dim=16, sliding_window=6,
                                                           final_logit_softcapping=None, max_position_embeddings=64)),
    # every layer a sliding window of 5 tokens
    "mistral_window": lambda t: t.MistralForCausalLM(t.MistralConfig(vocab_size=128, hidden_size=64,
                                                                     intermediate_size=128, num_hidden_layers=3,
                                                                     num_attention_heads=4, num_key_value_heads=2,
                                                                     sliding_window=5, max_position_embeddings=64)),
    # a fused QKV projection and partial rotary
    "phi3": lambda t: t.Phi3ForCausalLM(t.Phi3Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                                     max_position_embeddings=64, pad_token_id=0)),
    # parallel attention and MLP from one norm
    "gptneox": lambda t: t.GPTNeoXForCausalLM(t.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                              num_hidden_layers=3, num_attention_heads=4,
                                                              max_position_embeddings=64)),
}


@pytest.mark.parametrize("name", list(MORE_FAMILIES))
def test_more_families_equal_their_greedy_generate(name: str) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MORE_FAMILIES[name](transformers).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(8)
    pm = _split(m, _ids(2, 8, 128, seed=0), batch=2)
    prompt = _ids(2, 12, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=8), want)


def left_padded(ids: torch.Tensor, lengths: list[int], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` with row ``r`` cut to its last ``lengths[r]`` tokens and padded on the left, and its mask."""
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        mask[r, ids.shape[1] - n:] = 1
    return torch.where(mask.bool(), ids, torch.tensor(pad)), mask


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_left_padded_batch_equals_transformers_generate(name: str) -> None:
    """Prompts of 12, 9 and 5 tokens padded on the left (GPT2 takes its positions from the mask, Llama its rotary
    angles): transformers' tokens, the padding kept; with an EOS that one row reaches, that row is padded after it."""
    m = _family(name)
    pm = _split(m, _ids(3, 8, 128, seed=0), batch=3)
    ids, mask = left_padded(_ids(3, 12, 128), [12, 9, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    got = rotafx.generate(pm, ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(got, want), f"{got.tolist()} != {want.tolist()}"
    # every length ran on the whole batch's programs: one cache, not one per group size
    assert sorted(pm.__dict__["_generation_programs"]) == [(3, 64)]
    new = want[:, 12:]
    r, eos = next((r, int(v)) for r in range(3) for v in new[r, :4] if sum(bool((row == v).any()) for row in new) == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                          eos_token_id=eos)
    got, t = rotafx.generate(pm, ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0, eos_token_id=eos,
                             timings=True)
    assert torch.equal(got, want), f"{got.tolist()} != {want.tolist()}"
    assert t.batch_size == 3 and t.new_tokens == 8 and t.ttft_ms > 0 and len(t.decode_ms) > 0


@pytest.mark.parametrize("mask, match", [
    ([[1, 1, 0], [1, 1, 1]], r"row 0 of the attention_mask \(\[1, 1, 0\]\) is not padded on the left.*padding_side"),
    ([[0, 1, 0], [1, 1, 1]], r"row 0 .* is not padded on the left"),
    ([[0, 0, 0], [1, 1, 1]], r"row 0 of the attention_mask has no token"),
    ([[1, 1], [1, 1]], r"attention_mask must be a tensor of the shape of input_ids \(2, 3\), got \(2, 2\)"),
])
def test_a_mask_that_is_not_left_padding_is_refused(gpt: Any, mask: list[list[int]], match: str) -> None:
    _, pm = gpt
    with pytest.raises(rotafx.GenerationError, match=match):
        rotafx.generate(pm, _ids(2, 3, 256), attention_mask=torch.tensor(mask), max_new_tokens=2)


def test_eos_stops_and_pads_as_transformers_does() -> None:
    m = _family("llama")
    prompt = _ids(2, 12, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = m.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None)
        eos = int(free[0, 14])  # a token the first sequence produces: it stops there, the second goes on
        # a pad id not in the prompts (transformers would read it there as padding)
        pad = next(t for t in range(127, 0, -1) if t not in prompt and t != eos)
        want = m.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    pm = _split(m, _ids(2, 8, 128, seed=0), batch=2)
    got = rotafx.generate(pm, prompt, max_new_tokens=10, eos_token_id=eos, pad_token_id=pad)
    assert got.shape[1] > 15 and (got[0, 15:] == pad).all(), "the sequence that produced eos is padded"
    assert torch.equal(got, want)


# ---------------------------------------------------------------------------
# the cache stays on its stage; the programs share the pipeline's tensors


def test_cache_on_one_stage_and_decode_ships_one_hidden_state(gpt: Any) -> None:
    m, pm = gpt
    rotafx.generate(pm, _ids(2, 5, 256), max_new_tokens=3)
    progs = next(iter(pm._generation_programs.values()))
    for prog in (progs.prefill, progs.decode):
        holders: dict[int, list[int]] = {}
        for st in prog.stages:
            for name, t in zip(st.weight_names, st.parameters()):
                if name.endswith(("k_cache", "v_cache")):
                    assert t.device == st.device
                    holders.setdefault(id(t), []).append(st.index)
        assert len(holders) == 2 * len(m.layers) and all(len(s) == 1 for s in holders.values()), holders
    # the same cache tensors in both programs, and as many as the model has attention layers
    assert {id(t) for t in progs.state} == {id(t) for st in progs.decode.stages
                                            for n, t in zip(st.weight_names, st.parameters()) if "cache" in n}
    sent = [tuple(n.meta["val"].shape) for n in progs.decode.rewritten.transfers]
    assert (2, 1, 64) in sent and all(math.prod(s) <= 2 * 64 for s in sent), sent


def test_programs_hold_the_pipelines_weights_not_copies() -> None:
    torch.manual_seed(0)
    m = small_gpt(layers=4, seq=64).eval()
    ids = _ids(2, 8, 256, seed=0)
    pm = _split(m, ids, batch=2)
    # stand in for stages on other devices: each stage holds a tensor of its own, not the model's
    for slot in pm.rewritten.weights:
        for mod, attr, _ in slot.copies:
            setattr(mod, attr, nn.Parameter(getattr(mod, attr).detach().clone(), requires_grad=False))
    prompt = _ids(2, 9, 256)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=5), _recompute(m, prompt, 5))
    pipeline = {id(getattr(mod, attr)) for slot in pm.rewritten.weights for mod, attr, _ in slot.copies}
    progs = next(iter(pm._generation_programs.values()))
    for prog in (progs.prefill, progs.decode):
        held = {n: t for st in prog.stages for n, t in zip(st.weight_names, st.parameters())}
        weights = [t for n, t in held.items() if "cache" not in n]
        assert weights and all(id(t) in pipeline for t in weights), "a program holds a copy of a pipeline weight"
    prefill = {(n, st.index): t for st in progs.prefill.stages for n, t in zip(st.weight_names, st.parameters())}
    for st in progs.decode.stages:
        for n, t in zip(st.weight_names, st.parameters()):
            assert prefill[(n, st.index)] is t, f"decode holds its own {n}"


def test_cache_that_does_not_fit_names_kv_node_and_fix(gpt: Any) -> None:
    _, pm = gpt
    with pytest.raises(rotafx.BackendError, match=r"KV cache [\d.]+ kB.*exceeded by.*fewer tokens.*smaller batch.*"
                                                  r"more memory.*8 sequence\(s\) x 64 tokens") as e:
        rotafx.generate(pm, _ids(8, 50, 256), max_new_tokens=14)  # room was left for 2 sequences' cache, not 8
    assert "cpu" in str(e.value)


# ---------------------------------------------------------------------------
# sampling


def test_top_k_one_is_greedy_and_a_seed_reproduces(gpt: Any) -> None:
    m, pm = gpt
    prompt = _ids(2, 6, 256)
    greedy = rotafx.generate(pm, prompt, max_new_tokens=6)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=6, do_sample=True, top_k=1), greedy)
    a = rotafx.generate(pm, prompt, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3))
    b = rotafx.generate(pm, prompt, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_filters_on_hand_built_logits() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filtered_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]  # 0.5+0.3 reach 0.8
    assert torch.isinf(filtered_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filtered_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]  # at least one
    assert torch.isinf(filtered_logits(logits, top_k=3)).tolist() == [[False, False, False, True]]
    shuffled = logits[:, [2, 0, 3, 1]]  # the filter follows the values, not the positions
    assert torch.isinf(filtered_logits(shuffled, top_p=0.8)).tolist() == [[True, False, True, False]]
    hot = filtered_logits(logits, temperature=2.0).softmax(-1)
    torch.testing.assert_close(hot, (logits / 2).softmax(-1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([next_tokens(logits.expand(4000, 4), do_sample=True, top_p=0.8, generator=g)])
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    assert freq[2:].sum() == 0 and abs(float(freq[0]) - 0.5 / 0.8) < 0.03


# ---------------------------------------------------------------------------
# errors


def test_errors_say_what_to_change(gpt: Any, tmp_path: Any) -> None:
    m, pm = gpt
    with pytest.raises(rotafx.GenerationError, match=r"60 tokens.*10.*70 tokens, over the 64 positions"):
        rotafx.generate(pm, _ids(2, 60, 256), max_new_tokens=10)
    with pytest.raises(rotafx.GenerationError, match="do_sample=True"):
        rotafx.generate(pm, _ids(2, 6, 256), max_new_tokens=2, temperature=0.7)
    with pytest.raises(rotafx.GenerationError, match=r"\[batch, prompt\].*ids\[None\]"):
        rotafx.generate(pm, _ids(1, 6, 256)[0], max_new_tokens=2)
    with pytest.raises(rotafx.GenerationError, match="max_new_tokens must be a positive integer"):
        rotafx.generate(pm, _ids(2, 6, 256), max_new_tokens=0)
    mlp = rotafx.models.mlp((4, 8, 2)).eval()
    with pytest.raises(rotafx.GenerationError, match=r"Sequential has no decoder.*static_cache_decoder\(batch_size, "
                                                     r"max_len\).*torch.compile"):
        rotafx.generate(rotafx.partition(mlp, (torch.randn(1, 4),)), _ids(1, 4, 4), max_new_tokens=2)
    rotafx.export(m, (_ids(1, 8, 256),), path=tmp_path / "plan")
    with pytest.raises(rotafx.GenerationError, match=r"this plan has no generation programs .* export it again with "
                                                     r"max_context=N"):
        rotafx.generate(rotafx.load(tmp_path / "plan"), _ids(1, 4, 256), max_new_tokens=2)


def test_a_model_that_is_not_causal_is_refused() -> None:
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    bert = transformers.BertForMaskedLM(cfg).eval()
    pm = rotafx.partition(bert, (_ids(1, 8, 64),))
    with pytest.raises(rotafx.GenerationError, match="BertForMaskedLM is not a causal language model.*AutoModelForCausalLM"):
        rotafx.generate(pm, _ids(1, 8, 64), max_new_tokens=2)


def test_a_decoder_that_reads_a_position_from_the_cache_says_what_to_use_instead() -> None:
    """OPT counts the tokens its cache holds (a number read from a tensor) to slice its positions: no static program
    can be built; the error names the node and the supported path (compile its forward; that path is tested in
    test_transformers for other families)."""
    cfg = transformers.OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 max_position_embeddings=32, word_embed_proj_dim=32)
    opt = transformers.OPTForCausalLM(cfg).eval()
    pm = rotafx.partition(opt, (_ids(1, 8, 64),))
    with pytest.raises(rotafx.GenerationError, match=r"OPTForCausalLM does not trace: .*node item.*depends on the "
                                                     r"values of the inputs.*torch\.compile\(model\.forward"):
        rotafx.generate(pm, _ids(1, 8, 64), max_new_tokens=2)


def test_timings_are_measured(gpt: Any) -> None:
    _, pm = gpt
    ids, t = rotafx.generate(pm, _ids(2, 6, 256), max_new_tokens=5, timings=True)
    assert ids.shape == (2, 11) and t.new_tokens == 5 and t.batch_size == 2 and len(t.decode_ms) == 4
    assert t.ttft_ms > 0 and t.tpot_ms == statistics.median(t.decode_ms)
    assert t.tokens_per_s == pytest.approx(2 * 5 / (1e-3 * (t.ttft_ms + sum(t.decode_ms))), rel=1e-6)
