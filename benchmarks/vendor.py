"""The vendor's PartitionOptimizer (rotastellar-distributed 0.1.1) against ours, both scored by rotafx's estimator.

Run from the repository root, after ``.venv/bin/pip install rotastellar-distributed==0.1.1``::

    .venv/bin/python benchmarks/vendor.py      # writes its section of benchmarks/RESULTS_solver.md

The vendor's optimizer takes a list of layers (params, FLOPs, input and output bytes) and
the ground/orbital TFLOP/s, up/downlink Mbps and orbit altitude; it returns one split
index: layers before it on the ground, the rest in orbit. We give it the same figures
as our profile and topology, turn its split into a placement (``assign_ground`` /
``assign_orbital``, the orbital layers spread evenly over the orbital nodes, as our
``LayerPlacement`` does), check it with our memory rule and price it with
``rotafx.estimate.evaluate``, next to our optimizer's plan for the same objective.
"""

from __future__ import annotations

import importlib.metadata as md
import math
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver import _plan, llama70b_profile, machine, seed_topology, write_section  # noqa: E402

from rotafx import LayerPlacement, ModelProfile, PartitionOptimizer  # noqa: E402
from rotafx.costmodel import CostTables  # noqa: E402
from rotafx.estimate import evaluate  # noqa: E402
from rotafx.solve.feasibility import fits  # noqa: E402
from rotafx.topology import Topology  # noqa: E402

SPEED_OF_LIGHT_KM_S = 299792.458
# our objective -> the vendor's OptimizationObjective member (it has no energy objective)
VENDOR_OBJECTIVE = {"minimize_latency": "MINIMIZE_LATENCY", "minimize_bandwidth": "MINIMIZE_BANDWIDTH",
                    "balance": "BALANCE", "maximize_throughput": "MAXIMIZE_THROUGHPUT", "minimize_energy": None}


def to_vendor_profile(rd: Any, prof: ModelProfile) -> Any:
    """Our profile as the vendor's ModelProfile: input_size is the bytes crossing the boundary before the layer."""
    layers = []
    for i, l in enumerate(prof.layers):
        layers.append(rd.LayerProfile(name=l.name, layer_type=rd.LayerType.OTHER, params=l.params, flops=l.flops,
                                      input_size=prof.boundary_bytes(i), output_size=prof.boundary_bytes(i + 1),
                                      activation_memory=l.peak_bytes))
    return rd.ModelProfile.from_layers(layers, name=prof.name)


def vendor_optimizer(rd: Any, topo: Topology) -> Any:
    """The vendor's optimizer with our topology's figures; the orbit altitude gives our one-way propagation delay."""
    src = topo.source
    g = next(d for d in topo.devices.values() if d.kind == "ground")
    o = next(d for d in topo.devices.values() if d.kind == "orbital")
    prop_ms = float(src.get("ground_orbit_latency_ms", 25.0))
    return rd.PartitionOptimizer(ground_compute_tflops=g.flops / 1e12, orbital_compute_tflops=o.flops / 1e12,
                                 orbit_altitude_km=prop_ms * 1e-3 * SPEED_OF_LIGHT_KM_S,
                                 uplink_bandwidth_mbps=float(src["uplink_bandwidth"]) / 1e6,
                                 downlink_bandwidth_mbps=float(src["downlink_bandwidth"]) / 1e6)


def compare(rd: Any, prof: ModelProfile, topo: Topology, label: str) -> list[str]:
    """One table row per objective: our optimum and the vendor's split, both priced by our estimator."""
    tables = CostTables(prof, topo)
    vopt = vendor_optimizer(rd, topo)
    vprof = to_vendor_profile(rd, prof)
    rows = []
    for name, member in VENDOR_OBJECTIVE.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = PartitionOptimizer().optimize(prof, topo, name)
        obj = ours.objective
        if member is None:
            rows.append(f"| {label} | {name} | {ours.objective_value:,.4g} | {ours.estimated_latency_ms:,.1f} | "
                        f"{_plan(tables, ours.stages)} | - | - | - | - | the vendor has no energy objective |")
            continue
        plan = vopt.optimize(vprof, getattr(rd.OptimizationObjective, member))
        split = sum(1 for p in plan.placements if p.location == rd.PlacementLocation.GROUND)
        # its plan is a prefix on the ground and the rest in orbit
        assert all(p.location == rd.PlacementLocation.GROUND for p in plan.placements[:split])
        placement = LayerPlacement().assign_ground(range(split)).assign_orbital(range(split, prof.num_layers))
        v = placement.validate(prof, topo)
        stages = placement.stages(prof, topo)
        est = evaluate(tables, stages)
        value = obj.value(est)
        if v.is_valid:
            verdict = (f"fits; {value / ours.objective_value:.2f}x our optimum" if ours.objective_value
                       else f"fits; ours is 0, the vendor's {value:,.4g}")
        else:
            need = tables.device_memory(stages)
            over = [f"{d} needs {need[d] / 1e9:,.1f} GB of {tables.capacity[d] / 1e9:g} GB" for d in need
                    if need[d] > tables.capacity[d]]
            verdict = "does not fit: " + "; ".join(over)
        assert v.is_valid == fits(tables, stages)
        rows.append(f"| {label} | {name} | {ours.objective_value:,.4g} | {ours.estimated_latency_ms:,.1f} | "
                    f"{_plan(tables, ours.stages)} | split at {split} ({_plan(tables, stages)}) | "
                    f"{plan.total_latency_ms:,.1f} | {est.total_ms:,.1f} | {value:,.4g} | {verdict} |")
        print(rows[-1], flush=True)
    return rows


