"""Solve: the optimizer against brute-force enumeration, MILP against DP, greedy, verdicts and Partition."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rotafx import InfeasibleError, ModelProfile, Partition, PartitionOptimizer
from rotafx.costmodel import CostTables, link_energy_j, transfer_ms
from rotafx.estimate import evaluate
from rotafx.solve import deadline as deadline_module
from rotafx.solve import milp as milp_module
from rotafx.solve import optimizer as optimizer_module
from rotafx.solve.dp import dp_applies, solve_dp
from rotafx.solve.brute_force import enumerate_placements, solve_brute_force
from rotafx.solve.feasibility import fits
from rotafx.solve.greedy import solve_greedy
from rotafx.solve.optimizer import fewer_cuts
from rotafx.solve.milp import MilpResult, solve_milp
from rotafx.objective import GENERATION_OBJECTIVES, OBJECTIVE_TERM, OBJECTIVES as ALL_OBJECTIVES, Objective, objective

# one forward pass (the generation objectives: tests/test_generation_cost.py)
OBJECTIVES = tuple(o for o in ALL_OBJECTIVES if o not in GENERATION_OBJECTIVES)
from rotafx.topology import Topology

REL = 1e-6  # ties between placements are allowed: compare values, not plans
# HiGHS solves to an absolute MIP gap of 1e-6 and a primal feasibility tolerance of 1e-7, so terms below about
# 1e-6 (a kB over a 1e-10 J/bit link: 8e-7 J) are invisible to the MILP; random profiles with zero-FLOP layers
# have whole objectives that small
ABS = 1e-5
SINGLE = {term: name for name, term in OBJECTIVE_TERM.items()}  # "latency" -> "minimize_latency", ...
WEIGHT_KEYS = {"latency": "latency", "throughput": "period", "bandwidth": "bandwidth", "energy": "energy"}

SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(a: float, b: float, scale: float = 1.0) -> bool:
    """Equal up to ties; ``scale``: how much the objective magnifies its terms (balance: weight / norm)."""
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS * max(1.0, scale))


def magnification(obj: Objective) -> float:
    return sum(w / obj.norms[k] for k, w in obj.weights.items() if w) if obj.name == "balance" else 1.0


def milp_slack(tables: CostTables, obj: Objective) -> float:
    """How far the MILP may be off, in units of ``obj``: a bypass hop is switched by a big-M as large as the
    hop's largest cost, and HiGHS accepts a binary within 1e-6 of 0 or 1, so each hop may lose 1e-6 of that."""
    by = tables.boundary_bytes.max(initial=0.0)
    costs = {"latency": [], "period": [], "bandwidth": [], "energy": []}
    for link in [*tables.links, *tables.bypass_links]:
        t = transfer_ms(by, link)
        costs["latency"].append(t)
        costs["period"].append(t)
        costs["bandwidth"].append(by if tables.counts_for_bandwidth(link) else 0.0)
        costs["energy"].append(link_energy_j(by, link))
    weights = {k: w / obj.norms.get(k, 1.0) for k, w in obj.weights.items() if w}
    return 1e-6 * sum(w * sum(costs[k]) for k, w in weights.items())


def close_milp(a: float, b: float, tables: CostTables, obj: Objective) -> bool:
    """``close`` with the MILP's big-M slack added (negligible at real sizes: 1e-6 of the costliest hop)."""
    return math.isclose(a, b, rel_tol=REL, abs_tol=ABS * max(1.0, magnification(obj)) + milp_slack(tables, obj))


# ---------------------------------------------------------------------------
# random problems


class Problem:
    """A random profile and topology, with the layer figures they were built from."""

    def __init__(self, specs: list[dict[str, int]], input_bytes: int, topo_dict: dict[str, Any], memory_rule: str):
        self.specs = specs
        self.input_bytes = input_bytes
        self.topo_dict = topo_dict
        self.memory_rule = memory_rule
        self.profile = ModelProfile.from_layers(specs, input_bytes=input_bytes, name="random")
        self.topology = Topology.from_dict(topo_dict)
        self.tables = CostTables(self.profile, self.topology, memory_rule=memory_rule)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return f"Problem(specs={self.specs!r}, input_bytes={self.input_bytes!r}, topo_dict={self.topo_dict!r}, memory_rule={self.memory_rule!r})"


BYTES = st.one_of(st.sampled_from([0, 1_000, 100_000, 1_000_000]), st.integers(0, 2_000_000))


@st.composite
def layer_specs(draw: st.DrawFn) -> tuple[list[dict[str, int]], int]:
    n = draw(st.integers(1, 6))
    specs = []
    for i in range(n):
        specs.append({
            "name": f"l{i}",
            "params": draw(st.one_of(st.sampled_from([0, 10**5, 10**6, 5 * 10**6]), st.integers(0, 10**7))),
            "flops": draw(st.one_of(st.sampled_from([0, 10**9, 10**11]), st.integers(0, 10**12))),
            "activation_bytes": draw(BYTES),
            "buffer_bytes": draw(st.one_of(st.just(0), BYTES)),
        })
    # sometimes a layer also reads an earlier layer's weights (a tied head): a device holds them once
    if n > 1 and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(1, n - 1))
        specs[i]["reads"] = [f"l{draw(st.integers(0, i - 1))}"]
    # a model has an output: a zero-byte output with a general chain meets the balance bug below
    specs[-1]["activation_bytes"] = max(1, specs[-1]["activation_bytes"])
    return specs, draw(BYTES)


def _need(specs: list[dict[str, int]], input_bytes: int) -> float:
    """Roughly what the whole model needs on one device (bytes): a scale for random capacities."""
    prev, peak = input_bytes, 0
    for s in specs:
        peak = max(peak, prev + s["activation_bytes"] + s["buffer_bytes"])
        prev = s["activation_bytes"]
    return max(1000.0, 2.0 * sum(s["params"] for s in specs) + peak)


# capacities as a fraction of what the whole model needs: small fractions make plans infeasible
FRACTION = st.sampled_from([0.1, 0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 4.0])
FLOPS = st.sampled_from([1e11, 1e12, 1e13, 1e14])
BPS = st.sampled_from([1e6, 1e7, 1e8, 1e9, 1e10])
MEMORY_RULE = st.sampled_from(["liveness", "liveness", "sum"])


@st.composite
def seed_problems(draw: st.DrawFn) -> Problem:
    """The seed's dict: 1-2 ground nodes, 0-3 orbital nodes (chain ground -> orbital... -> ground, with a bypass)."""
    specs, inp = draw(layer_specs())
    need = _need(specs, inp)
    topo = {
        "ground_nodes": draw(st.integers(1, 2)),
        "orbital_nodes": draw(st.integers(0, 3)),
        "ground_flops": draw(FLOPS),
        "orbital_flops": draw(FLOPS),
        "uplink_bandwidth": draw(BPS),
        "downlink_bandwidth": draw(BPS),
        "isl_bandwidth": draw(BPS),
        "ground_orbit_latency_ms": draw(st.sampled_from([0, 1, 25])),
        "isl_latency_ms": draw(st.sampled_from([0, 0.5])),
        "ground_bandwidth": draw(st.sampled_from([1e8, 1e11])),
        "ground_latency_ms": draw(st.sampled_from([0, 1, 5])),
        "ground_memory": draw(FRACTION) * need,
        "orbital_memory": draw(FRACTION) * need,
        "ground_memory_bandwidth": draw(st.sampled_from([1e11, 2e12])),
        "orbital_memory_bandwidth": draw(st.sampled_from([1e11, 1e12])),
        "ground_power_w": draw(st.sampled_from([100, 700])),
        "orbital_power_w": draw(st.sampled_from([50, 300])),
    }
    return Problem(specs, inp, topo, draw(MEMORY_RULE))


