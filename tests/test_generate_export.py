"""Generation from an exported plan: each stage's prefill and decode programs keep that stage's KV cache, and
``rotafx.generate(rotafx.load(path), ids)`` gives the tokens of the in-process pipeline, of a loop that recomputes
the plain forward, and of transformers' own generate; a plan altered after export is refused."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.models import small_gpt
from rotafx.plan.write import export_pipeline
from tests.test_backend import ON_CPU, three_cpus
from tests.test_generate import _family, _ids, _recompute, _split, left_padded


@pytest.fixture(scope="module")
def gpt_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, rotafx.PipelineModule, Path]:
    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    pm = _split(m, _ids(1, 8, 128, seed=0), batch=2)
    path = tmp_path_factory.mktemp("gen") / "gpt"
    export_pipeline(pm, (_ids(1, 8, 128, seed=0),), path=path, max_context=48)
    return m, pm, path


def test_small_gpt_plan_generates_the_models_tokens(gpt_plan: Any) -> None:
    m, pm, path = gpt_plan
    plan = json.loads((path / "plan.json").read_text())
    gen = plan["generation"]
    assert (gen["max_context"], gen["prefill_chunk"], gen["batch_size"]) == (48, 8, 1)
    n = len(plan["stages"])
    assert n >= 2
    for kind in ("prefill", "decode"):
        assert [s["file"] for s in gen[kind]["stages"]] == [f"stage{i}.{kind}.pt2" for i in range(n)]
        # every attention layer's cache is on exactly one stage, as [batch 1, heads, max_context, head_dim]
        caches = [c for s in gen[kind]["stages"] for c in s.get("cache", ())]
        assert len(caches) == 2 * 3 and all(c["shape"][0] == 1 and c["shape"][2] == 48 for c in caches)
        # a decode step ships one token's hidden state per hop, never a cache
        if kind == "decode":
            assert all(h["bytes"] <= 32 * 4 + 16 for h in gen[kind]["hops"][1:-1]), gen[kind]["hops"]
    # the sampled token's way back from the last node to the first (three_cpus: the chain's links reversed)
    assert [(l["src"], l["dst"], l["latency_ms"]) for l in gen["return_links"]] == [("cpu2", "cpu1", 0.01),
                                                                                   ("cpu1", "cpu0", 0.01)]
    loaded = rotafx.load(path)
    prompt = _ids(2, 11, 128)  # 11 tokens: a full chunk of 8, then a padded one
    got = rotafx.generate(loaded, prompt, max_new_tokens=20)
    assert torch.equal(got, _recompute(m, prompt, 20))
    # again, shorter: the slots' caches start fresh
    assert torch.equal(rotafx.generate(loaded, prompt[:1, :3], max_new_tokens=5), _recompute(m, prompt[:1, :3], 5))
    # a prompt that fills the context up to its last position: the last chunk runs the last 8 tokens again
    long = _ids(1, 44, 128, seed=3)
    assert torch.equal(rotafx.generate(loaded, long, max_new_tokens=4), _recompute(m, long, 4))
    # prompts of 11 and 4 tokens padded on the left: each row's own tokens after its padding
    ids, mask = left_padded(prompt, [11, 4], pad=7)
    want = torch.cat([ids, torch.cat([_recompute(m, prompt[:1], 6)[:, 11:], _recompute(m, prompt[1:, 7:], 6)[:, 4:]])], 1)
    assert torch.equal(rotafx.generate(loaded, ids, attention_mask=mask, max_new_tokens=6), want)


def test_over_the_max_context_and_no_programs_say_what_to_do(gpt_plan: Any, tmp_path: Path) -> None:
    m, pm, path = gpt_plan
    loaded = rotafx.load(path)
    with pytest.raises(rotafx.GenerationError, match=r"prompt \(40 tokens\) and max_new_tokens \(10\) make 50 tokens, "
                                                     r"over the 48 tokens of the plan's max_context.*at most 8 new"):
        rotafx.generate(loaded, _ids(1, 40, 128), max_new_tokens=10)
    export_pipeline(pm, (_ids(1, 8, 128, seed=0),), path=tmp_path / "plain")
    assert "generation" not in json.loads((tmp_path / "plain" / "plan.json").read_text())
    with pytest.raises(rotafx.GenerationError, match=r"no generation programs.*max_context=N"):
        rotafx.generate(rotafx.load(tmp_path / "plain"), _ids(1, 4, 128), max_new_tokens=2)
    with pytest.raises(rotafx.PlanError, match=r"max_context 65 is over the 64 positions of SmallGPT"):
        export_pipeline(pm, (_ids(1, 8, 128, seed=0),), path=tmp_path / "long", max_context=65)
    assert not (tmp_path / "long").exists()


def _altered(path: Path, tmp: Path, change: Any) -> Path:
    out = tmp / f"altered{len(list(tmp.iterdir()))}"
    shutil.copytree(path, out)
    data = json.loads((out / "plan.json").read_text())
    change(data, out)
    (out / "plan.json").write_text(json.dumps(data))
    return out


def test_an_altered_plan_is_refused(gpt_plan: Any, tmp_path: Path) -> None:
    m, pm, path = gpt_plan

    def more_context(d: dict, out: Path) -> None:
        d["generation"]["max_context"] = 4096

    def more_context_and_cache(d: dict, out: Path) -> None:
        d["generation"]["max_context"] = 4096
        for kind in ("prefill", "decode"):
            for s in d["generation"][kind]["stages"]:
                for c in s.get("cache", ()):
                    c["shape"][2] = 4096

    def outside(d: dict, out: Path) -> None:
        d["generation"]["decode"]["stages"][1]["file"] = "../gpt/stage1.decode.pt2"

    def swapped(d: dict, out: Path) -> None:  # the prefill program where the decode one should be
        shutil.copy(out / "stage0.prefill.pt2", out / "stage0.decode.pt2")

    def twice(d: dict, out: Path) -> None:
        d["generation"]["decode"]["stages"][0]["file"] = "stage0.pt2"
        d["generation"]["decode"]["stages"][0]["sha256"] = d["stages"][0]["sha256"]

    cases = [(more_context, r"cache 'layers_0_cache_k_cache' is float32\[1, 4, 48, 8\], not \[batch_size 1, heads, "
                            r"max_context 4096"),
             (more_context_and_cache, r"keeps the KV cache .*float32\[1, 4, 4096, 8\], but the program holds "
                                      r"float32\[1, 4, 48, 8\]"),
             (outside, r"decode program '\.\./gpt/stage1\.decode\.pt2', which is not a file of the plan directory"),
             (swapped, r"stage 0 \(.*\) decode program: .*stage0\.decode\.pt2 does not match plan\.json \(sha256"),
             (twice, r"\['stage0\.pt2'\] are named by more than one program")]
    for change, message in cases:
        with pytest.raises(rotafx.PlanError, match=message):
            rotafx.load(_altered(path, tmp_path, change))


# ---------------------------------------------------------------------------
# transformers' families

transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_llama_plan_equals_its_greedy_generate(tmp_path: Path) -> None:
    m = _family("llama")
    example = _ids(1, 8, 128, seed=0)
    export_pipeline(_split(m, example, batch=1), (example,), path=tmp_path / "llama", max_context=32)
    prompt = _ids(2, 12, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(rotafx.generate(rotafx.load(tmp_path / "llama"), prompt, max_new_tokens=8), want)
    # the same plan as three processes on 127.0.0.1: transformers' tokens again, both sequences decoding at once
    from rotafx.runtime.distributed import launch_local

    with launch_local(tmp_path / "llama", timeout=30) as cluster:
        assert len(cluster.processes) == 3
        assert torch.equal(rotafx.generate(cluster.driver, prompt, max_new_tokens=8), want)


def test_gpt2_exported_for_generation_equals_its_greedy_generate(tmp_path: Path) -> None:
    """rotafx.export(..., generation=) places the layers for generating and writes the programs by default, as long
    as the plan made room for (prompt 8 + 16 new tokens), and keeps the model's EOS id (0), the default of
    rotafx.generate on the plan as of transformers' generate."""
    m = _family("gpt2")
    example = _ids(1, 8, 128, seed=0)
    memory = 0.45 * rotafx.ModelProfile.from_pytorch(m, (example,)).weight_bytes + 2 * 3 * 2 * 64 * 24 * 4 + 1e6
    rotafx.export(m, (example,), path=tmp_path / "gpt2", topology=three_cpus(memory), devices=ON_CPU,
                  generation={"new_tokens": 16})
    gen = json.loads((tmp_path / "gpt2" / "plan.json").read_text())["generation"]
    assert (gen["max_context"], gen["eos_token_id"]) == (24, [0])
    loaded = rotafx.load(tmp_path / "gpt2")
    prompt = _ids(2, 12, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m.generate(prompt, max_new_tokens=12, do_sample=False)
    assert torch.equal(rotafx.generate(loaded, prompt, max_new_tokens=12), want)
