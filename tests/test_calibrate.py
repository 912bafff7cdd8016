"""Calibration: measured device figures, their lookups (checked by hand), their files (checked as untrusted input), and the
kernel shapes the profile records for them (checked against the modules' own sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import rotafx
from rotafx.calibrate import OP_KINDS, Calibration, CalibrationError, calibrate, op_kind
from rotafx.layers import OpCost


def _cal(**kw: object) -> Calibration:
    c = Calibration(device="cpu", threads=1, bandwidth_Bps=1e10, op_overhead_s=2e-6, view_overhead_s=1e-6)
    c.matmul["float32"] = {(1, 256, 256): (1e9, 0.01), (16, 256, 256): (16e9, 0.01),
                           (1, 1024, 256): (4e9, 0.0), (16, 1024, 256): (64e9, 0.0)}
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_matmul_rates_are_interpolated_in_log_space_by_hand() -> None:
    c = _cal()
    assert c.matmul_flops(1, 256, 256) == pytest.approx(1e9)  # a measured shape
    # M = 4 is halfway between 1 and 16 in log2: the geometric mean of 1 and 16 GFLOP/s
    assert c.matmul_flops(4, 256, 256) == pytest.approx(4e9)
    # K = 512 halfway between 256 and 1024 as well: the geometric mean of the four corners
    assert c.matmul_flops(4, 512, 256) == pytest.approx(math.exp((math.log(1e9) + math.log(16e9) + math.log(4e9) +
                                                                  math.log(64e9)) / 4))
    # beyond the grid: clamped at its edge (no extrapolation)
    assert c.matmul_flops(1000, 256, 256) == pytest.approx(16e9)
    assert c.matmul_flops(16, 256, 9999) == pytest.approx(16e9)
    assert c.matmul_flops(1, 256, 256, "float16") is None  # not measured: the caller keeps the datasheet


def test_a_shape_with_no_measured_corner_takes_the_nearest() -> None:
    c = _cal()
    del c.matmul["float32"][(16, 1024, 256)]
    del c.matmul["float32"][(1, 256, 256)]
    # (1, 256, 256) was skipped (say, past the FLOP budget): in log2 space (1, 1024, 256) is nearer than (16, 256, 256)
    assert c.matmul_flops(1, 256, 256) == pytest.approx(4e9)
    assert c.codec_s("int8", 1000) == 0.0


def test_a_calibration_file_round_trips(tmp_path: Path) -> None:
    c = _cal(codecs={"int8": {"encode_s_per_byte": 1e-10, "decode_s_per_byte": 2e-10}},
             transfers={"cpu->cuda:0": {"latency_s": 1e-5, "bandwidth_Bps": 1e10}}, machine={"host": "h"})
    for name in ("cpu.yaml", "cpu.json"):
        back = Calibration.load(c.save(tmp_path / name))
        assert back.to_dict() == c.to_dict()
    assert c.codec_s("int8", 1e6) == pytest.approx(3e-4)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(format="other"), "not a rotafx calibration"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(bandwidth_Bps=float("nan")), "bandwidth_Bps must be a finite number > 0, got nan"),
    (lambda d: d.update(bandwidth_Bps=0), "bandwidth_Bps must be a finite number > 0, got 0"),
    (lambda d: d.update(op_overhead_s=-1), "op_overhead_s must be a finite number >= 0, got -1"),
    (lambda d: d.update(op_overhead_s="1"), "op_overhead_s must be a finite number"),
    (lambda d: d.update(threads=True), "threads must be a positive integer, got True"),
    (lambda d: d.update(device=""), "device must be a torch device name"),
    (lambda d: d["matmul"]["float32"].append([1, 2]), r"matmul\['float32'\]\[4\] must be \[a, b, c, rate, spread\]"),
    (lambda d: d["matmul"]["float32"].append([0, 2, 3, 1e9, 0]), "sizes must be positive integers, got \\[0, 2, 3\\]"),
    (lambda d: d["matmul"]["float32"].append([1, 2, 3, float("inf"), 0]), "rate must be a finite number > 0, got inf"),
    (lambda d: d.update(matmul=[1]), "matmul must map a dtype to rows"),
    (lambda d: d.update(codecs={"int8": {"encode_s_per_byte": 1}}), r"codecs\['int8'\] needs"),
    (lambda d: d.update(op_times=[1]), "op_times must map an op kind to"),
    (lambda d: d.update(op_times={"tanh": []}), r"op_times\['tanh'\] must be a non-empty list"),
    (lambda d: d.update(op_times={"tanh": [[0, 1e-6]]}), r"op_times\['tanh'\]\[0\] must be \[bytes \(a positive integer\)"),
    (lambda d: d.update(op_times={"tanh": [[16, -1]]}), r"op_times\['tanh'\]\[0\] seconds must be a finite number > 0"),
    (lambda d: d.update(op_context_s=float("inf")), "op_context_s must be a finite number >= 0, got inf"),
    (lambda d: d["conv"].update(float32=[[1, 2, 3, 0, 0]]), r"conv\['float32'\]\[0\] rate must be a finite number > 0"),
    (lambda d: d.update(compiled={"call_s": 1e-5}), "compiled must be a mapping with call_s and kernel_s"),
    (lambda d: d.update(compiled=[1]), "compiled must be a mapping with call_s and kernel_s"),
    (lambda d: d.update(compiled={"call_s": 1e-5, "kernel_s": -1}), "compiled.kernel_s must be a finite number >= 0"),
])
def test_a_bad_calibration_is_named(tmp_path: Path, edit: object, match: str) -> None:
    d = _cal().to_dict()
    edit(d)  # type: ignore[operator]
    f = tmp_path / "c.json"
    f.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match=match):
        Calibration.load(f)


@pytest.mark.parametrize("content, match", [
    (b"", "is not valid JSON"), (b"\x00\xff\xfe", "is not text"), (b"[" * 100000, "nested too deeply|not valid JSON"),
    (b"{\"format\": 1", "is not valid JSON"),
])
def test_a_broken_calibration_file_is_named(tmp_path: Path, content: bytes, match: str) -> None:
    f = tmp_path / "c.json"
    f.write_bytes(content)
    with pytest.raises(CalibrationError, match=f"calibration file {f}.*({match})"):
        Calibration.load(f)
    with pytest.raises(CalibrationError, match="is a directory"):
        Calibration.load(tmp_path)
    with pytest.raises(CalibrationError, match="cannot read it"):
        Calibration.load(tmp_path / "missing.yaml")


def test_calibrate_measures_this_cpu_quickly() -> None:
    lines: list[str] = []
    c = calibrate("cpu", quick=True, threads=1, progress=lines.append)
    assert c.device == "cpu" and c.threads == 1 and c.machine["torch"] == str(torch.__version__)
    rates = [r for r, _ in c.matmul["float32"].values()]
    assert rates and all(r > 0 and math.isfinite(r) for r in rates)
    # a bigger matmul does not run slower per FLOP than a single row (M=1 is memory-bound)
    assert c.matmul_flops(256, 1024, 1024) > c.matmul_flops(1, 1024, 1024)
    assert c.bandwidth_Bps > 1e8 and 0 < c.op_overhead_s < 1e-3 and set(c.codecs) == {"fp16", "bf16", "int8"}
    assert c.attention["float32"] and any("matmul" in ln for ln in lines) and any("bandwidth" in ln for ln in lines)


@pytest.mark.parametrize("kw, match", [({"device": "tpu"}, "not a torch device type"), ({"threads": 0}, "threads"),
                                       ({"dtypes": ["float33"]}, "not torch dtypes")])
def test_bad_calibrate_options_are_named(kw: dict, match: str) -> None:
    with pytest.raises(CalibrationError, match=match):
        calibrate(quick=True, **kw)


# -- the kernel shapes the profile records -------------------------------------------------------


def _kernels(model: torch.nn.Module, *inputs: torch.Tensor) -> list[tuple]:
    prof = rotafx.ModelProfile.from_pytorch(model.eval(), inputs)
    return [c.kernel for layer in prof.layers for c in layer.op_costs if c.kernel is not None]


def test_linear_records_its_gemm() -> None:
    assert _kernels(torch.nn.Linear(48, 80), torch.randn(6, 48)) == [("mm", 6, 48, 80)]
    assert _kernels(torch.nn.Linear(48, 80, bias=False), torch.randn(2, 3, 48)) == [("mm", 6, 48, 80)]


def test_a_convolution_records_the_gemm_it_is() -> None:
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    # batch 2 x 8x8 output positions, 3 channels x 3x3 kernel, 16 output channels
    assert _kernels(conv, torch.randn(2, 3, 8, 8)) == [("mm", 2 * 64, 27, 16)]
    grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert _kernels(grouped, torch.randn(1, 8, 4, 4)) == [("mm", 16 * 4, 2 * 9, 2)]


def test_batched_matmul_and_attention_record_their_shapes() -> None:
    class Attn(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, k, k) + torch.bmm(q[0], k[0].transpose(1, 2)).sum()

    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8)
    got = _kernels(Attn(), q, k)
    assert ("sdpa", 8, 7, 8) in got and ("mm", 4 * 5, 8, 7) in got


def test_an_op_costs_its_launch_plus_its_roofline_at_the_calibrated_rate() -> None:
    from rotafx.layers import OpCost

    c = _cal()
    # a (16, 256) @ (256, 256) matmul at the measured 16 GFLOP/s: 2*16*256*256 FLOPs; its bytes at 10 GB/s are less
    mm = OpCost(2 * 16 * 256 * 256, 300_000, ("mm", 16, 256, 256), False)
    assert c.op_time_s(mm) == pytest.approx(2e-6 + 2 * 16 * 256 * 256 / 16e9)
    # a pointwise op: memory-bound at the calibrated bandwidth, plus the launch
    add = OpCost(1000, 12_000, None, False)
    assert c.op_time_s(add) == pytest.approx(2e-6 + 12_000 / 1e10)
    # an op with FLOPs but no kernel: the best measured matmul rate (64 GFLOP/s)
    assert c.op_time_s(OpCost(64_000_000, 0, None, False)) == pytest.approx(2e-6 + 1e-3)
    assert c.op_time_s(OpCost(0, 0, None, True)) == pytest.approx(1e-6)  # a view: its launch only
    # a layer is the sum of its ops, views included
    layer = rotafx.ModelProfile.from_pytorch(torch.nn.Sequential(torch.nn.Linear(256, 256)).eval(),
                                             (torch.randn(16, 256),)).layers[0]
    assert layer.op_costs and c.layer_time_s(layer) == pytest.approx(sum(c.op_time_s(o) for o in layer.op_costs))
    assert any(o.kernel == ("mm", 16, 256, 256) for o in layer.op_costs)


# -- measured layers --------------------------------------------------------------------------------


def test_every_layer_is_measured_at_the_profiled_shapes() -> None:
    from rotafx.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt().eval()
    x = (torch.randint(0, 256, (1, 8)),)
    prof = rotafx.ModelProfile.from_pytorch(model, x, measure=True, repeats=2)
    assert prof.measured_ms is not None and len(prof.measured_ms) == prof.num_layers
    assert all(t > 0 and math.isfinite(t) for t in prof.measured_ms)
    assert prof.measured_on is not None and prof.measured_on.startswith("cpu@") and len(prof.measured_spread) == prof.num_layers
    # the same layers and figures as an unmeasured profile: measuring changes only the times
    plain = rotafx.ModelProfile.from_pytorch(model, x)
    assert [(l.name, l.flops, l.peak_bytes) for l in plain.layers] == [(l.name, l.flops, l.peak_bytes) for l in prof.layers]
    assert plain.measured_ms is None


def test_measuring_needs_real_weights_and_a_pytorch_profile() -> None:
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    prof = rotafx.ModelProfile.from_pytorch(model, (torch.randn(2, 4, device="meta"),))
    with pytest.raises(rotafx.ProfileError, match="weights on the meta device"):
        prof.measure(model, (torch.randn(2, 4, device="meta"),))
    real = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(rotafx.ProfileError, match="repeats must be a positive integer"):
        rotafx.ModelProfile.from_pytorch(real, (torch.randn(2, 4),)).measure(real, (torch.randn(2, 4),), repeats=0)
    layers = rotafx.ModelProfile.from_layers([{"name": "a", "params": 1, "flops": 1, "activation_bytes": 4}])
    with pytest.raises(rotafx.ProfileError, match="this profile comes from 'layers'"):
        layers.measure(real, (torch.randn(2, 4),))


def test_the_calibrate_command_writes_a_file_that_reads_back(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cpu.yaml"
    run = subprocess.run([sys.executable, "-m", "rotafx", "calibrate", "--quick", "--threads", "1", "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "calibrate cpu: matmul float32" in run.stderr and run.stdout.startswith(f"wrote {out}: cpu with 1 thread")
    assert Calibration.load(out).threads == 1
    bad = subprocess.run([sys.executable, "-m", "rotafx", "calibrate", "-o", str(tmp_path / "c.txt")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown suffix '.txt'" in bad.stderr


# -- the cost model uses it ------------------------------------------------------------------------


def _scaled(c: Calibration, slower: float) -> Calibration:
    """``c`` on a device ``slower`` times slower at everything (rates and bandwidth divided, launch costs multiplied)."""
    d = c.to_dict()
    for table in ("matmul", "attention"):
        for rows in d[table].values():
            for row in rows:
                row[3] /= slower
    for rows in d.get("conv", {}).values():
        for row in rows:
            row[3] /= slower
    for rows in d.get("op_times", {}).values():
        for row in rows:
            row[1] *= slower
    d["bandwidth_Bps"] /= slower
    d["op_overhead_s"] *= slower
    d["view_overhead_s"] *= slower
    d["op_context_s"] = d.get("op_context_s", 0.0) * slower
    return Calibration.from_dict(d)


def _gpt_profile(measure: bool = False) -> tuple[torch.nn.Module, tuple, rotafx.ModelProfile]:
    from rotafx.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt().eval()
    x = (torch.randint(0, 256, (1, 8)),)
    return model, x, rotafx.ModelProfile.from_pytorch(model, x, measure=measure, repeats=1)


def _one_device(cal: Calibration | None, name: str = "cpu") -> rotafx.Topology:
    dev: dict = {"name": name, "memory": "8 GB", "flops": 1e12, "memory_bandwidth": 1e11}
    if cal is not None:
        dev["calibration"] = cal.to_dict()
    return rotafx.Topology.from_dict({"devices": [dev], "links": [], "chain": [name]})


def test_a_calibrated_device_prices_every_op_by_its_measured_rate() -> None:
    _, _, prof = _gpt_profile()
    cal = _cal()
    est = rotafx.LatencyEstimator(_one_device(cal)).estimate([0] * prof.num_layers, prof)
    assert est.compute_ms == pytest.approx(1e3 * sum(cal.layer_time_s(layer) for layer in prof.layers))
    assert est.figures == {"cpu": "calibrated"} and "(calibrated)" in est.report()
    # the same device from its datasheet: the roofline, and it says so
    plain = rotafx.LatencyEstimator(_one_device(None)).estimate([0] * prof.num_layers, prof)
    assert plain.figures == {"cpu": "datasheet"} and plain.compute_ms == pytest.approx(
        1e3 * sum(max(f / 1e12, b / 1e11) for layer in prof.layers for f, b in layer.work))


def test_measured_layers_are_used_where_measured_and_scaled_to_other_devices() -> None:
    import socket

    _, _, prof = _gpt_profile(measure=True)
    here = _cal(machine={"host": socket.gethostname()})
    topo = rotafx.Topology.from_dict({
        "devices": [{"name": "cpu", "memory": "8 GB", "calibration": here.to_dict()},
                    {"name": "slow", "memory": "8 GB", "calibration": _scaled(here, 3.0).to_dict()}],
        "links": [{"src": "cpu", "dst": "slow", "bandwidth": "1 Gbps"}], "chain": ["cpu", "slow"]})
    est = rotafx.LatencyEstimator(topo)
    on_cpu = est.estimate([0] * prof.num_layers, prof)
    assert on_cpu.figures == {"cpu": "measured"} and on_cpu.compute_ms == pytest.approx(sum(prof.measured_ms))
    # a device 3x slower at everything: each measured time, scaled by the two calibrations, exactly 3x
    on_slow = est.estimate([1] * prof.num_layers, prof)
    assert on_slow.compute_ms == pytest.approx(3 * sum(prof.measured_ms))
    # measured on another host: the calibration does not match, so the calibrated figures are used
    elsewhere = _cal(machine={"host": "another-host"})
    other = rotafx.LatencyEstimator(_one_device(elsewhere)).estimate([0] * prof.num_layers, prof)
    assert other.figures == {"cpu": "calibrated"}
    assert other.compute_ms == pytest.approx(1e3 * sum(elsewhere.layer_time_s(layer) for layer in prof.layers))


def test_the_optimizer_plans_with_the_calibration() -> None:
    # by its datasheet the second device is 100x faster; measured, it is 50x slower: the plan keeps off it
    _, _, prof = _gpt_profile()
    fast_sheet = {"name": "b", "memory": "8 GB", "flops": 1e14, "memory_bandwidth": 1e13}
    base = {"devices": [{"name": "a", "memory": "8 GB", "flops": 1e12, "memory_bandwidth": 1e11}, fast_sheet],
            "links": [{"src": "a", "dst": "b", "bandwidth": "100 Gbps"}], "chain": ["a", "b"]}
    sheet_plan = rotafx.PartitionOptimizer().optimize(model=prof, topology=base, objective="minimize_latency")
    assert set(sheet_plan.stages) == {1}, "by the datasheets, everything runs on b"
    base_cal = _cal()
    cal_topo = {**base, "devices": [{**base["devices"][0], "calibration": base_cal.to_dict()},
                                    {**fast_sheet, "calibration": _scaled(base_cal, 50.0).to_dict()}]}
    plan = rotafx.PartitionOptimizer().optimize(model=prof, topology=cal_topo, objective="minimize_latency")
    assert set(plan.stages) == {0}, "measured, b is slower: everything stays on a"


def test_a_topology_file_names_its_calibration_beside_it(tmp_path: Path) -> None:
    _cal().save(tmp_path / "cpu.yaml")
    (tmp_path / "topo.yaml").write_text("devices:\n  - {name: cpu, memory: 8 GB, calibration: cpu.yaml}\n"
                                        "links: []\nchain: [cpu]\n")
    topo = rotafx.Topology.load(tmp_path / "topo.yaml")
    dev = topo.devices["cpu"]
    assert dev.figures == "calibrated" and dev.calibration.bandwidth_Bps == 1e10
    assert dev.flops == 64e9 and dev.memory_bandwidth == 1e10, "the datasheet fields default to the measured figures"
    assert rotafx.Topology.from_dict(topo.to_dict()) == topo
    (tmp_path / "bad.yaml").write_text("devices:\n  - {name: cpu, memory: 8 GB, calibration: nowhere.yaml}\n"
                                       "links: []\nchain: [cpu]\n")
    with pytest.raises(rotafx.TopologyError, match=r"bad.yaml.*device 'cpu'.calibration.*nowhere.yaml.*cannot read"):
        rotafx.Topology.load(tmp_path / "bad.yaml")
    with pytest.raises(rotafx.TopologyError, match=r"calibration must be a calibration file"):
        rotafx.Topology.from_dict({"devices": [{"name": "c", "memory": 1, "flops": 1, "calibration": 5}], "links": [],
                                   "chain": ["c"]})


# -- the estimator's own error ------------------------------------------------------------------------


def test_estimate_vs_measured_runs_the_plan_and_sets_each_part_beside_its_estimate(tmp_path: Path) -> None:
    from tests.test_export import build, three_stage_topology

    model, x = build("small-gpt")
    topo = three_stage_topology(model, x, latency_ms=5.0)
    cmp = rotafx.estimate_vs_measured(model, x, topology=topo, repeats=4, threads=1, path=tmp_path / "plan")
    stages, links, total = cmp.rows[:-2], cmp.rows[-2], cmp.total
    assert [r.what.split(" (")[0] for r in stages] == ["stage 0", "stage 1", "stage 2"]
    plan = rotafx.plan.schema.read_plan(tmp_path / "plan")
    # the estimate column is the plan's estimate, split into its parts: they add up to the whole
    assert sum(r.estimate_ms for r in stages) + links.estimate_ms == pytest.approx(total.estimate_ms)
    assert total.estimate_ms == pytest.approx(plan.estimate["total_ms"])
    assert all(r.measured_ms > 0 and r.p10_ms <= r.measured_ms <= r.p90_ms for r in cmp.rows)
    # the emulated links sleep at least what the estimate says they take (two hops of 5 ms and more)
    assert links.p10_ms >= 0.95 * links.estimate_ms and links.estimate_ms >= 10.0
    assert total.error == pytest.approx(total.estimate_ms / total.measured_ms - 1)
    assert "whole request" in cmp.report() and "(datasheet)" in cmp.report()
    # a plan directory runs as it is; options are for exporting
    again = rotafx.estimate_vs_measured(tmp_path / "plan", x, repeats=2, emulate_links=False)
    assert again.total.estimate_ms == pytest.approx(total.estimate_ms) and not again.emulate_links
    with pytest.raises(ValueError, match=r"options \['objective'\] are for exporting a model"):
        rotafx.estimate_vs_measured(tmp_path / "plan", x, objective="minimize_energy")
    with pytest.raises(ValueError, match="repeats must be an integer >= 1, got 0"):
        rotafx.estimate_vs_measured(tmp_path / "plan", x, repeats=0)


def test_estimate_vs_measured_as_processes_takes_each_stages_compute_from_its_process(tmp_path: Path) -> None:
    """The plan as deployed: three stage processes and a driver; each stage's compute is what that process timed
    (the driver's trace), the hops between the processes join the links."""
    from tests.test_export import build, three_stage_topology

    model, x = build("small-gpt")
    rotafx.export(model, x, path=tmp_path / "plan", topology=three_stage_topology(model, x, latency_ms=5.0))
    cmp = rotafx.estimate_vs_measured(tmp_path / "plan", x, repeats=3, warmup=1, processes=True)
    stages, links, total = cmp.rows[:-2], cmp.rows[-2], cmp.total
    assert cmp.processes == 3 and "as 3 stage processes and a driver" in cmp.report()
    assert [r.what.split(" (")[0] for r in stages] == ["stage 0", "stage 1", "stage 2"]
    assert all(0 < r.measured_ms < total.measured_ms for r in stages)
    assert links.p10_ms >= 0.95 * links.estimate_ms and links.estimate_ms >= 10.0  # emulated: slept at least that
    # the driver's own hops, measured from the trace: a part of "links and the rest", none of the stages' compute
    d = cmp.driver_hops
    assert d is not None and 0 < d.p10_ms <= d.measured_ms <= d.p90_ms and d.measured_ms < links.measured_ms
    assert d.estimate_ms == 0.0 and "not priced" in d.figures  # datasheet nodes, no message_ms: said, not guessed
    assert "of which the driver's two hops" in cmp.report()
    # and each hop between two stage processes: its measured cost per message, the figure to give the links
    h = cmp.process_hop
    assert h is not None and 0 < h.p10_ms <= h.measured_ms <= h.p90_ms < links.measured_ms
    assert h.estimate_ms == 0.0 and f"give the links message_ms {h.measured_ms:.3f}" in h.figures
    assert "of which a hop between stages" in cmp.report()
    with pytest.raises(ValueError, match=r"processes=True\) is not supported"):
        rotafx.estimate_vs_measured(tmp_path / "plan", x, processes=True, generation={"new_tokens": 4})


def test_the_driver_hops_are_priced_as_a_process_hop_of_each_end_by_hand() -> None:
    from types import SimpleNamespace

    from rotafx.measured import driver_hops_ms

    def spec(devices: list[dict], message_ms: float) -> SimpleNamespace:
        links = [{"src": a, "dst": b, "bandwidth": "1 Gbps", "latency_ms": 1, "message_ms": message_ms}
                 for a, b in (("a", "b"), ("b", "c"))]
        topo = {"devices": devices, "links": links, "chain": ["a", "b", "c"]}
        return SimpleNamespace(topology=topo, stages=[SimpleNamespace(node=n, chain_index=i) for i, n in enumerate("abc")])

    plain = [{"name": n, "flops": 1e12, "memory": "1 GB"} for n in "abc"]
    # no calibration: each end costs its chain link's message_ms (the link out of a, the link into c)
    assert driver_hops_ms(spec(plain, 0.25), 4096, 512) == (pytest.approx(0.5), "the link's message_ms")
    ms, figures = driver_hops_ms(spec(plain, 0.0), 4096, 512)
    assert ms == 0.0 and figures.startswith("not priced") and "processes=True" in figures
    # a calibrated process hop on a: 50 us + 4096 B at 1 GB/s in; c keeps the link's 0.25 ms out
    hop = _cal()
    hop.transfers["process"] = {"latency_s": 5e-5, "bandwidth_Bps": 1e9}
    devices = [{**plain[0], "calibration": hop.to_dict()}, *plain[1:]]
    ms, figures = driver_hops_ms(spec(devices, 0.25), 4096, 512)
    assert ms == pytest.approx(1e3 * (5e-5 + 4096 / 1e9) + 0.25)
    assert figures == "calibrated process hop / the link's message_ms"
    # a hop between two stages costs the message_ms of the chain links it crosses; a -> c relays through b
    from rotafx.measured import process_message_ms

    assert process_message_ms(spec(plain, 0.25)) == pytest.approx(0.25)
    relay = spec(plain, 0.25)
    relay.stages = [relay.stages[0], relay.stages[2]]
    assert process_message_ms(relay) == pytest.approx(0.5)
    # a plan's topology is input from others: one that does not load is said, not raised from inside
    assert driver_hops_ms(SimpleNamespace(topology={"devices": "x"}, stages=[]), 1, 1)[1].startswith("not priced")
    assert process_message_ms(SimpleNamespace(topology={"devices": "x"}, stages=relay.stages)) == 0.0
    # stages the topology's chain does not hold, or none at all: not priced, never a traceback
    for stages in ([], [SimpleNamespace(node="zz", chain_index=0)], [SimpleNamespace(node="b", chain_index=0)],
                   [SimpleNamespace(chain_index=0)], [SimpleNamespace(node="c", chain_index=2),
                                                     SimpleNamespace(node="a", chain_index=0)]):
        bad = spec(plain, 0.25)
        bad.stages = stages
        assert driver_hops_ms(bad, 1, 1) == (0.0, "not priced: the plan's stages are not on its topology's chain")
        assert process_message_ms(bad) == 0.0


def test_the_compare_command_prints_the_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    topo = tmp_path / "two.yaml"
    topo.write_text("devices:\n  - {name: a, flops: 1e12, memory: 1 GB}\n  - {name: b, flops: 1e12, memory: 1 GB}\n"
                    "links:\n  - {src: a, dst: b, bandwidth: 1 Gbps, latency_ms: 1, bidirectional: true}\nchain: [a, b]\n")
    run = subprocess.run([sys.executable, "-m", "rotafx", "compare", "small-gpt", "--topology", str(topo), "--repeats",
                          "3", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "estimate vs measured over 3 requests" in run.stdout and "whole request" in run.stdout


def test_the_backends_default_device_is_calibrated_when_rotafx_calibration_names_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rotafx.backend.options import Config

    monkeypatch.delenv("ROTAFX_CALIBRATION", raising=False)
    assert Config.make({}).topology.devices["local"].figures == "datasheet"
    _cal().save(tmp_path / "here.yaml")
    monkeypatch.setenv("ROTAFX_CALIBRATION", str(tmp_path / "here.yaml"))
    dev = Config.make({}).topology.devices["local"]
    assert dev.figures == "calibrated" and dev.flops == 64e9
    monkeypatch.setenv("ROTAFX_CALIBRATION", str(tmp_path / "missing.yaml"))
    with pytest.raises(rotafx.BackendError, match=r"default local device.s calibration \(\$ROTAFX_CALIBRATION\).*missing.yaml"):
        Config.make({})


def test_bandwidth_is_looked_up_by_the_bytes_an_op_moves() -> None:
    from rotafx.layers import OpCost

    c = _cal(bandwidth={1 << 20: 64e9, 1 << 26: 16e9})
    assert c.bandwidth_at(1 << 20) == pytest.approx(64e9) and c.bandwidth_at(1 << 26) == pytest.approx(16e9)
    assert c.bandwidth_at(1 << 23) == pytest.approx(32e9)  # halfway in log between 1 MiB and 64 MiB
    assert c.bandwidth_at(10) == pytest.approx(64e9) and c.bandwidth_at(1 << 30) == pytest.approx(16e9)  # clamped
    assert _cal().bandwidth_at(123) == 1e10  # no table: the single figure
    # a pointwise op of 8 MiB at 32 GB/s; a matmul with a calibrated rate pays no memory term on top of it
    assert c.op_time_s(OpCost(0, 1 << 23, None, False)) == pytest.approx(2e-6 + (1 << 23) / 32e9)
    mm = OpCost(2 * 16 * 256 * 256, 1 << 26, ("mm", 16, 256, 256), False)
    assert c.op_time_s(mm) == pytest.approx(2e-6 + 2 * 16 * 256 * 256 / 16e9)


def test_a_gather_moves_the_rows_it_returns_not_its_table() -> None:
    prof = rotafx.ModelProfile.from_pytorch(torch.nn.Embedding(512, 128), (torch.randint(0, 512, (1, 16)),))
    (op,) = [c for layer in prof.layers for c in layer.op_costs]
    assert op.bytes_moved == 2 * 16 * 128 * 4 + 16 * 8  # 16 rows of 128 floats read and written, 16 int64 indices


def test_a_codec_hop_between_calibrated_devices_costs_its_encode_and_decode() -> None:
    from rotafx.costmodel import CostTables, hop_coefficients

    _, _, prof = _gpt_profile()
    c = _cal(codecs={"int8": {"encode_s_per_byte": 1e-9, "decode_s_per_byte": 3e-9}})
    topo = rotafx.Topology.from_dict({
        "devices": [{"name": "a", "memory": "8 GB", "calibration": c.to_dict()},
                    {"name": "b", "memory": "8 GB", "calibration": c.to_dict()}],
        "links": [{"src": "a", "dst": "b", "bandwidth": "1 Gbps"}], "chain": ["a", "b"]})
    link = topo.link("a", "b")
    plain = hop_coefficients(link, True)["latency"][0]
    with_codec = CostTables(prof, topo, codec="int8").hop_coefficients(link)["latency"][0]
    # float32 activations travel as int8: 4 activation bytes per wire byte, encoded at a and decoded at b
    assert with_codec - plain == pytest.approx(1e3 * 4 * (1e-9 + 3e-9))
    assert CostTables(prof, topo).hop_coefficients(link)["latency"][0] == pytest.approx(plain)  # no codec, no cost


def test_measure_without_inputs_times_the_shapes_the_profile_was_built_at(monkeypatch: pytest.MonkeyPatch) -> None:
    import rotafx.frontends.pytorch.measure as m
    from rotafx.models import small_gpt

    seen: list[tuple] = []
    real = m.measure_layers

    def spy(model: torch.nn.Module, example_inputs: tuple, *a: object, **k: object) -> object:
        seen.append(tuple(t.shape for t in example_inputs))
        return real(model, example_inputs, *a, **k)

    monkeypatch.setattr(m, "measure_layers", spy)
    model = small_gpt().eval()
    prof = rotafx.ModelProfile.from_pytorch(model, batch_size=2, seq_len=8)
    prof.measure(model, repeats=1)
    assert seen == [(torch.Size([2, 8]),)], "the profiled (batch, sequence), not a default"


def test_a_device_named_without_its_index_matches_its_calibration() -> None:
    # measure(device="cpu") and calibrate("cpu") name the device the same way; so do "cuda" and "cuda:0"
    from rotafx.devices import existing_device

    _, _, prof = _gpt_profile(measure=True)
    assert prof.measured_on.split("@")[0] == str(existing_device("cpu", "device"))


def test_a_half_precision_model_is_priced_with_its_own_dtype_tables() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16).eval()
    prof = rotafx.ModelProfile.from_pytorch(model, (torch.randn(4, 64, dtype=torch.bfloat16),))
    c = _cal()
    c.matmul["bfloat16"] = {k: (r / 100, s) for k, (r, s) in c.matmul["float32"].items()}  # 100x slower in bf16
    est = rotafx.LatencyEstimator(_one_device(c)).estimate([0] * prof.num_layers, prof)
    assert est.compute_ms == pytest.approx(1e3 * sum(c.layer_time_s(layer, "bfloat16") for layer in prof.layers))
    as_fp32 = 1e3 * sum(c.layer_time_s(layer, "float32") for layer in prof.layers)
    assert est.compute_ms > 20 * as_fp32, "the bf16 table (100x slower), not float32's"


def test_a_model_with_non_tensor_inputs_is_measured() -> None:
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, scale: float, flag: bool) -> torch.Tensor:
            return self.fc(x) * scale if flag else self.fc(x)

    prof = rotafx.ModelProfile.from_pytorch(Scaled().eval(), (torch.randn(2, 8), 2.0, True), measure=True, repeats=1)
    assert prof.measured_ms is not None and all(t > 0 for t in prof.measured_ms)


# -- op kinds: each kind's own time per call, the context cost, convolutions, shapes below the grid ----------------


def _kinds(**kw: object) -> Calibration:
    """``_cal()`` with op-kind tables: a pointwise call 2 us at 16 B and 1 ms at 16 MB, tanh 4 us and 10 ms, a linear's
    launch 5 us, a convolution's 8 us; 3 us of context per op; a convolution table 4x slower than the matmul one."""
    c = _cal(op_times={"pointwise": {16: 2e-6, 16 << 20: 1e-3}, "tanh": {16: 4e-6, 16 << 20: 1e-2},
                       "matmul": {1024: 5e-6}, "conv": {880: 8e-6}}, op_context_s=3e-6, **kw)
    c.conv["float32"] = {k: (r / 4, sp) for k, (r, sp) in c.matmul["float32"].items()}
    return c


def test_an_op_is_priced_by_its_own_kind_measured_alone_plus_the_context_by_hand() -> None:
    c = _kinds()
    add, tanh = OpCost(0, 16 << 20, None, False, "add.Tensor"), OpCost(0, 16 << 20, None, False, "tanh.default")
    assert c.op_time_s(add) == pytest.approx(3e-6 + 1e-3)  # a measured size: its time, plus the context
    assert c.op_time_s(tanh) == pytest.approx(3e-6 + 1e-2)  # the same bytes, its own (10x slower) kind
    # halfway in log between 16 B and 16 MB: the geometric mean of the two times
    mid = 16 << 10
    assert c.op_time_s(OpCost(0, mid, None, False, "Add")) == pytest.approx(3e-6 + math.sqrt(2e-6 * 1e-3))
    # below the smallest probe: never faster than its smallest call; above the largest: at the largest's bytes/s
    assert c.op_time_s(OpCost(0, 4, None, False, "mul.Tensor")) == pytest.approx(3e-6 + 2e-6)
    assert c.op_time_s(OpCost(0, 64 << 20, None, False, "relu.default")) == pytest.approx(3e-6 + 4e-3)
    # a kind the calibration did not measure (norm), and an op of no kind: launch + roofline as before
    for op_type in ("layer_norm.default", "frobnicate"):
        op = OpCost(1000, 12_000, None, False, op_type)
        assert c.op_time_s(op) == pytest.approx(2e-6 + 12_000 / 1e10)
    assert c.op_time_s(OpCost(0, 0, None, True, "view.default")) == pytest.approx(1e-6)  # a view: its launch only


def test_compiled_code_is_priced_by_its_launch_costs_by_hand() -> None:
    """In inductor-compiled code a view is free, pointwise ops fuse (their bytes only), every other op pays one
    compiled kernel's launch plus its work; a calibration without compiled figures prices it as eager code."""
    c = _kinds()
    mm = OpCost(2 * 16 * 256 * 256, 300_000, ("mm", 16, 256, 256), False, "linear.default")
    add = OpCost(0, 16 << 20, None, False, "add.Tensor")
    norm = OpCost(4096, 12_000, None, False, "layer_norm.default")
    view = OpCost(0, 0, None, True, "view.default")
    eager = [c.op_time_s(o) for o in (mm, add, norm, view)]
    assert [c.op_time_s(o, compiled=True) for o in (mm, add, norm, view)] == eager  # nothing measured compiled
    c.compiled = {"call_s": 20e-6, "kernel_s": 4e-6}
    # a matmul: the compiled launch, plus what its work takes beyond the eager launch of a matmul (5 us here)
    assert c.op_time_s(mm, compiled=True) == pytest.approx(4e-6 + 2 * 16 * 256 * 256 / 16e9 - 5e-6)
    # below the grid: the call at its edge (131 us here), less the eager launch, plus the compiled one
    tiny = OpCost(2 * 4 * 16 * 16, 1792, ("mm", 4, 16, 16), False, "mm.default")
    assert c.op_time_s(tiny, compiled=True) == pytest.approx(4e-6 + 2 * 256 * 256 / 1e9 - 5e-6)
    c.matmul["float32"][(1, 256, 256)] = (1e12, 0.0)  # an edge call faster than the eager launch: the launch only
    assert c.op_time_s(tiny, compiled=True) == pytest.approx(4e-6)
    del c.matmul["float32"][(1, 256, 256)]
    assert c.op_time_s(add, compiled=True) == pytest.approx((16 << 20) / 1e10)  # fused: its bytes, no launch
    assert c.op_time_s(norm, compiled=True) == pytest.approx(4e-6 + max(4096 / 64e9, 12_000 / 1e10))
    assert c.op_time_s(view, compiled=True) == 0.0 and c.compiled_call_s == 20e-6
    assert [c.op_time_s(o) for o in (mm, add, norm, view)] == eager  # eager prices are untouched
    # the cost model prices a profile marked compiled (the backend with an inner compiler) this way, and says so
    from types import SimpleNamespace

    layer = SimpleNamespace(op_costs=(mm, add, norm, view))
    assert c.layer_time_s(layer, compiled=True) == pytest.approx(sum(c.op_time_s(o, compiled=True) for o in layer.op_costs))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    prof = rotafx.ModelProfile.from_pytorch(model, (torch.randn(4, 16),))
    topo = rotafx.Topology.from_dict({"devices": [{"name": "here", "memory": "1 GB", "calibration": c.to_dict()}],
                                      "links": [], "chain": ["here"]})
    from dataclasses import replace

    from rotafx.costmodel import CostTables

    for compiled in (False, True):
        t = CostTables(replace(prof, compiled=compiled), topo)
        want = [1e3 * c.layer_time_s(l, "float32", compiled) for l in prof.layers]
        assert t.compute_ms[:, 0] == pytest.approx(want)
        assert t.figures == ["calibrated, compiled" if compiled else "calibrated"]
    assert CostTables(replace(prof, compiled=True), topo).compute_ms.sum() < CostTables(prof, topo).compute_ms.sum()
    # a generation profile marked compiled runs its decode step compiled too
    from rotafx.models import small_gpt

    gen = rotafx.ModelProfile.for_generation(small_gpt(layers=1, seq=32).eval(), prompt_len=8, new_tokens=4)
    one = CostTables(replace(gen, compiled=True), topo)
    assert one.decode.compute_ms[:, 0] == pytest.approx([1e3 * c.layer_time_s(l, "float32", True)
                                                         for l in gen.decode.layers])


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_the_backend_prices_its_stages_as_compiled_code_when_inductor_runs_them(inner: str) -> None:
    """aot_eager runs the aten ops one by one, as eager does (nothing fused): only inductor's stages are compiled
    code; and a compiled graph's plan is not reused for the same graph run eagerly (the key says which)."""
    from dataclasses import replace

    from rotafx.backend.plan import cost_key
    from tests.test_backend import ON_CPU, three_cpus

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    be = rotafx.backend(topology=three_cpus(10e6), devices=ON_CPU, inner=inner)
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=be)(x), model(x))
    assert [p.profile.compiled for p in be.plans] == [inner == "inductor"]
    prof = be.plans[0].profile
    assert cost_key(prof) != cost_key(replace(prof, compiled=not prof.compiled))


