"""Failover across routes: a route whose link window closes mid-stream takes no new requests, a route whose stage is
killed mid-generation hands its sequences to the next one (prefilled again with the tokens made so far); every
request answered once with the model's outputs, every sequence the model's greedy tokens."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.models import small_gpt
from rotafx.orbits.schedule import Schedule, Window
from rotafx.plan.schema import read_plan
from rotafx.plan.write import export_pipeline
from rotafx.runtime.distributed import DistributedError, Failover, launch_local
from tests import faulty_stage
from tests.test_generate import _ids, _recompute, _split


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """The small GPT as three stages on cpu0 -> cpu1 -> cpu2 (the preferred route) and as one stage on cpu0."""
    torch.manual_seed(0)
    m = small_gpt(vocab=128, d=32, layers=3, seq=64).eval()
    example = _ids(1, 8, 128, seed=0)
    root = tmp_path_factory.mktemp("routes")
    three = _split(m, example, batch=1)
    assert len(three.stages) == 3
    export_pipeline(three, (example,), path=root / "three", max_context=48)
    one = rotafx.partition(m, (example,), topology={"devices": [{"name": "cpu0", "flops": 1e12, "memory": 1e9}]},
                           devices={"cpu0": "cpu"})
    export_pipeline(one, (example,), path=root / "one", max_context=48)
    return m, root / "three", root / "one"


def test_a_window_closing_mid_stream_moves_the_next_requests_to_the_other_route(plans: Any) -> None:
    m, three, one = plans
    # cpu0 -> cpu1 is up for the first 5 s of the schedule; the clock moves 1 s every time the route is checked
    day = Schedule("2026-12-07T00:00:00Z", 100.0, windows={("cpu0", "cpu1"): [Window(0.0, 5.0)]})
    requests = [(_ids(1, 8, 128, seed=s),) for s in range(10)]
    with launch_local(three, timeout=20) as a, launch_local(one, timeout=20) as b:
        f = Failover([a, b], schedule=day, batch=2, clock=itertools.count().__next__)
        outs = f.run(requests)
        served = (a.driver._next_id, b.driver._next_id)
    assert len(outs) == 10
    for (x,), out in zip(requests, outs):
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    assert [(e.t_s, e.src, e.dst, e.why) for e in f.events] == [(1.0, None, 0, "first call"), (5.0, 0, 1, "links down")]
    assert served == (8, 2)  # each request once: four checks on the three-stage route, then the one-stage route


def test_a_stage_killed_mid_generation_hands_its_sequences_to_the_next_route(plans: Any) -> None:
    m, three, one = plans
    prompt = _ids(4, 11, 128)
    want = _recompute(m, prompt, 12)
    with launch_local(three, timeout=20, stage_commands={1: faulty_stage.command("die@30")}) as a, \
            launch_local(one, timeout=20) as b:
        f = Failover([a, b])
        got = f.generate(prompt, max_new_tokens=12)
        handed_over = b.driver._next_id
        # the failed route is not tried again; the next call goes to the one that works
        again = rotafx.generate(f, prompt[:1], max_new_tokens=3)
    assert torch.equal(got, want)
    assert torch.equal(again, want[:1, :14])
    # the tokens made on the failed route were kept: starting over would take 4 x (2 prefills + 11 decodes + 1 free)
    # messages on the next route
    assert handed_over < 4 * 14, handed_over
    assert [(e.src, e.dst) for e in f.events] == [(None, 0), (0, 1)]
    assert f.events[1].why.startswith("failed: ") and "stage 1" in f.events[1].why and f.failed == {0}
    with pytest.raises(rotafx.GenerationError, match="one length"):
        f.generate(prompt[:2], max_new_tokens=2, attention_mask=torch.tensor([[1] * 11, [0] + [1] * 10]))
    with pytest.raises(rotafx.GenerationError, match="no timings"):
        f.generate(prompt[:2], max_new_tokens=2, timings=True)


def test_no_route_left_is_named(plans: Any) -> None:
    _, three, _ = plans
    day = Schedule("2026-12-07T00:00:00Z", 100.0, windows={("cpu0", "cpu1"): [Window(50.0, 60.0)]})
    route = SimpleNamespace(plan=read_plan(three), run=None, generate=None)  # a route nothing is sent to
    route.run = route.generate = lambda *a, **k: pytest.fail("nothing may be sent on a route that is down")
    f = Failover([route], schedule=day, clock=lambda: 0.0)
    with pytest.raises(DistributedError, match=r"no route at schedule time 0\.0 s: .*\[0\] have a link down"):
        f.run([(_ids(1, 8, 128),)])
    assert Failover([route], schedule=day, start_s=55.0).route() == 0
    with pytest.raises(ValueError, match="at least one route"):
        Failover([])
    with pytest.raises(TypeError, match=r"route 0 is a str, not a running pipeline: give Driver\(plan_dir\)"):
        Failover([str(three)])
