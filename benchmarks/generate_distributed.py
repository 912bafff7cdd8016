"""Run: .venv/bin/python benchmarks/generate_distributed.py [repeats] [gpt|llama]. TTFT / TPOT / tokens/s of
Driver.generate on small_gpt(d=128, layers=6, seq=256) (or a LLaMA-style model of the same size built from rotafx's
config: GQA with 2 KV heads, RMSNorm, rotary, SwiGLU) over 3 stage processes (ground0 -> orbital0 -> ground1, the seed's links: uplink
100 Mbps, downlink 500 Mbps, 25 ms each way), by sequences decoding at once (1, 2, 4, 8), links emulated or not,
beside the estimator's figures for the same placement (ModelProfile.for_generation)."""
import statistics, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import rotafx
from rotafx.models import LlamaConfig, llama, small_gpt
from rotafx.plan.write import export_pipeline
from rotafx.runtime.distributed import launch_local

torch.manual_seed(0)
which = sys.argv[2] if len(sys.argv) > 2 else "gpt"
MODELS = {"gpt": ("small_gpt(d=128, layers=6, seq=256)", lambda: small_gpt(d=128, layers=6, seq=256)),
          "llama": ("llama(vocab=256, hidden=128, layers=6, heads=4, kv_heads=2, mlp=256, max_seq=256)",
                    lambda: llama(LlamaConfig(vocab=256, hidden=128, layers=6, heads=4, kv_heads=2, mlp=256,
                                              max_seq=256)))}
name, make = MODELS[which]
m = make().eval()
P, N = 32, 32
ex = torch.randint(0, 256, (1, P))
prof = rotafx.ModelProfile.from_pytorch(m, (ex,))
kv = prof.kv_bytes_per_token * 128 // 3 + 1  # one sequence's cache of a stage's layers at the max context
share = 0.36 if which == "gpt" else 0.42  # a third of the weights each, and room for the decoder's prefill activations
mem = share * prof.weight_bytes + max(l.peak_bytes for l in prof.layers) + kv
dev = lambda name, kind: {"name": name, "kind": kind, "flops": 1e11, "memory": mem, "memory_bandwidth": 1e10}
topo = {"devices": [dev("ground0", "ground"), dev("orbital0", "orbital"), dev("ground1", "ground")],
        "links": [{"src": "ground0", "dst": "orbital0", "kind": "uplink", "bandwidth": 100e6, "latency_ms": 25},
                  {"src": "orbital0", "dst": "ground1", "kind": "downlink", "bandwidth": 500e6, "latency_ms": 25}],
        "chain": ["ground0", "orbital0", "ground1"]}
pm = rotafx.partition(m, (ex,), topology=topo, objective="maximize_throughput")
assert [s.node for s in pm.stages] == ["ground0", "orbital0", "ground1"], [s.node for s in pm.stages]
path = Path(tempfile.mkdtemp()) / "plan"
export_pipeline(pm, (ex,), path=path, max_context=128)
by_name = {l.name: s for l, s in zip(pm.plan.partition.profile.layers, pm.plan.partition.stages)}
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
rows = []
with launch_local(path, threads=1, timeout=120, join_timeout=120) as cluster:
    d = cluster.driver
    for S in (1, 2, 4, 8):
        prompt = torch.randint(0, 256, (S, P), generator=torch.Generator().manual_seed(S))
        ref = rotafx.generate(rotafx.load(path), prompt, max_new_tokens=N)  # the check: one process, same plan
        d.generate(prompt, max_new_tokens=2)  # warm
        got = {False: [], True: []}
        for _ in range(repeats):
            for emulate in (False, True):  # interleaved
                ids, t = d.generate(prompt, max_new_tokens=N, timings=True, emulate_links=emulate)
                assert torch.equal(ids, ref)
                got[emulate].append(t)
        g = rotafx.ModelProfile.for_generation(m, prompt_len=P, new_tokens=N, sequences=S)
        stages, last = [], 0
        for l in g.layers:
            last = by_name.get(l.name, last)
            stages.append(last)
        e = rotafx.LatencyEstimator(topo).estimate(stages, g)
        for emulate, ts in got.items():
            med = lambda f: statistics.median(f(t) for t in ts)
            spread = lambda f: f"{min(f(t) for t in ts):.1f}-{max(f(t) for t in ts):.1f}"
            rows.append((S, "emulated" if emulate else "none", med(lambda t: t.ttft_ms), spread(lambda t: t.ttft_ms),
                         med(lambda t: t.tpot_ms), spread(lambda t: t.tpot_ms), med(lambda t: t.tokens_per_s),
                         spread(lambda t: t.tokens_per_s), e.ttft_ms, e.tpot_ms, e.tokens_per_s))
print(f"{name}, prompt {P}, {N} new tokens, 3 stage processes + driver, one thread each, "
      f"{repeats} interleaved runs (median, min-max)")
print("| sequences | links | TTFT ms | TPOT ms | tokens/s | estimate TTFT ms | estimate TPOT ms | estimate tokens/s |")
print("|---|---|---|---|---|---|---|---|")
for S, links, ttft, ttft_r, tpot, tpot_r, tps, tps_r, ettft, etpot, etps in rows:
    print(f"| {S} | {links} | {ttft:.1f} ({ttft_r}) | {tpot:.1f} ({tpot_r}) | {tps:.1f} ({tps_r}) | {ettft:.1f} | "
          f"{etpot:.1f} | {etps:.1f} |")
