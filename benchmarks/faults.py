"""Faults under load: streams of requests through a local cluster, one fault per trial at a random stage and moment.

Two plans are exported once: the conv net on ground0 -> orbital0 -> ground1 (3 stages) and
the small GPT on ground0 -> orbital0 -> orbital1 -> ground1 (4 stages), links emulated at
20 Mbit/s and 20 ms each. Every trial starts a fresh cluster
(``launch_local(threads=1)``), sends a stream of 20-40 seeded random requests in 1-4
``cluster.run`` calls (window 2-6 each) and injects one fault at a random stage:

- ``kill`` / ``stop``: SIGKILL / SIGSTOP from this process, mid-stream (a timer at a random
  delay within the stream's expected duration) or idle (between two runs);
- ``hang`` / ``die`` / ``fail``: ``tests/faulty_stage.py`` ``hang@R`` (the process keeps
  beating but computes nothing more: only the driver's ``timeout`` finds it), ``die@R``
  (exit 17) or ``fail@R`` (``RuntimeError`` in the stage), R a random request of the stream.

Recorded per trial: the ``DistributedError`` (none is a miss), ``err.stage`` against the
stage injected, the detection time, ``err.completed`` (every completed output must equal
the model's eager output bit for bit, and completed + lost = sent), and after
``cluster.close()`` every stage process must be gone (none running or stopped) and the
driver's port free. A no-fault baseline sends the same kind of stream. Before any trial,
each plan is run once with 40 requests and checked against the model (and the time per
request measured, which sets the range of the mid-stream delays). Writes
benchmarks/RESULTS_faults.md.

    .venv/bin/python benchmarks/faults.py [--trials N] [--seed S] [--quick]
    .venv/bin/python benchmarks/faults.py --kinds kill-mid --trial 3   # rerun one trial
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rotafx  # noqa: E402
from rotafx.costmodel import CostTables  # noqa: E402
from rotafx.models import convnet, example_inputs, small_gpt  # noqa: E402
from rotafx.runtime.distributed import DistributedError, LocalCluster, free_port, launch_local  # noqa: E402
from tests import faulty_stage  # noqa: E402

__all__ = ["CATEGORIES", "Plan", "Trial", "chain_topology", "export_plans", "run_trial", "main"]

# kind-moment as designed; a mid-stream signal that lands between two runs is counted as idle
CATEGORIES = ("none", "kill-mid", "kill-idle", "stop-mid", "stop-idle", "hang", "die", "fail")
SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}
BANDWIDTH_BPS, LATENCY_MS = 20e6, 20.0


def chain_topology(model: torch.nn.Module, x: tuple, kinds: Sequence[str]) -> dict[str, Any]:
    """A chain of ``kinds`` nodes (``ground0``, ``orbital0``, ...); memory forces one stage on each (best split +0.1%)."""
    names, seen = [], dict.fromkeys(kinds, 0)
    for k in kinds:
        names.append(f"{k}{seen[k]}")
        seen[k] += 1

    def topo(memory: float) -> dict[str, Any]:
        devices = [{"name": n, "kind": k, "flops": 1e12, "memory": memory, "memory_bandwidth": 1e11}
                   for n, k in zip(names, kinds)]
        link_kind = {("ground", "orbital"): "uplink", ("orbital", "ground"): "downlink", ("orbital", "orbital"): "isl"}
        links = [{"src": a, "dst": b, "kind": link_kind.get((ka, kb), "ground"), "bandwidth": BANDWIDTH_BPS,
                  "latency_ms": LATENCY_MS} for a, b, ka, kb in zip(names, names[1:], kinds, kinds[1:])]
        return {"devices": devices, "links": links, "chain": names}

    prof = rotafx.ModelProfile.from_pytorch(model, x)
    tables = CostTables(prof, rotafx.Topology.coerce(topo(1e18)))
    L = prof.num_layers
    need = min(max(tables.layers_memory(range(a, b)) for a, b in zip((0, *cuts), (*cuts, L)))
               for cuts in itertools.combinations(range(1, L), len(kinds) - 1))
    return topo(need * 1.001)


@dataclass
class Plan:
    """An exported plan, its model and example inputs, and the measured seconds per request of a stream."""

    name: str
    path: Path
    model: torch.nn.Module
    x: tuple
    stages: int
    per_request_s: float = 0.0

    def requests(self, n: int, g: torch.Generator) -> list[tuple]:
        """``n`` random requests shaped like the example inputs."""
        if self.x[0].dtype == torch.long:
            return [(torch.randint(0, 256, self.x[0].shape, generator=g),) for _ in range(n)]
        return [(torch.randn(self.x[0].shape, generator=g),) for _ in range(n)]

    def eager(self, reqs: Sequence[tuple]) -> list[Any]:
        """The model's own outputs, in this process."""
        with torch.no_grad():
            return [self.model(*r) for r in reqs]


