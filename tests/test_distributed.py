"""Three processes on 127.0.0.1 (ground, orbital, ground) run an exported plan; the driver's outputs equal the model's.

Every wait has a timeout and every stage process is killed at the end of its test, so
nothing here can hang: a fault becomes a DistributedError naming the stage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import rotafx
from rotafx import PlanError
from rotafx.runtime.distributed import DistributedError, LinkDownError, LocalCluster, launch_local
from rotafx.runtime.links import hop_delay_s
from tests import faulty_stage
from tests.test_export import build, three_stage_topology

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")

TIMEOUT = 20.0  # seconds for any one wait; far above what a request takes here


def _export(tmp: Path, name: str, **topo: Any) -> tuple[Path, torch.nn.Module, tuple]:
    model, x = build(name)
    spec = rotafx.export(model, x, path=tmp / name, topology=three_stage_topology(model, x, **topo))
    assert [s.node for s in spec.stages] == ["ground0", "orbital0", "ground1"]
    return tmp / name, model, x


@pytest.fixture(scope="module")
def gpt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, torch.nn.Module, tuple, Path]]:
    path, model, x = _export(tmp_path_factory.mktemp("dist"), "small-gpt", latency_ms=30.0)
    with launch_local(path, timeout=TIMEOUT, join_timeout=90) as cluster:
        yield cluster, model, x, path


def _requests(x: tuple, n: int, seed: int = 0) -> list[tuple]:
    g = torch.Generator().manual_seed(seed)
    if x[0].dtype == torch.long:
        return [(torch.randint(0, 256, x[0].shape, generator=g),) for _ in range(n)]
    return [(torch.randn(x[0].shape, generator=g),) for _ in range(n)]


def test_three_processes_equal_the_model_small_gpt(gpt: Any) -> None:
    cluster, model, x, path = gpt
    reqs = _requests(x, 8)
    outs = cluster.run(reqs)
    assert len(outs) == len(reqs)
    for i, (r, y) in enumerate(zip(reqs, outs)):
        want = model(*r)
        assert y.shape == want.shape and y.dtype == want.dtype, f"request {i}: {y.shape} {y.dtype}"
        torch.testing.assert_close(y, want, rtol=0, atol=0, msg=lambda m: f"request {i}: {m}")
    # one request at a time gives the same; so does calling the driver like the model
    torch.testing.assert_close(cluster.run(reqs[:2], window=1)[1], model(*reqs[1]), rtol=0, atol=0)
    torch.testing.assert_close(cluster.driver(*reqs[3]), model(*reqs[3]), rtol=0, atol=0)


def test_bad_inputs_fail_before_anything_is_sent(gpt: Any) -> None:
    cluster, model, x, path = gpt
    good = _requests(x, 2)
    bad = torch.zeros(2, 31, dtype=torch.long)
    with pytest.raises(PlanError, match=r"request 1: input 'input_ids' is int64\[2, 31\], but the plan was exported for int64\[2, 32\]"):
        cluster.run([good[0], (bad,), good[1]])
    with pytest.raises(PlanError, match=r"request 0: input 'input_ids' is float32\[2, 32\].*int64\[2, 32\]"):
        cluster.run([(torch.zeros(2, 32),)])
    with pytest.raises(PlanError, match=r"request 0: inputs are structured as"):
        cluster.run([(good[0][0], good[1][0])])
    # nothing was sent: the pipeline still answers in order
    torch.testing.assert_close(cluster.run(good)[1], model(*good[1]), rtol=0, atol=0)


def test_emulated_links_match_the_estimate(gpt: Any) -> None:
    """With 30 ms uplink and downlink emulated, one request takes about the links' time plus compute."""
    cluster, model, x, path = gpt
    plan = cluster.driver.plan
    links_s = sum(hop_delay_s(h.links, plan.hop_bytes(h)) for h in plan.hops)
    assert links_s == pytest.approx(0.060, rel=0.01)
    req = _requests(x, 1, seed=3)
    cluster.run(req, emulate_links=True)  # warm
    t0 = time.perf_counter()
    y = cluster.run(req, emulate_links=True)[0]
    measured = time.perf_counter() - t0
    torch.testing.assert_close(y, model(*req[0]), rtol=0, atol=0)
    assert links_s <= measured < links_s + 1.0, f"measured {measured * 1e3:.1f} ms, links alone {links_s * 1e3:.1f} ms"
    est_ms = plan.estimate["total_ms"]
    assert est_ms == pytest.approx(60.0, abs=1.0), "the estimate is dominated by the two 30 ms links"
    # pipelined, the 30 ms propagation overlaps: 6 requests take far less than 6 x 60 ms
    t0 = time.perf_counter()
    cluster.run(_requests(x, 6, seed=4), emulate_links=True)
    assert time.perf_counter() - t0 < 6 * links_s * 0.75


