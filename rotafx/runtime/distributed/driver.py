"""The driver: rank 0, which hosts the rendezvous store, feeds requests to stage 0 and collects outputs from the last stage.

Ranks: the driver is rank 0 and hosts the rendezvous store (``MASTER_ADDR:MASTER_PORT``);
stage ``i`` of the plan is rank ``i + 1``. A stage receives request ``r + 1`` while it
computes ``r``, and the driver keeps ``window`` requests in flight, so a long enough
stream runs at the pace of the slowest stage or link. When a stage fails or hangs, the
driver names it (:meth:`Driver._diagnose`), sets ``rotafx/abort`` in the store (every
stage's watchdog exits on it) and raises :class:`DistributedError` with the requests
that completed.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_unflatten

from ...plan.schema import check_request, read_plan
from ...units import format_ranges
from ..links import LinkEmulator
from .transport import (DATA, EMULATE, PREFIX, STOP, CommError, DistributedError, Layout, Wire, backend_for, get_key,
                        make_group, plan_digest, set_quietly, shutdown, wait)

__all__ = ["Driver"]


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
        self.wire = Wire(self.plan)
        self._in, self._out = self.wire.layouts[0], self.wire.layouts[n]
        self._emulator = LinkEmulator(self.plan.hops[n].links)
        self._next_id = self._base = 0
        self._closed = False
        self.store = dist.TCPStore(master_addr, master_port, n + 1, True, datetime.timedelta(seconds=join_timeout),
                                   wait_for_workers=False)
        self.store.set(PREFIX + "plan", plan_digest(plan_dir))
        try:
            self.pg = make_group(backend_for(self.device, backend), dist.PrefixStore("rotafx/pg/", self.store), 0, n + 1,
                                  join_timeout)
        except Exception as e:
            missing = [i for i in range(n) if get_key(self.store, f"stage{i}/status") is None]
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
            theirs = get_key(self.store, f"stage{i}/plan")
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
                wait(work, self.timeout, last, f"the driver: waiting for request {i}")
            except CommError as e:
                raise self._failure(e, i, outputs) from None
            kind, got, sent_at, flags = Layout.header(buf)
            if got != req:
                raise self._failure(RuntimeError(f"expected the output of request {req}, got {got}"), i, outputs)
            if emulate:
                self._emulator.deliver(sent_at, self._out.payload_bytes)
            wires = self.wire.split(n, self._out.unpack(buf))
            vals = [self.plan.constants[v] if v in self.plan.constants else
                    self.wire.decoded(v, wires[(v, False)], False, self.device).clone() for v in self.plan.outputs]
            outputs[i] = tree_unflatten(vals, self.plan.out_spec) if self.plan.out_spec is not None else tuple(vals)

        for i, tensors in enumerate(flat):
            while len(inflight) >= window:
                collect()
            req = base + i
            out_buf = self._out.empty(self.device)
            inflight.append((i, req, out_buf, self.pg.recv([out_buf], last, 0)))
            msg = self._in.pack(DATA, req, [t.to(self.device) for t in tensors], self.device, EMULATE if emulate else 0)
            sends.append((self.pg.send([msg], 1, 0), msg))
            while len(sends) > window:
                try:
                    wait(sends.popleft()[0], self.timeout, 1, f"the driver: sending request {i}")
                except CommError as e:
                    raise self._failure(e, i, outputs) from None
        while inflight:
            collect()
        while sends:
            try:
                wait(sends.popleft()[0], self.timeout, 1, "the driver: sending")
            except CommError as e:
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
                msg = self._in.pack(STOP, self._next_id, [torch.zeros(s.shape, dtype=s.torch_dtype) for s in self._in.specs],
                                    self.device)
                wait(self.pg.send([msg], 1, 0), self.timeout, 1, "the driver: stopping")
                buf = self._out.empty(self.device)
                wait(self.pg.recv([buf], self.plan.num_stages, 0), self.timeout, self.plan.num_stages, "the driver: stopping")
            except (CommError, RuntimeError):
                self._abort("the driver stopped")
        shutdown(self.pg)

    # -- faults -------------------------------------------------------------------
    def _abort(self, message: str) -> None:
        set_quietly(self.store, "abort", message)

    def _failure(self, err: Exception, request: int, outputs: Mapping[int, Any]) -> DistributedError:
        """Find the stage to blame, stop every stage, and build the error."""
        time.sleep(0.3)  # let the stages record what they saw
        stage, reason = self._diagnose(err, self._base + request)
        node = self.plan.stages[stage].node if stage is not None else None
        who = f"stage {stage} ({node})" if stage is not None else "an unknown stage"
        done = sorted(outputs)
        msg = (f"rotafx: {who} {reason}; request {request} did not complete; "
               f"{len(done)} request(s) completed: {format_ranges(done) or 'none'}")
        self._abort(msg)
        self._closed = True
        shutdown(self.pg)
        return DistributedError(msg, stage=stage, node=node, completed=done, outputs=outputs)

    def _diagnose(self, err: Exception, request: int) -> tuple[int | None, str]:
        n = self.plan.num_stages
        errors: dict[int, dict[str, Any]] = {}
        for i in range(n):
            raw = get_key(self.store, f"stage{i}/error")
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
        if isinstance(err, CommError) and not err.timed_out and err.peer == n and n - 1 not in errors:
            return n - 1, "died (it closed the connection to the driver)"
        # a hang: the first stage that has not passed on the request the driver is waiting for
        rel = request - self._base
        for i in range(n):
            if int(get_key(self.store, f"stage{i}/sent") or -1) < request:
                state = get_key(self.store, f"stage{i}/state") or "unknown"
                return i, f"made no progress on request {rel} for {self.timeout:g} s (hung while {state})"
        for i, timed_out in peer_errors:
            if i not in errors:
                return i, f"stopped answering its neighbours within {self.timeout:g} s"
        return n - 1, f"passed request {rel} on but the driver did not receive it within {self.timeout:g} s"


def _split_request(r: Any) -> tuple[tuple, dict[str, Any]]:
    """A request as ``(args, kwargs)``: a tuple or list of inputs, one input, or ``{"args": ..., "kwargs": ...}``."""
    if isinstance(r, Mapping) and set(r) <= {"args", "kwargs"} and r:
        return tuple(r.get("args", ())), dict(r.get("kwargs", {}))
    if isinstance(r, tuple):
        return r, {}
    if isinstance(r, list):
        return tuple(r), {}
    return (r,), {}
