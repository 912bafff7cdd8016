"""Run: .venv/bin/python benchmarks/generate_in_process.py. TTFT / TPOT of rotafx.generate on small_gpt(d=128, layers=4, seq=256) over 3 CPU nodes vs a no-cache recompute loop."""
import statistics, sys, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_backend: the three-node topology
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import rotafx
from rotafx.models import small_gpt
from tests.test_backend import ON_CPU, three_cpus
torch.manual_seed(0)
m = small_gpt(d=128, layers=4, seq=256).eval()
ex = torch.randint(0, 256, (1, 32))
prof = rotafx.ModelProfile.from_pytorch(m, (ex,))
kv = 4 * 2 * 128 * 256 * 4
pm = rotafx.partition(m, (ex,), topology=three_cpus(0.45 * prof.weight_bytes + max(l.peak_bytes for l in prof.layers) + kv),
                      devices=ON_CPU, objective="maximize_throughput")
print("stages", [s.node for s in pm.stages])
prompt = torch.randint(0, 256, (1, 32)); N = 64
def recompute():
    ids = prompt; t0 = time.perf_counter(); steps = []
    with torch.no_grad():
        for i in range(N):
            a = time.perf_counter()
            ids = torch.cat([ids, m(ids)[:, -1].argmax(-1, keepdim=True)], 1)
            steps.append(time.perf_counter() - a)
    return ids, 1e3 * steps[0], 1e3 * statistics.median(steps[1:]), N / (time.perf_counter() - t0)
rotafx.generate(pm, prompt, max_new_tokens=N)  # builds the programs
R = {"rotafx ttft": [], "rotafx tpot": [], "rotafx tok/s": [], "recompute ttft": [], "recompute tpot": [], "recompute tok/s": []}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 7):
    ids, t = rotafx.generate(pm, prompt, max_new_tokens=N, timings=True)
    R["rotafx ttft"].append(t.ttft_ms); R["rotafx tpot"].append(t.tpot_ms); R["rotafx tok/s"].append(t.tokens_per_s)
    ref, a, b, c = recompute()
    assert torch.equal(ids, ref)
    R["recompute ttft"].append(a); R["recompute tpot"].append(b); R["recompute tok/s"].append(c)
for k, v in R.items():
    print(f"{k:16} median {statistics.median(v):8.2f}  min {min(v):8.2f}  max {max(v):8.2f}")