@st.composite
def general_problems(draw: st.DrawFn) -> Problem:
    """The general form: 2-4 devices in a chain without bypass, sometimes ending on the first device again."""
    specs, inp = draw(layer_specs())
    need = _need(specs, inp)
    n = draw(st.integers(2, 4))
    capacity = draw(st.sampled_from(["memory", "memory", "cache"]))
    devices = []
    for i in range(n):
        frac = draw(FRACTION)
        d: dict[str, Any] = {"name": f"d{i}", "kind": draw(st.sampled_from(["ground", "orbital", "gpu"])),
                             "flops": draw(FLOPS), "memory": frac * need if capacity == "memory" else 100 * need,
                             "memory_bandwidth": draw(st.sampled_from([1e11, 2e12])),
                             "power": draw(st.sampled_from([50, 300, 700]))}
        if capacity == "cache":
            d["cache"] = frac * need
            d["cache_bandwidth"] = draw(st.sampled_from([1e12, 1e13]))
        devices.append(d)
    chain = [f"d{i}" for i in range(n)] + (["d0"] if draw(st.booleans()) else [])
    links = [{"src": a, "dst": b, "bandwidth": draw(BPS), "latency_ms": draw(st.sampled_from([0, 0.01, 2, 25])),
              "energy_per_bit": draw(st.sampled_from([0, 1e-10, 1e-8])),
              "message_ms": draw(st.sampled_from([0, 0, 0.05, 3])),
              "kind": draw(st.sampled_from(["link", "uplink", "downlink", "isl"]))}
             for a, b in zip(chain, chain[1:])]
    topo = {"devices": devices, "links": links, "chain": chain, "capacity": capacity}
    return Problem(specs, inp, topo, draw(MEMORY_RULE))


PROBLEMS = {"seed": seed_problems(), "general": general_problems()}

WEIGHTS = st.one_of(st.none(), st.fixed_dictionaries({k: st.sampled_from([0, 0.5, 1, 2]) for k in WEIGHT_KEYS}).filter(
    lambda w: any(w.values())))


# ---------------------------------------------------------------------------
# the reference: enumeration of every valid placement, scored by the estimator


def brute_objective(tables: CostTables, name: str, weights: dict[str, float] | None) -> Objective:
    """The objective, with balance normalised by each term's optimum found by enumeration."""
    obj = objective(name, weights)
    if obj.name != "balance":
        return obj
    norms = {}
    for term, w in obj.weights.items():
        if not w:
            continue
        _, (best, _) = solve_brute_force(tables, objective(SINGLE[term]))
        # a term whose optimum is 0 is normalised by one natural unit: 1 ms, 1 ms, 1 MB, 1 J (README, balance)
        norms[term] = best if best > 0 else {"latency": 1.0, "period": 1.0, "bandwidth": 1e6, "energy": 1.0}[term]
    return Objective("balance", obj.weights, norms)


def feasible_exists(tables: CostTables) -> bool:
    return any(fits(tables, s) for s in enumerate_placements(tables.L, tables.K))


def transfer_bytes_by_hand(problem: Problem, stages: tuple[int, ...]) -> int:
    """Bytes over inter-node hops, worked out from the layer figures and the chain, not the estimator."""
    topo = problem.topology
    chain = topo.chain
    act = [problem.input_bytes] + [s["activation_bytes"] for s in problem.specs]  # act[p]: bytes before layer p
    counts = [sum(1 for s in stages if s == k) for k in range(len(chain))]
    cut = [sum(counts[:b + 1]) for b in range(len(chain) - 1)]  # layers in stages <= b
    hops = list(range(len(chain) - 1))
    if topo.bypasses:  # the seed's chain: orbital stages 1..K-2 are skipped when all empty
        (f, g), = topo.bypasses
        if sum(counts[f:g + 1]) == 0:
            return act[cut[0]] if chain[0] != chain[-1] else 0
    return sum(act[cut[b]] for b in hops if chain[b] != chain[b + 1])


def check_partition(part: Partition, problem: Problem) -> None:
    """The seed's fields agree with the stages, and the estimate with the estimator."""
    tables = problem.tables
    L = tables.L
    stages = part.stages
    assert len(stages) == L and all(a <= b for a, b in zip(stages, stages[1:]))
    assert fits(tables, list(stages)), f"plan {stages} does not fit: {tables.device_memory(stages)} vs {tables.capacity}"
    # cut points split the layers into runs of one stage each, consecutive runs on different stages
    bounds = [0, *part.cut_points, L]
    assert bounds == sorted(set(bounds))
    for a, b in zip(bounds, bounds[1:]):
        assert len(set(stages[a:b])) == 1
    for a, b in zip(bounds[:-2], bounds[1:-1]):  # first layers of two consecutive runs
        assert stages[a] != stages[b]
    topo = problem.topology
    kinds = [topo.devices[topo.chain[s]].kind for s in stages]
    assert part.ground_layers == [l for l in range(L) if kinds[l] == "ground"]
    assert part.orbital_layers == [l for l in range(L) if kinds[l] == "orbital"]
    assert part.nodes == [topo.chain[s] for s in stages]
    est = evaluate(tables, stages)
    assert close(part.estimated_latency_ms, est.total_ms)
    assert close(part.estimated_latency_ms, sum(part.estimate.parts().values()))
    assert part.transfer_size_mb * 1e6 == pytest.approx(transfer_bytes_by_hand(problem, stages), rel=1e-9, abs=1e-6)
    assert close(part.objective_value, part.objective.value(est))
    # the all-on-the-input-node baseline
    assert part.baseline is not None and part.baseline.stages == (0,) * L
    base_ok = fits(tables, [0] * L)
    assert (part.baseline_objective_value is not None) == base_ok
    if base_ok and part.solver != "greedy":
        assert part.objective_value <= part.baseline_objective_value * (1 + REL) + ABS


# ---------------------------------------------------------------------------
# the optimizer equals enumeration, for each objective


def _optimizer_matches_brute_force(problem: Problem, name: str, weights: dict[str, float] | None) -> None:
    tables = problem.tables
    opt = PartitionOptimizer(memory_rule=problem.memory_rule)
    if not feasible_exists(tables):
        with pytest.raises(InfeasibleError):
            opt.optimize(problem.profile, problem.topology, name, weights=weights)
        return
    ref = brute_objective(tables, name, weights)
    _, best = solve_brute_force(tables, ref)
    part = opt.optimize(problem.profile, problem.topology, name, weights=weights)
    assert part.status == "optimal", part.status
    assert close_milp(part.objective_value, best[0], tables, ref), (part.stages, part.objective_value, best)
    if name == "balance":
        assert part.objective.norms.keys() == ref.norms.keys()
        for k in ref.norms:
            assert close_milp(part.objective.norms[k], ref.norms[k], tables, objective(SINGLE[k])), (
                k, part.objective.norms, ref.norms)
    if name == "minimize_bandwidth":  # ties on bytes are broken by latency
        assert close_milp(part.estimated_latency_ms, best[1], tables, objective("minimize_latency")), (
            part.stages, part.estimated_latency_ms, best)
    check_partition(part, problem)


@pytest.mark.parametrize("name", OBJECTIVES)
@SLOW
@given(problem=seed_problems(), weights=WEIGHTS)
def test_optimizer_matches_brute_force_seed_topology(name: str, problem: Problem, weights: dict[str, float] | None) -> None:
    _optimizer_matches_brute_force(problem, name, weights if name == "balance" else None)


@pytest.mark.parametrize("name", OBJECTIVES)
@SLOW
@given(problem=general_problems(), weights=WEIGHTS)
def test_optimizer_matches_brute_force_general_topology(name: str, problem: Problem, weights: dict[str, float] | None) -> None:
    _optimizer_matches_brute_force(problem, name, weights if name == "balance" else None)


