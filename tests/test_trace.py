"""Traces of in-process runs: valid Chrome trace JSON, one track per stage and link, measured spans that add up
to each call's time, the estimate's spans beside them, a complete file after every call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rotafx
from rotafx.models import small_gpt
from rotafx.runtime.tracing import read_trace
from tests.test_backend import ON_CPU, three_cpus


@pytest.fixture(scope="module")
def split() -> tuple[torch.nn.Module, torch.Tensor, rotafx.PipelineModule]:
    torch.manual_seed(0)
    m = small_gpt(layers=4, d=128).eval()
    ids = torch.randint(0, 256, (8, 32))
    w = rotafx.ModelProfile.from_pytorch(m, (ids,)).weight_bytes
    pm = rotafx.partition(m, (ids,), topology=three_cpus(0.45 * w + 2.5e6), devices=ON_CPU)
    assert len(pm.stages) >= 2
    return m, ids, pm


def _tracks(doc: dict) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}


def test_trace_is_chrome_json_with_a_track_per_stage_and_link(split, tmp_path: Path) -> None:
    m, ids, pm = split
    path = tmp_path / "run.json"
    pm.trace(path)
    try:
        for i in range(1, 5):
            assert torch.equal(pm(ids), m(ids)), "a traced call gives the model's outputs"
            doc = json.loads(path.read_text())  # complete after each call
            assert sum(e["name"].startswith("request") and e["pid"] == 1 for e in doc["traceEvents"]) == i
    finally:
        pm.trace(None)
    assert doc["displayTimeUnit"] == "ms"
    for e in doc["traceEvents"]:
        assert e["ph"] in ("M", "X") and isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["args"]["request"], int)
    names = _tracks(doc)
    for st in pm.stages:
        want = f"stage {st.index}: {st.node} ({st.device})"
        assert (1, next(t for (p, t), n in names.items() if p == 1 and n == want)) in names, want
        assert any(p == 2 and n == want for (p, _), n in names.items()), f"no estimate track {want}"
    links = [n for (p, _), n in names.items() if p == 1 and n.startswith("link ")]
    assert len(links) >= len(pm.stages) - 1, links
    # once stopped, nothing more is written
    before = path.read_text()
    pm(ids)
    assert path.read_text() == before


def test_spans_add_up_to_each_call_and_the_estimate(split, tmp_path: Path) -> None:
    m, ids, pm = split
    pm.trace(tmp_path / "run.json")
    try:
        for _ in range(6):
            pm(ids)
    finally:
        pm.trace(None)
    spans = read_trace(tmp_path / "run.json")
    est = pm.plan.partition.estimate
    ratios = []
    for r in range(1, 6):  # the first call warms up
        mine = [s for s in spans if s.request == r]
        (call,) = [s for s in mine if s.process == "measured" and s.track == "requests"]
        parts = [s for s in mine if s.process == "measured" and s.track != "requests"]
        assert all(call.start_ms <= s.start_ms and s.end_ms <= call.end_ms for s in parts)
        ratios.append(sum(s.ms for s in parts) / call.ms)
        predicted = [s for s in mine if s.process == "estimate" and s.track != "requests"]
        assert sum(s.ms for s in predicted) == pytest.approx(est.total_ms, rel=1e-4)
        assert sum(s.ms for s in predicted if s.track.startswith("stage")) == pytest.approx(est.compute_ms, rel=1e-4)
    assert sorted(ratios)[len(ratios) // 2] >= 0.95, f"measured spans cover {ratios} of each call"


def test_partition_option_and_bad_trace_files(split, tmp_path: Path) -> None:
    m, ids, _ = split
    pm = rotafx.partition(m, (ids,), trace=tmp_path / "p.json")
    pm(ids)
    assert [s.name for s in read_trace(tmp_path / "p.json") if s.track == "requests"] == ["request 0"] * 2
    pm.trace(None)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json' is not JSON"):
        read_trace(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"is not a Chrome trace: it has no 'traceEvents' list"):
        read_trace(tmp_path / "other.json")
    with pytest.raises(ValueError, match=r"is a directory"):
        pm.trace(tmp_path)


def test_a_loaded_plan_traces_its_stages_and_emulated_links(tmp_path: Path) -> None:
    from tests.test_export import build, three_stage_topology

    model, x = build("small-gpt")
    spec = rotafx.export(model, x, path=tmp_path / "plan", topology=three_stage_topology(model, x, latency_ms=5.0))
    pipe = rotafx.load(tmp_path / "plan", emulate_links=True, trace=tmp_path / "run.json")
    for _ in range(4):
        out = pipe(*x)
    torch.testing.assert_close(out, model(*x), rtol=0, atol=0)
    spans = read_trace(tmp_path / "run.json")
    names = {s.track for s in spans if s.process == "measured"}
    for st in spec.stages:
        assert any(n.startswith(f"stage {st.chain_index}: {st.node} (") for n in names), (st.node, names)
    for r in range(1, 4):
        mine = [s for s in spans if s.request == r]
        (call,) = [s for s in mine if s.process == "measured" and s.track == "requests"]
        parts = [s for s in mine if s.process == "measured" and s.track != "requests"]
        assert sum(s.ms for s in parts) >= 0.95 * call.ms
        delays = sum(s.ms for s in parts if s.name == "emulated link delay")
        # the emulation sleeps what the links take: at least the estimate's transfers and propagation
        assert delays >= 0.99 * (spec.estimate["transfer_ms"] + spec.estimate["propagation_ms"]) - 0.5
        predicted = [s for s in mine if s.process == "estimate" and s.track != "requests"]
        assert sum(s.ms for s in predicted) == pytest.approx(spec.estimate["total_ms"], rel=1e-4)


def _generation_steps(spans: list, kind: str) -> list:
    return [s for s in spans if s.process == "measured" and s.track == "requests" and s.name.startswith(kind + " ")]


def test_generation_steps_are_traced_as_prefill_and_decode(split, tmp_path: Path) -> None:
    """rotafx.generate on a traced pipeline: each prefill chunk and decode step a request of its own, named by its
    program, with each stage's compute and the decode program's estimate beside it."""
    m, _, pm = split
    prompt = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    pm.trace(tmp_path / "gen.json")
    try:
        out = rotafx.generate(pm, prompt, max_new_tokens=6)
    finally:
        pm.trace(None)
    spans = read_trace(tmp_path / "gen.json")
    prefill, decode = _generation_steps(spans, "prefill"), _generation_steps(spans, "decode")
    assert len(prefill) == 1 and len(decode) == 5, [s.name for s in spans if s.track == "requests"]
    assert all(a.end_ms <= b.start_ms + 1e-3 for a, b in zip(prefill + decode, (prefill + decode)[1:]))
    stages = {s.track for s in spans if s.process == "measured" and s.track.startswith("stage ")}
    assert len(stages) == len(pm.stages)
    for step in decode:
        mine = [s for s in spans if s.request == step.request]
        assert {s.track for s in mine if s.process == "measured"} >= stages
        assert any(s.process == "estimate" and s.track.startswith("stage ") for s in mine)
    # a pipeline no longer traced records nothing more, and the tokens are the model's
    rotafx.generate(pm, prompt, max_new_tokens=2)
    assert len(read_trace(tmp_path / "gen.json")) == len(spans)
    with torch.no_grad():
        ids = prompt
        for _ in range(6):
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_a_loaded_plan_traces_its_generation_steps(tmp_path: Path) -> None:
    from rotafx.plan.write import export_pipeline
    from tests.test_generate import _ids, _split

    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    pm = _split(m, _ids(1, 8, 128, seed=0), batch=1)
    export_pipeline(pm, (_ids(1, 8, 128, seed=0),), path=tmp_path / "plan", max_context=32)
    pipe = rotafx.load(tmp_path / "plan", trace=tmp_path / "run.json")
    rotafx.generate(pipe, _ids(1, 11, 128), max_new_tokens=4)
    spans = read_trace(tmp_path / "run.json")
    assert len(_generation_steps(spans, "prefill")) == 2 and len(_generation_steps(spans, "decode")) == 3
    assert len({s.track for s in spans if s.process == "measured" and s.track.startswith("stage ")}) == len(pm.stages)
