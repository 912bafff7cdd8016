"""Generation across processes: a driver and three stage processes on 127.0.0.1 run an exported plan's prefill and
decode programs, each stage keeping a KV cache per sequence; the tokens equal the model's greedy ones, several
sequences decode at once, and a stage that dies mid-generation is named with the tokens made so far. The processes
are started as torchrun starts its workers (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.models import small_gpt
from rotafx.plan.write import export_pipeline
from rotafx.runtime.distributed import Driver, DistributedError, LocalCluster, free_port
from rotafx.runtime.distributed.secret import ENV, new_secret
from rotafx.runtime.tracing import read_trace
from tests import faulty_stage
from tests.test_generate import _ids, _recompute, _split, left_padded

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, rotafx.PipelineModule, Path]:
    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    example = _ids(1, 8, 128, seed=0)
    pm = _split(m, example, batch=2)
    assert len(pm.stages) == 3
    path = tmp_path_factory.mktemp("gen") / "gpt"
    export_pipeline(pm, (example,), path=path, max_context=48)
    return m, pm, path


def _torchrun_style(path: Path, port: int, commands: dict[int, list[str]]) -> LocalCluster:
    """The stage processes started the way torchrun starts its workers: RANK (stage + 1), WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT in the environment, no --stage or --master-* on the command line; the driver (rank 0) in this
    process, its address and port from the same environment."""
    secret = new_secret()
    n = 3
    base = {**os.environ, "WORLD_SIZE": str(n + 1), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1", ENV: secret, "ROTAFX_PARENT_PID": str(os.getpid())}
    logs = [path.parent / f"stage{i}.log" for i in range(n)]
    procs = []
    for i in range(n):
        cmd = [*commands.get(i, [sys.executable, "-m", "rotafx.runtime.distributed"]), "--plan", str(path),
               "--timeout", str(TIMEOUT), "--join-timeout", "90", "--threads", "1"]
        with open(logs[i], "wb") as f:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env={**base, "RANK": str(i + 1)}))
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK")}
    os.environ.update({"WORLD_SIZE": str(n + 1), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0"})
    try:
        driver = Driver(path, timeout=TIMEOUT, join_timeout=90, processes=procs, secret=secret)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait(5)
        raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert driver.server is not None
    return LocalCluster(driver, procs, logs)


def _check_generation_trace(spans: list, plan: Any, sequences: int, new: int) -> None:
    """Every prefill chunk and decode step a request, each with every stage's compute from its process and each
    hop's time in flight, inside the request's span; the estimate's tracks beside them."""
    steps = [s for s in spans if s.process == "measured" and s.track == "requests"]
    kinds = [s.name.split()[0] for s in steps]
    assert kinds.count("prefill") == 2 * sequences and kinds.count("decode") == (new - 1) * sequences, kinds
    stage_tracks = {f"stage {st.chain_index}: {st.node} (cpu)" for st in plan.stages}
    for step in steps:
        mine = [s for s in spans if s.request == step.request and s.process == "measured" and s is not step]
        assert {s.track for s in mine if s.name in ("prefill", "decode")} == stage_tracks, (step, mine)
        assert {s.name for s in mine if s.track in stage_tracks} == {"receive", step.name.split()[0], "send"}
        assert sum(s.name == "in flight" for s in mine) == len(plan.stages) + 1  # every hop, the driver's last too
        for s in mine:  # the stages' wall clock, put on the driver's: within the request (1 ms of slack)
            assert step.start_ms - 1 <= s.start_ms <= s.end_ms <= step.end_ms + 1, (step, s)
    assert any(s.process == "estimate" and s.track in stage_tracks for s in spans)


DIES_AT = 250  # stage 1 dies before computing message 250: in the test's last generate call