@pytest.mark.parametrize("kind", ["seed", "general"])
@FAST
@given(data=st.data())
def test_dp_solver_matches_brute_force(kind: str, data: st.DataObject) -> None:
    """solver='dp': the optimum wherever the DP is exact, a ValueError saying why elsewhere."""
    problem = data.draw(PROBLEMS[kind])
    weights = data.draw(WEIGHTS)
    tables = problem.tables
    feasible = feasible_exists(tables)
    opt = PartitionOptimizer(solver="dp", memory_rule=problem.memory_rule)
    for name in OBJECTIVES:
        w = weights if name == "balance" else None
        why = dp_applies(tables, objective(name, w))
        if why is not None:
            # the plain infeasibility reasons are checked first; otherwise the DP says it cannot decide
            with pytest.raises(ValueError) as e:
                opt.optimize(problem.profile, problem.topology, name, weights=w)
            if feasible:
                assert "not exact" in str(e.value), str(e.value)
            else:
                assert isinstance(e.value, InfeasibleError) or "not exact" in str(e.value), str(e.value)
            continue
        if not feasible:
            with pytest.raises(InfeasibleError):
                opt.optimize(problem.profile, problem.topology, name, weights=w)
            continue
        ref = brute_objective(tables, name, w)
        _, best = solve_brute_force(tables, ref)
        part = opt.optimize(problem.profile, problem.topology, name, weights=w)
        assert part.status == "optimal" and part.solver == "dp"
        assert close(part.objective_value, best[0]), (name, part.stages, part.objective_value, best)
        check_partition(part, problem)


# ---------------------------------------------------------------------------
# MILP == DP wherever the DP applies


# problems on which HiGHS returned a worse plan as "optimal": 1.16.0's MIP presolve (pyproject.toml keeps
# highspy below 1.16), and 1.15.1 with its default MIP feasibility tolerance (found by hypothesis and fuzzing)
_BASE = {'ground_flops': 1e11, 'orbital_flops': 1e11, 'uplink_bandwidth': 1e6, 'downlink_bandwidth': 1e6, 'isl_bandwidth': 1e6, 'ground_orbit_latency_ms': 0, 'isl_latency_ms': 0, 'ground_bandwidth': 1e8, 'ground_latency_ms': 0, 'ground_memory_bandwidth': 1e11, 'orbital_memory_bandwidth': 1e11, 'ground_power_w': 100, 'orbital_power_w': 50}
PRESOLVE_CASES = {
    "one layer, a ground node at both ends": Problem(
        [{"name": "l0", "params": 0, "flops": 10**9, "activation_bytes": 1, "buffer_bytes": 0}], 1000,
        {**_BASE, "ground_nodes": 1, "orbital_nodes": 2, "ground_memory": 1001.0, "orbital_memory": 1001.0}, "liveness"),
    "six layers, one megabyte crossing": Problem(
        [{"name": f"l{i}", "params": p, "flops": 0, "activation_bytes": a, "buffer_bytes": 0}
         for i, (p, a) in enumerate([(0, 0), (0, 0), (650_000, 0), (0, 1_000_000), (0, 0), (100_000, 1)])], 0,
        {**_BASE, "ground_nodes": 2, "orbital_nodes": 2, "ground_memory": 1.5e6, "orbital_memory": 1e6}, "liveness"),
    # with HiGHS's default MIP tolerance (1e-6) 1.15.1 called the all-ground plan (0.027 J) optimal; 0.0088 J fits
    "one layer, joules of order 1e-2": Problem(
        [{"name": "l0", "params": 14020, "flops": 27255107, "activation_bytes": 73, "buffer_bytes": 256}], 100000,
        {**_BASE, "ground_nodes": 1, "orbital_nodes": 3, "orbital_flops": 1e13, "uplink_bandwidth": 1e7,
         "downlink_bandwidth": 1e9, "ground_bandwidth": 1e11, "ground_latency_ms": 1, "ground_memory": 102695.2,
         "orbital_memory": 513476.0, "ground_memory_bandwidth": 2e12, "orbital_power_w": 300}, "sum"),
}


@pytest.mark.parametrize("case", sorted(PRESOLVE_CASES))
def test_milp_equals_brute_force_where_highs_was_wrong(case: str) -> None:
    problem = PRESOLVE_CASES[case]
    tables = problem.tables
    obj = objective("minimize_energy")
    _, best = solve_brute_force(tables, brute_objective(tables, "minimize_energy", None))
    res = solve_milp(tables, obj)
    assert res.status == "optimal" and close_milp(res.value, best[0], tables, obj), (res, best)
    part = PartitionOptimizer(memory_rule=problem.memory_rule).optimize(problem.profile, problem.topology, "minimize_energy")
    assert close(part.objective_value, best[0]), (part.stages, part.objective_value, best)


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("kind", ["seed", "general"])
@SLOW
@given(data=st.data())
def test_milp_equals_dp(kind: str, name: str, data: st.DataObject) -> None:
    problem = data.draw(PROBLEMS[kind])
    tables = problem.tables
    if name == "balance":
        # any positive normalisers do for a comparison; no throughput weight so that the DP applies
        w = data.draw(st.fixed_dictionaries({k: st.sampled_from([0, 0.5, 1, 2]) for k in ("latency", "bandwidth", "energy")})
                      .filter(lambda w: any(w.values())))
        norms = {k: data.draw(st.sampled_from([1.0, 1e3, 1e6])) for k in w}
        obj = Objective("balance", w, norms)
    else:
        obj = objective(name)
    assume(dp_applies(tables, obj) is None)
    dp_stages, dp_value = solve_dp(tables, obj)
    res = solve_milp(tables, obj, time_limit=60)
    if dp_stages is None:
        assert not feasible_exists(tables)
        assert res.stages is None and res.status == "infeasible", res
        return
    assert fits(tables, dp_stages) and res.status == "optimal", res
    assert fits(tables, res.stages), (res.stages, tables.device_memory(res.stages), tables.capacity)
    assert close_milp(res.value, dp_value, tables, obj), (res, dp_stages, dp_value)
    # both report what the estimator says of their plan
    assert close_milp(obj.value(evaluate(tables, res.stages)), dp_value, tables, obj), (res, dp_stages, dp_value)
    assert close(obj.value(evaluate(tables, dp_stages)), dp_value, magnification(obj))


@pytest.mark.parametrize("kind", ["seed", "general"])
@FAST
@given(data=st.data())
def test_dp_refuses_where_not_exact(kind: str, data: st.DataObject) -> None:
    """A device met twice in the chain, or balance with a throughput weight: the DP says why it cannot."""
    problem = data.draw(PROBLEMS[kind])
    tables = problem.tables
    repeated = len(set(tables.topology.chain)) < tables.K
    for obj in (objective("minimize_latency"), Objective("balance", {"latency": 1.0, "period": 1.0}, {"latency": 1.0, "period": 1.0})):
        expect = repeated or obj.name == "balance"
        assert (dp_applies(tables, obj) is not None) == expect
        if expect:
            with pytest.raises(ValueError, match="solver='milp'"):
                solve_dp(tables, obj)


# ---------------------------------------------------------------------------
# greedy is never better than the optimum


@pytest.mark.parametrize("kind", ["seed", "general"])
@FAST
@given(data=st.data())
def test_greedy_never_beats_the_optimum(kind: str, data: st.DataObject) -> None:
    problem = data.draw(PROBLEMS[kind])
    weights = data.draw(WEIGHTS)
    tables = problem.tables
    stages = solve_greedy(tables)
    feasible = feasible_exists(tables)
    if len(set(tables.topology.chain)) == tables.K:
        # filling each device in turn as far as it goes finds a plan whenever one exists
        assert (stages is not None) == feasible
    if stages is None:
        return
    assert feasible and fits(tables, stages)
    est = evaluate(tables, stages)
    for name in OBJECTIVES:
        ref = brute_objective(tables, name, weights if name == "balance" else None)
        _, best = solve_brute_force(tables, ref)
        assert ref.value(est) >= best[0] * (1 - REL) - 1e-12, (name, stages, ref.value(est), best)


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n != "balance"])
@SLOW
@given(problem=seed_problems())
def test_greedy_solver_is_a_heuristic_no_better_than_milp(name: str, problem: Problem) -> None:
    greedy = PartitionOptimizer(solver="greedy", memory_rule=problem.memory_rule)
    if solve_greedy(problem.tables) is None:
        with pytest.raises(InfeasibleError):
            greedy.optimize(problem.profile, problem.topology, name)
        return
    g = greedy.optimize(problem.profile, problem.topology, name)
    assert g.status == "heuristic" and g.solver == "greedy" and not g.is_optimal
    check_partition(g, problem)
    m = PartitionOptimizer(memory_rule=problem.memory_rule).optimize(problem.profile, problem.topology, name)
    assert g.objective_value >= m.objective_value * (1 - REL) - ABS