def test_calibrate_measures_compiled_launch_costs() -> None:
    lines: list[str] = []
    c = calibrate("cpu", quick=True, threads=1, compiled=True, progress=lines.append)
    assert set(c.compiled) == {"call_s", "kernel_s"} and 0 < c.compiled["call_s"] < 1e-2
    assert 0 < c.compiled["kernel_s"] < 1e-2 and any("compiled code" in ln for ln in lines)
    assert Calibration.from_dict(c.to_dict()).compiled == c.compiled
    assert calibrate("cpu", quick=True, threads=1).compiled == {}  # measured only when asked


def test_a_batch_norm_is_priced_by_its_own_table_or_by_the_norms_of_an_older_file_by_hand() -> None:
    """A batch norm at inference scales and shifts each channel: about half a layer norm's time at the same bytes here
    (RESULTS_calibration.md), so it has its own table; a file from before that table prices it as a norm, as it did."""
    c = _kinds()
    c.op_times["norm"] = {16: 6e-6, 16 << 20: 4e-3}
    bn = OpCost(0, 16 << 20, None, False, "batch_norm.default")
    assert c.op_time_s(bn) == pytest.approx(3e-6 + 4e-3)  # no batch_norm table: the norm's
    c.op_times["batch_norm"] = {16: 3e-6, 16 << 20: 2e-3}
    assert c.op_time_s(bn) == pytest.approx(3e-6 + 2e-3)
    assert c.op_time_s(bn._replace(op_type="BatchNormalization")) == pytest.approx(3e-6 + 2e-3)  # ONNX's
    assert c.op_time_s(OpCost(0, 16 << 20, None, False, "layer_norm.default")) == pytest.approx(3e-6 + 4e-3)
    # what the probe says it moves is what a profile counts for a batch norm of that size
    from rotafx.calibrate import _kind_probe

    m = torch.nn.BatchNorm2d(64).eval()
    prof = rotafx.ModelProfile.from_pytorch(m, (torch.randn(1, 64, 256, 1),))
    (op,) = [o for layer in prof.layers for o in layer.op_costs if op_kind(o.op_type) == "batch_norm"]
    assert op.bytes_moved == _kind_probe("batch_norm", 64 * 256, torch.device("meta"))[1]