def export_plans(tmp: Path) -> list[Plan]:
    """The conv net on 3 stages and the small GPT on 4, exported once."""
    plans = []
    for name, make, inputs, kinds in (("convnet, 3 stages", convnet, "convnet", ("ground", "orbital", "ground")),
                                      ("small GPT, 4 stages", small_gpt, "small-gpt",
                                       ("ground", "orbital", "orbital", "ground"))):
        torch.manual_seed(0)
        model, x = make().eval(), example_inputs(inputs, 2)
        path = tmp / inputs
        spec = rotafx.export(model, x, path=path, topology=chain_topology(model, x, kinds))
        assert len(spec.stages) == len(kinds), f"{name}: the topology should force {len(kinds)} stages"
        plans.append(Plan(name, path, model, x, len(spec.stages)))
    return plans


def same(a: Any, b: Any) -> bool:
    """Bit-for-bit equal outputs (shape, dtype and values of every tensor of the structure)."""
    fa, sa = tree_flatten(a)
    fb, sb = tree_flatten(b)
    return sa == sb and all(isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dtype == v.dtype
                            and torch.equal(u, v) for u, v in zip(fa, fb))


def proc_state(pid: int) -> str | None:
    """The State line of /proc/<pid>/status (``None``: no such process)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return "unknown"


def port_free(port: int) -> bool:
    """Nobody listens on 127.0.0.1:port (TIME_WAIT connections do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def calibrate(plan: Plan, tmp: Path, timeout: float, heartbeat: float) -> None:
    """Run 40 requests on a fresh cluster, check them against the model, and measure the seconds per request (window 4)."""
    reqs = plan.requests(40, torch.Generator().manual_seed(12345))
    want = plan.eager(reqs)
    with launch_local(plan.path, timeout=timeout, join_timeout=90, heartbeat_timeout=heartbeat, threads=1,
                      log_dir=tmp / "calibrate") as cluster:
        outs = cluster.run(reqs, window=4, emulate_links=True)
        assert all(same(o, w) for o, w in zip(outs, want)), f"{plan.name}: the cluster's outputs differ from the model"
        t = time.perf_counter()
        cluster.run(reqs, window=4, emulate_links=True)
        plan.per_request_s = (time.perf_counter() - t) / len(reqs)


@dataclass
class Trial:
    """What one trial injected and what came back."""

    category: str
    index: int
    plan: str
    stages: int
    kind: str
    moment: str = ""  # "mid", "idle", "at R" or "" (no fault)
    stage: int | None = None
    at: str = ""  # when: "request 12" or "+0.84 s"
    sent: int = 0
    planned: int = 0
    completed: int = 0
    lost: int = 0
    wrong: int = 0  # completed outputs that differ from the model, or bookkeeping that does not add up
    raised: str = ""  # "DistributedError", another exception's type, or "" (a miss / no fault)
    err_stage: int | None = None
    message: str = ""
    detect_inject_s: float | None = None
    detect_run_s: float | None = None
    left: list[str] = field(default_factory=list)  # processes still there after close(), with their state
    killed_by_close: int = 0  # stage processes close() had to SIGKILL (not ours)
    port_free: bool = True
    close_s: float = 0.0
    stderr: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        """The error names the stage injected (for no fault: nothing raised)."""
        if self.kind == "none":
            return self.raised == ""
        return self.raised == "DistributedError" and self.err_stage == self.stage

    @property
    def ok(self) -> bool:
        """Attributed right, nothing wrong among the completed requests, nothing left behind."""
        return self.correct and self.wrong == 0 and not self.left and self.port_free


class Injector:
    """Sends one signal to one process and notes when, and whether a ``run`` was in progress."""

    def __init__(self, proc: Any, sig: int) -> None:
        self.proc, self.sig = proc, sig
        self.lock = threading.Lock()
        self.in_run = False
        self.run_began = 0.0
        self.at: float | None = None
        self.during_run: bool | None = None

    def fire(self) -> None:
        """Send the signal now."""
        with self.lock:
            self.at = time.monotonic()
            self.during_run = self.in_run
            try:
                self.proc.send_signal(self.sig)
            except OSError:
                pass

    def running(self, flag: bool) -> None:
        """A ``run`` call starts (True) or ends (False)."""
        with self.lock:
            self.in_run = flag
            if flag:
                self.run_began = time.monotonic()


def run_trial(plan: Plan, category: str, index: int, rng: random.Random, tmp: Path, timeout: float,
              heartbeat: float) -> Trial:
    """One fresh cluster, one stream, at most one fault; see the module docstring."""
    kind, _, design = category.partition("-")
    idle = design == "idle"
    n = rng.randint(20, 40)
    k = rng.randint(2 if idle else 1, 4)
    cuts = sorted(rng.sample(range(1, n), k - 1))
    runs = list(zip((0, *cuts), (*cuts, n)))
    windows = [rng.randint(2, 6) for _ in runs]
    reqs = plan.requests(n, torch.Generator().manual_seed(rng.randrange(2**31)))
    want = plan.eager(reqs)
    t = Trial(category, index, plan.name, plan.stages, kind, planned=n)
    commands: dict[int, list[str]] = {}
    if kind != "none":
        t.stage = rng.randrange(plan.stages)
    if kind in ("hang", "die", "fail"):
        r = rng.randrange(n)
        commands[t.stage] = faulty_stage.command(f"{kind}@{r}")  # type: ignore[index]
        t.moment, t.at = "at R", f"request {r}"
    delay = rng.uniform(0.05, 0.9 * plan.per_request_s * n) if design == "mid" else 0.0
    idle_after = rng.randrange(k - 1) if idle else -1
    idle_gaps = (rng.uniform(0.05, 0.3), rng.uniform(0.1, 2.5))  # before the signal (all delivered), then until the next run

    port = free_port()
    logs = tmp / f"{category}-{index}"
    cluster: LocalCluster = launch_local(plan.path, port=port, timeout=timeout, join_timeout=90,
                                         heartbeat_timeout=heartbeat, threads=1, stage_commands=commands, log_dir=logs)
    inj = Injector(cluster.processes[t.stage], SIGNALS[kind]) if kind in SIGNALS else None  # type: ignore[index]
    timer = threading.Timer(delay, inj.fire) if inj is not None and design == "mid" else None
    err: BaseException | None = None
    lo = hi = 0
    t_run = t_exc = 0.0
    try:
        if timer is not None:
            timer.start()
        stream = [(lo_, hi_, w) for (lo_, hi_), w in zip(runs, windows)]
        j = 0
        while j < len(stream) and err is None:
            lo, hi, w = stream[j]
            if inj is not None:
                inj.running(True)
            t_run = time.monotonic()
            try:
                outs = cluster.run(reqs[lo:hi], window=w, emulate_links=True)
            except BaseException as e:  # noqa: BLE001 - recorded; anything but a DistributedError is a finding
                t_exc, err = time.monotonic(), e
            finally:
                if inj is not None:
                    inj.running(False)
            t.sent += hi - lo
            if err is None:
                t.completed += hi - lo
                t.wrong += sum(not same(o, want[i]) for o, i in zip(outs, range(lo, hi)))
            if j == idle_after:
                time.sleep(idle_gaps[0])
                inj.fire()  # type: ignore[union-attr]
                time.sleep(idle_gaps[1])
            j += 1
            if j == len(runs) and err is None and inj is not None:
                if timer is not None:
                    timer.join()  # the stream ran faster than expected: the signal lands after it
                stream.append((0, min(4, n), 2))  # a probe run, counted in the stream
        if inj is not None and inj.at is not None:
            t.moment = "mid" if inj.during_run else "idle"
            t.at = f"+{inj.at - inj.run_began:.2f} s into a run" if inj.during_run else "between runs"
        if err is not None:
            t.raised = ("DistributedError" if isinstance(err, DistributedError)
                        else f"{type(err).__name__} (not DistributedError)")
            t.message = str(err).splitlines()[0][:300] if str(err) else ""
            t.detect_run_s = t_exc - t_run
            if inj is not None and inj.at is not None:
                t.detect_inject_s = t_exc - inj.at
            size = hi - lo
            if isinstance(err, DistributedError):
                t.err_stage = err.stage
                done = err.completed
                if done != sorted(set(done)) or not all(0 <= i < size for i in done) or set(err.outputs) != set(done):
                    t.wrong += 1  # the bookkeeping itself is wrong
                t.wrong += sum(not same(err.outputs.get(i), want[lo + i]) for i in done if 0 <= i < size)
                t.completed += len(set(done))
                t.lost += size - len(set(done))
            else:
                t.lost += size
    finally:
        if timer is not None:
            timer.cancel()
        if not t.correct or t.wrong:
            for i in range(plan.stages):
                t.stderr.append(cluster.stderr(i))
        c0 = time.monotonic()
        cluster.close()
        t.close_s = time.monotonic() - c0
    for i, p in enumerate(cluster.processes):
        code = p.poll()
        if code is None:
            state = proc_state(p.pid)
            if state is not None:
                t.left.append(f"stage {i} pid {p.pid}: {state}")
            p.kill()  # never leave one behind, even when reporting it
            p.wait(5)
        elif code == -signal.SIGKILL and not (kind == "kill" and i == t.stage):
            t.killed_by_close += 1
    t.port_free = port_free(port)
    if t.completed + t.lost != t.sent:
        t.wrong += 1
    shutil.rmtree(logs, ignore_errors=True)
    return t


def _span(xs: Sequence[float]) -> str:
    """Median (min-max) in seconds, or a dash."""
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} s ({min(xs):.2f}-{max(xs):.2f})"