# ---------------------------------------------------------------------------
# hand-made cases

SEED = {"ground_nodes": 2, "orbital_nodes": 4, "ground_flops": 100e12, "orbital_flops": 20e12,
        "uplink_bandwidth": 100e6, "downlink_bandwidth": 500e6, "isl_bandwidth": 10e9, "ground_orbit_latency_ms": 25}


def small_profile(n: int = 6, params: int = 10**6, act: int = 10**4) -> ModelProfile:
    return ModelProfile.from_layers([{"name": f"l{i}", "params": params, "flops": 1e9, "activation_bytes": act}
                                     for i in range(n)], input_bytes=10**5)


def test_api_key_is_accepted_and_changes_nothing() -> None:
    prof = small_profile()
    topo = {**SEED, "ground_memory": 5e6}
    a = PartitionOptimizer(api_key="rs_...").optimize(model=prof, topology=topo, objective="minimize_latency")
    b = PartitionOptimizer().optimize(model=prof, topology=topo, objective="minimize_latency")
    assert a.stages == b.stages and a.objective_value == b.objective_value and a.is_optimal


def test_hand_computed_partition_and_its_fields() -> None:
    """The docstring case: ground0 (5 MB) holds two of the six 2 MB layers, the rest run in orbit."""
    prof = small_profile()
    topo = {"ground_nodes": 1, "orbital_nodes": 1, "ground_flops": 2e12, "orbital_flops": 1e12,
            "uplink_bandwidth": 1e6, "downlink_bandwidth": 1e6, "isl_bandwidth": 1e9, "ground_memory": 5e6}
    part = PartitionOptimizer().optimize(model=prof, topology=topo)
    assert part.status == "optimal" and part.gap == pytest.approx(0.0, abs=1e-6)
    # ground0 is the input and the output node: layers 0 and 1 before the climb, or 0 and 5 after it, cost the same
    assert (part.ground_layers, part.orbital_layers, part.cut_points) in (
        ([0, 1], [2, 3, 4, 5], [2]), ([0, 5], [1, 2, 3, 4], [1, 5]))
    # compute: 2 layers at 1e9/2e12 s + 4 at 1e9/1e12 s = 1 + 4 ms; up- and downlink of 10 kB at 1 Mbps:
    # 80 ms each; 25 ms propagation each way (roofline: 2 MB / 2 TB/s of weights is below the compute time)
    assert part.estimated_latency_ms == pytest.approx(1 + 4 + 80 + 80 + 50)
    assert part.transfer_size_mb == pytest.approx(0.02)
    assert part.estimate.uplink_ms == pytest.approx(80) and part.estimate.downlink_ms == pytest.approx(80)
    assert part.estimate.propagation_ms == pytest.approx(50)
    # the baseline keeps all six layers (12 MB) on ground0, which holds 5 MB: it is reported but does not fit
    assert part.baseline is not None and part.baseline.total_ms == pytest.approx(3.0)
    assert part.baseline_objective_value is None
    assert "all on the input node" in part.report()


def test_all_ground_baseline_is_reported_when_it_fits() -> None:
    prof = small_profile()
    part = PartitionOptimizer().optimize(model=prof, topology=SEED, objective="minimize_latency")
    # everything fits on ground0, which is 5x faster than orbit: the optimum is the baseline itself
    assert part.baseline_objective_value == pytest.approx(part.objective_value)
    assert part.orbital_layers == []
    assert part.baseline.stages == (0,) * 6
    assert "all on the input node" in part.report()


@pytest.mark.parametrize("solver", ["milp", "dp", "greedy"])
def test_solvers_work(solver: str) -> None:
    prof = small_profile()
    topo = {**SEED, "ground_memory": 5e6, "orbital_memory": 3e6}
    part = PartitionOptimizer(solver=solver).optimize(prof, topo, "minimize_latency")
    assert part.solver == solver
    assert part.status == ("heuristic" if solver == "greedy" else "optimal")
    tables = CostTables(prof, Topology.from_dict(topo))
    assert fits(tables, list(part.stages))
    _, best = solve_brute_force(tables, objective("minimize_latency"))
    if solver == "greedy":
        assert part.objective_value >= best[0] * (1 - REL)
    else:
        assert part.objective_value == pytest.approx(best[0], rel=REL)


def test_unknown_solver_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        PartitionOptimizer(solver="cplex")
    assert "cplex" in str(e.value) and all(s in str(e.value) for s in ("milp", "dp", "greedy"))


def test_unknown_objective_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as e:
        PartitionOptimizer().optimize(small_profile(), SEED, objective="fastest")
    assert "fastest" in str(e.value) and all(o in str(e.value) for o in ALL_OBJECTIVES)


def test_bad_time_limit_and_balance_weights() -> None:
    with pytest.raises(ValueError, match="time_limit"):
        PartitionOptimizer(time_limit=0)
    with pytest.raises(ValueError, match="speed"):
        PartitionOptimizer().optimize(small_profile(), SEED, objective="balance", weights={"speed": 1})
    with pytest.raises(ValueError, match="balance"):
        PartitionOptimizer().optimize(small_profile(), SEED, objective="minimize_latency", weights={"latency": 1})


# -- infeasible problems: a verdict with numbers -------------------------------


def test_layer_larger_than_every_node() -> None:
    prof = ModelProfile.from_layers([
        {"name": "embed", "params": 10**8, "flops": 1e9, "activation_bytes": 10**6},
        {"name": "huge_block", "params": 3 * 10**9, "flops": 1e9, "activation_bytes": 10**6},  # 6 GB in fp16
        {"name": "head", "params": 10**8, "flops": 1e9, "activation_bytes": 10**6},
    ], input_bytes=10**6)
    topo = {**SEED, "ground_memory": 4e9, "orbital_memory": 2e9}
    for solver in ("milp", "dp", "greedy"):
        with pytest.raises(InfeasibleError) as e:
            PartitionOptimizer(solver=solver).optimize(prof, topo)
        msg = str(e.value)
        assert "layer 1" in msg and "huge_block" in msg, msg
        assert "6.00" in msg, msg  # its size: 6 GB of weights plus 3 MB of activations
        assert "4.000 GB" in msg and "ground" in msg, msg  # the largest capacity and which node has it
    assert isinstance(e.value, ValueError)


def test_total_weights_above_total_capacity() -> None:
    prof = ModelProfile.from_layers([{"name": f"blk{i}", "params": 750 * 10**6, "flops": 1e9, "activation_bytes": 10**6}
                                     for i in range(10)], input_bytes=10**6)  # 10 x 1.5 GB
    topo = {**SEED, "orbital_nodes": 2, "ground_memory": 2e9, "orbital_memory": 2e9}  # 4 nodes x 2 GB
    with pytest.raises(InfeasibleError) as e:
        PartitionOptimizer().optimize(prof, topo)
    msg = str(e.value)
    assert "15.000 GB" in msg and "8.000 GB" in msg and "7.000 GB" in msg, msg


@pytest.mark.parametrize("solver", ["milp", "dp", "greedy"])
def test_no_contiguous_placement(solver: str) -> None:
    """Every layer fits somewhere and the weights fit in total, but not three 6 GB layers on two 10 GB nodes."""
    prof = ModelProfile.from_layers([{"name": f"blk{i}", "params": 3 * 10**9, "flops": 1e9, "activation_bytes": 10}
                                     for i in range(3)], input_bytes=10)
    topo = {**SEED, "orbital_nodes": 0, "ground_memory": 10e9}
    with pytest.raises(InfeasibleError) as e:
        PartitionOptimizer(solver=solver).optimize(prof, topo)
    msg = str(e.value)
    assert "layer 2 (blk2)" in msg and "10.000 GB" in msg, msg


