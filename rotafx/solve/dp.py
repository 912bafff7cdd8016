"""Dynamic program over cut positions: exact for a chain whose devices each appear once."""

from __future__ import annotations

import numpy as np

from ..costmodel import CostTables
from ..objective import Objective

__all__ = ["solve_dp", "dp_applies", "range_memory"]

INF = float("inf")


def dp_applies(tables: CostTables, obj: Objective) -> str | None:
    """Why the DP is not exact here, or None when it is."""
    if len(set(tables.topology.chain)) != len(tables.topology.chain):
        return "a device appears twice in the chain (its memory is shared between stages)"
    if obj.name == "balance" and obj.weights.get("period"):
        return "balance with a throughput weight mixes a sum and a maximum"
    if obj.weights.get("token_period") and tables.generation is not None and (
            obj.name == "balance" or tables.generation.sequences > 1):
        return ("tokens/s with several sequences in flight is the larger of a sum (TPOT / sequences) and a maximum "
                "(the slowest device or link)")
    return None


def _additive(tables: CostTables, obj: Objective) -> Objective:
    """With one sequence in flight, tokens/s is 1 / TPOT (a decode step's sum is at least each of its parts)."""
    if not obj.weights.get("token_period"):
        return obj
    weights = dict(obj.weights)
    weights["tpot"] = weights.get("tpot", 0.0) + weights.pop("token_period")
    return Objective(obj.name, weights, obj.norms)


def range_memory(tables: CostTables) -> np.ndarray:
    """``mem[q, p]``: bytes needed to run layers ``q..p-1`` on one device (a shared weight counted once)."""
    L = tables.L
    mem = np.full((L + 1, L + 1), np.inf)
    if tables.memory_rule == "sum":
        c = np.concatenate([[0.0], np.cumsum(tables.sum_bytes)])
        for q in range(L + 1):
            mem[q, q:] = c[q:] - c[q]
        return mem
    cw = np.concatenate([[0.0], np.cumsum(tables.own_weight_bytes)])
    for q in range(L + 1):
        mem[q, q] = 0.0
        if q < L:
            mem[q, q + 1:] = cw[q + 1:] - cw[q] + np.maximum.accumulate(tables.peak_bytes[q:])
            for b, readers in tables.shared:  # held from the first reader at or after q on
                first = min((l for l in readers if l >= q), default=None)
                if first is not None:
                    mem[q, first + 1:] += b
    return mem


def _hop_arrays(tables: CostTables, link) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each objective term of one hop over ``link``, for every cut position ``p`` (the bytes of boundary ``p``)."""
    return {term: coef + const for term, (coef, const) in tables.hop_terms(link).items()}


def _range_sums(values: np.ndarray) -> np.ndarray:
    """``R[q, p]``: the sum of ``values[q:p]`` (layers ``q .. p-1``)."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    return c[None, :] - c[:, None]


def solve_dp(tables: CostTables, obj: Objective) -> tuple[list[int] | None, float]:
    """The placement minimising ``obj`` (stage of every layer) and its primary value; ``(None, inf)`` if none fits.

    For additive objectives the value of a plan is the sum of stage and hop costs; for
    ``maximize_throughput`` it is the largest of them (the paper's balanced partition).
    Ties on the primary value are broken by latency.
    """
    why = dp_applies(tables, obj)
    if why:
        raise ValueError(f"the dynamic program is not exact here: {why}; use solver='milp'")
    obj = _additive(tables, obj)
    K = tables.K
    topo = tables.topology
    mem = range_memory(tables)
    # variants: for each subset of bypasses taken, a reduced chain of (stage, link into next)
    best: tuple[float, float, list[int] | None] = (INF, INF, None)
    nb = len(topo.bypasses)
    for mask in range(1 << nb):
        taken = [topo.bypasses[i] for i in range(nb) if mask >> i & 1]
        skipped = {s for f, g in taken for s in range(f, g + 1)}
        stages = [s for s in range(K) if s not in skipped]
        kept_segments = [(f, g) for i, (f, g) in enumerate(topo.bypasses) if not mask >> i & 1]
        with np.errstate(invalid="ignore"):  # inf - inf where no plan reaches a state
            res = _dp_chain(tables, obj, mem, stages, kept_segments)
        if res[2] is not None and (res[0], res[1]) < best[:2]:
            best = res
    if best[2] is not None and not obj.bottleneck:  # what every plan adds: the token's trip back
        best = (best[0] + obj.combine({t: tables.constants.get(t, 0.0) for t in obj.weights}), *best[1:])
    return best[2], best[0]