def table(trials: Sequence[Trial]) -> str:
    """Per fault kind and moment: trials, attribution, detection, completed/lost, wrong outputs, processes left."""
    rows = ["| fault | moment | trials | DistributedError raised | attribution correct | detection from injection, "
            "median (min-max) | detection from the start of the failing run | completed / lost / not sent | "
            "wrong among completed | processes left | killed by close() |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {c.partition("-")[0]: i for i, c in enumerate(CATEGORIES)}
    groups: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.kind, t.moment), []).append(t)
    for (kind, moment), ts in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        raised = sum(t.raised == "DistributedError" for t in ts)
        correct = sum(t.correct for t in ts)
        inject = [t.detect_inject_s for t in ts if t.detect_inject_s is not None]
        run = [t.detect_run_s for t in ts if t.detect_run_s is not None]
        rows.append(f"| {'no fault' if kind == 'none' else kind} | {moment or '-'} | {len(ts)} | "
                    f"{'-' if kind == 'none' else raised} | {correct}/{len(ts)} ({100 * correct / len(ts):.0f}%) | "
                    f"{_span(inject)} | {_span(run)} | {sum(t.completed for t in ts)} / {sum(t.lost for t in ts)} / "
                    f"{sum(max(0, t.planned - t.sent) for t in ts)} | {sum(t.wrong for t in ts)} | "
                    f"{sum(len(t.left) for t in ts)} | {sum(t.killed_by_close for t in ts)} |")
    return "\n".join(rows)