def test_small_sizes_in_the_verdict_are_readable() -> None:
    prof = ModelProfile.from_layers([{"name": "conv", "params": 150_000, "flops": 1e9, "activation_bytes": 1000}],
                                    input_bytes=1000)
    topo = {"devices": [{"name": f"sm{i}", "flops": 1e12, "memory": 80e9, "cache": 100e3} for i in range(2)],
            "links": [{"src": "sm0", "dst": "sm1", "bandwidth": 1e12}], "capacity": "cache"}
    with pytest.raises(InfeasibleError) as e:
        PartitionOptimizer().optimize(prof, topo)
    assert "conv" in str(e.value) and "0.000 GB" not in str(e.value), str(e.value)


# -- time limit ------------------------------------------------------------------


def _large_instance(L: int = 200, n: int = 8) -> tuple[ModelProfile, Topology]:
    """200 layers on a chain of 8 devices that ends on its first: the DP does not apply, HiGHS cannot prove it in 10 ms."""
    import random

    rng = random.Random(0)
    prof = ModelProfile.from_layers([{"name": f"l{i}", "params": rng.randint(10**5, 10**7), "flops": rng.randint(10**9, 10**12),
                                      "activation_bytes": rng.randint(10**3, 10**6)} for i in range(L)], input_bytes=10**5)
    names = [f"d{i}" for i in range(n)] + ["d0"]
    topo = Topology.from_dict({
        "devices": [{"name": f"d{i}", "flops": rng.choice([5e11, 1e12, 2e12]), "memory": 1e9} for i in range(n)],
        "links": [{"src": a, "dst": b, "bandwidth": rng.choice([1e8, 1e9, 1e10]), "latency_ms": 1.0}
                  for a, b in zip(names, names[1:])],
        "chain": names})
    return prof, topo


@functools.lru_cache(maxsize=1)
def _stopped_by_time_limit() -> tuple[Partition, CostTables, list[int]]:
    prof, topo = _large_instance()
    tables = CostTables(prof, topo)
    greedy = solve_greedy(tables)
    assert greedy is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy: "Solution may be inaccurate"
        part = PartitionOptimizer(time_limit=0.01).optimize(prof, topo, "minimize_latency")
    return part, tables, greedy


def test_time_limit_marks_the_plan_not_proven() -> None:
    part, _, _ = _stopped_by_time_limit()
    assert part.status == "time_limit" and not part.is_optimal
    assert "time_limit" in part.report()


def test_time_limit_returns_a_feasible_plan_no_worse_than_its_seed() -> None:
    part, tables, greedy = _stopped_by_time_limit()
    assert fits(tables, list(part.stages)), tables.device_memory(part.stages)
    assert part.objective_value <= objective("minimize_latency").value(evaluate(tables, greedy)) * (1 + 1e-6)


@pytest.mark.parametrize("milp_stages", [False, True])
def test_time_limit_code_path(monkeypatch: pytest.MonkeyPatch, milp_stages: bool) -> None:
    """Whether the MILP stops with a plan or without one, the optimizer returns a feasible plan marked time_limit."""
    prof = small_profile()
    topo = Topology.from_dict({**SEED, "ground_nodes": 1, "ground_memory": 5e6})  # ground0 twice: no DP seed
    tables = CostTables(prof, topo)
    seed_plan = solve_greedy(tables)
    calls = []

    def stopped(tables: CostTables, obj: Objective, **kw: Any) -> MilpResult:
        calls.append(kw)
        if milp_stages:
            return MilpResult(list(seed_plan), "time_limit", 1.0, 0.5, 0.5, kw["time_limit"])
        return MilpResult(None, "time_limit_no_solution", math.nan, 0.5, math.nan, kw["time_limit"])

    monkeypatch.setattr(optimizer_module, "solve_milp", stopped)
    part = PartitionOptimizer(time_limit=3.0).optimize(prof, topo, "minimize_latency")
    assert calls and 2.9 < calls[0]["time_limit"] <= 3.0  # what is left of it
    assert part.status == "time_limit" and not part.is_optimal
    assert fits(tables, list(part.stages))
    assert part.objective_value == pytest.approx(objective("minimize_latency").value(evaluate(tables, part.stages)))


# -- the time limit bounds the whole call ------------------------------------------------


def _chain(L: int, K: int, back_to_first: bool = False) -> tuple[ModelProfile, Topology]:
    """L random layers on a chain of K devices, each holding about 1.3/K of the model (the plan spreads over the
    chain); ``back_to_first``: the chain ends on its first device again, where the DP is not exact."""
    import random

    rng = random.Random(L * 100 + K)
    prof = ModelProfile.from_layers([{"name": f"l{i}", "params": rng.randint(50, 150) * 10**6,
                                      "flops": rng.randint(50, 150) * 256 * 10**6,
                                      "activation_bytes": rng.choice([1, 2, 4, 8]) * 2**19} for i in range(L)],
                                    input_bytes=2**20)
    names = [f"d{i}" for i in range(K)] + (["d0"] if back_to_first else [])
    per = 1.3 * (prof.weight_bytes + prof.peak_activation_bytes) / K
    topo = Topology.from_dict({
        "devices": [{"name": f"d{i}", "flops": rng.choice([50e12, 100e12, 200e12]), "memory": per} for i in range(K)],
        "links": [{"src": a, "dst": b, "bandwidth": rng.choice([1e9, 10e9, 100e9]), "latency_ms": 1.0,
                   "bidirectional": False} for a, b in zip(names, names[1:])],
        "chain": names})
    return prof, topo


class _FakeClock:
    """The clock every deadline reads, moved only by the test: a slow step is a step that moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> _FakeClock:
    fake = _FakeClock()
    monkeypatch.setattr(deadline_module, "clock", fake)
    monkeypatch.setattr(milp_module, "_slowdown", [1.0])  # no estimate left over from another test's compilation
    return fake


def _slow_build(monkeypatch: pytest.MonkeyPatch, clock: _FakeClock, seconds: float) -> list[int]:
    """Make building the MILP take ``seconds`` on ``clock``; the list counts the builds."""
    real, calls = milp_module._build, []

    def slow(*a: Any, **k: Any) -> Any:
        calls.append(1)
        clock.now += seconds
        return real(*a, **k)

    monkeypatch.setattr(milp_module, "_build", slow)
    return calls


def _highs_spy(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the time limit HiGHS is given, and stop there (the fallback then answers): the list of limits."""
    import cvxpy as cp
    from cvxpy.reductions.solvers.solving_chain import SolvingChain

    given: list[float] = []

    def spy(self: Any, problem: Any, data: Any, warm_start: bool = False, verbose: bool = False,
            solver_opts: Any = None) -> Any:
        given.append(solver_opts["time_limit"])
        raise cp.error.SolverError("stopped by the test")

    monkeypatch.setattr(SolvingChain, "solve_via_data", spy)
    return given


@pytest.mark.parametrize("limit, build_s", [(2.0, 0.7), (0.9, 0.5)])
def test_time_limit_counts_building_the_model_and_highs_gets_the_rest(
        monkeypatch: pytest.MonkeyPatch, fake_clock: _FakeClock, limit: float, build_s: float) -> None:
    prof, topo = _chain(1000, 16)
    _slow_build(monkeypatch, fake_clock, build_s)
    given = _highs_spy(monkeypatch)
    part = PartitionOptimizer(time_limit=limit).optimize(prof, topo, "minimize_latency")
    # only what is left after building (and compiling), less what HiGHS may run past its limit
    assert len(given) == 1 and 0.7 * (limit - build_s) - 1e-9 <= given[0] < limit - build_s
    # HiGHS gave nothing, so the answer is the DP's plan, exact here: optimal, and says where it came from
    tables = CostTables(prof, topo)
    _, dp_value = solve_dp(tables, objective("minimize_latency"))
    assert part.status == "optimal" and part.method == "dp" and part.solver == "milp"
    assert close(part.objective_value, dp_value)
    assert part.solve_seconds == pytest.approx(build_s)