def _dp_chain(tables: CostTables, obj: Objective, mem: np.ndarray, stages: list[int],
              must_use: list[tuple[int, int]]) -> tuple[float, float, list[int] | None]:
    L = tables.L
    topo = tables.topology
    bottleneck = obj.bottleneck
    n = len(stages)
    links = [topo.link(topo.chain[a], topo.chain[b]) for a, b in zip(stages, stages[1:])]
    seg_of = {}
    for f, g in must_use:
        for s in range(f, g + 1):
            seg_of[s] = (f, g)
    # state: value over cut position p after stage i, with "current must-use segment used yet" flag
    prim = np.full((2, L + 1), INF)
    sec = np.full((2, L + 1), INF)
    back: list[np.ndarray] = []
    P = np.arange(L + 1)
    upper = P[:, None] <= P[None, :]
    nonempty = P[:, None] < P[None, :]
    for i, s in enumerate(stages):
        cap = tables.capacity[topo.chain[s]]
        # R[term][q, p]: layers q..p-1 on stage s, and the stage's call when it runs any (q < p); its period is
        # its busy time, the same as its latency
        R = {term: _range_sums(v[:, s]) + np.where(nonempty, tables.call_terms[term][s], 0.0)
             for term, v in tables.stage_terms.items()}
        R["period"] = R["latency"]
        feasible = upper & (mem <= cap)
        stage_cost = R["period"] if bottleneck else obj.combine(R)
        stage_lat = R["latency"]
        if i == 0:
            prev_p = np.full((2, L + 1), INF)
            prev_s = np.full((2, L + 1), INF)
            prev_p[0, 0] = 0.0
            prev_s[0, 0] = 0.0
        else:
            prev_p, prev_s = prim, sec
        new_p = np.full((2, L + 1), INF)
        new_s = np.full((2, L + 1), INF)
        arg = np.zeros((2, L + 1, 2), dtype=int)  # (prev flag, prev p)
        in_seg = s in seg_of
        starts_seg = in_seg and seg_of[s][0] == s
        for f_prev in (0, 1):
            if not np.isfinite(prev_p[f_prev]).any():
                continue
            if bottleneck:
                cand_p = np.maximum(prev_p[f_prev][:, None], np.where(feasible, stage_cost, INF))
            else:
                cand_p = prev_p[f_prev][:, None] + np.where(feasible, stage_cost, INF)
            cand_s = prev_s[f_prev][:, None] + np.where(feasible, stage_lat, INF)
            for used_here in (False, True):
                mask = nonempty if used_here else (P[None, :] == P[:, None])
                if in_seg:
                    f_new = 1 if (used_here or (f_prev == 1 and not starts_seg)) else 0
                else:
                    f_new = 0
                cp_ = np.where(mask, cand_p, INF)
                cs_ = np.where(mask, cand_s, INF)
                q = _lex_argmin(cp_, cs_)
                vp = cp_[q, P]
                vs = cs_[q, P]
                better = (vp < new_p[f_new] - 1e-12) | ((np.abs(vp - new_p[f_new]) <= 1e-12) & (vs < new_s[f_new]))
                new_p[f_new] = np.where(better, vp, new_p[f_new])
                new_s[f_new] = np.where(better, vs, new_s[f_new])
                arg[f_new][better] = np.stack([np.full(better.sum(), f_prev), q[better]], axis=1)
        # leaving a must-use segment at its last stage requires the flag
        if in_seg and seg_of[s][1] == s:
            new_p[0], new_p[1] = new_p[1].copy(), np.full(L + 1, INF)
            new_s[0], new_s[1] = new_s[1].copy(), np.full(L + 1, INF)
            arg[0], arg[1] = arg[1].copy(), arg[0]
        # the hop to the next stage
        if i < n - 1:
            hop = _hop_arrays(tables, links[i])
            if bottleneck:
                new_p = np.maximum(new_p, hop["period"][None, :])
            else:
                new_p = new_p + obj.combine(hop)[None, :]
            new_s = new_s + hop["latency"][None, :]
        back.append(arg)
        prim, sec = new_p, new_s
    if not np.isfinite(prim[0, L]):
        return INF, INF, None
    # walk back
    cuts = [L]
    flag, p = 0, L
    for i in range(n - 1, -1, -1):
        f_prev, q = back[i][flag, p]
        cuts.append(int(q))
        flag, p = int(f_prev), int(q)
    cuts = cuts[::-1]  # cuts[i]..cuts[i+1] are the layers of stages[i]
    assign = [0] * L
    for i, s in enumerate(stages):
        for l in range(cuts[i], cuts[i + 1]):
            assign[l] = s
    return float(prim[0, L]), float(sec[0, L]), assign


def _lex_argmin(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Row index of the lexicographic minimum in each column."""
    best = primary.min(axis=0)
    tol = 1e-9 * np.maximum(1.0, np.abs(np.where(np.isfinite(best), best, 0.0)))
    tie = primary <= (best + tol)[None, :]
    return np.where(tie, secondary, INF).argmin(axis=0) if np.isfinite(best).any() else primary.argmin(axis=0)
