"""The driver: rank 0, which hosts the rendezvous store, feeds requests to stage 0 and collects outputs from the last stage.

Ranks: the driver is rank 0 and hosts the authenticated rendezvous store
(:mod:`.store`, at ``master_addr:master_port`` and nowhere else); stage ``i`` of the plan
is rank ``i + 1``. A stage receives request ``r + 1`` while it computes ``r``, and the
driver keeps ``window`` requests in flight, so a long enough stream runs at the pace of
the slowest stage or link.

Faults: while it waits, the driver watches every stage: a stage whose process is gone
(its connection to the store closed) or that stopped sending heartbeats is named at
once, idle or mid-stream; one that hangs while still beating is found by ``timeout``
(the first stage that has not passed the request on). The driver then sets
``rotafx/abort`` in the store (every stage's watchdog exits on it), and raises
:class:`DistributedError` with the requests that completed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_unflatten

from ...plan.schema import check_request, read_plan
from ...units import first_line, format_ranges
from ..links import LinkEmulator
from .secret import resolve_secret
from .store import AuthStore, StoreServer
from .transport import (BEAT_S, DATA, EMULATE, PREFIX, STOP, CommError, DistributedError, Layout, Wire, backend_for,
                        check_endpoint, check_links, get_key, make_group, plan_digest, post, set_quietly, shutdown,
                        wait)

__all__ = ["Driver"]


class Driver:
    """Rank 0: hosts the store, feeds requests to stage 0 and collects outputs from the last stage.

    >>> # with Driver("plan", master_port=29500, secret_file="cluster.key") as d:  # stages: rotafx serve ...
    >>> #     outputs = d.run([(x0,), (x1,), (x2,)])        # one output per request, pipelined

    ``timeout`` (s) bounds each wait for a request's output once it is under way (a
    stage that takes longer is reported as hung); ``join_timeout`` the wait for every stage
    to join; ``heartbeat_timeout`` how long a stage may go without a heartbeat (its
    watchdog sends one every 0.2 s) before it is reported as stopped. ``window`` is how
    many requests may be in flight (default: two per stage).

    Only processes that hold the cluster's secret can join: ``secret=`` (a string),
    ``secret_file=`` (created with a new random secret, readable by its owner only, when it
    does not exist) or ``$ROTAFX_SECRET``; the stages read the same file
    (``rotafx serve --secret-file``) or variable. The store listens on ``master_addr`` only.
    """

    def __init__(self, plan_dir: str | os.PathLike[str], *, master_addr: str = "127.0.0.1", master_port: int = 29500,
                 timeout: float = 60.0, join_timeout: float = 120.0, heartbeat_timeout: float = 5.0,
                 emulate_links: bool = False, backend: str | None = None, device: Any = "cpu",
                 processes: Sequence[Any] = (), secret: str | bytes | None = None,
                 secret_file: str | os.PathLike[str] | None = None) -> None:
        check_endpoint(master_addr, master_port, timeout=timeout, join_timeout=join_timeout,
                       heartbeat_timeout=heartbeat_timeout)
        if heartbeat_timeout < 5 * BEAT_S:
            raise ValueError(f"rotafx: heartbeat_timeout must be at least {5 * BEAT_S:g} s (five heartbeats of "
                             f"{BEAT_S:g} s; a shorter one calls a busy stage stopped), got {heartbeat_timeout!r}")
        self._secret = resolve_secret(secret, secret_file, create=True, who="the driver")
        self.plan_dir = Path(plan_dir)
        self.plan = read_plan(plan_dir)
        self.timeout, self.heartbeat_timeout = float(timeout), float(heartbeat_timeout)
        self.device = torch.device(device)
        self.emulate_links = emulate_links
        self.processes = list(processes)  # local stage processes, to report a stage that died
        n = self.plan.num_stages
        self.wire = Wire(self.plan)
        self._in, self._out = self.wire.layouts[0], self.wire.layouts[n]
        self._emulator = LinkEmulator(self.plan.hops[n].links)
        self._next_id = self._base = 0
        self._closed = False
        self.pg: Any = None
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rotafx-driver-wait")
        where = f"{master_addr}:{master_port}"
        try:
            self.server = StoreServer(master_addr, master_port, self._secret)
        except OSError as e:
            why = e.strerror or str(e)
            hint = "" if "resolve" in why else " (another process holds the port? pick another master_port)"
            raise DistributedError(f"rotafx: the driver cannot listen on {where}: {why}{hint}") from None
        self.store = AuthStore.local(self.server, join_timeout)
        nonce = secrets.token_hex(16)
        self.store.set(PREFIX + "plan", plan_digest(plan_dir))
        self.store.set(PREFIX + "nonce", nonce)
        bind = None if master_addr in ("0.0.0.0", "::") else master_addr
        try:
            # the group forms in a helper thread, so that a stage that dies while joining is named at once
            forming = self._waiter.submit(make_group, backend_for(self.device, backend),
                                          dist.PrefixStore("rotafx/pg/", self.store), 0, n + 1, join_timeout, bind=bind)
            while True:
                try:
                    self.pg = forming.result(timeout=0.1)
                    break
                except concurrent.futures.TimeoutError:
                    gone = self._faults(joining=True)
                    if gone:
                        _, i, reason = min(gone)
                        self._abort(f"stage {i} {reason} while joining")
                        raise DistributedError(f"rotafx: stage {i} ({self.plan.stages[i].node}) {reason} while the "
                                               f"stages joined the driver at {where}", stage=i,
                                               node=self.plan.stages[i].node) from None
                except Exception as e:  # noqa: BLE001 - gloo's rendezvous timeout: name who did not come
                    missing = [i for i in range(n) if get_key(self.store, f"stage{i}/status") is None]
                    who_ = ", ".join(f"stage {i} ({self.plan.stages[i].node})" for i in missing) or "a stage"
                    refused = len(self.server.rejected)
                    self._abort(f"{who_} did not join")
                    raise DistributedError(
                        f"rotafx: {who_} did not join the driver at {where} within {join_timeout:g} s (start it with "
                        f"`rotafx serve --plan DIR --stage i --master-addr {master_addr} --master-port {master_port}` "
                        f"and the cluster's secret): {first_line(e)}"
                        + (f"; {refused} connection(s) were refused (without the secret, or too slow to authenticate)"
                           if refused else ""),
                        stage=missing[0] if missing else None,
                        node=self.plan.stages[missing[0]].node if missing else None) from None
            mine = plan_digest(plan_dir)
            for i in range(n):
                theirs = get_key(self.store, f"stage{i}/plan")
                if theirs != mine:
                    self._abort(f"stage {i} runs another plan")
                    raise DistributedError(f"rotafx: stage {i} ({self.plan.stages[i].node}) loaded a different "
                                           f"plan.json (sha256 {str(theirs)[:12]}…, the driver's is {mine[:12]}…); "
                                           f"copy the same plan directory to every host",
                                           stage=i, node=self.plan.stages[i].node)
            check_links(self.pg, 0, n + 1, self._secret, nonce, join_timeout, self.device, "the driver")
            self._wait_running(join_timeout)
        except BaseException as e:
            if not isinstance(e, DistributedError):
                self._abort(f"the driver failed while the stages joined: {type(e).__name__}")
            self._release()
            raise

    def _wait_running(self, timeout_s: float) -> None:
        """Every stage checked its links and started its heartbeat, or one failed (named)."""
        deadline = time.monotonic() + timeout_s
        while True:
            errors = self._errors()
            if errors:
                i, e = min(errors.items())
                self._abort(f"stage {i} failed to start")
                raise DistributedError(f"rotafx: stage {i} ({self.plan.stages[i].node}) could not start: "
                                       f"{e.get('message')}", stage=i, node=self.plan.stages[i].node)
            waiting = [i for i in range(self.plan.num_stages) if get_key(self.store, f"stage{i}/status") != "running"]
            if not waiting:
                return
            if time.monotonic() > deadline:
                self._abort(f"stage {waiting[0]} did not start")
                raise DistributedError(f"rotafx: stage {waiting[0]} ({self.plan.stages[waiting[0]].node}) joined but "
                                       f"did not start within {timeout_s:g} s", stage=waiting[0],
                                       node=self.plan.stages[waiting[0]].node)
            time.sleep(0.02)

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
        as the plan's topology links would (:mod:`rotafx.runtime.links`). A stage that dies,
        stops or hangs, now or since the last call, raises :class:`DistributedError` naming
        it, with the requests that completed.
        """
        emulate = self.emulate_links if emulate_links is None else bool(emulate_links)
        if self._closed:
            raise DistributedError("rotafx: this driver is closed")
        flat = self.check(requests)
        n = self.plan.num_stages
        window = window or 2 * n
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"rotafx: window must be a positive number of requests in flight, got {window!r}")
        last = n  # the rank of the last stage
        outputs: dict[int, Any] = {}
        inflight: collections.deque[tuple[int, int, torch.Tensor, Any]] = collections.deque()
        sends: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()
        base = self._base = self._next_id
        fault = self._fault()
        if fault is not None:  # a stage died or stopped while the pipeline was idle
            raise self._failure(None, 0, outputs, fault)

        def start(op: Any, buf: torch.Tensor, peer: int, i: int) -> Any:
            try:
                return post(op, [buf], peer, f"the driver: request {i}")
            except CommError as e:  # gloo refuses to post on a connection that is gone
                raise self._failure(e, i, outputs) from None

        def collect() -> None:
            i, req, buf, work = inflight.popleft()
            self._wait(work, last, f"the driver: waiting for request {i}", i, outputs)
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
            inflight.append((i, req, out_buf, start(self.pg.recv, out_buf, last, i)))
            msg = self._in.pack(DATA, req, [t.to(self.device) for t in tensors], self.device, EMULATE if emulate else 0)
            sends.append((start(self.pg.send, msg, 1, i), msg))
            while len(sends) > window:
                self._wait(sends.popleft()[0], 1, f"the driver: sending request {i}", i, outputs)
        while inflight:
            collect()
        while sends:
            self._wait(sends.popleft()[0], 1, "the driver: sending", len(flat) - 1, outputs)
        self._next_id = base + len(flat)
        return [outputs[i] for i in range(len(flat))]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One request, like calling the model."""
        return self.run([{"args": args, "kwargs": kwargs}])[0]

    def close(self, stop: bool = True) -> None:
        """Tell the stages to stop (they exit), then leave the process group and close the store."""
        if not self._closed:
            self._closed = True
            if stop:
                try:
                    msg = self._in.pack(STOP, self._next_id,
                                        [torch.zeros(s.shape, dtype=s.torch_dtype) for s in self._in.specs], self.device)
                    self._wait(self.pg.send([msg], 1, 0), 1, "the driver: stopping", -1, {})
                    buf = self._out.empty(self.device)
                    self._wait(self.pg.recv([buf], self.plan.num_stages, 0), self.plan.num_stages,
                               "the driver: stopping", -1, {})
                    self._wait_done(2.0)
                except (DistributedError, CommError, RuntimeError):
                    self._abort("the driver stopped")
        self._release()

    def _wait_done(self, timeout_s: float) -> None:
        """Give the stages a moment to say they are done (or leave) before the store closes under them."""
        deadline = time.monotonic() + timeout_s
        n = self.plan.num_stages
        while time.monotonic() < deadline:
            if all(get_key(self.store, f"stage{i}/status") == "done" or
                   (self.server.client(f"stage{i}/watch") or (0, None))[1] is not None for i in range(n)):
                return
            time.sleep(0.01)

    def _release(self) -> None:
        """Leave the process group, stop the waiting thread and close the store (the stages' watchdogs exit)."""
        self._closed = True
        if self.pg is not None:
            shutdown(self.pg)
        self._waiter.shutdown(wait=False, cancel_futures=True)
        if getattr(self, "server", None) is not None:
            if get_key(self.store, "abort"):
                time.sleep(0.1)  # let the watchdogs read why
            self.server.close()

    # -- waiting, with the fault monitor ------------------------------------------------------
    def _wait(self, work: Any, peer: int, what: str, request: int, outputs: Mapping[int, Any]) -> None:
        """Wait for a send or receive (at most ``timeout``), checking every stage's liveness meanwhile.

        gloo closes the connection when a timed wait expires, so the wait itself runs whole in
        a helper thread while this one watches the heartbeats and the stages' connections.
        """
        fut = self._waiter.submit(wait, work, self.timeout, peer, what)
        while True:
            try:
                fut.result(timeout=0.05)
                return
            except concurrent.futures.TimeoutError:
                pass
            except CommError as e:
                raise self._failure(e, request, outputs) from None
            fault = self._fault()
            if fault is not None:
                raise self._failure(None, request, outputs, fault)

    def _fault(self) -> tuple[float, int, str] | None:
        """The first stage whose process is gone or whose heartbeat stopped, with when and what; None when all live."""
        found = self._faults()
        return min(found) if found else None

    def _faults(self, joining: bool = False) -> list[tuple[float, int, str]]:
        """Every stage whose process is gone or whose heartbeat stopped: (since when, stage, what).

        ``joining``: only processes that are gone (heartbeats count once the stages run)."""
        now, found = time.monotonic(), []
        for i in range(self.plan.num_stages):
            if get_key(self.store, f"stage{i}/status") == "done":  # it passed the stop on and left
                continue
            client = self.server.client(f"stage{i}/watch")
            code = self.processes[i].poll() if i < len(self.processes) and self.processes[i] is not None else None
            if client is not None and client[1] is not None:
                found.append((client[1], i, "died" + (f" (exit status {code})" if code is not None else
                                                      " (its process ended: its connection to the driver closed)")))
            elif code is not None:
                found.append((now, i, f"died (exit status {code})"))
            elif not joining:
                beat = self.server.updated(f"{PREFIX}stage{i}/beat")
                beat = beat if beat is not None else client[0] if client is not None else None
                if beat is not None and now - beat > self.heartbeat_timeout:
                    found.append((beat, i, f"stopped: no heartbeat for {now - beat:.1f} s (suspended, or its "
                                           f"process is stuck)"))
        return found

    # -- faults -------------------------------------------------------------------
    def _abort(self, message: str) -> None:
        set_quietly(self.store, "abort", message)

    def _errors(self) -> dict[int, dict[str, Any]]:
        """What each stage recorded about its own failure (stage -> record)."""
        errors: dict[int, dict[str, Any]] = {}
        for i in range(self.plan.num_stages):
            raw = get_key(self.store, f"stage{i}/error")
            if raw:
                try:
                    rec = json.loads(raw)
                    errors[i] = rec if isinstance(rec, dict) else {"kind": "self", "message": raw}
                except json.JSONDecodeError:
                    errors[i] = {"kind": "self", "message": raw}
        return errors

    def _failure(self, err: Exception | None, request: int, outputs: Mapping[int, Any],
                 fault: tuple[float, int, str] | None = None) -> DistributedError:
        """Find the stage to blame (``fault``: what the monitor saw), stop every stage, and build the error."""
        time.sleep(0.3)  # let the stages record what they saw
        stage, reason = self._diagnose(err, self._base + request, fault)
        node = self.plan.stages[stage].node if stage is not None else None
        who_ = f"stage {stage} ({node})" if stage is not None else "an unknown stage"
        done = sorted(outputs)
        msg = (f"rotafx: {who_} {reason}; request {request} did not complete; "
               f"{len(done)} request(s) completed: {format_ranges(done) or 'none'}")
        self._abort(msg)
        self._release()
        return DistributedError(msg, stage=stage, node=node, completed=done, outputs=outputs)

    def _diagnose(self, err: Exception | None, request: int,
                  fault: tuple[float, int, str] | None = None) -> tuple[int | None, str]:
        """Who is to blame: the first event (by the driver's clock) among a stage's own recorded failure,
        a stage whose process is gone or that stopped beating without reporting anything (the neighbours
        of a dead stage report losing it), and what the monitor saw (``fault``); else a neighbour's
        report; else the first stage that has not passed on the request the driver waits for."""
        n = self.plan.num_stages
        errors = self._errors()
        # the first event wins: a stage's own failure (when it recorded it) or a stage gone or silent without a word
        # (a neighbour of a dead stage may fail or exit too, but after it, and it recorded what it saw)
        now = time.monotonic()
        first = [(self.server.updated(f"{PREFIX}stage{i}/error") or now, i, f"failed: {e.get('message')}")
                 for i, e in errors.items() if e.get("kind") == "self"]
        first += [f for f in self._faults() if f[1] not in errors]
        if fault is not None and fault[1] not in errors:  # what the monitor saw stands, even if the stage recovered
            first.append(fault)
        if first:
            _, i, reason = min(first)
            return i, reason
        peer_errors = [(int(e["peer"]) - 1, bool(e.get("timed_out"))) for e in errors.values()
                       if e.get("kind") == "peer" and str(e.get("peer", "")).isdigit() and 0 < int(e["peer"]) <= n]
        for i, timed_out in peer_errors:
            if not timed_out and i not in errors:
                return i, "died (its neighbours lost the connection)"
        if isinstance(err, CommError) and not err.timed_out and err.peer == n and n - 1 not in errors:
            return n - 1, "died (it closed the connection to the driver)"
        # a hang: the first stage that has not passed on the request the driver is waiting for
        rel = request - self._base
        for i in range(n):
            sent = get_key(self.store, f"stage{i}/sent") or "-1"
            if (int(sent) if sent.lstrip("-").isdigit() else -1) < request:
                state = get_key(self.store, f"stage{i}/state") or "unknown"
                return i, (f"made no progress on request {rel} for {self.timeout:g} s (hung while {state}; the stages "
                           f"count every request since the driver started: this one is {request})")
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