@pytest.mark.parametrize("back_to_first", [False, True])
def test_a_build_that_outlasts_the_limit_leaves_highs_out(monkeypatch: pytest.MonkeyPatch, fake_clock: _FakeClock,
                                                          back_to_first: bool) -> None:
    prof, topo = _chain(1000, 16, back_to_first)
    builds = _slow_build(monkeypatch, fake_clock, 3.0)
    given = _highs_spy(monkeypatch)
    part = PartitionOptimizer(time_limit=2).optimize(prof, topo, "minimize_latency")
    assert builds == [1] and given == []  # built (the estimate allowed it), then no time left for HiGHS
    tables = CostTables(prof, topo)
    if back_to_first:  # the DP is not exact: greedy's plan, not proven
        assert part.status == "time_limit" and part.method == "greedy" and not part.is_optimal
        assert list(part.stages) == fewer_cuts(tables, part.objective, solve_greedy(tables))
        assert "greedy plan" in part.report()
    else:
        assert part.status == "optimal" and part.method == "dp"
        assert close(part.objective_value, solve_dp(tables, objective("minimize_latency"))[1])
    assert fits(tables, list(part.stages))


def test_a_model_estimated_not_to_fit_the_time_is_not_built(monkeypatch: pytest.MonkeyPatch,
                                                             fake_clock: _FakeClock) -> None:
    import cvxpy  # noqa: F401  (imported: the estimate has no import time in it)

    prof, topo = _chain(1000, 16)
    tables = CostTables(prof, topo)
    obj = objective("minimize_latency")
    need = milp_module.build_seconds(tables, obj)
    builds = _slow_build(monkeypatch, fake_clock, 0.0)
    given = _highs_spy(monkeypatch)
    res = solve_milp(tables, obj, time_limit=0.9 * need)
    assert res.status == "time_limit_not_built" and res.stages is None and builds == [] and given == []
    part = PartitionOptimizer(time_limit=0.9 * need).optimize(prof, topo, "minimize_latency")
    assert builds == [] and part.status == "optimal" and part.method == "dp"
    # and with time for it, it is built and HiGHS gets the rest
    solve_milp(tables, obj, time_limit=1.5 * need)
    assert builds == [1] and len(given) == 1 and 0.7 * 1.5 * need - 1e-9 <= given[0] < 1.5 * need


def test_the_estimate_grows_with_the_model_and_counts_importing_cvxpy(monkeypatch: pytest.MonkeyPatch,
                                                                      fake_clock: _FakeClock) -> None:
    import sys

    import cvxpy  # noqa: F401

    small, large = CostTables(*_chain(100, 4)), CostTables(*_chain(1000, 16))
    obj = objective("minimize_latency")
    assert milp_module.build_seconds(small, obj) < milp_module.build_seconds(large, obj)
    with_cvxpy = milp_module.build_seconds(small, obj)
    monkeypatch.delitem(sys.modules, "cvxpy")
    assert milp_module.build_seconds(small, obj) == pytest.approx(with_cvxpy + milp_module.IMPORT_S)


def _cvxpy_count(tables: CostTables, obj: Objective) -> tuple[int, int]:
    """Nonzeros (constraint matrix and objective) and constraints of the model as cvxpy compiles it, with a cutoff."""
    import cvxpy as cp
    import numpy as np

    Y, XC, ZC, U, cons = milp_module._build(tables)
    needed = obj.needed | ({"latency"} if obj.name == "minimize_bandwidth" else set())
    expr = obj.combine(milp_module._terms(tables, XC, ZC, U, cons, needed))
    prob = cp.Problem(cp.Minimize(expr), cons + [expr <= 1.0])
    data, _, _ = prob.get_problem_data(cp.HIGHS)
    return data["A"].nnz + int(np.count_nonzero(data["c"])), len(prob.constraints)


def _tied(n: int) -> ModelProfile:
    """n layers whose first and last read one embedding (a shared weight)."""
    layers = [{"name": f"l{i}", "params": 10**6, "flops": 1e9, "activation_bytes": 10**4 * (1 + i % 3)} for i in range(n)]
    layers[-1]["reads"] = ["l0"]
    return ModelProfile.from_layers(layers, input_bytes=10**5)


@pytest.mark.parametrize("case", ["chain", "seed", "seed-llama", "twice", "tied", "sum"])
@pytest.mark.parametrize("name", OBJECTIVES)
def test_model_size_counts_what_cvxpy_builds(case: str, name: str) -> None:
    """The size the time estimate rests on, against cvxpy's own count (a count, not a time)."""
    prof = _tied(60) if case == "tied" else small_profile(80)
    if case == "chain":
        prof, topo = _chain(120, 8)
    elif case in ("seed", "tied", "sum"):
        topo = Topology.from_dict(SEED)
    elif case == "seed-llama":
        topo = Topology.from_dict({**SEED, "ground_nodes": 3, "orbital_nodes": 5})
    else:
        prof, topo = _chain(60, 5, back_to_first=True)
    tables = CostTables(prof, topo, memory_rule="sum" if case == "sum" else "liveness")
    obj = objective(name) if name != "balance" else Objective("balance", dict.fromkeys(("latency", "period",
                                                                                        "bandwidth", "energy"), 1.0))
    nnz, rows = milp_module.model_size(tables, obj)
    real_nnz, real_rows = _cvxpy_count(tables, obj)
    assert rows == real_rows
    assert real_nnz <= nnz <= 2 * real_nnz, (nnz, real_nnz)  # over where a term has zeros (no bytes on a link)