def test_a_kernel_costs_its_rate_at_its_shape_at_least_its_launch_by_hand() -> None:
    c = _kinds()
    mm = OpCost(2 * 16 * 256 * 256, 300_000, ("mm", 16, 256, 256), False, "linear.default")
    assert c.op_time_s(mm) == pytest.approx(3e-6 + 2 * 16 * 256 * 256 / 16e9)  # 131 us of work, over the launch
    tiny = OpCost(2 * 1 * 256 * 256, 300_000, ("mm", 1, 256, 256), False, "linear.default")
    assert c.op_time_s(tiny) == pytest.approx(3e-6 + 2 * 256 * 256 / 1e9)  # 131 us
    tinier = OpCost(2 * 1 * 256 * 8, 0, ("mm", 1, 256, 8), False, "linear.default")  # priced at N = 256: 131 us
    assert c.op_time_s(tinier) == pytest.approx(3e-6 + 2 * 256 * 256 / 1e9)
    c.matmul["float32"][(1, 256, 256)] = (1e12, 0.0)  # now 0.13 us of work: the linear's 5 us launch holds
    assert c.op_time_s(tiny) == pytest.approx(3e-6 + 5e-6)
    # the same GEMM as a convolution: the convolution table (4x slower), not the matmul one
    conv = OpCost(2 * 16 * 256 * 256, 300_000, ("mm", 16, 256, 256), False, "conv2d.default")
    assert c.op_time_s(conv) == pytest.approx(3e-6 + 4 * 2 * 16 * 256 * 256 / 16e9)
    # ONNX's fused Relu(Conv) is a convolution too
    assert c.op_time_s(conv._replace(op_type="Relu(Conv)(fused)")) == pytest.approx(c.op_time_s(conv))


