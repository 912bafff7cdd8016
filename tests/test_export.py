"""rotafx.plan (rotafx.export / rotafx.load): the plan directory round trip, one stage alone, and the errors that stop a bad plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import rotafx
import rotafx.runtime.links
from rotafx.costmodel import CostTables
from rotafx.plan.load import LoadedStage
from rotafx.plan.schema import SCHEMA_VERSION, PlanError, TensorSpec, read_plan
from rotafx.wire import encode
from rotafx.models import convnet, example_inputs, small_gpt

ROOT = Path(__file__).resolve().parents[1]


def ground_orbit_ground(memory: float, *, bandwidth_bps: float = 1e10, latency_ms: float = 0.01,
                        flops: float = 1e12) -> dict[str, Any]:
    """ground0 -(uplink)-> orbital0 -(downlink)-> ground1, ``memory`` bytes each, no ground bypass."""
    def dev(name: str, kind: str) -> dict[str, Any]:
        return {"name": name, "kind": kind, "flops": flops, "memory": memory, "memory_bandwidth": 1e11}

    return {"devices": [dev("ground0", "ground"), dev("orbital0", "orbital"), dev("ground1", "ground")],
            "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": bandwidth_bps, "latency_ms": latency_ms},
                      {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": bandwidth_bps,
                       "latency_ms": latency_ms}],
            "chain": ["ground0", "orbital0", "ground1"]}


def three_stage_topology(model: torch.nn.Module, inputs: tuple, **kw: Any) -> dict[str, Any]:
    """A ground -> orbit -> ground chain whose nodes each hold a third of the model (the best 3-way split, +0.1%)."""
    prof = rotafx.ModelProfile.from_pytorch(model, inputs)
    tables = CostTables(prof, rotafx.Topology.coerce(ground_orbit_ground(1e18)))
    L = prof.num_layers
    need = min(max(tables.layers_memory(range(0, a)), tables.layers_memory(range(a, b)), tables.layers_memory(range(b, L)))
               for a in range(1, L - 1) for b in range(a + 1, L))
    return ground_orbit_ground(need * 1.001, **kw)


def build(name: str, batch: int = 2) -> tuple[torch.nn.Module, tuple]:
    torch.manual_seed(0)
    model = {"small-gpt": small_gpt, "convnet": convnet}[name]().eval()
    return model, example_inputs(name, batch)


@pytest.fixture(scope="module")
def gpt_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, tuple, rotafx.export]:
    model, x = build("small-gpt")
    path = tmp_path_factory.mktemp("export") / "gpt"
    spec = rotafx.export(model, x, path=path, topology=three_stage_topology(model, x))
    return path, model, x, spec


@pytest.mark.parametrize("codec", [None, "fp16", "bf16", "int8"])
def test_wire_layout_is_what_encode_sends(codec: str | None) -> None:
    # the plan's message layout and the encoder must agree, empty tensors and scalars included
    for shape, dtype in (((2, 5), torch.float32), ((3, 0), torch.float32), ((0, 8), torch.float32), ((), torch.float32),
                         ((4, 6), torch.float16), ((2, 3), torch.int64)):
        x = torch.zeros(shape, dtype=dtype)
        sent = [t for t in encode(x, codec) if t is not None]
        assert [TensorSpec.of(t) for t in sent] == TensorSpec.of(x).wire(codec), (shape, dtype, codec)


def test_round_trip_equals_model(gpt_plan: Any) -> None:
    path, model, x, spec = gpt_plan
    assert [s.node for s in spec.stages] == ["ground0", "orbital0", "ground1"], "the topology should force three stages"
    pipe = rotafx.load(path)
    for _ in range(2):
        ids = torch.randint(0, 256, x[0].shape)
        got, want = pipe(ids), model(ids)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_plan_json_schema(gpt_plan: Any) -> None:
    path, model, x, spec = gpt_plan
    data = json.loads((path / "plan.json").read_text())
    assert data["format"] == "rotafx-plan" and data["schema_version"] == SCHEMA_VERSION
    assert data["objective"] == "minimize_latency"
    assert sorted(p.name for p in path.iterdir()) == ["plan.json", "stage0.pt2", "stage1.pt2", "stage2.pt2"]
    # the topology reads back as the same chain
    topo = rotafx.Topology.from_dict(data["topology"])
    assert topo.chain == ("ground0", "orbital0", "ground1") and topo.link("ground0", "orbital0").kind == "uplink"
    # partition and estimate as the optimizer gave them
    pm = rotafx.partition(model, x, topology=three_stage_topology(model, x))
    part = pm.plan.partition
    assert data["partition"]["stages"] == list(part.stages)
    assert data["estimate"]["total_ms"] == pytest.approx(part.estimate.total_ms)
    assert sum(data["estimate"]["parts"].values()) == pytest.approx(data["estimate"]["total_ms"])
    # every stage: what it takes, gives, receives and sends, chained hop by hop
    stages, hops = data["stages"], data["hops"]
    assert [h["src"] for h in hops] == [-1, 0, 1, 2] and [h["dst"] for h in hops] == [0, 1, 2, 3]
    assert hops[0]["entries"] == [{"value": "input_ids", "encoded": False}]
    for s in stages:
        assert s["receives"] == hops[s["index"]]["entries"] and s["sends"] == hops[s["index"] + 1]["entries"]
        received = {e["value"] for e in s["receives"]}
        assert set(s["inputs"]) <= received, f"stage {s['index']} reads values nobody sends it"
        for e in s["sends"]:
            assert e["value"] in set(s["outputs"]) | received
    assert [e["value"] for e in hops[-1]["entries"]] == data["outputs"]
    for h in hops:  # bytes of each hop are those of its tensors
        assert h["bytes"] == sum(torch.empty(data["values"][e["value"]]["shape"],
                                             dtype=getattr(torch, data["values"][e["value"]]["dtype"])).nbytes for e in h["entries"])
    # link of each hop: uplink into the orbital stage, downlink out of it
    assert [l["kind"] for l in hops[1]["links"]] == ["uplink"] and [l["kind"] for l in hops[2]["links"]] == ["downlink"]
    # every parameter in exactly one stage (the small GPT ties no weights)
    held = [w for s in stages for w in s["weights"]]
    assert sorted(held) == sorted(n for n, _ in model.named_parameters())


def test_load_one_stage_at_a_time(gpt_plan: Any) -> None:
    path, model, x, spec = gpt_plan
    env = {"input_ids": x[0]}
    for i in range(spec.num_stages):
        st = rotafx.load(path, stage=i)
        assert isinstance(st, LoadedStage) and st.node == spec.stages[i].node
        outs = st(*[env[v] for v in st.spec.inputs])
        assert [tuple(o.shape) for o in outs] == [s.shape for s in st.output_specs]
        env.update(zip(st.spec.outputs, outs))
    torch.testing.assert_close(env[spec.outputs[0]], model(*x), rtol=0, atol=0)


def test_codec_matches_in_process(tmp_path: Path) -> None:
    model, x = build("convnet")
    topo = three_stage_topology(model, x)
    pm = rotafx.partition(model, x, topology=topo, codec="int8")
    spec = rotafx.export(model, x, path=tmp_path / "p", topology=topo, codec="int8")
    assert spec.codec == "int8" and any(e.encoded for h in spec.hops for e in h.entries)
    assert not any(e.encoded for e in spec.hops[-1].entries), "model outputs travel as they are"
    torch.testing.assert_close(rotafx.load(tmp_path / "p")(*x), pm(*x), rtol=0, atol=0)


def test_loads_without_the_model_code(gpt_plan: Any, tmp_path: Path) -> None:
    """A fresh interpreter that imports neither rotafx.models nor the tests (nor the solver) runs the plan."""
    path, model, x, spec = gpt_plan
    torch.save({"x": x[0], "y": model(*x)}, tmp_path / "io.pt")
    code = f"""
