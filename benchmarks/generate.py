"""Time to a plan: ``rotafx.partition`` on the small GPT, and the first ``generate()`` of a transformers Llama through
the backend against plain ``torch.compile``'s, each variant in a fresh process, runs interleaved.

    .venv/bin/python benchmarks/generate.py [--runs 3] [--new-tokens 8] [--out benchmarks/RESULTS_generate.md]
    .venv/bin/python benchmarks/generate.py --apart [--runs 2]

``--apart`` times instead the first ``generate()`` with the stages compiled each on its own, the path of
stages on several devices (on a CPU-only machine: stages that cannot be pasted into one function), with a
dynamic decode graph's stages compiled once for all sizes against compiled at each new size (the path before
``CompiledStage.compile_symbolic``), and writes its table as a section of ``--out``.

Every run checks its tokens against eager greedy generation before its time counts. One CPU thread.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, warnings
t_start = time.perf_counter()
import torch
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
sys.path.insert(0, {root!r})
variant, new_tokens = sys.argv[1], int(sys.argv[2])
if variant == "partition":
    import rotafx
    from rotafx.models import small_gpt, example_inputs
    from tests.test_backend import three_cpus
    m = small_gpt().eval(); x = example_inputs("small-gpt", 2)
    prof = rotafx.ModelProfile.from_pytorch(m, x)
    topo = three_cpus((prof.weight_bytes + prof.peak_activation_bytes) * 0.8)
    from rotafx.backend.cache import SOLVED
    times = []
    for _ in range(6):
        SOLVED._solved.clear()  # solve every time: no reused placement
        t0 = time.perf_counter(); pm = rotafx.partition(m, x, topology=topo, devices="cpu"); times.append(time.perf_counter() - t0)
    assert torch.equal(pm(*x), m(*x)) and len(pm.stages) >= 2
    print(json.dumps({{"first_s": times[0], "warm_s": sorted(times[1:])[len(times[1:]) // 2], "stages": len(pm.stages)}}))
    raise SystemExit
import transformers, rotafx
from tests.test_backend import tight_topology, ON_CPU
cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
cfg._attn_implementation = "sdpa"
torch.manual_seed(0)
m = transformers.LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 128, (1, 8))
m.config.use_cache = False; topo = tight_topology(m, (ids,)); m.config.use_cache = True
want = m.generate(ids, max_new_tokens=new_tokens, do_sample=False)
info = {{}}
compiles = []
if variant.startswith("apart"):  # every stage compiled on its own, as on several devices
    import rotafx.runtime.local as local
    local._pastable = lambda stage: False
    compile_stage = local.CompiledStage._compile
    def counted(self, example):
        with warnings.catch_warnings(record=True) as caught:  # a stage run eagerly instead would time nothing
            warnings.simplefilter("always")
            fn = compile_stage(self, example)
        assert not [w for w in caught if "could not compile" in str(w.message)], [str(w.message) for w in caught]
        compiles.append(1)
        return fn
    local.CompiledStage._compile = counted
    if variant == "apart-per-size":  # what ran before compile_symbolic: each stage compiled at each new signature
        local.CompiledStage.compile_symbolic = lambda self, device: False
if variant == "plain":
    m.forward = torch.compile(m.forward)
else:
    be = rotafx.backend(topology=topo, devices=ON_CPU, inner="inductor")
    m.forward = torch.compile(m.forward, backend=be)
t0 = time.perf_counter()
got = m.generate(ids, max_new_tokens=new_tokens, do_sample=False)
first = time.perf_counter() - t0
assert torch.equal(got, want), "tokens differ from eager"
if variant != "plain":
    info = {{"plans": len(be.plans), "reused": sum(p.reused for p in be.plans), "stages": [len(p.stages) for p in be.plans],
            "stage_compiles": len(compiles)}}
print(json.dumps({{"first_s": first, **info}}))
"""