def test_below_the_grid_a_kernel_costs_what_its_smallest_measured_call_costs_by_hand() -> None:
    c = _cal()  # the grid: M in {1, 16}, K in {256, 1024}, N = 256; rate 1 GFLOP/s at (1, 256, 256)
    small = OpCost(2 * 1 * 64 * 32, 0, ("mm", 1, 64, 32), False, "mm.default")
    # K = 64 and N = 32 are below the grid: priced as the (1, 256, 256) call, 2*256*256 FLOPs at 1 GFLOP/s
    assert c.op_time_s(small) == pytest.approx(2e-6 + 2 * 256 * 256 / 1e9)
    # above the grid the edge's rate holds: M = 64 at M = 16's 16 GFLOP/s
    big = OpCost(2 * 64 * 256 * 256, 0, ("mm", 64, 256, 256), False, "mm.default")
    assert c.op_time_s(big) == pytest.approx(2e-6 + 2 * 64 * 256 * 256 / 16e9)
    # attention below its grid (BH 4 against 8, D 32 against 64): the (8, 16, 64) call's time
    c.attention["float32"] = {(8, 16, 64): (1e10, 0.0), (8, 64, 64): (2e10, 0.0)}
    att = OpCost(4 * 4 * 16 * 16 * 32, 0, ("sdpa", 4, 16, 32), False, "scaled_dot_product_attention.default")
    assert c.op_time_s(att) == pytest.approx(2e-6 + 4 * 8 * 16 * 16 * 64 / 1e10)


