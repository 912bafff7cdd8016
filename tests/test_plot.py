"""rotafx.plot: each picture's data (and its artists) equals the estimate it draws, computed here independently."""

from __future__ import annotations

import itertools
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")

from rotafx import LatencyEstimator, LayerPlacement, ModelProfile, PartitionOptimizer, Topology, preset  # noqa: E402
from rotafx import plot  # noqa: E402
from rotafx.models import convnet, llama70b, mlp, small_gpt  # noqa: E402

LOCAL = {"links": [{"src": f"gpu{i}", "dst": f"gpu{j}", "bandwidth": "1 Gbps"} for i in range(3) for j in range(3)
                   if i != j]}


def _zoo() -> dict[str, ModelProfile]:
    torch.manual_seed(0)
    return {"mlp": ModelProfile.from_pytorch(mlp(), torch.randn(2, 64)),
            "small_gpt": ModelProfile.from_pytorch(small_gpt(), torch.randint(0, 256, (1, 32))),
            "convnet": ModelProfile.from_pytorch(convnet(), torch.randn(1, 3, 32, 32))}


@pytest.fixture(scope="module")
def zoo() -> dict[str, ModelProfile]:
    return _zoo()


@pytest.fixture(scope="module")
def big() -> dict:
    """LLaMA-70B on meta for generation on 'seed': the optimizer's plan and the demo's hand placement."""
    prof = ModelProfile.for_generation(llama70b(), prompt_len=128, new_tokens=128, dtype=torch.float16)
    topo = preset("seed")
    L = prof.num_layers
    hand = LayerPlacement().assign_ground(range(0, 6)).assign_orbital(range(6, 76)).assign_ground(range(76, L))
    v = hand.validate(prof, topo)
    part = PartitionOptimizer(solver="dp").optimize(prof, topo, "minimize_latency")
    return {"profile": prof, "topology": topo, "part": part, "hand": LatencyEstimator(topo).estimate(hand),
            "validation": v}


def _topology(name: str, prof: ModelProfile) -> Topology:
    if name == "seed":
        return preset("seed")
    sizes = [l.size_bytes for l in prof.layers]  # memory for about half the model: the plan uses 2 or 3 GPUs
    memory = max(0.55 * sum(sizes), 1.2 * max(sizes))
    return Topology.coerce({**LOCAL, "devices": {k: {"flops": 1e12, "memory": memory} for k in ("gpu0", "gpu1", "gpu2")}})


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_import_rotafx_does_not_import_matplotlib():
    code = "import sys, rotafx; assert 'matplotlib' not in sys.modules and 'rotafx.plot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("topo_name", ["seed", "local3"])
@pytest.mark.parametrize("model", ["mlp", "small_gpt", "convnet"])
def test_zoo_pictures_and_png(zoo, model, topo_name, tmp_path):
    prof = zoo[model]
    topo = _topology(topo_name, prof)
    part = PartitionOptimizer(solver="dp").optimize(prof, topo)
    for name, fig in (("placement", plot.placement(part)), ("breakdown", plot.breakdown({"plan": part.estimate})),
                      ("timeline", plot.timeline(part.estimate, 3))):
        out = plot.save(fig, tmp_path / f"{name}.png")
        w, h = fig.get_size_inches() * fig.dpi
        assert _png_size(out) == (round(w), round(h)), name


def test_placement_memory_equals_validation(zoo):
    prof = zoo["small_gpt"]
    topo = _topology("local3", prof)
    part = PartitionOptimizer(solver="dp").optimize(prof, topo)
    hand = LayerPlacement()
    for l, s in enumerate(part.stages):
        hand.assign([l], topo.chain[s])
    v = hand.validate(prof, topo)
    assert v.is_valid and len({n for n in part.nodes}) > 1
    data = plot.placement_data(part)
    by_node = {n.node: n for n in data.nodes}
    for node, need in v.memory_bytes.items():
        assert by_node[node].used_bytes == pytest.approx(need, rel=1e-12), node
        layers = [l for l, s in enumerate(part.stages) if topo.chain[s] == node]
        peak = max((prof.layers[l].peak_bytes for l in layers), default=0.0)
        assert by_node[node].activation_bytes == pytest.approx(peak), node
        assert by_node[node].capacity_bytes == pytest.approx(topo.devices[node].memory_bytes)
    # the artists: the stacked bars' heights are the three parts in GB
    fig = plot.placement(part)
    mem = fig.axes[1]
    bars = {c.get_label(): [r.get_height() for r in c] for c in mem.containers}
    for label, attr in (("weights", "weights_bytes"), ("KV cache", "kv_bytes"), ("activations", "activation_bytes")):
        assert bars[label] == pytest.approx([getattr(n, attr) / 1e9 for n in data.nodes], abs=1e-15), label
    assert [sum(col) for col in zip(*bars.values())] == pytest.approx([v.memory_bytes[n.node] / 1e9
                                                                       for n in data.nodes])