# ---------------------------------------------------------------------------
# the convolution net, then faults (a stage that died or hung takes its cluster with it)


@pytest.fixture(scope="module")
def conv_plan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, tuple]:
    return _export(tmp_path_factory.mktemp("conv"), "convnet")


def test_convnet_then_a_stage_that_dies(conv_plan: Any) -> None:
    path, model, x = conv_plan
    first, second = _requests(x, 5, seed=0), _requests(x, 6, seed=1)
    # stage 1 crashes when request 8 (the 4th of the second run) reaches it, after passing 0-7 on
    with launch_local(path, timeout=TIMEOUT, join_timeout=90, stage_commands={1: faulty_stage.command("die@8")}) as cluster:
        outs = cluster.run(first, window=3)
        for r, y in zip(first, outs):
            assert y.shape == (2, 10) and y.dtype == torch.float32
            torch.testing.assert_close(y, model(*r), rtol=0, atol=0)
        t0 = time.perf_counter()
        with pytest.raises(DistributedError, match=r"stage 1 \(orbital0\) died") as info:
            cluster.run(second, window=2)
        assert time.perf_counter() - t0 < TIMEOUT / 2, "a dead stage is seen at once, not after a timeout"
        err = info.value
        assert err.stage == 1 and err.node == "orbital0"
        assert err.completed == [0, 1, 2], "requests 0-2 of the run went through before stage 1 died"
        assert "request 3 did not complete; 3 request(s) completed: 0-2" in str(err)
        for i in err.completed:
            torch.testing.assert_close(err.outputs[i], model(*second[i]), rtol=0, atol=0)
        codes = cluster.wait(15)
    assert all(c is not None for c in codes), f"every stage process stops: exit codes {codes}"
    assert codes[1] == faulty_stage.DIED and codes[0] != 0 and codes[2] != 0
    assert "stage 1 (orbital0)" in cluster.stderr(2), cluster.stderr(2)[-500:]


def test_a_stage_that_hangs_is_named(conv_plan: Any) -> None:
    path, model, x = conv_plan
    reqs = _requests(x, 6)
    timeout = 4.0
    with launch_local(path, timeout=timeout, join_timeout=90, stage_commands={1: faulty_stage.command("hang@2")}) as cluster:
        t0 = time.perf_counter()
        with pytest.raises(DistributedError, match=r"stage 1 \(orbital0\) made no progress on request 2") as info:
            cluster.run(reqs, window=2)
        assert time.perf_counter() - t0 < timeout + 10
        assert info.value.stage == 1 and info.value.completed == [0, 1]
        codes = cluster.wait(10)
    assert all(c is not None and c != 0 for c in codes), f"the driver's abort stops every stage, the hung one too: {codes}"
    assert "aborted" in cluster.stderr(0) and "stage 1 (orbital0)" in cluster.stderr(0)


def test_a_stage_that_never_starts(conv_plan: Any, tmp_path: Path) -> None:
    from rotafx.runtime.distributed import Driver, free_port

    path, model, x = conv_plan
    t0 = time.perf_counter()
    with pytest.raises(DistributedError, match=r"stage 0 \(ground0\), stage 1 \(orbital0\), stage 2 \(ground1\) did not join"):
        Driver(path, master_port=free_port(), join_timeout=2.0, secret="a test secret, 32 bytes long....")
    assert time.perf_counter() - t0 < 15