@pytest.mark.parametrize("op_type, kind", [
    ("linear.default", "matmul"), ("addmm.default", "matmul"), ("Gemm", "matmul"), ("MatMul+Add(fused)", "matmul"),
    ("conv2d.default", "conv"), ("Conv", "conv"), ("scaled_dot_product_attention.default", "attention"),
    ("Attention(fused)", "attention"), ("add.Tensor", "pointwise"), ("__and__.Tensor", "pointwise"),
    ("LessOrEqual", "pointwise"), ("tanh.default", "tanh"), ("Tanh", "tanh"), ("gelu.default", "gelu"),
    ("silu.default", "silu"), ("Sigmoid", "silu"), ("erf.default", "sin"), ("rsqrt.default", "rsqrt"),
    ("layer_norm.default", "norm"), ("_native_batch_norm_legit_no_training.default", "batch_norm"),
    ("batch_norm.default", "batch_norm"), ("BatchNormalization", "batch_norm"), ("group_norm.default", "norm"),
    ("LayerNormalization", "norm"), ("mean.dim", "reduction"), ("ReduceMean", "reduction"),
    ("adaptive_avg_pool2d.default", "reduction"), ("_softmax.default", "softmax"), ("Softmax", "softmax"),
    ("embedding.default", "gather"), ("Gather", "gather"), ("index.Tensor", "gather"), ("cat.default", "copy"),
    ("Concat", "copy"), ("_to_copy.default", "copy"), ("arange.default", "creation"), ("ConstantOfShape", "creation"),
    ("getitem", None), ("", None), ("com.microsoft::Unknown", None),
])
def test_an_op_type_names_its_kind(op_type: str, kind: str | None) -> None:
    assert op_kind(op_type) == kind


