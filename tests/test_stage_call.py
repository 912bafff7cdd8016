"""The fixed cost of a stage's call (an exported program's, or inductor-compiled code's): which devices pay it, the
estimator's figures with it by hand, the decode step's, and every solver against brute force with it."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rotafx import LatencyEstimator, ModelProfile
from rotafx.calibrate import Calibration
from rotafx.costmodel import CostTables
from rotafx.estimate import evaluate
from rotafx.objective import GENERATION_OBJECTIVES, Objective, objective
from rotafx.profile import Generation
from rotafx.solve import milp as milp_module
from rotafx.solve.brute_force import solve_brute_force
from rotafx.solve.dp import dp_applies, solve_dp
from rotafx.solve.milp import solve_milp
from rotafx.topology import Topology, TopologyError
from tests.test_generation_cost import _gen_profile, generation_problems
from tests.test_generation_cost import close_milp as close_milp_generation
from tests.test_solve import _cvxpy_count, close, close_milp, feasible_exists, magnification


def _cal(flops: float, bandwidth: float = 1e10, **kw: object) -> Calibration:
    """A device that runs every op at its roofline (``flops`` FLOP/s, ``bandwidth`` B/s, no launch cost)."""
    return Calibration("cpu", 1, matmul={"float32": {(1, 1, 1): (flops, 0.0)}}, bandwidth_Bps=bandwidth, **kw)


def _two_nodes(cal_a: Calibration | None, cal_b: Calibration | None) -> Topology:
    """a -> b (8 Mbit/s, 10 ms, 1 nJ/bit), and b -> a for a generated token (8 kbit/s, 30 ms, 1 uJ/bit)."""
    def device(name: str, flops: float, power: float, cal: Calibration | None) -> dict[str, object]:
        return {"name": name, "flops": flops, "memory": 1e12, "power_w": power,
                **({"calibration": cal} if cal is not None else {})}
    return Topology.from_dict({
        "devices": [device("a", 1e9, 100, cal_a), device("b", 2e9, 10, cal_b)],
        "links": [{"src": "a", "dst": "b", "bandwidth_bps": 8e6, "latency_ms": 10, "energy_per_bit": 1e-9,
                   "bidirectional": False},
                  {"src": "b", "dst": "a", "bandwidth_bps": 8e3, "latency_ms": 30, "energy_per_bit": 1e-6,
                   "bidirectional": False}],
        "chain": ["a", "b"]})


def _three_layers(runs_as: str = "program", compiled: bool = False) -> ModelProfile:
    """10, 20 and 40 ms on a (1 GFLOP/s), half that on b; 10,000 bytes between layers (10 ms on the a -> b link)."""
    prof = ModelProfile.from_layers([{"name": f"l{i}", "params": 1000, "flops": f, "activation_bytes": 10_000,
                                      "bytes_moved": 0} for i, f in enumerate([1e7, 2e7, 4e7])],
                                    input_bytes=10_000, itemsize=4)
    return dataclasses.replace(prof, runs_as=runs_as, compiled=compiled)


A_CALL, B_CALL = 2e-3, 5e-3  # program_call_s of a and b: 2 ms and 5 ms


def _calibrated(**a_kw: object) -> Topology:
    return _two_nodes(_cal(1e9, program_call_s=A_CALL, **a_kw), _cal(2e9, program_call_s=B_CALL))


# ---------------------------------------------------------------------------
# which stages pay which call


@pytest.mark.parametrize("runs_as, compiled, a_compiled, want", [
    ("modules", False, {}, [0.0, 0.0]),  # eager modules: no call of their own
    ("graph", False, {}, [0.0, 0.0]),  # an fx graph module
    ("program", False, {}, [2.0, 5.0]),  # an exported program: program_call_s
    ("program", False, {"call_s": 3e-3, "kernel_s": 0.0}, [2.0, 5.0]),  # measured compiled, but runs eagerly
    # compiled code: compiled_call_s where measured, else the device falls back to what the profile runs as
    ("program", True, {"call_s": 3e-3, "kernel_s": 0.0}, [3.0, 5.0]),
    ("modules", True, {"call_s": 3e-3, "kernel_s": 0.0}, [3.0, 0.0]),
    ("modules", True, {}, [0.0, 0.0]),
])
def test_the_call_a_stage_pays_follows_how_its_code_runs(runs_as: str, compiled: bool, a_compiled: dict[str, float],
                                                         want: list[float]) -> None:
    tables = CostTables(_three_layers(runs_as, compiled), _calibrated(compiled=a_compiled))
    assert tables.stage_call_ms.tolist() == pytest.approx(want)
    assert tables.call_terms["energy"].tolist() == pytest.approx([want[0] * 1e-3 * 100, want[1] * 1e-3 * 10])


def test_a_datasheet_device_pays_no_call() -> None:
    tables = CostTables(_three_layers("program", True), _two_nodes(None, _cal(2e9, program_call_s=B_CALL)))
    assert tables.stage_call_ms.tolist() == [0.0, 5.0]


# ---------------------------------------------------------------------------
# the estimator, by hand


def test_each_used_stage_pays_its_call_once_by_hand() -> None:
    est = LatencyEstimator(_calibrated()).estimate([0, 0, 1], _three_layers())
    # a: 10 + 20 ms and its call (2 ms); b: 40 / 2 ms and its call (5 ms); 10,000 bytes at 8 Mbit/s (10 ms) + 10 ms
    assert est.compute_ms == pytest.approx(32 + 25)
    assert est.total_ms == pytest.approx(32 + 25 + 10 + 10)
    assert [le.total_ms for le in est.by_layer] == pytest.approx([12, 20, 25])  # a stage's first layer carries it
    assert [le.call_ms for le in est.by_layer] == pytest.approx([2, 0, 5])
    assert est.period_ms == pytest.approx(32)  # the slowest device, its call included
    assert est.energy_j == pytest.approx(0.032 * 100 + 0.025 * 10 + 10_000 * 8 * 1e-9)
    # all on a: one call; b, empty, pays none (its output still goes to b)
    one = LatencyEstimator(_calibrated()).estimate([0, 0, 0], _three_layers())
    assert one.total_ms == pytest.approx(70 + 2 + 10 + 10) and one.period_ms == pytest.approx(72)
    assert [le.call_ms for le in one.by_layer] == [2e-3 * 1e3, 0, 0]
    # the same plan run as modules pays no call
    plain = LatencyEstimator(_calibrated()).estimate([0, 0, 1], _three_layers("modules"))
    assert plain.total_ms == pytest.approx(30 + 20 + 20) and plain.energy_j == pytest.approx(3.0 + 0.2 + 8e-5)


def test_a_device_twice_in_the_chain_pays_a_call_per_stage_it_runs() -> None:
    topo = Topology.from_dict({**_calibrated().to_dict(), "chain": ["a", "b", "a"],
                               "links": [{"src": "a", "dst": "b", "bandwidth_bps": 1e12}]})
    est = LatencyEstimator(topo).estimate([0, 1, 2], _three_layers())
    assert est.compute_ms == pytest.approx(10 + 2 + 10 + 5 + 40 + 2)
    assert est.period_ms == pytest.approx(10 + 2 + 40 + 2)  # a's busy time: both of its stages, each called


def test_generation_pays_the_call_in_the_prefill_and_in_every_decode_step_by_hand() -> None:
    gen = Generation(prompt_len=10, new_tokens=5, batch_size=2, sequences=3)
    prof = dataclasses.replace(_gen_profile([1e9, 2e9, 4e9], [1e7, 2e7, 4e7], [0, 0, 0], act=10_000,
                                            decode_act=1_000, gen=gen), runs_as="program")
    tables = CostTables(prof, _calibrated())
    assert tables.decode.stage_call_ms.tolist() == pytest.approx([2, 5])  # the decode step runs as the prefill does
    g = evaluate(tables, [0, 1, 1]).generation
    # prefill: 1 s on a and its call, 3 s on b and its call, 10 ms + 10 ms over the link
    assert g.ttft_ms == pytest.approx(1002 + 3005 + 20)
    # a decode step: 10 + 2 ms on a, 30 + 5 ms on b, 1 ms + 10 ms; the token back: 16 ms + 30 ms
    assert g.decode.total_ms == pytest.approx(12 + 35 + 11) and g.tpot_ms == pytest.approx(58 + 46)
    assert g.generation_ms == pytest.approx(4027 + 4 * 104)
    # three sequences in flight: max(104 / 3 = 34.7 ms, b's decode step with its call, 35 ms): b's call decides
    assert g.token_period_ms == pytest.approx(35)
    e_pre = 1.002 * 100 + 3.005 * 10 + 10_000 * 8 * 1e-9
    e_step = 0.012 * 100 + 0.035 * 10 + 1_000 * 8 * 1e-9 + 16 * 8 * 1e-6
    assert g.energy_per_token_j == pytest.approx((e_pre + 4 * e_step) / 10)
    # the terms the solvers optimise charge the same calls (prefill once, each decode step once)
    assert tables.call_terms["ttft"].tolist() == pytest.approx([2, 5])
    assert tables.call_terms["generation"].tolist() == pytest.approx([2 + 4 * 2, 5 + 4 * 5])
    tokens = objective("maximize_tokens_per_s")  # this plan's 35 ms is the best (32.3 ms were the calls free)
    assert solve_brute_force(tables, tokens) == ([0, 1, 1], (pytest.approx(35), pytest.approx(4027)))
    assert solve_milp(tables, tokens).value == pytest.approx(35)
    # a profile marked compiled runs its decode step compiled, with a's compiled call (3 ms)
    compiled = CostTables(dataclasses.replace(prof, compiled=True),
                          _calibrated(compiled={"call_s": 3e-3, "kernel_s": 0.0}))
    assert compiled.decode.stage_call_ms.tolist() == pytest.approx([3, 5])


# ---------------------------------------------------------------------------
# the solvers


def _affinity(call_s: float) -> tuple[ModelProfile, Topology]:
    """Layer 0 is compute-bound (0.1 ms on a, 1 ms on b), layer 1 memory-bound (1 ms on a, 0.2 ms on b): without a
    call the two stages split them (0.3 ms); with a 1 ms call each, a runs both (1.1 ms + one call; b 1.2 ms)."""
    prof = ModelProfile.from_layers([{"name": "mm", "params": 10, "flops": 1e6, "activation_bytes": 100, "bytes_moved": 0},
                                     {"name": "copy", "params": 10, "flops": 0, "activation_bytes": 100,
                                      "bytes_moved": 1e6}], input_bytes=100, itemsize=4)
    topo = Topology.from_dict({"devices": [
        {"name": "a", "flops": 1e10, "memory": 1e12, "calibration": _cal(1e10, 1e9, program_call_s=call_s)},
        {"name": "b", "flops": 1e9, "memory": 1e12, "calibration": _cal(1e9, 5e9, program_call_s=call_s)}],
        "links": [{"src": "a", "dst": "b", "bandwidth_bps": 1e12}], "chain": ["a", "b"]})
    return dataclasses.replace(prof, runs_as="program"), topo


@pytest.mark.parametrize("call_s, want", [(0.0, [0, 1]), (1e-3, [0, 0])])
def test_a_call_makes_the_optimum_use_fewer_stages(call_s: float, want: list[int]) -> None:
    prof, topo = _affinity(call_s)
    tables = CostTables(prof, topo)
    obj = objective("minimize_latency")
    stages, (value, _) = solve_brute_force(tables, obj)
    assert stages == want
    # [0, 1]: 0.3 ms and two calls; [0, 0]: 1.1 ms and one call; plus the hop to b, where the output is wanted
    hop = 100 * 8 / 1e12 * 1e3
    assert value == pytest.approx(min(0.3 + 2 * 1e3 * call_s, 1.1 + 1e3 * call_s) + hop)
    assert solve_dp(tables, obj)[0] == want
    assert solve_milp(tables, obj).stages == want


def test_a_stages_period_includes_its_call_in_every_solver() -> None:
    """Throughput: [0, 0, 1] keeps a busy 30 + 2 ms and b 20 + 5 ms, [0, 1, 1] a 10 + 2 and b 30 + 5: 32 ms is best
    (without the calls the two tie at 30 ms)."""
    tables = CostTables(_three_layers(), _calibrated())
    obj = objective("maximize_throughput")
    stages, (value, _) = solve_brute_force(tables, obj)
    assert (stages, value) == ([0, 0, 1], pytest.approx(32))
    assert solve_dp(tables, obj) == ([0, 0, 1], pytest.approx(32))
    res = solve_milp(tables, obj)
    assert (res.stages, res.value) == ([0, 0, 1], pytest.approx(32))


CALLS_S = st.sampled_from([0.0, 1e-4, 1e-3, 1e-2, 1e-1])
ONE_PASS = ("minimize_latency", "maximize_throughput", "minimize_bandwidth", "minimize_energy")


def _with_calls(topology: Topology, calls: list[float]) -> Topology:
    """Each device calibrated at its datasheet roofline, with a program call of ``calls[i]`` seconds."""
    devices = {n: dataclasses.replace(d, calibration=_cal(d.flops, d.memory_bandwidth, program_call_s=c))
               for (n, d), c in zip(topology.devices.items(), calls)}
    return dataclasses.replace(topology, devices=devices)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=generation_problems(), calls=st.lists(CALLS_S, min_size=5, max_size=5))
def test_dp_milp_and_brute_force_agree_with_calls(case: tuple, calls: list[float]) -> None:
    """Every objective, one pass and generation, on random chains whose stages pay a call: the MILP and, where it is
    exact, the DP find brute force's optimum (which the estimator prices)."""
    problem, gen_profile = case
    topo = _with_calls(problem.topology, calls)
    assume(any(d.calibration.program_call_s for d in topo.devices.values()))
    balance = Objective("balance", {"latency": 1.0, "energy": 1.0}, {"latency": 10.0, "energy": 1.0})
    runs = [(dataclasses.replace(problem.profile, runs_as="program"), [*map(objective, ONE_PASS), balance]),
            (dataclasses.replace(gen_profile, runs_as="program"), [*map(objective, GENERATION_OBJECTIVES)])]
    for prof, objectives in runs:
        try:
            tables = CostTables(prof, topo, memory_rule=problem.memory_rule)
        except TopologyError:  # a chain with no way back for a generated token
            continue
        assert tables.stage_call_ms.tolist() == pytest.approx([1e3 * calls[list(topo.devices).index(n)]
                                                               for n in topo.chain])
        if not feasible_exists(tables):
            continue
        for obj in objectives:
            agree = close_milp_generation if obj.name in GENERATION_OBJECTIVES else close_milp
            _, best = solve_brute_force(tables, obj)
            res = solve_milp(tables, obj, time_limit=60)  # (one stage: nothing to solve, no value)
            assert res.status == "optimal" and (tables.K == 1 or agree(res.value, best[0], tables, obj)), (obj.name, res)
            assert agree(obj.value(evaluate(tables, res.stages)), best[0], tables, obj), (obj.name, res, best)
            if dp_applies(tables, obj) is None:
                dp_stages, dp_value = solve_dp(tables, obj)
                assert close(dp_value, best[0], magnification(obj)), (obj.name, dp_stages, dp_value, best)
                assert close(obj.value(evaluate(tables, dp_stages)), best[0], magnification(obj)), (obj.name, best)