def by_stage(trials: Sequence[Trial]) -> str:
    """Attribution by plan and stage injected."""
    rows = ["| plan | stage | trials | correct |", "|---|---:|---:|---:|"]
    cells: dict[tuple[str, int], list[Trial]] = {}
    for t in trials:
        if t.stage is not None:
            cells.setdefault((t.plan, t.stage), []).append(t)
    for (p, s), ts in sorted(cells.items()):
        rows.append(f"| {p} | {s} | {len(ts)} | {sum(t.correct for t in ts)} |")
    return "\n".join(rows)


def describe(t: Trial) -> str:
    """One line per trial."""
    fault = "no fault" if t.kind == "none" else f"{t.kind} stage {t.stage} {t.moment} ({t.at})"
    det = f", {t.detect_run_s:.2f} s after the run began" if t.detect_run_s is not None else ""
    det += f", {t.detect_inject_s:.2f} s after injection" if t.detect_inject_s is not None else ""
    got = f"{t.raised} stage {t.err_stage}" if t.raised else "nothing raised"
    return (f"{t.category}#{t.index} [{t.plan}] {fault}: {got}{det}; {t.completed} completed, {t.lost} lost, "
            f"{t.sent}/{t.planned} sent, {t.wrong} wrong, {len(t.left)} left{' ' + str(t.left) if t.left else ''}, "
            f"port {'free' if t.port_free else 'HELD'}, close {t.close_s:.1f} s -> {'ok' if t.ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4,
                    help="trials per fault kind (and for the baseline), alternating between the plans")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one trial per kind (a couple of minutes)")
    ap.add_argument("--kinds", default=",".join(CATEGORIES), help=f"a subset of {','.join(CATEGORIES)}")
    ap.add_argument("--trial", type=int, default=None, help="run only this trial index of each kind (to reproduce one)")
    ap.add_argument("--timeout", type=float, default=4.0, help="the driver's and stages' timeout (s): finds a hang")
    ap.add_argument("--heartbeat-timeout", type=float, default=2.0, help="finds a stopped stage (s)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_faults.md"), help="'-': print only")
    args = ap.parse_args(argv)
    trials_n = 1 if args.quick else args.trials
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in CATEGORIES]
    if bad or trials_n < 1:
        ap.error(f"--kinds must be among {','.join(CATEGORIES)} (got {','.join(bad)}), --trials positive")
    torch.set_num_threads(1)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rotafx-faults-"))
    try:
        plans = export_plans(tmp)
        for p in plans:
            calibrate(p, tmp, args.timeout, args.heartbeat_timeout)
            print(f"{p.name}: 40 requests equal the model; {1e3 * p.per_request_s:.1f} ms per request (window 4, "
                  f"links emulated)", file=sys.stderr, flush=True)
        indices = [args.trial] if args.trial is not None else list(range(trials_n))
        trials: list[Trial] = []
        for i in indices:  # kinds interleaved, so that the machine's load falls on all alike
            for c, category in enumerate(CATEGORIES):
                if category not in kinds:
                    continue
                plan = plans[(i + c) % len(plans)]
                rng = random.Random(f"{args.seed}/{category}/{i}")
                t = run_trial(plan, category, i, rng, tmp, args.timeout, args.heartbeat_timeout)
                trials.append(t)
                print(describe(t), file=sys.stderr, flush=True)
                if not t.ok:
                    print(f"  message: {t.message}", file=sys.stderr)
                    for s, e in enumerate(t.stderr):
                        print(f"  stage {s} stderr:\n    " + "\n    ".join(e.strip().splitlines()[-15:]), file=sys.stderr)
                    sys.stderr.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    cmd = "python benchmarks/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    failures = [t for t in trials if not t.ok]
    calib = "; ".join(f"{p.name}: {1e3 * p.per_request_s:.1f} ms per request" for p in plans)
    fail_text = "\n".join(f"- {describe(t)}\n  - `{t.message}`\n  - rerun: `.venv/bin/python benchmarks/faults.py "
                          f"--seed {args.seed} --kinds {t.category} --trial {t.index}`" for t in failures) or "None."
    text = f"""# Faults under load: attribution, detection, and what completes

`{cmd.strip()}` ({datetime.date.today().isoformat()}, {elapsed / 60:.1f} min in all).

Each trial starts a fresh local cluster (`launch_local(threads=1)`, one torch thread per stage, the
driver in the benchmark process), sends a stream of 20-40 seeded random requests in 1-4
`cluster.run` calls (window 2-6 each, links emulated at {BANDWIDTH_BPS / 1e6:g} Mbit/s and {LATENCY_MS:g} ms per hop)
and injects at most one fault at a random stage. Plans: the conv net on ground0 -> orbital0 -> ground1 and
the small GPT (`rotafx.models.small_gpt()`) on ground0 -> orbital0 -> orbital1 -> ground1, trials
alternating between them; before the trials each plan ran 40 requests equal to the model bit for
bit ({calib}). Driver `timeout` {args.timeout:g} s, `heartbeat_timeout` {args.heartbeat_timeout:g} s.

- **kill / stop**: SIGKILL / SIGSTOP from the benchmark process, by a timer at a random delay
  within the stream's expected duration ("mid": a `run` was in progress when the signal was sent)
  or after a run completed, 0.1-2.5 s before the next ("idle"). A mid-stream timer that fired
  between runs, or after the last (then a probe run of 4 requests follows), counts as idle.
- **hang / die / fail** (`tests/faulty_stage.py`): when the stage reaches request R (random in the
  stream) it stops computing while its heartbeat goes on / exits with status 17 / raises
  `RuntimeError("injected")`. The moment the stage reaches R is not observable from the driver,
  so their detection time is measured from the start of the `run` call that failed.
- **Attribution correct**: a `DistributedError` was raised and `err.stage` is the stage injected
  (no fault: nothing raised). **Completed / lost / not sent**: outputs received (earlier runs plus
  `err.completed`), requests of the failing run that did not complete, requests of later runs never
  sent. **Wrong among completed**: completed outputs that are not `torch.equal` to the model's eager
  output, plus any bookkeeping that does not add up (`err.completed` not distinct, outside the run,
  or not the keys of `err.outputs`; completed + lost != sent). **Processes left**: stage processes
  still present after `cluster.close()` (polled, then `/proc/<pid>/status`); **killed by close()**:
  stage processes that had not exited by themselves within close()'s grace time (informational).
  Every trial also checks that nobody listens on the driver's port afterwards.
- Detection includes the driver's 0.3 s pause to let the stages record what they saw.

## By fault kind and moment

{table(trials)}

## Attribution by plan and stage

{by_stage(trials)}

## Failures

{fail_text}

## Every trial

{chr(10).join('- ' + describe(t) for t in trials)}

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared with other work),
no GPU; torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}.
"""
    if args.out != "-":
        Path(args.out).write_text(text)
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
