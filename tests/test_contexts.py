"""What calls an op sets what a calibrated device charges around it (ModelProfile.runs_as, Calibration contexts),
and the module calls a layer's eager forward makes (LayerProfile.module_calls)."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

import rotafx
from rotafx.calibrate import Calibration, CalibrationError, calibrate
from rotafx.layers import OpCost, ProfileError

cal_module = importlib.import_module("rotafx.calibrate")  # the module (rotafx.calibrate the name is the function)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm, self.act = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.act(self.fc(x))))  # act is called twice: two calls


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(Block(), Block(), torch.nn.Linear(8, 2)).eval()


def _cal(**kw: float) -> Calibration:
    return Calibration("cpu", 1, bandwidth_Bps=1e10, op_overhead_s=2e-6, view_overhead_s=1e-6,
                       op_times={"matmul": {64: 3e-6}, "norm": {64: 4e-6}, "pointwise": {64: 1e-6}},
                       matmul={"float32": {(1, 64, 64): (1e10, 0.0), (64, 64, 64): (2e10, 0.0)}}, **kw)


def test_module_calls_are_counted_per_layer_each_call_once_in_the_layer_of_its_first_op() -> None:
    p = rotafx.ModelProfile.from_pytorch(_net(), (torch.randn(4, 8),))
    # the root's call and each block's own five calls (itself, fc, norm, act twice); the head one
    assert [layer.module_calls for layer in p.layers] == [1 + 5, 5, 1]


def test_each_way_of_running_charges_its_own_context_per_op() -> None:
    p = rotafx.ModelProfile.from_pytorch(_net(), (torch.randn(4, 8),))
    assert p.runs_as == "modules"
    n_ops = sum(1 for layer in p.layers for op in layer.op_costs if not op.view)
    c = _cal(op_context_s=5e-6, graph_op_s=2e-6, program_op_s=9e-6)
    topo = {"devices": [{"name": "cpu", "memory": "1 GB", "calibration": c.to_dict()}], "links": [], "chain": ["cpu"]}
    est = {r: rotafx.LatencyEstimator(topo).estimate([0] * p.num_layers, dataclasses.replace(p, runs_as=r)).total_ms
           for r in ("modules", "graph", "program")}
    # the same ops, their context the only difference: n_ops x (context - context)
    assert est["program"] - est["modules"] == pytest.approx(1e3 * n_ops * (9e-6 - 5e-6))
    assert est["modules"] - est["graph"] == pytest.approx(1e3 * n_ops * (5e-6 - 2e-6))
    # a view costs its launch whatever calls it
    view = OpCost(0, 64, None, True, "view.default")
    assert {c.op_time_s(view, runs_as=r) for r in ("modules", "graph", "program")} == {1e-6}


def test_a_calibration_without_the_graph_and_program_contexts_prices_every_way_as_eager(tmp_path: Path) -> None:
    d = _cal(op_context_s=5e-6, graph_op_s=2e-6, program_op_s=9e-6).to_dict()
    for new in ("graph_op_s", "program_op_s", "program_call_s", "module_call_s"):
        del d[new]
    f = tmp_path / "old.json"
    f.write_text(json.dumps(d))
    old = Calibration.load(f)
    relu = OpCost(0, 64, None, False, "relu.default")
    assert [old.op_time_s(relu, runs_as=r) for r in ("modules", "graph", "program")] == [pytest.approx(6e-6)] * 3
    new = _cal(op_context_s=5e-6, graph_op_s=2e-6, program_op_s=9e-6)
    assert Calibration.from_dict(new.to_dict()).to_dict() == new.to_dict()
    bad = dict(new.to_dict(), program_op_s=-1.0)
    with pytest.raises(CalibrationError, match="program_op_s must be a finite number"):
        Calibration.from_dict(bad)


def test_an_unknown_way_of_running_is_refused_by_name() -> None:
    p = rotafx.ModelProfile.from_pytorch(_net(), (torch.randn(4, 8),))
    with pytest.raises(ProfileError, match=r"runs_as must be one of modules, graph, program, got 'jit'"):
        dataclasses.replace(p, runs_as="jit")


def test_in_process_pipelines_are_priced_as_eager_and_an_exported_plan_as_programs(tmp_path: Path) -> None:
    """The backend's and partition's pipelines run at about the eager model's speed; what export writes for
    rotafx.load is priced as torch.export programs: each op program_op_s instead of op_context_s, and one call."""
    from rotafx.backend.plan import last_plan
    from rotafx.plan.schema import read_plan

    m, x = _net(), torch.randn(4, 8)
    torch._dynamo.reset()
    torch.compile(m, backend="rotastellar")(x)
    assert last_plan().profile.runs_as == "modules"
    c = _cal(op_context_s=5e-6, graph_op_s=2e-6, program_op_s=9e-6, program_call_s=30e-6)
    topo = {"devices": [{"name": "cpu", "memory": "1 GB", "calibration": c.to_dict()}], "links": [], "chain": ["cpu"]}
    pm = rotafx.partition(m, (x,), topology=topo)
    part = pm.plan.partition
    assert part.profile.runs_as == "modules"
    rotafx.export(m, (x,), path=tmp_path / "plan", topology=topo)
    written = read_plan(tmp_path / "plan").estimate
    n_ops = sum(1 for layer in part.profile.layers for op in layer.op_costs if not op.view)
    assert written["total_ms"] - part.estimate.total_ms == pytest.approx(1e3 * (n_ops * (9e-6 - 5e-6) + 30e-6))
    assert sum(r.get("call_ms", 0.0) for r in written["by_layer"]) == pytest.approx(30e-3)


def test_calibrate_solves_each_context_from_the_probe_timed_three_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the probe's timings fixed, each figure is what makes its way of running add up: the eager net is its ops
    as priced alone plus op_context_s per op, the functions graph_op_s per op, the program its call plus program_op_s
    per op, and the modules less the functions module_call_s per module call."""
    # above what the quick grid prices the probe's ops at
    fixed = {"ops": 20e-6, "views": 6e-6, "net": 3000e-6, "functional": 2500e-6, "program": 4000e-6, "one": 200e-6}
    real = cal_module._best_of

    def best_of(jobs, *a, **kw):  # type: ignore[no-untyped-def]
        if set(jobs) == set(fixed):
            return {k: (t, 0.0) for k, t in fixed.items()}
        return real(jobs, *a, **kw)

    monkeypatch.setattr(cal_module, "_best_of", best_of)
    torch.set_num_threads(1)
    c = calibrate("cpu", quick=True, threads=1)
    x = torch.randn(1, 16, cal_module._PROBE_WIDTH)
    probe = rotafx.ModelProfile.from_pytorch(cal_module._launch_probe(), (x,))
    costs = [op for layer in probe.layers for op in layer.op_costs]
    # every matmul and attention of the probe lies inside the quick grids: priced at its shape, not the edge's
    for op in (op for op in costs if op.kernel is not None):
        kind, *shape = op.kernel
        grid = (c.attention if kind == "sdpa" else c.matmul)["float32"]
        assert all(min(k[i] for k in grid) <= shape[i] <= max(k[i] for k in grid) for i in range(3)), op
    n_ops = sum(1 for op in costs if not op.view)
    calls = sum(layer.module_calls for layer in probe.layers)
    alone = dataclasses.replace(c, op_context_s=0.0, graph_op_s=0.0, program_op_s=0.0, op_overhead_s=0.0)
    priced = sum(alone.op_time_s(op) for op in costs)
    add = alone.op_time_s(OpCost(0, 3 * x.nbytes, None, False, "add.Tensor"))
    assert c.view_overhead_s == pytest.approx(6e-6 / 6)
    assert priced + n_ops * c.op_context_s == pytest.approx(3000e-6)
    assert priced + n_ops * c.graph_op_s == pytest.approx(2500e-6)
    assert calls * c.module_call_s == pytest.approx(500e-6)
    assert c.program_call_s + n_ops * c.program_op_s + priced == pytest.approx(4000e-6)
    assert c.program_call_s + c.program_op_s + add == pytest.approx(200e-6)
    assert c.op_overhead_s == pytest.approx(c.op_context_s + 20e-6 / 10)