def test_placement_70b_hand(big, tmp_path):
    prof, topo, est, v = big["profile"], big["topology"], big["hand"], big["validation"]
    data = plot.placement_data(est, topo, prof)
    by_node = {n.node: n for n in data.nodes}
    for node, need in v.memory_bytes.items():
        assert by_node[node].used_bytes == pytest.approx(need, rel=1e-9), node
        assert by_node[node].kv_bytes == pytest.approx(est.generation.kv_bytes.get(node, 0.0)), node
    assert by_node["ground0"].label == "layers 1-6:\nembed_tokens ..\nlayers.4"
    assert by_node["ground1"].layers == tuple(range(76, 83))
    fig = plot.placement(est, topo, prof)
    texts = {t.get_gid(): t.get_text() for t in fig.axes[0].texts if t.get_gid()}
    hops = [t for t in est.transfers if t.link_kind != "local"]
    assert hops and len([g for g in texts if g.startswith("link:")]) == len(hops)
    for t in hops:
        label = texts[f"link:{t.src}->{t.dst}"]
        assert f"{t.bytes / 1e6:,.3f} MB" in label or f"{t.bytes / 1e3:,.3f} kB" in label, label
        assert f"{t.transfer_ms:,.2f} + {t.propagation_ms:g} ms" in label, label
    out = plot.save(fig, tmp_path / "p.svg")
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg") and float(root.get("width").removesuffix("pt")) == pytest.approx(
        fig.get_size_inches()[0] * 72)


def test_placement_70b_labels_do_not_overlap(big):
    for fig in (plot.placement(big["part"]), plot.placement(big["hand"], big["topology"], big["profile"])):
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for ax in fig.axes for t in ax.texts
                 if t.get_text().strip()]
        boxes += [(t.get_text(), t.get_window_extent(renderer)) for t in fig.axes[1].get_xticklabels()]
        for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
            assert not ba.overlaps(bb), f"{a!r} overlaps {b!r}"


def test_breakdown_bars_equal_parts(big):
    ests = {"optimizer": big["part"].estimate, "hand": big["hand"]}
    fig = plot.breakdown(ests)
    first, second = fig.axes[:2]
    for ax, pick in ((first, lambda e: e), (second, lambda e: e.generation.decode)):
        heights = {c.get_label(): [r.get_height() for r in c] for c in ax.containers}
        for i, e in enumerate(ests.values()):
            e = pick(e)
            for k, v in e.compute_ms_by_kind.items():
                assert heights[f"{k} compute"][i] == pytest.approx(v)
            for k, v in e.transfer_ms_by_kind.items():
                assert heights[f"{k} transfer"][i] == pytest.approx(v)
            assert heights["propagation"][i] == pytest.approx(e.propagation_ms)
    tops = [sum(col) for col in zip(*({c.get_label(): [r.get_height() for r in c]
                                       for c in second.containers}).values())]
    assert tops == pytest.approx([e.generation.tpot_ms for e in ests.values()])
    tops = [sum(col) for col in zip(*({c.get_label(): [r.get_height() for r in c]
                                       for c in first.containers}).values())]
    assert tops == pytest.approx([e.generation.ttft_ms for e in ests.values()])


def _check_recurrence(data, est, n, decode=False):
    """Every span follows the pipeline recurrence from the estimate's own per-stage and per-hop figures."""
    stage_ms: dict[int, float] = {}
    for le in est.by_layer:
        stage_ms[le.stage] = stage_ms.get(le.stage, 0.0) + le.total_ms
    hops = [t for t in est.transfers if t.link_kind != "local"]
    spans = {(s.track, s.request): s for s in data.spans}
    busy = {}
    for s in data.spans:
        busy.setdefault(s.track, s.end_ms - s.start_ms)
    assert sorted(v for k, v in busy.items() if "->" not in k and k != "token return") == pytest.approx(
        sorted(stage_ms.values()))
    assert sorted(v for k, v in busy.items() if "->" in k) == pytest.approx(sorted(t.transfer_ms for t in hops))
    delay = {f"{t.src} -> {t.dst} ({t.link_kind})": t.propagation_ms for t in hops}
    tracks = [t for t in data.tracks if t != "token return"]
    for r in range(n):
        for k, tr in enumerate(tracks):
            s = spans[tr, r]
            prev = spans[tracks[k - 1], r].end_ms + delay.get(tracks[k - 1], 0.0) if k else None
            if decode and not k and r:  # one sequence: its next step waits for its token's trip back
                prev = spans["token return", r - 1].end_ms
            want = max([x for x in (prev, spans[tr, r - 1].end_ms if r else None) if x is not None], default=s.start_ms)
            if k or r:
                assert s.start_ms == pytest.approx(want), (tr, r)