def test_link_windows_lose_what_arrives_while_a_link_is_down_and_the_pipeline_stays_up(conv_plan: Any) -> None:
    """Schedule time is given per call (``at_s``) and runs a millionth as fast as the wall clock, so each call's
    requests arrive at the time it names: all answered while the links are up, all lost (not computed: the stage
    that receives them drops them, the driver hears of each) while the uplink or the downlink is down, and
    answered again once the windows reopen."""
    path, model, x = conv_plan
    reqs = _requests(x, 4, seed=2)
    with launch_local(path, timeout=TIMEOUT, join_timeout=90) as cluster:
        d = cluster.driver
        with pytest.raises(ValueError, match=r"set them first \(Driver\.set_link_windows\)"):
            d.run(reqs, at_s=1.0)
        with pytest.raises(ValueError, match=r"link ground0 -> orbital0: windows 0-10 s and 5-20 s overlap"):
            d.set_link_windows({("ground0", "orbital0"): [(0, 10), (5, 20)]})
        with pytest.raises(ValueError, match=r"link ground0 -> orbital0: a window is \(start_s, end_s\), finite seconds "
                                             r"that end after they start, got \(10, 5\)"):
            d.set_link_windows({("ground0", "orbital0"): [(10, 5)]})
        with pytest.raises(ValueError, match=r"got \(0, inf\)"):
            d.set_link_windows({("ground0", "orbital0"): [(0, float("inf"))]})
        with pytest.raises(ValueError, match=r"ground1 -> orbital0, which this plan does not cross; it crosses "
                                             r"ground0 -> orbital0, orbital0 -> ground1"):
            d.set_link_windows({("ground1", "orbital0"): []})
        with pytest.raises(ValueError, match=r"a \(src, dst\) pair of node names, got 'ground0'"):
            d.set_link_windows({"ground0": [(0, 1)]})
        with pytest.raises(ValueError, match="time_scale must be a positive number"):
            d.set_link_windows({("ground0", "orbital0"): [(0, 1)]}, time_scale=0)
        d.set_link_windows({("ground0", "orbital0"): [(0, 10), (20, 30)], ("orbital0", "ground1"): [(0, 25)]},
                           time_scale=1e-6)
        with pytest.raises(ValueError, match="at_s must be a finite number"):
            d.run(reqs, at_s=float("nan"))
        for y, r in zip(d.run(reqs, at_s=5.0), reqs):
            torch.testing.assert_close(y, model(*r), rtol=0, atol=0)
        for at, link in ((15.0, "ground0 -> orbital0"), (27.0, "orbital0 -> ground1")):  # lost at stage 1, stage 2
            with pytest.raises(LinkDownError, match=rf"4 request\(s\) lost \(0-3\): link {link} down at schedule time "
                                                    rf"{at:.3f} s; 0 answered \(none\); the pipeline is up") as info:
                d.run(reqs, at_s=at)
            err = info.value
            assert (err.lost, err.outputs, err.links, err.stage) == ([0, 1, 2, 3], {}, [link], None)
            assert err.t_s == pytest.approx(at, abs=1e-3)
        for y, r in zip(d.run(reqs, at_s=21.0), reqs):  # the windows reopened: the same pipeline answers
            torch.testing.assert_close(y, model(*r), rtol=0, atol=0)
        d.set_link_windows(None)
        torch.testing.assert_close(d.run(reqs[:1])[0], model(*reqs[0]), rtol=0, atol=0)


def test_a_windows_table_from_a_peer_is_checked_as_data() -> None:
    """What a stage reads from the store: the table the driver wrote comes back equal; anything else is a ValueError."""
    from rotafx.runtime.links import LinkWindows

    w = LinkWindows({("ground0", "orbital0"): [(300.0, 600.0), (0.0, 100.0)], ("orbital0", "ground1"): []}, 600)
    assert LinkWindows.from_json(w.to_json()) == w
    assert w.windows[("ground0", "orbital0")] == ((0.0, 100.0), (300.0, 600.0)), "sorted"
    assert [w.up("ground0", "orbital0", t) for t in (-1.0, 0.0, 99.9, 100.0, 300.0, 600.0)] == \
        [False, True, True, False, True, False]
    assert not w.up("orbital0", "ground1", 50.0) and w.up("ground1", "ground0", 50.0), "no windows: down; unlisted: up"
    for bad, what in (("[" * 100000, "not JSON"), ('{"time_scale": 1}', "must be"),
                      ('{"time_scale": 1, "links": [["a", "b", [[0, 1]]], ["a", "b", []]]}', "lists a -> b twice"),
                      ('{"time_scale": -1, "links": []}', "time_scale must be a positive"),
                      ('{"time_scale": 1, "links": [["a", "b", [[0, NaN]]]]}', "finite seconds"),
                      ('{"time_scale": 1, "links": [["a", 7, []]]}', "pair of node names"),
                      ('{"time_scale": 1, "links": [["a", "b", [[0, 1]] ]]}' + " " * (1 << 24), "16 MiB")):
        with pytest.raises(ValueError, match=what):
            LinkWindows.from_json(bad)
