"""rotafx.partition(..., generation=...): the layers are placed for generating tokens (prefill + decode, the KV
cache in every node's memory, the generation objectives), and rotafx.generate then runs where a one-pass plan
leaves no room for the cache."""

from __future__ import annotations

import warnings

import pytest
import torch

import rotafx
from rotafx import CostTables, ModelProfile
from rotafx.models import small_gpt
from rotafx.objective import objective
from rotafx.solve.brute_force import solve_brute_force
from rotafx.topology import Topology
from tests.test_backend import ON_CPU, three_cpus
from tests.test_generate import _cache_bytes, _ids, _recompute


@pytest.fixture(scope="module")
def tight() -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """A small GPT and three nodes that hold its weights on one node, but not its weights and its KV cache."""
    torch.manual_seed(0)
    m = small_gpt(layers=4, seq=128).eval()
    ids = _ids(4, 8, 256, seed=0)
    weights = ModelProfile.from_pytorch(m, (ids,)).weight_bytes
    return m, ids, three_cpus(0.5 * (weights + _cache_bytes(m, 4, 128)) + 250e3)


def test_generation_plan_leaves_room_for_the_cache_and_is_the_optimum(tight) -> None:
    m, ids, topo = tight
    prompt = _ids(4, 20, 256)
    one_pass = rotafx.partition(m, (ids,), topology=topo, devices=ON_CPU)
    with pytest.raises(rotafx.BackendError, match=r"KV cache .* exceeded by"):
        rotafx.generate(one_pass, prompt, max_new_tokens=100)

    gen = {"new_tokens": 108, "prompt_len": 20}
    pm = rotafx.partition(m, (ids,), topology=topo, devices=ON_CPU, generation=gen, objective="minimize_tpot")
    planned = pm.generation_plan
    g = planned.estimate.generation
    assert (g.prompt_len, g.new_tokens, g.batch_size) == (20, 108, 4), "batch from the example, the rest as given"
    assert tuple(pm.plan.partition.stages) == tuple(planned.stages), "the pipeline is cut where the plan says"
    # the plan is the best placement of the generation profile, enumerated
    profile = ModelProfile.for_generation(m, prompt_len=20, new_tokens=108, batch_size=4)
    best, (value, _) = solve_brute_force(CostTables(profile, Topology.coerce(topo)), objective("minimize_tpot"))
    assert best is not None and g.tpot_ms == pytest.approx(value, rel=1e-6)
    assert torch.equal(rotafx.generate(pm, prompt, max_new_tokens=100), _recompute(m, prompt, 100))


def test_a_transformers_llama_planned_for_generation_gives_its_tokens() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    ids = _ids(2, 8, 128, seed=0)
    weights = ModelProfile.from_pytorch(m, (ids,)).weight_bytes
    pm = rotafx.partition(m, (ids,), topology=three_cpus(0.9 * weights), devices=ON_CPU,
                          generation={"new_tokens": 24}, objective="maximize_tokens_per_s")
    assert len(set(pm.generation_plan.stages)) >= 2
    assert tuple(pm.plan.partition.stages) == tuple(pm.generation_plan.stages)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(ids, max_new_tokens=24, do_sample=False)
    assert torch.equal(rotafx.generate(pm, ids, max_new_tokens=24), want)
    (progs,) = pm._generation_programs.values()
    assert progs.max_len == 8 + 24, "the cache is as long as the plan made room for, not rounded up"


@pytest.mark.parametrize("generation, match", [
    (None, r"objective 'minimize_tpot' prices token generation; .*generation=\{'new_tokens': 128\}"),
    ({"tokens": 8}, r"unknown key\(s\) \['tokens'\]; its keys are prompt_len, new_tokens"),
    ({"prompt_len": 8}, r"new_tokens is missing"),
    ({"new_tokens": 0}, r"new_tokens must be a positive integer, got 0"),
    ([8], r"generation must be a rotafx.profile.Generation or a dict"),
])
def test_a_bad_generation_workload_says_what_to_pass(generation, match) -> None:
    m = small_gpt(layers=2).eval()
    with pytest.raises(rotafx.BackendError, match=match):
        rotafx.partition(m, (_ids(1, 8, 256),), generation=generation, objective="minimize_tpot")