def test_timeline_recurrence_and_end(zoo, big):
    for est in (PartitionOptimizer(solver="dp").optimize(zoo["mlp"], "seed").estimate, big["part"].estimate,
                big["hand"]):
        for n in (1, 4):
            data = plot.timeline_data(est, n)
            _check_recurrence(data, est, n)
            assert data.end_ms == pytest.approx(est.total_ms + (n - 1) * est.period_ms)
    g = big["hand"].generation
    assert g.sequences == 1
    data = plot.timeline_data(big["hand"], 3, phase="decode")
    _check_recurrence(data, g.decode, 3, decode=True)
    assert data.end_ms == pytest.approx(3 * g.tpot_ms)
    fig = plot.timeline(big["hand"], 3, phase="decode", measured=[("token return", 0, 1.0, 5.0)])
    gids = {p.get_gid() for p in fig.axes[0].collections}
    assert "measured:token return:0" in gids and "span:token return:2" in gids


def test_timeline_bad_input(big):
    with pytest.raises(ValueError, match="rotafx: requests must be a positive integer"):
        plot.timeline_data(big["hand"], 0)
    with pytest.raises(ValueError, match="rotafx: a measured span is"):
        plot.timeline_data(big["hand"], 2, measured=[("x", 0, 1.0)])
    with pytest.raises(ValueError, match="phase='decode' needs a generation estimate"):
        plot.timeline_data(PartitionOptimizer(solver="dp").optimize(_zoo()["mlp"], "seed").estimate, 2, phase="decode")


def test_tradeoffs_points_optimal_and_non_dominated(zoo):
    from rotafx.costmodel import CostTables
    from rotafx.estimate import evaluate
    from rotafx.solve.brute_force import enumerate_placements
    from rotafx.solve.feasibility import fits
    prof, topo = zoo["mlp"], preset("seed")
    chosen = PartitionOptimizer(solver="dp").optimize(prof, topo)
    data = plot.tradeoffs_data(prof, topo, "latency", "energy", 5, chosen=chosen)
    tables = CostTables(prof, topo)
    every = [evaluate(tables, s) for s in enumerate_placements(tables.L, tables.K) if fits(tables, s)]
    best = {k: min(e.terms()[k] for e in every) for k in ("latency", "energy")}
    assert data.points
    for p in data.points:
        assert p.partition.status == "optimal"
        # each point minimises its weighted, normalised sum over every feasible placement (brute force)
        value = lambda t: sum(w * t[k] / best[k] for k, w in p.weights.items())  # noqa: E731
        assert value(p.partition.estimate.terms()) <= min(value(e.terms()) for e in every) * (1 + 1e-9)
        assert not any(e.total_ms < p.x * (1 - 1e-9) and e.energy_j < p.y * (1 - 1e-9) for e in every)
    assert data.chosen == pytest.approx((chosen.estimate.total_ms, chosen.estimate.energy_j))
    assert data.points[0].x == pytest.approx(best["latency"])
    fig = plot.tradeoffs(prof, topo, points=3, chosen=chosen)
    line = next(l for l in fig.axes[0].lines if l.get_gid() == "front")
    assert len(line.get_xdata()) >= 1
    with pytest.raises(ValueError, match="rotafx: tradeoffs y='speed' is not a term"):
        plot.tradeoffs_data(prof, topo, "latency", "speed")


def test_save_refuses_other_suffixes_and_missing_matplotlib(zoo, tmp_path, monkeypatch):
    est = LatencyEstimator("seed").estimate([0] * zoo["mlp"].num_layers, zoo["mlp"])
    fig = plot.breakdown(est)
    with pytest.raises(ValueError, match=r"rotafx: save\(\) writes .png or .svg, not '.jpg'"):
        plot.save(fig, tmp_path / "x.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"rotafx: plotting needs matplotlib: pip install rotafx\[plot\]"):
        plot.breakdown(est)


def test_tradeoffs_drop_dominated_and_unproven_plans(monkeypatch):
    """Hand-made solver answers: a dominated plan, a duplicate and a plan not proven optimal are left out."""
    from types import SimpleNamespace

    import rotafx.plot.data as data_mod
    answers = iter([(10.0, 5.0, "optimal"), (10.0, 7.0, "optimal"), (12.0, 3.0, "time_limit"),
                    (14.0, 2.0, "optimal"), (14.0, 2.0, "optimal")])

    class Fake:
        def __init__(self, **kw):
            pass

        def optimize(self, profile, topology, objective, weights):
            lat, en, status = next(answers)
            est = SimpleNamespace(terms=lambda: {"latency": lat, "energy": en})
            return SimpleNamespace(status=status, estimate=est, stages=(0,))

    monkeypatch.setattr(data_mod, "PartitionOptimizer", Fake)
    d = plot.tradeoffs_data(None, "seed", "latency", "energy", 5)
    assert [(p.x, p.y) for p in d.points] == [(10.0, 5.0), (14.0, 2.0)]