def test_every_op_of_the_zoo_and_of_transformers_has_a_kind_or_is_a_view() -> None:
    from rotafx.models import convnet, small_gpt

    torch.manual_seed(0)
    profiles = [rotafx.ModelProfile.from_pytorch(small_gpt().eval(), (torch.randint(0, 256, (1, 8)),)),
                rotafx.ModelProfile.from_pytorch(convnet(), (torch.randn(1, 3, 32, 32),))]
    ops = [o for p in profiles for layer in p.layers for o in layer.op_costs]
    assert ops and all(o.op_type for o in ops), "the profile carries each op's type"
    assert [o.op_type for o in ops if not o.view and op_kind(o.op_type) is None] == []


def test_a_calibration_from_before_the_op_kind_tables_loads_and_prices_as_it_did(tmp_path: Path) -> None:
    d = _cal().to_dict()
    for new in ("op_times", "op_context_s", "conv"):
        del d[new]
    f = tmp_path / "old.json"
    f.write_text(json.dumps(d))
    old = Calibration.load(f)
    assert old.op_times == {} and old.conv == {} and old.op_context_s == 0.0
    # launch + roofline, whatever the op's type
    assert old.op_time_s(OpCost(0, 12_000, None, False, "tanh.default")) == pytest.approx(2e-6 + 12_000 / 1e10)
    assert old.op_time_s(OpCost(2 * 16 * 256 * 256, 0, ("mm", 16, 256, 256), False, "linear.default")) == \
        pytest.approx(2e-6 + 2 * 16 * 256 * 256 / 16e9)
    back = Calibration.from_dict(_kinds().to_dict())
    assert back.to_dict() == _kinds().to_dict() and back.op_times["tanh"] == {16: 4e-6, 16 << 20: 1e-2}


