"""Run a plan with one process per stage: ``torch.distributed`` point-to-point between neighbours, a driver feeding requests.

Ranks: the **driver** is rank 0 and hosts the rendezvous store (``MASTER_ADDR:MASTER_PORT``);
stage ``i`` of the plan is rank ``i + 1``; the world has ``stages + 1`` ranks. Messages
go along the chain only (driver -> stage 0 -> ... -> stage n-1 -> driver): a value that
skips a stage is relayed by it (the plan's ``hops`` list, in order, what each message
carries). Each message is one flat byte buffer: a 32-byte header (kind, request id, the
time it was handed to the link) and the hop's tensors, each at a 16-byte aligned offset.
Shapes are static (from ``plan.json``), so every receive is posted with the right size
before the message exists, and a stage receives request ``r + 1`` while it computes ``r``:
with a long enough stream the pipeline runs at the pace of its slowest stage or link.

Why not ``torch.distributed.pipelining``: its ``PipelineStage`` passes one activation
tuple between consecutive stages and infers shapes at run time, and its schedules are
built around training steps; a plan needs values relayed past stages, a codec per value
and per hop, and request ids for fault reports. The transport underneath is the same
(``isend``/``irecv`` on a gloo or NCCL process group).

Faults: every wait has a timeout. A stage whose neighbour dies sees the connection close
at once, records ``lost stage k`` in the store and exits; the driver then raises
:class:`DistributedError` naming the stage, with the requests that completed. A stage that
hangs is found by the driver's timeout: the first stage that has not passed the oldest
unfinished request on is named. The driver then sets ``rotafx/abort`` in the store, and a
watchdog thread in every stage process exits on it (or when the driver's store is gone).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_unflatten

from ..export import (PLAN_FILE, HopSpec, PlanError, PlanSpec, TensorSpec, check_request, load, read_plan)
from ..ops import decode, encode
from .links import LinkEmulator

__all__ = ["Driver", "DistributedError", "LocalCluster", "launch_local", "serve", "free_port", "HEADER_BYTES"]

HEADER_BYTES = 32  # int64 kind, request id, sent-at (ns since the epoch), flags
_EMULATE = 1  # flag: apply link emulation to this request
_ALIGN = 16
_DATA, _STOP = 0, 1
_PREFIX = "rotafx/"


class DistributedError(RuntimeError):
    """A stage failed, hung or could not be reached.

    ``stage`` is the stage held responsible (``None`` when unknown), ``node`` its topology
    node, ``completed`` the indices of the requests whose outputs arrived and ``outputs``
    those outputs (index -> output).
    """

    def __init__(self, message: str, *, stage: int | None = None, node: str | None = None,
                 completed: Sequence[int] = (), outputs: Mapping[int, Any] | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.node = node
        self.completed = list(completed)
        self.outputs = dict(outputs or {})


class _CommError(RuntimeError):
    """A send or receive that failed or timed out, with the peer rank."""

    def __init__(self, message: str, peer: int, timed_out: bool) -> None:
        super().__init__(message)
        self.peer = peer
        self.timed_out = timed_out


# ---------------------------------------------------------------------------
# messages


@dataclass(frozen=True)
class _Layout:
    """Where each tensor of one hop's message lies in its byte buffer."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...]
    nbytes: int

    @classmethod
    def of(cls, plan: PlanSpec, hop: HopSpec) -> "_Layout":
        specs = tuple(plan.entry_specs(hop))
        offsets, off = [], HEADER_BYTES
        for s in specs:
            offsets.append(off)
            off += -(-s.nbytes // _ALIGN) * _ALIGN
        return cls(specs, tuple(offsets), off)

    @property
    def payload_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def pack(self, kind: int, request: int, tensors: Sequence[torch.Tensor], device: torch.device, flags: int = 0) -> torch.Tensor:
        buf = self.empty(device)
        for spec, off, t in zip(self.specs, self.offsets, tensors):
            if not spec.matches(t):
                raise RuntimeError(f"rotafx: internal: message tensor {TensorSpec.of(t).describe()} != {spec.describe()}")
            if spec.nbytes:
                buf[off:off + spec.nbytes].copy_(t.contiguous().reshape(-1).view(torch.uint8))
        header = torch.tensor([kind, request, time.time_ns(), flags], dtype=torch.int64)
        buf[:HEADER_BYTES].copy_(header.view(torch.uint8))
        return buf

    @staticmethod
    def header(buf: torch.Tensor) -> tuple[int, int, float, int]:
        h = buf[:HEADER_BYTES].cpu().view(torch.int64).tolist()
        return int(h[0]), int(h[1]), h[2] / 1e9, int(h[3])

    def unpack(self, buf: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for spec, off in zip(self.specs, self.offsets):
            t = buf[off:off + spec.nbytes].view(spec.torch_dtype).view(spec.shape) if spec.nbytes else \
                torch.empty(spec.shape, dtype=spec.torch_dtype, device=buf.device)
            out.append(t)
        return out


class _Wire:
    """Turns a hop's message into values and back, applying the plan's codec where the hop says so."""

    def __init__(self, plan: PlanSpec) -> None:
        self.plan = plan
        self.layouts = [_Layout.of(plan, h) for h in plan.hops]

    def split(self, hop: int, tensors: Sequence[torch.Tensor]) -> dict[tuple[str, bool], list[torch.Tensor]]:
        """(value, encoded) -> its wire tensors (payload, and the int8 scale)."""
        out: dict[tuple[str, bool], list[torch.Tensor]] = {}
        i = 0
        for e in self.plan.hops[hop].entries:
            spec = self.plan.values[e.value]
            k = len(spec.wire(self.plan.codec)) if e.encoded else 1
            out[(e.value, e.encoded)] = list(tensors[i:i + k])
            i += k
        return out

    def decoded(self, value: str, wire: list[torch.Tensor], encoded: bool, device: torch.device) -> torch.Tensor:
        """The value itself from its wire tensors, on ``device``."""
        spec = self.plan.values[value]
        if not encoded:
            return wire[0].to(device)
        like = torch.empty(spec.shape, dtype=spec.torch_dtype, device=device)
        return decode(wire[0], wire[1] if len(wire) > 1 else None, like, device)

    def gather(self, hop: int, incoming: Mapping[tuple[str, bool], list[torch.Tensor]],
               local: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The tensors of hop ``hop``'s message: relayed wire tensors as they came, local values encoded if the hop says so."""
        out: list[torch.Tensor] = []
        for e in self.plan.hops[hop].entries:
            key = (e.value, e.encoded)
            if key in incoming:
                out.extend(incoming[key])
            elif e.value in local:
                t = local[e.value]
                if e.encoded:
                    payload, scale = encode(t, self.plan.codec)
                    out.extend([payload] if scale is None else [payload, scale])
                else:
                    out.append(t)
            else:
                raise RuntimeError(f"rotafx: internal: hop {hop} needs {key} but this process does not hold it")
        return out


# ---------------------------------------------------------------------------
# transport


def _wait(work: Any, timeout_s: float, peer: int, what: str) -> None:
    try:
        work.wait(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as e:
        msg = str(e)
        timed_out = "Timed out" in msg or "timeout" in msg.lower()
        raise _CommError(f"{what}: {msg.splitlines()[0] if msg else type(e).__name__}", peer, timed_out) from None


def _make_group(backend: str, store: Any, rank: int, size: int, timeout_s: float) -> Any:
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, datetime.timedelta(seconds=timeout_s))
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = datetime.timedelta(seconds=timeout_s)
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    raise ValueError(f"rotafx: backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")


def _backend_for(device: torch.device, backend: str | None) -> str:
    if backend:
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def plan_digest(plan_dir: str | os.PathLike[str]) -> str:
    """sha256 of ``plan.json``: every process must run the same plan."""
    return hashlib.sha256((Path(plan_dir) / PLAN_FILE).read_bytes()).hexdigest()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a local run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _client_store(host: str, port: int, timeout_s: float) -> Any:
    return dist.TCPStore(host, port, None, False, datetime.timedelta(seconds=timeout_s), wait_for_workers=False)


def _get(store: Any, key: str) -> str | None:
    try:
        if store.check([_PREFIX + key]):
            return store.get(_PREFIX + key).decode()
    except Exception:  # noqa: BLE001 - a store that is gone answers nothing
        return None
    return None


# ---------------------------------------------------------------------------
# a stage process


def serve(plan_dir: str | os.PathLike[str], stage: int, *, master_addr: str = "127.0.0.1", master_port: int = 29500,
          timeout: float = 60.0, idle_timeout: float = 7 * 24 * 3600.0, join_timeout: float = 120.0,
          emulate_links: bool = False, device: Any = None, backend: str | None = None, threads: int | None = None,
          fault: str | None = None) -> int:
    """Run stage ``stage`` of the plan in ``plan_dir`` until the driver says stop; returns 0.

    Loads and checks the stage before joining (a bad plan fails here, naming the file),
    joins the driver at ``master_addr:master_port`` (rank ``stage + 1``), then, for each
    request, receives its inputs from the previous process, runs, and sends on what later
    stages and the driver need. ``timeout`` bounds each send and each receive of a request
    already under way (s); ``idle_timeout`` bounds the wait for the next request.
    ``fault`` (``"die@R"`` / ``"hang@R"``: before computing request R) is for fault tests.
    Raises :class:`DistributedError` naming the stage (and the peer) on failure.
    """
    if threads:
        torch.set_num_threads(threads)
    plan = read_plan(plan_dir)
    st = load(plan_dir, stage=stage, device=device)
    n = plan.num_stages
    rank, size = stage + 1, n + 1
    dev = st.device
    be = _backend_for(dev, backend)
    name = f"stage {stage} ({st.node})"
    store = _client_store(master_addr, master_port, join_timeout)
    store.set(f"{_PREFIX}stage{stage}/plan", plan_digest(plan_dir))
    store.set(f"{_PREFIX}stage{stage}/status", f"joining pid {os.getpid()} on {socket.gethostname()}")
    pg = _make_group(be, dist.PrefixStore("rotafx/pg/", store), rank, size, join_timeout)
    stop_watch = threading.Event()
    watch = threading.Thread(target=_watchdog, args=(master_addr, master_port, name, stop_watch), daemon=True)
    watch.start()
    wire = _Wire(plan)
    lin, lout = wire.layouts[stage], wire.layouts[stage + 1]
    emulator = LinkEmulator(plan.hops[stage].links)
    fault_kind, fault_at = (fault.split("@") + ["0"])[:2] if fault else (None, "-1")
    pending: collections.deque[Any] = collections.deque()
    store.set(f"{_PREFIX}stage{stage}/status", "running")
    peer = stage  # the rank we are waiting on (stage - 1 + 1)
    try:
        buf = lin.empty(dev)
        work = pg.recv([buf], rank - 1, 0)
        while True:
            # idle or not, this stage cannot tell a quiet driver from a stuck neighbour: the driver's
            # timeout finds a hang and aborts everyone (see Driver._diagnose)
            store.set(f"{_PREFIX}stage{stage}/state", "waiting for the next request")
            peer = rank - 1
            _wait(work, idle_timeout, peer, f"{name}: receiving from {_who(plan, peer)}")
            kind, req, sent_at, flags = _Layout.header(buf)
            if kind == _STOP:
                out = lout.pack(_STOP, req, [torch.zeros(s.shape, dtype=s.torch_dtype, device=dev) for s in lout.specs], dev)
                peer = rank + 1 if rank + 1 < size else 0
                _wait(pg.send([out], peer, 0), timeout, peer, f"{name}: passing stop to {_who(plan, peer)}")
                break
            incoming = wire.split(stage, lin.unpack(buf))
            buf = lin.empty(dev)
            work = pg.recv([buf], rank - 1, 0)  # the next request arrives while this one runs
            if emulate_links or flags & _EMULATE:
                emulator.deliver(sent_at, lin.payload_bytes)
            store.set(f"{_PREFIX}stage{stage}/state", f"computing request {req}")
            if fault_kind is not None and req == int(fault_at):
                if fault_kind == "die":  # a crash between requests: what was sent is delivered, then the process is gone
                    while pending:
                        _wait(pending.popleft()[0], timeout, rank + 1 if rank + 1 < size else 0, "flushing")
                    os._exit(17)
                if fault_kind == "hang":
                    while True:
                        time.sleep(3600)
            local: dict[str, torch.Tensor] = {}
            ins = []
            for v in st.spec.inputs:
                key = (v, True) if (v, True) in incoming else (v, False)
                local[v] = wire.decoded(v, incoming[key], key[1], dev)
                ins.append(local[v])
            with torch.no_grad():
                outs = st(*ins)
            local.update(zip(st.spec.outputs, outs))
            msg = lout.pack(_DATA, req, wire.gather(stage + 1, incoming, local), dev, flags)
            peer = rank + 1 if rank + 1 < size else 0
            pending.append((pg.send([msg], peer, 0), msg))
            while len(pending) > 2:
                _wait(pending.popleft()[0], timeout, peer, f"{name}: sending to {_who(plan, peer)}")
            store.set(f"{_PREFIX}stage{stage}/sent", str(req))
        while pending:
            _wait(pending.popleft()[0], timeout, peer, f"{name}: sending to {_who(plan, peer)}")
        store.set(f"{_PREFIX}stage{stage}/status", "done")
    except _CommError as e:
        what = "timed out" if e.timed_out else "lost the connection"
        if e.peer == rank - 1:  # upstream is gone: pass on what this stage finished, so the driver can report it
            try:
                while pending:
                    _wait(pending.popleft()[0], min(timeout, 5.0), rank + 1 if rank + 1 < size else 0, "flushing")
            except _CommError:
                pass
        _set_quietly(store, f"stage{stage}/error", json.dumps({"kind": "peer", "peer": e.peer, "timed_out": e.timed_out,
                                                              "message": str(e)}))
        aborted = None
        for _ in range(10):  # the driver may be a moment behind: give it a second to say what it found
            aborted = _get(store, "abort")
            if aborted:
                break
            time.sleep(0.1)
        if aborted:  # the driver found the fault first: say what it found
            raise DistributedError(f"rotafx: {name}: the driver aborted the run: {aborted}", stage=stage, node=st.node) from None
        raise DistributedError(f"rotafx: {name} {what} with {_who(plan, e.peer)}: {e}", stage=stage, node=st.node) from None
    except Exception as e:
        _set_quietly(store, f"stage{stage}/error", json.dumps({"kind": "self", "message": f"{type(e).__name__}: {e}"}))
        raise DistributedError(f"rotafx: {name} failed: {type(e).__name__}: {e}", stage=stage, node=st.node) from e
    finally:
        stop_watch.set()
        _shutdown(pg)
    return 0


def _who(plan: PlanSpec, rank: int) -> str:
    return "the driver" if rank == 0 else f"stage {rank - 1} ({plan.stages[rank - 1].node})"


def _set_quietly(store: Any, key: str, value: str) -> None:
    try:
        store.set(_PREFIX + key, value)
    except Exception:  # noqa: BLE001 - the driver (store host) may be gone already
        pass


def _shutdown(pg: Any) -> None:
    try:
        pg.shutdown()
    except Exception:  # noqa: BLE001
        pass


def _watchdog(host: str, port: int, name: str, stop: threading.Event, period_s: float = 0.2) -> None:
    """Exit the process when the driver aborts the run or its store disappears."""
    try:
        store = _client_store(host, port, 10.0)
    except Exception:  # noqa: BLE001
        sys.stderr.write(f"rotafx: {name}: cannot reach the driver's store at {host}:{port}; exiting\n")
        os._exit(4)
    misses = 0
    while not stop.wait(period_s):
        try:
            if store.check([_PREFIX + "abort"]):
                msg = store.get(_PREFIX + "abort").decode()
                sys.stderr.write(f"rotafx: {name}: the driver aborted the run: {msg}\n")
                sys.stderr.flush()
                os._exit(3)
            misses = 0
        except Exception:  # noqa: BLE001
            misses += 1
            if misses >= 5:  # about a second without the driver
                sys.stderr.write(f"rotafx: {name}: the driver at {host}:{port} is gone; exiting\n")
                sys.stderr.flush()
                os._exit(4)


# ---------------------------------------------------------------------------
# the driver


class Driver:
    """Rank 0: hosts the store, feeds requests to stage 0 and collects outputs from the last stage.

    >>> # with Driver("plan", master_port=29500) as d:      # stages: rotafx serve --plan plan --stage i ...
    >>> #     outputs = d.run([(x0,), (x1,), (x2,)])        # one output per request, pipelined

    ``timeout`` (s) bounds each wait for a request's output once it is under way (a
    stage that takes longer is reported as hung); ``join_timeout`` the wait for every stage
    to join. ``window`` is how many requests may be in flight (default: two per stage).
    """

    def __init__(self, plan_dir: str | os.PathLike[str], *, master_addr: str = "127.0.0.1", master_port: int = 29500,
                 timeout: float = 60.0, join_timeout: float = 120.0, emulate_links: bool = False,
                 backend: str | None = None, device: Any = "cpu", processes: Sequence[Any] = ()) -> None:
        self.plan_dir = Path(plan_dir)
        self.plan = read_plan(plan_dir)
        self.timeout = float(timeout)
        self.device = torch.device(device)
        self.emulate_links = emulate_links
        self.processes = list(processes)  # local stage processes, to report a stage that died
        n = self.plan.num_stages
        self.wire = _Wire(self.plan)
        self._in, self._out = self.wire.layouts[0], self.wire.layouts[n]
        self._emulator = LinkEmulator(self.plan.hops[n].links)
        self._next_id = self._base = 0
        self._closed = False
        self.store = dist.TCPStore(master_addr, master_port, n + 1, True, datetime.timedelta(seconds=join_timeout),
                                   wait_for_workers=False)
        self.store.set(_PREFIX + "plan", plan_digest(plan_dir))
        try:
            self.pg = _make_group(_backend_for(self.device, backend), dist.PrefixStore("rotafx/pg/", self.store), 0, n + 1,
                                  join_timeout)
        except Exception as e:
            missing = [i for i in range(n) if _get(self.store, f"stage{i}/status") is None]
            who = ", ".join(f"stage {i} ({self.plan.stages[i].node})" for i in missing) or "a stage"
            self._abort(f"{who} did not join")
            raise DistributedError(f"rotafx: {who} did not join the driver at {master_addr}:{master_port} within "
                                   f"{join_timeout:g} s (start it with `rotafx serve --plan DIR --stage i "
                                   f"--master-addr {master_addr} --master-port {master_port}`): "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
                                   stage=missing[0] if missing else None,
                                   node=self.plan.stages[missing[0]].node if missing else None) from None
        mine = plan_digest(plan_dir)
        for i in range(n):
            theirs = _get(self.store, f"stage{i}/plan")
            if theirs != mine:
                self._abort(f"stage {i} runs another plan")
                self.close(stop=False)
                raise DistributedError(f"rotafx: stage {i} ({self.plan.stages[i].node}) loaded a different plan.json "
                                       f"(sha256 {str(theirs)[:12]}…, the driver's is {mine[:12]}…); copy the same plan "
                                       f"directory to every host", stage=i, node=self.plan.stages[i].node)

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(stop=exc[0] is None)

    def check(self, requests: Iterable[Any]) -> list[list[torch.Tensor]]:
        """Every request flattened and checked against the plan; raises :class:`~rotafx.PlanError` naming the bad one."""
        out = []
        for i, r in enumerate(requests):
            args, kwargs = _split_request(r)
            out.append(check_request(self.plan, args, kwargs, where=f"request {i}: "))
        return out

    def run(self, requests: Sequence[Any], *, window: int | None = None, emulate_links: bool | None = None) -> list[Any]:
        """Send every request through the pipeline; their outputs, in order (structured like the model's).

        A request is a tuple of positional inputs (or a single tensor, or ``(args, kwargs)``
        as a ``dict`` under ``"args"``/``"kwargs"``). All are checked before the first is sent.
        ``emulate_links`` (default: the driver's setting) delays every hop of these requests
        as the plan's topology links would (:mod:`rotafx.runtime.links`).
        """
        emulate = self.emulate_links if emulate_links is None else bool(emulate_links)
        if self._closed:
            raise DistributedError("rotafx: this driver is closed")
        flat = self.check(requests)
        n = self.plan.num_stages
        window = window or 2 * n
        if window < 1:
            raise ValueError(f"rotafx: window must be a positive number of requests in flight, got {window}")
        last = n  # the rank of the last stage
        outputs: dict[int, Any] = {}
        inflight: collections.deque[tuple[int, int, torch.Tensor, Any]] = collections.deque()
        sends: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()
        base = self._base = self._next_id

        def collect() -> None:
            i, req, buf, work = inflight.popleft()
            try:
                _wait(work, self.timeout, last, f"the driver: waiting for request {i}")
            except _CommError as e:
                raise self._failure(e, i, outputs) from None
            kind, got, sent_at, flags = _Layout.header(buf)
            if got != req:
                raise self._failure(RuntimeError(f"expected the output of request {req}, got {got}"), i, outputs)
            if emulate:
                self._emulator.deliver(sent_at, self._out.payload_bytes)
            wires = self.wire.split(n, self._out.unpack(buf))
            vals = [self.wire.decoded(v, wires[(v, False)], False, self.device).clone() for v in self.plan.outputs]
            outputs[i] = tree_unflatten(vals, self.plan.out_spec) if self.plan.out_spec is not None else tuple(vals)

        for i, tensors in enumerate(flat):
            while len(inflight) >= window:
                collect()
            req = base + i
            out_buf = self._out.empty(self.device)
            inflight.append((i, req, out_buf, self.pg.recv([out_buf], last, 0)))
            msg = self._in.pack(_DATA, req, [t.to(self.device) for t in tensors], self.device, _EMULATE if emulate else 0)
            sends.append((self.pg.send([msg], 1, 0), msg))
            while len(sends) > window:
                try:
                    _wait(sends.popleft()[0], self.timeout, 1, f"the driver: sending request {i}")
                except _CommError as e:
                    raise self._failure(e, i, outputs) from None
        while inflight:
            collect()
        while sends:
            try:
                _wait(sends.popleft()[0], self.timeout, 1, "the driver: sending")
            except _CommError as e:
                raise self._failure(e, len(flat) - 1, outputs) from None
        self._next_id = base + len(flat)
        return [outputs[i] for i in range(len(flat))]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One request, like calling the model."""
        return self.run([{"args": args, "kwargs": kwargs}])[0]

    def close(self, stop: bool = True) -> None:
        """Tell the stages to stop (they exit), then leave the process group."""
        if self._closed:
            return
        self._closed = True
        if stop:
            try:
                msg = self._in.pack(_STOP, self._next_id, [torch.zeros(s.shape, dtype=s.torch_dtype) for s in self._in.specs],
                                    self.device)
                _wait(self.pg.send([msg], 1, 0), self.timeout, 1, "the driver: stopping")
                buf = self._out.empty(self.device)
                _wait(self.pg.recv([buf], self.plan.num_stages, 0), self.timeout, self.plan.num_stages, "the driver: stopping")
            except (_CommError, RuntimeError):
                self._abort("the driver stopped")
        _shutdown(self.pg)

    # -- faults -------------------------------------------------------------------
    def _abort(self, message: str) -> None:
        _set_quietly(self.store, "abort", message)

    def _failure(self, err: Exception, request: int, outputs: Mapping[int, Any]) -> DistributedError:
        """Find the stage to blame, stop every stage, and build the error."""
        time.sleep(0.3)  # let the stages record what they saw
        stage, reason = self._diagnose(err, self._base + request)
        node = self.plan.stages[stage].node if stage is not None else None
        who = f"stage {stage} ({node})" if stage is not None else "an unknown stage"
        done = sorted(outputs)
        msg = (f"rotafx: {who} {reason}; request {request} did not complete; "
               f"{len(done)} request(s) completed: {_ranges(done)}")
        self._abort(msg)
        self._closed = True
        _shutdown(self.pg)
        return DistributedError(msg, stage=stage, node=node, completed=done, outputs=outputs)

    def _diagnose(self, err: Exception, request: int) -> tuple[int | None, str]:
        n = self.plan.num_stages
        errors: dict[int, dict[str, Any]] = {}
        for i in range(n):
            raw = _get(self.store, f"stage{i}/error")
            if raw:
                try:
                    errors[i] = json.loads(raw)
                except json.JSONDecodeError:
                    errors[i] = {"kind": "self", "message": raw}
        for i, e in errors.items():
            if e.get("kind") == "self":
                return i, f"failed: {e.get('message')}"
        for i, p in enumerate(self.processes[:n]):
            code = p.poll() if p is not None else None
            if code is not None and i not in errors:
                return i, f"died (exit status {code})"
        peer_errors = [(int(e["peer"]) - 1, bool(e.get("timed_out"))) for e in errors.values()
                       if e.get("kind") == "peer" and 0 < int(e.get("peer", 0)) <= n]
        for i, timed_out in peer_errors:
            if not timed_out and i not in errors:
                return i, "died (its neighbours lost the connection)"
        if isinstance(err, _CommError) and not err.timed_out and err.peer == n and n - 1 not in errors:
            return n - 1, "died (it closed the connection to the driver)"
        # a hang: the first stage that has not passed on the request the driver is waiting for
        rel = request - self._base
        for i in range(n):
            if int(_get(self.store, f"stage{i}/sent") or -1) < request:
                state = _get(self.store, f"stage{i}/state") or "unknown"
                return i, f"made no progress on request {rel} for {self.timeout:g} s (hung while {state})"
        for i, timed_out in peer_errors:
            if i not in errors:
                return i, f"stopped answering its neighbours within {self.timeout:g} s"
        return n - 1, f"passed request {rel} on but the driver did not receive it within {self.timeout:g} s"


def _ranges(xs: Sequence[int]) -> str:
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)


def _split_request(r: Any) -> tuple[tuple, dict[str, Any]]:
    if isinstance(r, Mapping) and set(r) <= {"args", "kwargs"} and r:
        return tuple(r.get("args", ())), dict(r.get("kwargs", {}))
    if isinstance(r, tuple):
        return r, {}
    if isinstance(r, list):
        return tuple(r), {}
    return (r,), {}


# ---------------------------------------------------------------------------
# a local run: every stage in its own process on this machine


# ``rotafx serve`` without importing the rest of rotafx (the solver's cvxpy alone takes seconds):
# a stage process needs torch, the plan reader and this runtime, nothing else
_LEAN_SERVE = """
import sys, types
pkg = sys.argv.pop(1)
for name, path in (("rotafx", pkg), ("rotafx.runtime", pkg + "/runtime")):
    m = types.ModuleType(name); m.__path__ = [path]; m.__package__ = name; sys.modules[name] = m
from rotafx.runtime.distributed import main
raise SystemExit(main(sys.argv[1:]))
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``rotafx serve`` arguments -> :func:`serve`; prints a failure on one line and returns 3."""
    import argparse

    ap = argparse.ArgumentParser(prog="rotafx serve")
    add_serve_args(ap)
    args = ap.parse_args(argv)
    return serve_from_args(args)


def add_serve_args(p: Any) -> None:
    """The options of ``rotafx serve`` (shared by the CLI and the lean entry point)."""
    import argparse

    p.add_argument("--plan", required=True, help="the plan directory (the same on every host)")
    p.add_argument("--stage", type=int, required=True, help="which stage of the plan to run (0 .. stages-1; rank = stage + 1)")
    p.add_argument("--master-addr", default=None, help="the driver's host (default $MASTER_ADDR or 127.0.0.1)")
    p.add_argument("--master-port", type=int, default=None, help="the driver's port (default $MASTER_PORT or 29500)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for each send or receive of a request under way")
    p.add_argument("--idle-timeout", type=float, default=7 * 24 * 3600.0, help="seconds to wait for the next request")
    p.add_argument("--join-timeout", type=float, default=120.0, help="seconds for every process to join")
    p.add_argument("--emulate-links", action="store_true", help="delay messages as the plan's topology links would")
    p.add_argument("--device", default=None, help="torch device for this stage (default: the one it was exported on)")
    p.add_argument("--backend", default=None, choices=["gloo", "nccl"], help="default: gloo on CPU, nccl on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)  # die@R / hang@R, for the fault tests


def serve_from_args(args: Any) -> int:
    """Run :func:`serve` from parsed ``rotafx serve`` arguments; a failure prints one line and returns 3."""
    addr = args.master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(args.master_port or os.environ.get("MASTER_PORT", 29500))
    try:
        return serve(args.plan, args.stage, master_addr=addr, master_port=port, timeout=args.timeout,
                     idle_timeout=args.idle_timeout, join_timeout=args.join_timeout, emulate_links=args.emulate_links,
                     device=args.device, backend=args.backend, threads=args.threads, fault=args.inject_fault)
    except (DistributedError, PlanError) as e:
        print(str(e), file=sys.stderr, flush=True)
        return 3


@dataclass
class LocalCluster:
    """Stage processes started on this machine plus the driver in this process; ``close`` ends them all."""

    driver: Driver
    processes: list[subprocess.Popen]
    logs: list[Path] = field(default_factory=list)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(stop=exc[0] is None)

    def run(self, requests: Sequence[Any], **kw: Any) -> list[Any]:
        return self.driver.run(requests, **kw)

    def wait(self, timeout: float) -> list[int | None]:
        """Wait up to ``timeout`` s for every stage process to exit; their exit codes (``None``: still running)."""
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        return [p.poll() for p in self.processes]

    def stderr(self, i: int) -> str:
        return self.logs[i].read_text() if i < len(self.logs) and self.logs[i].exists() else ""

    def close(self, stop: bool = True, grace_s: float = 10.0) -> None:
        try:
            self.driver.close(stop=stop)
        finally:
            self.wait(grace_s if stop else 2.0)
            for p in self.processes:
                if p.poll() is None:
                    p.kill()
                    p.wait(5)


def launch_local(plan_dir: str | os.PathLike[str], *, port: int | None = None, timeout: float = 60.0,
                 join_timeout: float = 60.0, emulate_links: bool = False, threads: int = 1,
                 faults: Mapping[int, str] | None = None, log_dir: str | os.PathLike[str] | None = None,
                 python: str = sys.executable) -> LocalCluster:
    """Start ``rotafx serve`` for every stage of the plan on 127.0.0.1 and connect a :class:`Driver` to them.

    Each stage process gets ``OMP_NUM_THREADS=threads``; its stderr goes to
    ``log_dir/stage{i}.log`` (a temporary directory by default). ``faults`` maps a stage
    to ``"die@R"`` or ``"hang@R"`` (fault tests). Use as a context manager: leaving it
    stops the stages and kills any that did not exit.
    """
    import tempfile

    plan = read_plan(plan_dir)
    port = port or free_port()
    logs_at = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="rotafx-logs-"))
    logs_at.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pkg = Path(__file__).resolve().parents[1]
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    try:
        for i in range(plan.num_stages):
            cmd = [python, "-c", _LEAN_SERVE, str(pkg), "--plan", str(plan_dir), "--stage", str(i),
                   "--master-addr", "127.0.0.1", "--master-port", str(port), "--timeout", str(timeout),
                   "--join-timeout", str(join_timeout), "--threads", str(threads)]
            if emulate_links:
                cmd.append("--emulate-links")
            if faults and i in faults:
                cmd += ["--inject-fault", faults[i]]
            log = logs_at / f"stage{i}.log"
            logs.append(log)
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=env))
        driver = Driver(plan_dir, master_addr="127.0.0.1", master_port=port, timeout=timeout,
                        join_timeout=join_timeout, emulate_links=emulate_links, processes=procs)
    except BaseException:
        for p in procs:
            p.kill()
            p.wait(5)
        raise
    return LocalCluster(driver, procs, logs)