def test_three_processes_generate_the_models_tokens_until_a_stage_dies(plan: Any) -> None:
    m, pm, path = plan
    prompt = _ids(4, 11, 128)
    want = _recompute(m, prompt, 12)
    with _torchrun_style(path, free_port(), {1: faulty_stage.command(f"die@{DIES_AT}")}) as cluster:
        d = cluster.driver
        # four sequences, two at a time: a finished sequence's slot goes to the next one
        assert torch.equal(d.generate(prompt, max_new_tokens=12, sequences=2), want)
        # all four at once, through rotafx.generate, with timings and a trace
        d.trace(path.parent / "gen.json")
        got, t = rotafx.generate(d, prompt, max_new_tokens=12, timings=True)
        d.trace(None)
        assert torch.equal(got, want)
        _check_generation_trace(read_trace(path.parent / "gen.json"), d.plan, sequences=4, new=12)
        assert t.batch_size == 4 and t.new_tokens == 12 and len(t.decode_ms) == 4 * 11
        assert 0 < t.ttft_ms and 0 < t.tpot_ms and t.tokens_per_s > 0
        # EOS: the one sequence that makes it stops there and is padded, as transformers' generate pads it
        new = want[:, 11:]
        r, j, eos = next((r, j, int(v)) for r in range(4) for j, v in enumerate(new[r])
                         if sum(bool((row == v).any()) for row in new) == 1)
        pad = next(v for v in range(127, 0, -1) if v not in want)
        padded = want.clone()
        padded[r, 11 + j + 1:] = pad
        assert torch.equal(cluster.generate(prompt, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad), padded)
        # the plan's links emulated on every hop (the stages wait as the links would): the same tokens
        assert torch.equal(d.generate(prompt[:2], max_new_tokens=4, emulate_links=True), want[:2, :15])
        # prompts of 11 and 6 tokens padded on the left: each row's own tokens after its padding
        ids, mask = left_padded(prompt[:2], [11, 6], pad=7)
        rows = torch.cat([want[:1, 11:15], _recompute(m, prompt[1:2, 5:], 4)[:, 6:]])
        assert torch.equal(d.generate(ids, attention_mask=mask, max_new_tokens=4), torch.cat([ids, rows], 1))
        # the one-pass plan still runs beside it
        x = _ids(1, 8, 128, seed=5)
        with_trace = d.trace(path.parent / "run.json")
        torch.testing.assert_close(d(x), m(x), rtol=0, atol=0)
        d.trace(None)
        spans = read_trace(with_trace.path)
        (call,) = [s for s in spans if s.track == "requests" and s.process == "measured"]
        computed = {s.track for s in spans if s.name == "compute" and s.process == "measured"}
        assert call.name == "request 0" and len(computed) == len(d.plan.stages)
        # one request alone: its hops and each stage's receive, compute and send follow each other, end to end
        covered = sum(s.ms for s in spans if s.process == "measured" and s.track != "requests")
        assert 0.95 * call.ms <= covered <= 1.05 * call.ms, (covered, call.ms)
        with pytest.raises(rotafx.GenerationError, match=r"over the 48 tokens of the plan's max_context"):
            d.generate(_ids(1, 40, 128), max_new_tokens=10)
        # stage 1 dies mid-generation: named, with the tokens each sequence had so far
        start = d._next_id
        assert start + 4 + 8 < DIES_AT < start + 4 * 30, start  # among the decode steps of the next call
        long = _ids(4, 8, 128, seed=7)
        with pytest.raises(DistributedError) as info:
            d.generate(long, max_new_tokens=36)
    e = info.value
    assert e.stage == 1 and "stage 1" in str(e) and "died" in str(e), str(e)
    assert "0 of 4 sequence(s) finished" in str(e) and e.completed == [] and e.outputs == {}
    want = _recompute(m, long, 36)[:, 8:]
    assert set(e.tokens) == {0, 1, 2, 3} and all(3 <= len(toks) < 36 for toks in e.tokens.values()), e.tokens
    for s, toks in e.tokens.items():
        assert toks == want[s, :len(toks)].tolist()


def test_a_real_torchrun_launch_generates_the_models_tokens(plan: Any) -> None:
    """torchrun starts four workers: rank 0 the driver, ranks 1-3 the stages (examples/torchrun_generate.py)."""
    m, _, path = plan
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, ENV: new_secret(), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ROTAFX_PORT"):
        env.pop(k, None)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--nproc-per-node", "4", "--master-port", str(free_port()),
                           str(root / "examples" / "torchrun_generate.py"), str(path), "--new-tokens", "10",
                           "--prompt-len", "6", "--vocab", "128"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prompt = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    line = next(l for l in proc.stdout.splitlines() if l.startswith("tokens:"))
    assert line == f"tokens: {_recompute(m, prompt, 10)[0].tolist()}"