def vendor_transformer(rd: Any) -> ModelProfile:
    """The vendor's own example model (create_transformer(12): GPT-2-small-sized, fp32 sizes), as our profile."""
    vm = rd.ModelProfile.create_transformer(num_layers=12)
    layers = [{"name": l.name, "params": l.params, "flops": l.flops, "activation_bytes": l.output_size}
              for l in vm.layers]
    return ModelProfile.from_layers(layers, input_bytes=vm.layers[0].input_size, name="vendor create_transformer(12)",
                                    itemsize=4)


def main() -> None:
    cmd = "python benchmarks/vendor.py"
    try:
        version = md.version("rotastellar-distributed")
        import rotastellar_distributed as rd
    except (md.PackageNotFoundError, ImportError) as e:
        text = ("## Vendor comparison: rotastellar-distributed 0.1.1\n\n"
                f"Not run: the package could not be imported ({type(e).__name__}: {e}). Install it with "
                "`.venv/bin/pip install rotastellar-distributed==0.1.1` and rerun `python benchmarks/vendor.py`.\n")
        print(text)
        write_section("vendor", text)
        return
    head = ["| model, topology | objective | ours: value | ours: latency ms | ours: plan | vendor: plan | "
            "vendor's own latency ms | vendor plan, our latency ms | vendor plan, our value | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    rows += compare(rd, llama70b_profile(), seed_topology(80e9), "LLaMA-70B-shaped, seed 80 GB ground")
    rows += compare(rd, llama70b_profile(), seed_topology(40e9), "LLaMA-70B-shaped, seed 40 GB ground")
    rows += compare(rd, vendor_transformer(rd), seed_topology(80e9), "vendor's 12-layer transformer, seed 80 GB")
    text = (f"## Vendor comparison: rotastellar-distributed {version} (PyPI)\n\n"
            f"Command: `{cmd}`  \nMachine: {machine()}\n\n"
            "The vendor's `PartitionOptimizer(ground_compute_tflops, orbital_compute_tflops, orbit_altitude_km, "
            "uplink_bandwidth_mbps, downlink_bandwidth_mbps).optimize(model, objective)` chooses one split: a "
            "ground prefix and an orbital suffix. It has no memory model (its source says `TODO: Add memory "
            "constraints`), no return to the ground (the output stays in orbit, no downlink), one orbital node, "
            "compute = FLOPs / TFLOP/s; `minimize_bandwidth` cuts after the layer with the smallest output, "
            "`balance` and `maximize_throughput` both split the FLOPs in proportion to the TFLOP/s. We gave it "
            "the seed topology's figures (100/20 TFLOP/s, 100/500 Mbps) and an altitude of 7,495 km so that its "
            "one-way propagation equals our 25 ms. Its plan is then priced by our estimator on the real chain "
            "(ground0 -> orbital0..3 -> ground1, orbital layers spread evenly over the four satellites), with our "
            "memory rule. *Value* is our objective's value (ms, ms per request, ground-orbit bytes, J, or the "
            "normalised balance sum), with our optimizer's normalisers for balance. Where our optimum sends no "
            "ground-orbit bytes (an all-ground plan fits), our balance normalises that term by 1e-9 bytes, so any "
            "plan that uses orbit scores about 1e16: that is rotafx's normalisation rule, not a vendor figure.\n\n"
            + "\n".join(head + rows) + "\n")
    print(text)
    write_section("vendor", text)


if __name__ == "__main__":
    main()