import sys, types, torch
for name, p in (("rotafx", {str(ROOT / 'rotafx')!r}), ("rotafx.runtime", {str(ROOT / 'rotafx' / 'runtime')!r})):
    m = types.ModuleType(name); m.__path__ = [p]; sys.modules[name] = m
from rotafx.plan.load import load
io = torch.load({str(tmp_path / 'io.pt')!r})
y = load({str(path)!r})(io["x"])
assert torch.equal(y, io["y"])
bad = [m for m in sys.modules if m.startswith(("rotafx.models", "tests", "cvxpy", "rotafx.backend"))]
assert not bad, bad
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


# ---------------------------------------------------------------------------
# errors


def _copy(path: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(path, dst)
    return dst


def test_newer_schema_is_refused(gpt_plan: Any, tmp_path: Path) -> None:
    d = _copy(gpt_plan[0], tmp_path)
    data = json.loads((d / "plan.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (d / "plan.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=rf"schema version {SCHEMA_VERSION + 1}.*up to {SCHEMA_VERSION}.*upgrade"):
        rotafx.load(d)
    with pytest.raises(PlanError, match="schema version"):
        rotafx.load(d, stage=0)


def test_missing_stage_file(gpt_plan: Any, tmp_path: Path) -> None:
    d = _copy(gpt_plan[0], tmp_path)
    (d / "stage2.pt2").unlink()
    with pytest.raises(PlanError, match=r"stage 2 \(ground1\).*stage2.pt2 is missing"):
        rotafx.load(d)
    assert isinstance(rotafx.load(d, stage=0), LoadedStage), "a node loads only its own stage"


def test_stage_file_from_another_plan(gpt_plan: Any, tmp_path: Path) -> None:
    d = _copy(gpt_plan[0], tmp_path)
    shutil.copy(d / "stage0.pt2", d / "stage1.pt2")
    with pytest.raises(PlanError, match=r"stage 1 \(orbital0\).*does not match plan.json \(sha256"):
        rotafx.load(d)
    with pytest.raises(PlanError, match=r"stage 1 \(orbital0\).*does not match plan.json: the program takes"):
        rotafx.load(d, verify=False)  # without the checksum the signatures still disagree


def test_malformed_or_missing_plan(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no plan at"):
        rotafx.load(tmp_path / "nowhere")
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(PlanError, match="not readable JSON"):
        rotafx.load(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PlanError, match="not a rotafx plan"):
        rotafx.load(tmp_path)


def test_bad_stage_index_and_inputs(gpt_plan: Any) -> None:
    path, model, x, spec = gpt_plan
    with pytest.raises(PlanError, match=r"stage must be an integer 0..2"):
        rotafx.load(path, stage=3)
    pipe = rotafx.load(path)
    with pytest.raises(PlanError, match=r"input 'input_ids' is int64\[2, 16\], but the plan was exported for int64\[2, 32\]"):
        pipe(torch.zeros(2, 16, dtype=torch.long))
    with pytest.raises(PlanError, match="structured as"):
        pipe(x[0], x[0])


def test_existing_directory_needs_overwrite(gpt_plan: Any, tmp_path: Path) -> None:
    path, model, x, spec = gpt_plan
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("mine")
    m = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    with pytest.raises(PlanError, match="exists and is not an empty directory; pass overwrite=True"):
        rotafx.export(m, (torch.randn(1, 4),), path=tmp_path / "p")
    with pytest.raises(PlanError, match=r"holds no rotafx plan .*nothing was deleted"):
        rotafx.export(m, (torch.randn(1, 4),), path=tmp_path / "p", overwrite=True)
    assert (tmp_path / "p" / "keep.txt").read_text() == "mine"
    # a plan directory is replaced whole; a plan directory with other files in it is not touched
    rotafx.export(m, (torch.randn(1, 4),), path=tmp_path / "q")
    rotafx.export(m, (torch.randn(3, 4),), path=tmp_path / "q", overwrite=True)
    assert read_plan(tmp_path / "q").values[read_plan(tmp_path / "q").inputs[0]].shape == (3, 4)
    (tmp_path / "q" / "notes.md").write_text("mine too")
    with pytest.raises(PlanError, match=r"holds a plan and other files too \(notes.md\)"):
        rotafx.export(m, (torch.randn(1, 4),), path=tmp_path / "q", overwrite=True)
    assert (tmp_path / "q" / "notes.md").exists() and read_plan(tmp_path / "q").num_stages == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q"], "no temporary directory is left behind"


def test_overwrite_never_deletes_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("1,2,3")
    m = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    with pytest.raises(PlanError, match=r"holds no rotafx plan"):
        rotafx.export(m, (torch.randn(1, 4),), path=".", overwrite=True)
    assert (tmp_path / "data.csv").read_text() == "1,2,3"


def test_a_temporary_directory_left_by_a_killed_export_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".p.rotafx-tmp-{int(dead.stdout)}-abc"
    stale.mkdir()
    (stale / "stage0.pt2").write_bytes(b"half")
    other = tmp_path / ".p.something-else"  # not ours: left alone
    other.mkdir()
    rotafx.export(torch.nn.Sequential(torch.nn.Linear(4, 2)).eval(), (torch.randn(1, 4),), path=tmp_path / "p")
    assert not stale.exists() and other.exists()


# ---------------------------------------------------------------------------
# link emulation in one process, and the command line


def test_emulated_links_in_process(tmp_path: Path) -> None:
    model, x = build("convnet")
    spec = rotafx.export(model, x, path=tmp_path / "p", topology=three_stage_topology(model, x, latency_ms=40.0))
    slow = rotafx.load(tmp_path / "p", emulate_links=True)
    hop_s = [rotafx.runtime.links.hop_delay_s(h.links, spec.hop_bytes(h)) for h in spec.hops]
    assert sum(hop_s) == pytest.approx(0.080, rel=1e-3), "two 40 ms links (and microseconds of serialisation)"
    t0 = time.perf_counter()
    y = slow(*x)
    assert time.perf_counter() - t0 >= sum(hop_s)
    assert torch.equal(y, model(*x))
    assert spec.estimate["propagation_ms"] == pytest.approx(80.0)


def test_cli_export(tmp_path: Path) -> None:
    from rotafx.cli import main

    model, x = build("convnet", batch=1)
    topo = tmp_path / "topo.json"
    topo.write_text(json.dumps(three_stage_topology(model, x)))
    torch.manual_seed(0)  # the CLI builds convnet() afresh: same seed, same weights as build()
    assert main(["export", "convnet", "--topology", str(topo), "--path", str(tmp_path / "plan"), "--quiet"]) == 0
    plan = read_plan(tmp_path / "plan")
    assert [s.node for s in plan.stages] == ["ground0", "orbital0", "ground1"]
    torch.manual_seed(1)
    xx = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(rotafx.load(tmp_path / "plan")(xx), model(xx), rtol=0, atol=0)
    assert main(["export", "convnet", "--topology", str(topo), "--path", str(tmp_path / "plan"), "--quiet"]) == 2


# ---------------------------------------------------------------------------
# what real models take and return: constants among the inputs, None and numbers among the outputs


class _WithConstants(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, flag: bool = True, scale: int = 2) -> dict[str, Any]:
        h = self.b(self.a(x).relu())
        return {"y": self.c(h) * scale if flag else self.c(h), "none": None, "pair": (h, None), "n": 3}


def test_constants_in_and_out_round_trip(tmp_path: Path) -> None:
    model = _WithConstants().eval()
    x = torch.randn(2, 8)
    kw = {"flag": True, "scale": 3}
    spec = rotafx.export(model, (x,), example_kwargs=kw, path=tmp_path / "p",
                         topology=three_stage_topology(model, (x,)))
    assert len(spec.stages) >= 2
    data = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert {"flag": {"value": True}, "scale": {"value": 3}}.items() <= data["constants"].items()
    got = rotafx.load(tmp_path / "p")(x, **kw)
    want = model(x, **kw)
    assert set(got) == set(want) and got["none"] is None and got["n"] == 3 and got["pair"][1] is None
    torch.testing.assert_close(got["y"], want["y"], rtol=0, atol=0)
    torch.testing.assert_close(got["pair"][0], want["pair"][0], rtol=0, atol=0)
    with pytest.raises(PlanError, match=r"input 'scale' is 2, but the plan was exported with 3 \(baked into its "
                                        r"programs\); call it with scale=3 or export again with 2"):
        rotafx.load(tmp_path / "p")(x, flag=True, scale=2)
    with pytest.raises(PlanError, match=r"input 'flag' is 1, but the plan was exported with True"):
        rotafx.load(tmp_path / "p")(x, flag=1, scale=3)


def test_a_transformers_model_exports_and_loads(tmp_path: Path) -> None:
    """A causal LM is traced without the cache it returns by default (its config's use_cache); asking for the
    cache explicitly is refused with the way out."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 12))
    with pytest.raises(rotafx.BackendError, match=r"returns a transformers.cache_utils.DynamicCache, .* pass "
                                        r"example_kwargs=\{'use_cache': False\}"):
        rotafx.export(model, (ids,), example_kwargs={"use_cache": True}, path=tmp_path / "cached")
    topo = three_stage_topology(model, (ids,))
    assert model.config.use_cache is True, "tracing leaves the config as it was"
    spec = rotafx.export(model, (ids,), path=tmp_path / "p", topology=topo)
    assert len(spec.stages) >= 2
    out = rotafx.load(tmp_path / "p")(ids)
    assert type(out).__name__ == "CausalLMOutputWithPast" and out.past_key_values is None
    torch.testing.assert_close(out.logits, model(ids).logits, rtol=0, atol=0)


def test_an_output_type_this_process_has_not_registered_is_named(tmp_path: Path) -> None:
    """A stage process needs no output structure; the driver does, and is told which package to import."""
    model, x = build("small-gpt")
    rotafx.export(model, x, path=tmp_path / "p")
    data = json.loads((tmp_path / "p" / "plan.json").read_text())
    data["out_spec"] = data["out_spec"].replace('"type": null', '"type": "somepkg.Output"', 1)
    (tmp_path / "p" / "plan.json").write_text(json.dumps(data))
    plan = read_plan(tmp_path / "p")  # reading it (as a stage does) is fine
    with pytest.raises(PlanError, match=r"outputs are structured as somepkg.Output, a type this process has not "
                                        r"registered .*import the package that defines it"):
        plan.out_spec


def test_a_plans_estimate_reads_back_as_an_estimate(tmp_path: Path) -> None:
    from rotafx.estimate import estimate_from_dict

    model, x = build("small-gpt")
    topo = three_stage_topology(model, x)
    spec = rotafx.export(model, x, path=tmp_path / "p", topology=topo)
    want = rotafx.partition(model, x, topology=topo).plan.partition.estimate
    got = estimate_from_dict(rotafx.plan.schema.read_plan(tmp_path / "p").estimate)
    assert got.total_ms == pytest.approx(want.total_ms) and got.parts() == pytest.approx(want.parts())
    assert got.stages == want.stages and got.memory_bytes == pytest.approx(want.memory_bytes)
    assert [(t.src, t.dst, t.bytes) for t in got.transfers] == [(t.src, t.dst, t.bytes) for t in want.transfers]
    assert spec.estimate["memory_bytes"]
    with pytest.raises(ValueError, match=r"the plan's estimate cannot be read back: KeyError 'parts'"):
        estimate_from_dict({"total_ms": 1.0})