def test_a_thousand_layers_on_sixteen_stages_in_two_seconds_of_limit() -> None:
    """The issue's case, on the real clock: the answer is the DP's optimum (whether HiGHS ran or not); no time is
    asserted here (the tests above hold the mechanism: benchmarks/RESULTS_solver.md has the wall times)."""
    prof, topo = _chain(1000, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = PartitionOptimizer(time_limit=2).optimize(prof, topo, "minimize_latency")
    tables = CostTables(prof, topo)
    assert part.status == "optimal" and part.method in ("dp", "milp") and fits(tables, list(part.stages))
    assert close(part.objective_value, solve_dp(tables, objective("minimize_latency"))[1])


@pytest.mark.parametrize("value", ["5", "five", True, False, None, [5], float("nan"), float("inf"), -float("inf"),
                                   0, 0.0, -1, -0.5])
def test_time_limit_is_a_positive_finite_number(value: Any) -> None:
    with pytest.raises(ValueError) as e:
        PartitionOptimizer(time_limit=value)
    msg = str(e.value)
    assert "time_limit" in msg and repr(value) in msg and "time_limit=60" in msg, msg
    if value == "5":
        assert "time_limit=5" in msg, msg  # the fix, written out


@pytest.mark.parametrize("weight", [float("inf"), -float("inf"), float("nan"), -1.0, "1", True, None])
def test_balance_weights_are_finite_numbers_refused_before_any_solver(monkeypatch: pytest.MonkeyPatch,
                                                                      weight: Any) -> None:
    def no_solver(*a: Any, **k: Any) -> MilpResult:
        raise AssertionError("a solver ran with a bad weight")

    monkeypatch.setattr(optimizer_module, "solve_milp", no_solver)
    with pytest.raises(ValueError) as e:
        PartitionOptimizer().optimize(small_profile(), SEED, objective="balance",
                                      weights={"latency": 1, "energy": weight})
    assert "balance weight 'energy'" in str(e.value) and repr(weight) in str(e.value), str(e.value)


# -- move_layer and recalculate ------------------------------------------------------


def _orbit_partition() -> tuple[Partition, dict[str, Any], ModelProfile]:
    """minimize_energy on the seed topology with 100 TFLOP/s satellites at 300 W: all six layers go up."""
    prof = ModelProfile.from_layers([{"name": f"l{i}", "params": 10**6, "flops": 1e9, "activation_bytes": 10**4}
                                     for i in range(6)], input_bytes=10**4)
    topo = {**SEED, "orbital_flops": 100e12}
    part = PartitionOptimizer().optimize(prof, topo, "minimize_energy")
    assert part.ground_layers == [] and part.orbital_layers == list(range(6))
    return part, topo, prof


def test_move_layer_back_and_forth_is_reported() -> None:
    part, _, _ = _orbit_partition()
    before = (part.stages, part.estimate, part.objective_value, part.status)
    part.move_layer(2, to="ground")
    with pytest.warns(UserWarning, match="not valid"):
        v = part.recalculate()
    assert not v.is_valid and part.validation is v
    # layers 0-1 are in orbit, so layer 2 lands on ground1 at the end of the chain and layer 3 would go back up
    assert any("layer 3" in i and "back" in i and "earlier node" in i for i in v.issues), v.issues
    assert (part.stages, part.estimate, part.objective_value, part.status) == before


def test_move_layer_valid_updates_stages_and_estimate() -> None:
    part, topo, prof = _orbit_partition()
    old = part.estimate
    part.move_layer(part.orbital_layers[0], to="ground")  # ground0 has 80 GB: memory allows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = part.recalculate()
    assert v.is_valid and v.issues == [] and part.validation is v
    assert part.ground_layers == [0] and part.orbital_layers == [1, 2, 3, 4, 5]
    assert part.stages[0] == 0 and part.cut_points[0] == 1
    assert part.status == "manual" and part.solver == "manual"
    tables = CostTables(prof, Topology.from_dict(topo))
    est = evaluate(tables, part.stages)
    assert part.estimate.total_ms == pytest.approx(est.total_ms) and part.estimate.energy_j == pytest.approx(est.energy_j)
    assert part.objective_value == pytest.approx(est.energy_j)
    # layer 0 now runs on the ground, 10 us at 100 TFLOP/s and 700 W instead of 300 W: 4 mJ more
    assert part.estimate.ground_compute_ms == pytest.approx(0.01)
    assert est.energy_j - old.energy_j == pytest.approx(1e-5 * (700 - 300))
    assert part.estimated_latency_ms == pytest.approx(est.total_ms)


# -- a single device ------------------------------------------------------------------


def test_single_device_that_is_too_small_is_infeasible() -> None:
    # two layers of 200 B weights and 100 B peak each: 500 B needed (liveness rule), 450 B available;
    # each layer fits alone and the weights fit in total, so only the solver can tell
    prof = ModelProfile.from_layers([{"name": "a", "params": 100, "flops": 1e9, "activation_bytes": 50},
                                     {"name": "b", "params": 100, "flops": 1e9, "activation_bytes": 50}])
    topo = Topology.from_dict({"devices": [{"name": "d0", "flops": 1e12, "memory": 450}], "links": []})
    with pytest.raises(InfeasibleError):
        PartitionOptimizer().optimize(prof, topo)


def test_balance_with_zero_byte_output_on_a_general_chain() -> None:
    # found by test_optimizer_matches_brute_force_general_topology[balance]: the model's output weighs 0 bytes,
    # so keeping everything on d0 sends nothing; d0 cannot hold layer 0's 1 MB peak, so l0's output must cross
    prof = ModelProfile.from_layers([{"name": "l0", "activation_bytes": 10**6}, {"name": "l1", "activation_bytes": 0}],
                                    input_bytes=0)
    topo = Topology.from_dict({
        "devices": [{"name": "d0", "flops": 1e11, "memory": 1e5, "memory_bandwidth": 1e11, "power": 50},
                    {"name": "d1", "flops": 1e11, "memory": 1e6, "memory_bandwidth": 1e11, "power": 50}],
        "links": [{"src": "d0", "dst": "d1", "bandwidth": 1e6, "latency_ms": 0, "energy_per_bit": 0}],
        "chain": ["d0", "d1"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = PartitionOptimizer().optimize(prof, topo, "balance")
    assert part.stages == (1, 1)  # the only plan that fits
    assert part.status == "optimal", part.status


def test_cutoff_infeasible_is_not_proof_of_optimality() -> None:
    # found by test_optimizer_matches_brute_force_seed_topology[balance]. ground0 is met twice, so the greedy plan
    # (0, 0, 1, 1, 1) seeds the MILP: 100.1051 J. The optimum (0, 2, 2, 2, 2) costs 100.0263 J and the MILP finds
    # it without the cutoff (or with HiGHS's presolve off), but with the cutoff HiGHS 1.15's presolve says
    # "Infeasible" (matrix coefficients from 8e-9 J to 2e6 bytes) and the optimizer returns the seed as 'optimal'
    specs = [{"name": "l0", "flops": 10**11, "activation_bytes": 1}, {"name": "l1", "activation_bytes": 10**6},
             {"name": "l2", "activation_bytes": 10**6}, {"name": "l3", "activation_bytes": 10**6},
             {"name": "l4", "activation_bytes": 10**5}]
    prof = ModelProfile.from_layers(specs, input_bytes=0)
    topo = Topology.from_dict({
        "ground_nodes": 1, "orbital_nodes": 2, "ground_flops": 1e11, "orbital_flops": 1e11, "uplink_bandwidth": 1e6,
        "downlink_bandwidth": 1e6, "isl_bandwidth": 1e6, "ground_orbit_latency_ms": 0, "ground_bandwidth": 1e8,
        "ground_latency_ms": 0, "ground_memory": 1.2e6, "orbital_memory": 8e6, "ground_memory_bandwidth": 1e11,
        "orbital_memory_bandwidth": 1e11, "ground_power_w": 100, "orbital_power_w": 300})
    tables = CostTables(prof, topo)
    best_stages, (best, _) = solve_brute_force(tables, objective("minimize_energy"))
    assert best_stages == [0, 2, 2, 2, 2] and best == pytest.approx(100.0263, rel=1e-6)
    free = solve_milp(tables, objective("minimize_energy"))
    assert free.status == "optimal" and free.value == pytest.approx(best, rel=1e-6)
    part = PartitionOptimizer().optimize(prof, topo, "minimize_energy")
    assert part.status == "optimal"
    assert part.objective_value == pytest.approx(best, rel=1e-6), (part.stages, part.objective_value)


def test_single_device_that_fits() -> None:
    prof = small_profile()
    topo = Topology.from_dict({"devices": [{"name": "d0", "flops": 1e12, "memory": 80e9}], "links": []})
    for solver in ("milp", "dp", "greedy"):
        part = PartitionOptimizer(solver=solver).optimize(prof, topo)
        assert part.stages == (0,) * 6 and part.cut_points == [] and part.transfer_size_mb == 0


# -- tied weights ---------------------------------------------------------------


TIED = [{"name": "embed", "params": 500_000, "activation_bytes": 1000},   # 1 MB of fp16 weights
        {"name": "mid", "params": 100_000, "activation_bytes": 1000},     # 0.2 MB
        {"name": "head", "reads": ["embed"], "activation_bytes": 1000}]   # reads the embedding (tied)


@pytest.mark.parametrize("solver", ["milp", "dp", "greedy"])
def test_a_tied_weight_is_held_once_by_a_device_that_runs_both_readers(solver: str) -> None:
    prof = ModelProfile.from_layers(TIED)
    assert prof.total_params == 600_000 and prof.layers[2].weight_bytes == 1_000_000
    # 1.2 MB of weights once, plus the largest peak (input + output of a layer, 2 kB); counted twice it would be 2.2 MB
    topo = Topology.from_dict({"devices": [{"name": "d0", "flops": 1e12, "memory": 1.2e6 + 2000}], "links": []})
    tables = CostTables(prof, topo)
    assert tables.layers_memory([0, 1, 2]) == 1.2e6 + 2000 and tables.total_weight_bytes == 1.2e6
    part = PartitionOptimizer(solver=solver).optimize(prof, topo)
    assert part.stages == (0, 0, 0) and part.recalculate().is_valid
    with pytest.raises(InfeasibleError):
        PartitionOptimizer(solver=solver).optimize(prof, Topology.from_dict(
            {"devices": [{"name": "d0", "flops": 1e12, "memory": 1.2e6 + 1999}], "links": []}))


def test_tied_weights_on_two_devices_are_held_by_each() -> None:
    # the head has 0.1 MB of its own: d0 holds embed + mid but not all three, so the head goes to d1,
    # which must hold the embedding too (the only plan that fits: on (0, 1, 1) d1 would need 1.3 MB)
    specs = [dict(TIED[0]), dict(TIED[1]), {**TIED[2], "params": 50_000}]
    prof = ModelProfile.from_layers(specs)
    topo = Topology.from_dict({
        "devices": [{"name": "d0", "flops": 1e12, "memory": 1.25e6}, {"name": "d1", "flops": 1e12, "memory": 1.2e6}],
        "links": [{"src": "d0", "dst": "d1", "bandwidth": 1e9}], "chain": ["d0", "d1"]})
    tables = CostTables(prof, topo)
    assert tables.device_memory([0, 0, 1]) == {"d0": 1.2e6 + 2000, "d1": 1.1e6 + 2000}
    assert tables.device_memory([0, 1, 1])["d1"] == 1.3e6 + 2000
    for solver in ("milp", "dp", "greedy"):
        part = PartitionOptimizer(solver=solver).optimize(prof, topo)
        assert part.stages == (0, 0, 1), (solver, part.stages)


def test_tied_embedding_of_a_pytorch_model_is_one_shared_weight() -> None:
    import torch

    from rotafx.models import small_gpt

    prof = ModelProfile.from_pytorch(small_gpt(tied=True), (torch.zeros(2, 32, dtype=torch.long),))
    topo = Topology.from_dict({"devices": [{"name": "d0", "flops": 1e12, "memory": 1e9}], "links": []})
    tables = CostTables(prof, topo)
    shared = {readers: b for b, readers in tables.shared}
    names = [l.name for l in prof.layers]
    assert shared == {(names.index("embed"), names.index("lm_head")): 256 * 64 * 4}
    assert tables.layers_memory(range(prof.num_layers)) == prof.weight_bytes + max(l.peak_bytes for l in prof.layers)


# -- a solver that is wrong -----------------------------------------------------------


def test_a_claimed_optimum_worse_than_a_known_plan_is_not_believed(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # d0 is met twice, so the DP is not exact and greedy's plan (everything on the fast d0) is the only check;
    # a solver that calls "everything on the slow d1" optimal is solved again with presolve off
    prof = ModelProfile.from_layers([{"name": "a", "flops": 10**9, "activation_bytes": 100},
                                     {"name": "b", "flops": 10**9, "activation_bytes": 100}])
    topo = Topology.from_dict({
        "devices": [{"name": "d0", "flops": 1e12, "memory": 1e6}, {"name": "d1", "flops": 1e10, "memory": 1e6}],
        "links": [{"src": "d0", "dst": "d1", "bandwidth": 1e9}, {"src": "d1", "dst": "d0", "bandwidth": 1e9}],
        "chain": ["d0", "d1", "d0"]})
    real = optimizer_module.solve_milp
    calls: list[bool] = []

    def wrong_with_presolve(tables: CostTables, obj: Objective, **kw: Any) -> MilpResult:
        calls.append(kw.get("presolve", True))
        if kw.get("presolve", True):
            return MilpResult([1, 1], "optimal", 200.0, 200.0, 0.0, 0.0)
        return real(tables, obj, **kw)

    monkeypatch.setattr(optimizer_module, "solve_milp", wrong_with_presolve)
    with caplog.at_level("WARNING", logger="rotafx"):
        part = PartitionOptimizer().optimize(prof, topo, "minimize_latency")
    assert calls == [True, False] and "presolve off" in caplog.text
    assert part.status == "optimal" and set(part.stages) <= {0, 2}, part.stages
    tables = CostTables(prof, topo)
    _, best = solve_brute_force(tables, objective("minimize_latency"))
    assert close(part.objective_value, best[0])
    # and where even that is worse, the better known plan is returned, not called optimal
    monkeypatch.setattr(optimizer_module, "solve_milp", lambda *a, **k: MilpResult([1, 1], "optimal", 200.0, 200.0, 0.0, 0.0))
    part = PartitionOptimizer().optimize(prof, topo, "minimize_latency")
    assert part.status == "heuristic" and set(part.stages) <= {0, 2}
    # "infeasible" while greedy's plan fits is not believed either
    calls.clear()

    def infeasible_with_presolve(tables: CostTables, obj: Objective, **kw: Any) -> MilpResult:
        calls.append(kw.get("presolve", True))
        if kw.get("presolve", True):
            return MilpResult(None, "infeasible", math.inf, math.inf, math.nan, 0.0)
        return real(tables, obj, **kw)

    monkeypatch.setattr(optimizer_module, "solve_milp", infeasible_with_presolve)
    part = PartitionOptimizer().optimize(prof, topo, "minimize_latency")
    assert calls == [True, False] and part.status == "optimal" and close(part.objective_value, best[0])
    monkeypatch.setattr(optimizer_module, "solve_milp",
                        lambda *a, **k: MilpResult(None, "infeasible", math.inf, math.inf, math.nan, 0.0))
    part = PartitionOptimizer().optimize(prof, topo, "minimize_latency")
    assert part.status == "heuristic" and set(part.stages) <= {0, 2}


def test_a_plan_over_capacity_by_less_than_the_solver_tolerance_is_solved_again() -> None:
    # (found in review) d0 is 50 B short of holding all three layers: HiGHS, held to 1e-7 of each capacity,
    # may return that plan anyway; it does not fit, so the optimizer must solve again, not give up
    specs = [{"name": "a", "weight_bytes": int(8e8), "flops": 10**9}, {"name": "b", "weight_bytes": int(9e8), "flops": 10**9},
             {"name": "c", "weight_bytes": int(1.3e9), "flops": 10**9}]
    prof = ModelProfile.from_layers(specs)
    need = CostTables(prof, Topology.from_dict({"devices": [{"name": "d0", "flops": 1e12, "memory": 1e12}],
                                                "links": []})).layers_memory([0, 1, 2])
    topo = Topology.from_dict({
        "devices": [{"name": "d0", "flops": 1e12, "memory": need - 50}, {"name": "d1", "flops": 1e10, "memory": 9e8 + 1e4}],
        "links": [{"src": "d0", "dst": "d1", "bandwidth": 1e9}, {"src": "d1", "dst": "d0", "bandwidth": 1e9}],
        "chain": ["d0", "d1", "d0"]})
    tables = CostTables(prof, topo)
    best_stages, (best, _) = solve_brute_force(tables, objective("minimize_latency"))
    part = PartitionOptimizer().optimize(prof, topo)
    assert fits(tables, list(part.stages)) and close(part.objective_value, best), (part.stages, best_stages)


def test_a_device_without_cache_runs_nothing() -> None:
    prof = ModelProfile.from_layers([{"name": "a", "params": 1000, "flops": 10**9, "activation_bytes": 100},
                                     {"name": "b", "params": 1000, "flops": 10**9, "activation_bytes": 100}])
    topo = Topology.from_dict({
        "devices": [{"name": "d0", "flops": 1e12, "memory": 1e9, "cache": 1e6},
                    {"name": "d1", "flops": 1e15, "memory": 1e9, "cache": 0},
                    {"name": "d2", "flops": 1e12, "memory": 1e9, "cache": 1e6}],
        "links": [{"src": "d0", "dst": "d1", "bandwidth": 1e9}, {"src": "d1", "dst": "d2", "bandwidth": 1e9}],
        "chain": ["d0", "d1", "d2"], "capacity": "cache"})
    for solver in ("milp", "dp"):
        part = PartitionOptimizer(solver=solver).optimize(prof, topo)
        assert 1 not in part.stages and part.status == "optimal", (solver, part.stages)