def run(variant: str, new_tokens: int) -> dict:
    code = CHILD.format(root=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="rotafx-inductor-") as cache:  # a cold compile: no cache of earlier runs
        out = subprocess.run([sys.executable, "-c", code, variant, str(new_tokens)], capture_output=True, text=True,
                             timeout=1200, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": cache})
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_generate.md"))
    ap.add_argument("--apart", action="store_true", help="stages compiled each on its own: once for all sizes vs per size")
    args = ap.parse_args()
    if args.apart:
        apart(args)
        return
    part = [run("partition", args.new_tokens) for _ in range(args.runs)]
    plain, ours = [], []
    for _ in range(args.runs):  # interleaved: the machine is shared
        plain.append(run("plain", args.new_tokens))
        ours.append(run("rotafx", args.new_tokens))
    med = statistics.median
    pf = [r["first_s"] for r in plain]
    of = [r["first_s"] for r in ours]
    cold = [r["first_s"] for r in part]
    warm = [r["warm_s"] for r in part]
    fmt = lambda xs, f: ", ".join(format(x, f) for x in xs)  # noqa: E731
    ratios = [o / p for o, p in zip(of, pf)]
    lines = [
        "# Time to a plan",
        "",
        f"Command: `.venv/bin/python benchmarks/generate.py --runs {args.runs} --new-tokens {args.new_tokens}`; "
        f"{platform.machine()}, {platform.python_version()}, one CPU thread, each variant in a fresh process, "
        f"{time.strftime('%Y-%m-%d')}, a fresh inductor cache per process (cold compiles). Every run checked its output (tokens equal to eager greedy generation; the "
        f"partitioned GPT equal to the model) before its time counted.",
        "",
        "| what | median | runs | ",
        "|---|---|---|",
        f"| `rotafx.partition(small GPT)`, 3 CPU nodes, MILP, first call in a process (cvxpy imported then) | "
        f"{med(cold):.2f} s | {fmt(cold, '.2f')} |",
        f"| `rotafx.partition(small GPT)`, later calls, solving each time | {med(warm):.3f} s | {fmt(warm, '.3f')} |",
        f"| first `generate({args.new_tokens} tokens)`, Llama 3 blocks, plain `torch.compile(model.forward)` | "
        f"{med(pf):.1f} s | {fmt(pf, '.1f')} |",
        f"| the same through the rotastellar backend (inner inductor, 3 CPU nodes, {ours[0]['plans']} graphs, "
        f"{ours[0]['stages']} stages) | {med(of):.1f} s | {fmt(of, '.1f')} |",
        f"| ratio rotafx / plain, per interleaved pair | **{med(ratios):.2f}x** | {fmt(ratios, '.2f')} |",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


APART = "## Stages compiled each on their own (the path of stages on several devices)"


def apart(args: argparse.Namespace) -> None:
    """Time the first generate() with every stage compiled on its own: symbolic sizes against per size."""
    once, per_size = [], []
    load = os.getloadavg()[0]
    for _ in range(args.runs):  # interleaved: the machine is shared
        per_size.append(run("apart-per-size", args.new_tokens))
        once.append(run("apart", args.new_tokens))
    load = max(load, os.getloadavg()[0])
    med = statistics.median
    fmt = lambda xs, f: ", ".join(format(x, f) for x in xs)  # noqa: E731
    a, b = [r["first_s"] for r in per_size], [r["first_s"] for r in once]
    ratios = [x / y for x, y in zip(a, b)]
    lines = [
        APART,
        "",
        f"Command: `.venv/bin/python benchmarks/generate.py --apart --runs {args.runs} --new-tokens {args.new_tokens}`; "
        f"{platform.machine()}, {os.cpu_count()} logical CPUs (1-minute load average up to {load:.1f} around the runs, "
        f"the machine shared), Python {platform.python_version()}, torch {importlib.metadata.version('torch')}, one CPU "
        f"thread, {time.strftime('%Y-%m-%d')}, cold inductor caches, each run in a fresh process. The Llama above through "
        f"the backend (inner inductor, 3 CPU nodes; {once[0]['plans']} graphs: the prompt, the first decode step, then "
        f"the dynamic decode graph), every stage a `CompiledStage` of its own (this machine has one device, so stages "
        f"are kept from being pasted into one function, which is what stages on several devices get); every run's tokens "
        f"equal eager greedy generation's, and no stage fell back to eager.",
        "",
        "| stages of the dynamic decode graph | first generate, median | runs | stage compilations |",
        "|---|---|---|---|",
        f"| compiled at each new input signature (before) | {med(a):.1f} s | {fmt(a, '.1f')} | "
        f"{per_size[0]['stage_compiles']} |",
        f"| compiled once, with dynamo's symbolic sizes (`CompiledStage.compile_symbolic`) | {med(b):.1f} s | "
        f"{fmt(b, '.1f')} | {once[0]['stage_compiles']} |",
        f"| ratio before / now, per interleaved pair | **{med(ratios):.2f}x** | {fmt(ratios, '.2f')} | |",
        "",
    ]
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    before, _, rest = text.partition("\n" + APART)
    after = rest[rest.find("\n#"):] if "\n#" in rest else ""  # the sections after this one's last run, kept
    out.write_text(before.rstrip("\n") + "\n\n" + "\n".join(lines) + after)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