def test_the_op_kind_tables_price_every_kind_and_order_them_as_measured() -> None:
    """Each kind's price (less the context) for a call at a size between the probes is positive, and the kinds differ
    as the machine does. How close a price is to a call timed afresh is a benchmark's figure, not a test's
    (benchmarks/calibration.py, RESULTS_calibration.md): on this shared machine one call's time swings by 2x."""
    torch.set_num_threads(1)
    c = calibrate("cpu", quick=True, threads=1)
    assert set(c.op_times) == set(OP_KINDS) and c.conv["float32"] and c.op_context_s >= 0
    F = torch.nn.functional
    x, w, b = torch.randn(64, 512), torch.ones(512), torch.zeros(512)
    calls = {"tanh.default": (lambda: torch.tanh(x), 2 * x.nbytes), "add.Tensor": (lambda: x + x, 3 * x.nbytes),
             "layer_norm.default": (lambda: F.layer_norm(x, (512,), w, b), 2 * x.nbytes + 2 * w.nbytes),
             "_softmax.default": (lambda: torch.softmax(x, -1), 2 * x.nbytes)}
    got = {}
    for op_type, (fn, nbytes) in calls.items():
        got[op_type] = priced = c.op_time_s(OpCost(0, nbytes, None, False, op_type)) - c.op_context_s
        assert priced > 0, f"{op_type}: priced {priced * 1e6:.1f} us"
    # and the kinds differ as the machine does: 32k tanh cost several adds of the same size (not 1 FLOP at peak)
    assert got["tanh.default"] > 3 * got["add.Tensor"]