@pytest.mark.parametrize("name", [*ONE_PASS, "minimize_tpot", "maximize_tokens_per_s"])
def test_model_size_counts_the_stage_binaries(name: str) -> None:
    """The MILP's size estimate counts what the calls add (a row and a binary per called stage) as cvxpy does:
    the same rows more, and nonzeros within its bounds."""
    gen = Generation(prompt_len=10, new_tokens=5, batch_size=2, sequences=3)
    prof = _gen_profile([1e9] * 8, [1e7] * 8, [0] * 8, act=10_000, decode_act=1_000, gen=gen)
    topo = Topology.from_dict({**_calibrated().to_dict(), "chain": ["a", "b", "a"]})
    obj = objective(name)
    sizes = []
    for runs_as in ("graph", "program"):
        tables = CostTables(dataclasses.replace(prof, runs_as=runs_as), topo)
        sizes.append((milp_module.model_size(tables, obj), _cvxpy_count(tables, obj)))
    assert tables.stage_call_ms.tolist() == pytest.approx([2, 5, 2])
    ((rows0, real_rows0), ((nnz, rows), (real_nnz, real_rows))) = (((sizes[0][0][1], sizes[0][1][1])), sizes[1])
    assert rows - rows0 == real_rows - real_rows0 == 3
    assert real_nnz <= nnz <= 2 * real_nnz, (nnz, real_nnz)