def test_estimate_vs_measured_for_generation_sets_ttft_and_tpot_beside_the_plan(tmp_path: Path) -> None:
    from rotafx.models import small_gpt
    from tests.test_backend import ON_CPU, three_cpus

    torch.manual_seed(0)
    m = small_gpt(layers=2, seq=64).eval()
    ids = torch.randint(0, 256, (1, 8))
    opts = dict(topology=three_cpus(10e6), devices=ON_CPU)
    gen = {"new_tokens": 12, "prompt_len": 20}
    cmp = rotafx.estimate_vs_measured(m, (ids,), generation=gen, repeats=3, warmup=1, threads=1, **opts)
    want = rotafx.partition(m, (ids,), generation=gen, **opts).generation_plan.estimate.generation
    ttft, tpot, whole = cmp.rows
    assert (ttft.what, tpot.what, whole.what) == ("time to first token", "time per output token", "whole generation")
    assert (ttft.estimate_ms, tpot.estimate_ms, whole.estimate_ms) == (want.ttft_ms, want.tpot_ms, want.generation_ms)
    assert 0 < ttft.measured_ms < whole.measured_ms and 0 < tpot.measured_ms < whole.measured_ms
    # the whole generation is its first token and eleven decode steps
    assert whole.measured_ms >= ttft.p10_ms + 11 * 0.5 * tpot.p10_ms
    assert "generations (20 prompt + 12 new tokens, batch 1)" in cmp.report()
    with pytest.raises(ValueError, match=r"give the module, not a plan directory"):
        rotafx.estimate_vs_measured(tmp_path, (ids,), generation=gen)


def test_a_process_hop_is_measured_and_fitted() -> None:
    from rotafx.calibrate import fit_latency_bandwidth, measure_process_hop

    # the fit recovers a line exactly, and keeps the latency within [0, the smallest message's time]
    assert fit_latency_bandwidth([64, 1 << 20, 1 << 22], [5e-5 + 64 / 2e9, 5e-5 + (1 << 20) / 2e9,
                                                         5e-5 + (1 << 22) / 2e9]) == pytest.approx((5e-5, 2e9))
    assert fit_latency_bandwidth([1, 2, 3], [3.0, 2.0, 1.0])[0] <= 3.0
    hop = measure_process_hop(sizes=(64, 1 << 20), repeats=8)
    assert 0 < hop["latency_s"] < 0.05 and hop["bandwidth_Bps"] > 1e7, hop
    cal = rotafx.Calibration("cpu", 1, bandwidth_Bps=1e10, transfers={"process": hop})
    assert cal.process_message_ms == pytest.approx(1e3 * hop["latency_s"])
    assert rotafx.Calibration.from_dict(cal.to_dict()).transfers["process"] == hop


def test_the_driver_hops_stay_priced_when_no_trace_measured_them() -> None:
    """A run whose traces lack the driver's spans has no driver row, but the estimate still holds their price."""
    from types import SimpleNamespace

    from rotafx.measured import _compare

    spec = SimpleNamespace(estimate={"by_layer": [{"stage": 0, "ms": 2.0}], "transfer_ms": 1.0, "propagation_ms": 0.5,
                                     "total_ms": 3.5}, stages=[SimpleNamespace(node="a", chain_index=0)], topology={})
    cmp = _compare(spec, [[2.1, 2.2]], [4.0, 4.4], 2, True, Path("p"), 1, None, 0.75)
    links, total = cmp.rows[-2], cmp.total
    assert cmp.driver_hops is None
    assert links.estimate_ms == pytest.approx(1.0 + 0.5 + 0.75) and total.estimate_ms == pytest.approx(3.5 + 0.75)
