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
import math
import os
import statistics
import secrets
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_unflatten

from ...plan.schema import check_request, read_plan
from ...units import first_line, format_ranges
from ..sampling import (GenerationError, GenerationTimings, chunks, generate_left_padded, padded, prompt_groups,
                        summarize, token_ids)
from ..sampling import check_request as check_generation
from ..links import LinkEmulator, LinkWindows
from .secret import resolve_secret
from .store import AuthStore, StoreServer
from ..tracing import StageTrack, Trace, link_track, predicted_spans
from .transport import (BEAT_S, DATA, DECODE, EMULATE, FREE, LOST, NO_STAMP, PREFILL, PREFIX, PROGRAMS, SLOT_SHIFT,
                        STOP, TRACE, CommError,
                        DistributedError, LinkDownError, Layout, Stamp, Wire, backend_for, check_endpoint, check_links, get_key, header_only,
                        make_group, plan_digest, post, set_quietly, shutdown, wait, wires_of, endpoint_from_env,
                        check_world)

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

    ``master_addr`` / ``master_port`` default to ``$MASTER_ADDR`` / ``$MASTER_PORT`` as ``torchrun``
    sets them (see :func:`~.transport.endpoint_from_env`), else ``127.0.0.1:29500``; under torchrun
    the driver is rank 0 and stage ``i`` rank ``i + 1`` (``rotafx serve --plan DIR`` takes its stage
    from ``$RANK``), and a ``$WORLD_SIZE`` other than stages + 1 is refused.
    """

    def __init__(self, plan_dir: str | os.PathLike[str], *, master_addr: str | None = None,
                 master_port: int | None = None,
                 timeout: float = 60.0, join_timeout: float = 120.0, heartbeat_timeout: float = 5.0,
                 emulate_links: bool = False, backend: str | None = None, device: Any = "cpu",
                 processes: Sequence[Any] = (), secret: str | bytes | None = None,
                 secret_file: str | os.PathLike[str] | None = None,
                 trace: str | os.PathLike[str] | None = None) -> None:
        master_addr, master_port = endpoint_from_env(master_addr, master_port)
        check_endpoint(master_addr, master_port, timeout=timeout, join_timeout=join_timeout,
                       heartbeat_timeout=heartbeat_timeout)
        if heartbeat_timeout < 5 * BEAT_S:
            raise ValueError(f"rotafx: heartbeat_timeout must be at least {5 * BEAT_S:g} s (five heartbeats of "
                             f"{BEAT_S:g} s; a shorter one calls a busy stage stopped), got {heartbeat_timeout!r}")
        self._secret = resolve_secret(secret, secret_file, create=True, who="the driver")
        self.plan_dir = Path(plan_dir)
        self.plan = read_plan(plan_dir)
        check_world(self.plan.num_stages, "the driver")
        self.timeout, self.heartbeat_timeout = float(timeout), float(heartbeat_timeout)
        self.device = torch.device(device)
        self.emulate_links = emulate_links
        self.processes = list(processes)  # local stage processes, to report a stage that died
        n = self.plan.num_stages
        self.wire = Wire(self.plan)
        self._in, self._out = self.wire.layouts[0], self.wire.layouts[n]
        self._emulator = LinkEmulator(self.plan.hops[n].links)
        self._windows: LinkWindows | None = None  # set_link_windows: when the links are up, in schedule time
        self._windows_version = 0
        self._anchor = NO_STAMP  # the windows' version and the instant set_link_windows made schedule time start_s
        self._next_id = self._base = 0
        self._closed = False
        self._trace: Trace | None = None
        self._span_read = [0] * n  # span batches read per stage
        self._span_seen = [-1] * n  # the last message each stage reported a span of
        self._spans: dict[int, list[tuple[str, str, float, float]]] = {}  # message id -> (track, name, start, end)
        if trace is not None:
            self.trace(trace)
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

    def set_link_windows(self, windows: Mapping[Any, Sequence[Any]] | LinkWindows | None, *, time_scale: float = 1.0,
                         start_s: float = 0.0) -> None:
        """Make the plan's links go up and down: from now on a message that would arrive while a link it crosses is
        out of every window (in schedule time) is lost, not computed, and the call that sent it raises
        :class:`~.transport.LinkDownError` once every other request is answered; the pipeline stays up.

        The receiving process decides, at the time the message arrives (as the emulated links deliver it with link
        emulation on, else when it was handed over): the stages for the hops into them, the driver for the last
        hop. Schedule time is ``start_s`` now and runs at ``time_scale`` schedule seconds per wall second, unless a
        call says what time it starts at (``run(..., at_s=t)``, as :class:`~.failover.Failover` does). The stages
        read the windows from the driver's store, checked as data.

        Args:
            windows: ``(src, dst) -> [(start_s, end_s), ...]`` (schedule seconds; pairs or objects with
                ``start_s``/``end_s`` such as :class:`rotafx.orbits.Window`) for links the plan crosses, or a
                :class:`~rotafx.runtime.links.LinkWindows` (which brings its own ``time_scale``). A link not listed
                is always up, one listed with no windows never. ``None``: every link up again.
            time_scale: schedule seconds per wall-clock second.
            start_s: the schedule time now.

        Raises:
            ValueError: malformed windows (named: see :class:`~rotafx.runtime.links.LinkWindows`), a link the
                plan does not cross, or a ``start_s`` that is not a finite number.

        >>> # driver.set_link_windows({("ground0", "orbital0"): [(0, 300)]}, time_scale=600)
        >>> # driver.run(requests)   # requests whose uplink message arrives after 300 s (0.5 s from now) are lost
        """
        if windows is None:
            self._windows, self._anchor = None, NO_STAMP
            return
        table = windows if isinstance(windows, LinkWindows) else LinkWindows(windows, time_scale)
        crossed = {(str(l.get("src")), str(l.get("dst"))) for h in range(len(self.plan.hops))
                   for l in self._hop_links(h, DECODE)}
        stray = sorted(set(table.windows) - crossed)
        if stray:
            raise ValueError(f"rotafx: link windows for {', '.join(f'{a} -> {b}' for a, b in stray)}, which this plan "
                             f"does not cross; it crosses {', '.join(f'{a} -> {b}' for a, b in sorted(crossed)) or 'none'}")
        start = _schedule_time(start_s, "start_s")
        self._windows_version += 1
        self.store.set(f"{PREFIX}links/{self._windows_version}", table.to_json())
        self._windows = table
        self._anchor = Stamp(self._windows_version, time.time_ns(), start)

    def _stamp(self, at_s: float | None) -> Stamp:
        """What this call's messages carry: the windows in force and when schedule time ``at_s`` is (now)."""
        if self._windows is None:
            if at_s is not None:
                raise ValueError("rotafx: at_s is the schedule time a call starts at under link windows; set them "
                                 "first (Driver.set_link_windows)")
            return NO_STAMP
        if at_s is None:
            return self._anchor
        return Stamp(self._windows_version, time.time_ns(), _schedule_time(at_s, "at_s"))

    def _hop_links(self, hop: int, kind: int) -> tuple[Any, ...]:
        """The links a message of ``kind`` crosses on hop ``hop`` (a decode step into stage 0 also the token's trip
        back from the last node, as the emulation charges it)."""
        gen = self.plan.generation
        back = tuple(gen.return_links) if gen is not None and hop == 0 and kind == DECODE else ()
        return (*self.plan.hops[hop].links, *back)

    def _lost_at(self, stamp: Stamp, kind: int) -> tuple[int, float, list[str]]:
        """A ``LOST`` message's word (from a stage: checked): the hop that dropped it, when, and the links down."""
        n = self.plan.num_stages
        hop, t = stamp.hop, stamp.sched_s
        if not (0 <= hop <= n and math.isfinite(t)):
            return -1, math.nan, []
        return hop, t, self._windows.down(self._hop_links(hop, kind), t) if self._windows is not None else []

    def _output_lost(self, stamp: Stamp, at: float) -> tuple[int, float, list[str]] | None:
        """The last hop (into the driver) checked as a stage checks its own: lost when a link was down at ``at``."""
        if not stamp.windows or self._windows is None:
            return None
        n = self.plan.num_stages
        t = stamp.at(at, self._windows.time_scale)
        down = self._windows.down(self._hop_links(n, DATA), t)
        return (n, t, down) if down else None

    def _link_down(self, lost: Mapping[int, tuple[int, float, list[str]]], done: Sequence[int], what: str,
                   unanswered: Sequence[int] | None = None, **kw: Any) -> LinkDownError:
        """The error for ``lost`` (index -> the hop, time and links down that lost it), ``done`` answered."""
        links = sorted({l for _, _, down in lost.values() for l in down})
        times = [t for _, t, _ in lost.values() if math.isfinite(t)]
        t_s = min(times) if times else None
        missing = sorted(lost) if unanswered is None else list(unanswered)
        when = f" at schedule time {t_s:,.3f} s" if t_s is not None else ""
        msg = (f"rotafx: {len(missing)} {what}(s) lost ({format_ranges(missing)}): link {', '.join(links) or '(unknown)'} "
               f"down{when}; {len(done)} answered ({format_ranges(list(done)) or 'none'}); the pipeline is up, later "
               f"calls go through where the links are up")
        return LinkDownError(msg, lost=missing, links=links, t_s=t_s, completed=done, **kw)

    def run(self, requests: Sequence[Any], *, window: int | None = None, emulate_links: bool | None = None,
            at_s: float | None = None) -> list[Any]:
        """Send every request through the pipeline; their outputs, in order (structured like the model's).

        A request is a tuple of positional inputs (or a single tensor, or ``(args, kwargs)``
        as a ``dict`` under ``"args"``/``"kwargs"``). All are checked before the first is sent.
        ``emulate_links`` (default: the driver's setting) delays every hop of these requests
        as the plan's topology links would (:mod:`rotafx.runtime.links`). ``at_s``: the schedule
        time now, under link windows (:meth:`set_link_windows`). A stage that dies,
        stops or hangs, now or since the last call, raises :class:`DistributedError` naming
        it, with the requests that completed. Requests lost to a link out of its windows raise
        :class:`~.transport.LinkDownError` once the others are answered: ``err.lost``, and
        ``err.outputs`` for the rest (each answered once; the pipeline stays up).
        """
        emulate = self.emulate_links if emulate_links is None else bool(emulate_links)
        if self._closed:
            raise DistributedError("rotafx: this driver is closed")
        flat = self.check(requests)
        stamp = self._stamp(at_s)
        n = self.plan.num_stages
        window = window or 2 * n
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"rotafx: window must be a positive number of requests in flight, got {window!r}")
        last = n  # the rank of the last stage
        outputs: dict[int, Any] = {}
        lost: dict[int, tuple[int, float, list[str]]] = {}  # request -> the hop, schedule time and links that lost it
        traced: dict[int, tuple[int, float, str]] = {}  # message id -> (trace request, end, kind)
        begun: dict[int, int] = {}
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
            if got != req or kind not in (DATA, LOST):
                raise self._failure(RuntimeError(f"expected the output of request {req}, got {got} of kind {kind}"), i,
                                    outputs)
            at, slept = self._emulator.wait_for(sent_at, self._out.payload_bytes) if emulate else (sent_at, 0.0)
            gone = self._lost_at(Layout.stamp(buf), DATA) if kind == LOST else self._output_lost(stamp, at)
            if gone is not None:  # a link was down: nothing to read (each request is answered once, or lost)
                lost[i] = gone
                begun.pop(req, None)
                return
            if req in begun:
                self._record_output(req, sent_at, slept)
                traced[req] = (begun.pop(req), self._trace.now(), "request")  # type: ignore[union-attr]
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
            if self._trace is not None:
                begun[req] = self._trace.begin()
            msg = self._in.pack(DATA, req, [t.to(self.device) for t in tensors], self.device,
                                (EMULATE if emulate else 0) | self._trace_flag(), stamp)
            sends.append((start(self.pg.send, msg, 1, i), msg))
            while len(sends) > window:
                self._wait(sends.popleft()[0], 1, f"the driver: sending request {i}", i, outputs)
        while inflight:
            collect()
        while sends:
            self._wait(sends.popleft()[0], 1, "the driver: sending", len(flat) - 1, outputs)
        self._next_id = base + len(flat)
        self._write_trace(traced)
        if lost:
            raise self._link_down(lost, sorted(outputs), "request", outputs=outputs)
        return [outputs[i] for i in range(len(flat))]

    generates_across_processes = True  # rotafx.generate(driver, ...) calls generate

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, *, sequences: int | None = None,
                 attention_mask: torch.Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, generator: torch.Generator | None = None, timings: bool = False,
                 emulate_links: bool | None = None,
                 at_s: float | None = None) -> torch.Tensor | tuple[torch.Tensor, GenerationTimings]:
        """Generate tokens across the stage processes with the plan's prefill and decode programs.

        Each group of ``batch_size`` rows (the plan's; one row by default) is a sequence with its own
        KV cache slot on every stage; ``sequences`` of them (default: all) decode at once, so that
        while sequence ``s``'s token is on stage 1, sequence ``s + 1``'s is on stage 0 and the token
        period approaches the slowest stage's (or link's). The last stage returns the logits of each
        step to the driver, which picks the token and sends it to stage 0 for the next step. A
        sequence that reaches EOS or ``max_new_tokens`` frees its slot on every stage (the next
        waiting sequence takes it).

        Args:
            input_ids: ``[B, P]`` prompt token ids (long), ``B`` a multiple of the plan's batch size.
            max_new_tokens: tokens to add to each sequence (prompt + new at most the plan's ``max_context``).
            sequences: how many sequences decode at once (cache slots per stage), default all.
            attention_mask, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id, generator:
                as :func:`rotafx.generate` (EOS and pad default to the plan's, which are the model's).
            timings: also return a :class:`~rotafx.GenerationTimings` (TTFT: the median over sequences, from
                the moment each was sent; TPOT: the median gap between a sequence's tokens; tokens/s: every
                new token over the call).
            emulate_links: delay every hop as the plan's links would (default: the driver's setting).
            at_s: the schedule time now, under link windows (:meth:`set_link_windows`).

        Returns:
            ``[B, P + n]`` token ids as transformers' ``generate`` gives them (a sequence that stopped early is
            padded); with ``timings``, ``(ids, timings)``.

        Raises:
            GenerationError: the plan has no generation programs, or bad ids or options (nothing is sent).
            DistributedError: a stage failed, stopped or hung: it names the stage, and carries
                ``completed`` (the sequences that finished), ``outputs`` (sequence -> its ids) and ``tokens``
                (sequence -> the new tokens it got, finished or not).
            LinkDownError: a step was lost to a link out of its windows: the same, and ``lost`` (the sequences
                that did not finish: a sequence that lost a step stops there, and none starts after the loss).

        >>> # with launch_local("plan") as c: ids = c.driver.generate(prompt, max_new_tokens=32, sequences=4)
        """
        gen = self.plan.generation
        if gen is None:
            raise GenerationError("rotafx: this plan has no generation programs (it was exported for one forward "
                                  "pass); export it again with max_context=N (rotafx.export(model, (ids,), path=..., "
                                  "max_context=256)) and restart the stages on it")
        if self._closed:
            raise DistributedError("rotafx: this driver is closed")
        eos, pad = token_ids(None, eos_token_id if eos_token_id is not None else list(gen.eos_token_id) or None,
                             pad_token_id if pad_token_id is not None else gen.pad_token_id)
        groups = prompt_groups(input_ids, attention_mask)
        if groups is not None:  # left padding: each prompt length on its own, the rows put back as they came
            return generate_left_padded(input_ids, groups, pad, timings, lambda ids: self.generate(
                ids, max_new_tokens, sequences=sequences, do_sample=do_sample, temperature=temperature, top_k=top_k,
                top_p=top_p, eos_token_id=eos, pad_token_id=pad, generator=generator, timings=timings,
                emulate_links=emulate_links, at_s=at_s))
        req = check_generation(input_ids, max_new_tokens, attention_mask, do_sample, temperature, top_k, top_p, eos,
                               pad, gen.max_context, "tokens of the plan's max_context",
                               " or export the plan again with a larger max_context", generator)
        B, P = (int(x) for x in input_ids.shape)
        b = gen.batch_size
        if B % b:
            raise GenerationError(f"rotafx: the plan's generation programs take {b} sequence(s) per call, and "
                                  f"input_ids has {B}; give a multiple of {b}")
        S = B // b
        if sequences is None:
            sequences = S
        if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
            raise GenerationError(f"rotafx: sequences must be a positive number of sequences decoding at once, "
                                  f"got {sequences!r}")
        emulate = self.emulate_links if emulate_links is None else bool(emulate_links)
        run = _Generation(self, req, wires_of(self.plan), S, b, min(sequences, S), emulate, self._stamp(at_s))
        try:
            run.go()
        except DistributedError as e:
            got = {s: t for s, t in run.tokens_of().items()}
            done = sorted(run.finished)
            raise DistributedError(f"{e}; generating: {len(done)} of {S} sequence(s) finished "
                                   f"({format_ranges(done) or 'none'}), {sum(map(len, got.values()))} token(s) made",
                                   stage=e.stage, node=e.node, completed=done,
                                   outputs={s: run.ids(s) for s in done}, tokens=got) from None
        if run.lost:
            done = sorted(run.finished)
            raise self._link_down(run.lost, done, "sequence", unanswered=sorted(set(range(S)) - run.finished),
                                  outputs={s: run.ids(s) for s in done}, tokens=run.tokens_of())
        ids = torch.cat([run.ids(s, pad_to=run.longest()) for s in range(S)], 0)
        if not timings:
            return ids
        return ids, run.timings()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One request, like calling the model."""
        return self.run([{"args": args, "kwargs": kwargs}])[0]

    def trace(self, path: str | os.PathLike[str] | None) -> Trace | None:
        """Record every later request and generation step in a Chrome trace at ``path`` (``None``: stop), as
        :meth:`rotafx.PipelineModule.trace` does in one process: a ``requests`` track (each request from its send
        to its output, or each ``prefill``/``decode`` step), each stage's compute, each hop's time in flight and
        emulated delay (recorded by the stage processes, sent to the driver with their heartbeats), and the plan's
        estimate beside them. The file is complete when each call returns. Stage times are wall clock: on several
        hosts, keep their clocks synchronised (NTP) or the spans shift by the skew."""
        self._trace = None if path is None else Trace(path)
        return self._trace

    def _trace_flag(self) -> int:
        return TRACE if self._trace is not None else 0

    def _record_output(self, mid: int, sent_at: float, emulated_s: float) -> None:
        """The last hop's span (the last stage to the driver), measured here."""
        now = time.time()
        hop = link_track(self.plan.stages[-1].node, "output")
        self._spans.setdefault(mid, []).append((hop, "in flight", sent_at, now - emulated_s))
        if emulated_s > 0:
            self._spans[mid].append((hop, "emulated link delay", now - emulated_s, now))

    def _gather_spans(self, first: int, last: int) -> None:
        """Read the stages' span batches until each has reported message ``last`` (or ten heartbeats pass); only
        spans of messages ``first .. last`` are kept (a stage's word is checked, not trusted)."""
        n = self.plan.num_stages
        deadline = time.monotonic() + 10 * BEAT_S
        while True:
            for i in range(n):
                count = _count(get_key(self.store, f"stage{i}/spans"))
                for k in range(self._span_read[i], min(count, self._span_read[i] + 64)):  # a few batches a round
                    for mid, track, name, t0, t1 in _spans_of(get_key(self.store, f"stage{i}/spans/{k}")):
                        if first <= mid <= last:
                            self._spans.setdefault(mid, []).append((track, name, t0, t1))
                            self._span_seen[i] = max(self._span_seen[i], mid)
                    self._span_read[i] = k + 1
                    if time.monotonic() > deadline:
                        break
            if all(seen >= last for seen in self._span_seen) or time.monotonic() > deadline:
                return
            time.sleep(BEAT_S / 4)

    def _write_trace(self, traced: Mapping[int, tuple[int, float, str]]) -> None:
        """Put the spans of the messages ``traced`` (id -> (trace request, end, kind)) in the trace and write it."""
        tr = self._trace
        if tr is None or not traced:
            return
        self._gather_spans(min(traced), max(traced))
        offset = time.time() - tr.now()  # stage spans are wall clock; the trace counts from its start
        for mid, (r, end_s, kind) in sorted(traced.items()):
            for track, name, t0, t1 in self._spans.pop(mid, ()):
                tr.span(track, name, r, t0 - offset, t1 - offset)
            prog = self.plan if kind == "request" else self.plan.generation.program(kind)  # type: ignore[union-attr]
            tracks = [StageTrack(st.chain_index, st.node, st.device) for st in prog.stages]
            tr.end(r, predicted_spans(prog.estimate or {}, tracks), end_s=end_s, kind=kind, write=False)
        self._spans.clear()  # what a stage sent late for this call is not kept for the next
        tr.write()

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


class _Generation:
    """One :meth:`Driver.generate` call: the sequences' state and the messages in flight, oldest first (each
    stage serves its messages in the order they come, so outputs return in the order they were sent)."""

    def __init__(self, driver: Driver, req: Any, wires: Mapping[int, Wire], S: int, b: int, at_once: int,
                 emulate: bool, stamp: Stamp = NO_STAMP) -> None:
        self.d, self.req, self.wires, self.S, self.b, self.at_once = driver, req, wires, S, b, at_once
        self.stamp = stamp
        self.lost: dict[int, tuple[int, float, list[str]]] = {}  # sequence -> the hop, time and links that lost a step
        self.flags = (EMULATE if emulate else 0) | driver._trace_flag()
        self.begun: dict[int, int] = {}  # traced: message id -> its trace request
        self.traced: dict[int, tuple[int, float, str]] = {}  # message id -> (trace request, end, kind)
        gen = driver.plan.generation
        assert gen is not None
        self.gen = gen
        self.new: dict[int, list[torch.Tensor]] = {s: [] for s in range(S)}  # sequence -> its tokens, [b] each
        self.live = {s: torch.ones(b, dtype=torch.bool) for s in range(S)}  # rows that have not reached EOS
        self.finished: set[int] = set()
        self.waiting = collections.deque(range(S))
        self.inflight: collections.deque[tuple[int, int, int, int, torch.Tensor, Any]] = collections.deque()
        self.sends: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()
        self.sent_at: dict[int, float] = {}
        self.times: dict[int, list[float]] = {s: [] for s in range(S)}
        self.base = driver._base = driver._next_id
        self.eos = torch.tensor(req.eos) if req.eos else None

    def go(self) -> None:
        d = self.d
        fault = d._fault()
        if fault is not None:  # a stage died or stopped while the pipeline was idle
            raise d._failure(None, 0, {}, fault)
        self.t0 = time.perf_counter()
        for _ in range(self.at_once):
            self._admit()
        while self.inflight:
            self._collect()
        while self.sends:
            d._wait(self.sends.popleft()[0], 1, "the driver: sending", d._next_id - 1 - self.base, {})
        self.t1 = time.perf_counter()
        d._write_trace(self.traced)

    def _admit(self) -> None:
        """The next waiting sequence's prompt, chunk by chunk (chunks do not wait on each other)."""
        if not self.waiting or self.lost:  # after a loss the links are down: nothing new starts
            return
        s = self.waiting.popleft()
        ids = self.req.input_ids[s * self.b:(s + 1) * self.b]
        self.sent_at[s] = time.perf_counter()
        parts = chunks(ids.shape[1], self.gen.prefill_chunk, self.gen.max_context)
        for k, (start, n) in enumerate(parts):
            self._send(PREFILL, s, *padded(ids, start, n, self.gen.prefill_chunk), n if k == len(parts) - 1 else 0)

    def _send(self, kind: int, s: int, ids: torch.Tensor, pos: torch.Tensor, take: int) -> None:
        """Send one program call of sequence ``s``; ``take``: which token's logits pick the next token (0: none)."""
        d = self.d
        mid = d._next_id
        d._next_id += 1
        wire = self.wires[kind]
        flags = self.flags | (s << SLOT_SHIFT)
        out = wire.layouts[-1].empty(d.device)
        self.inflight.append((mid, s, kind, take, out, self._post(d.pg.recv, out, d.plan.num_stages, mid)))
        if d._trace is not None:
            self.begun[mid] = d._trace.begin()
        named = {"input_ids": ids, "cache_position": pos}
        msg = wire.layouts[0].pack(kind, mid, [named[v].to(d.device) for v in wire.plan.tensor_inputs], d.device,
                                   flags, self.stamp)
        self._queue(self._post(d.pg.send, msg, 1, mid), msg)

    def _queue(self, work: Any, msg: torch.Tensor) -> None:
        self.sends.append((work, msg))
        while len(self.sends) > 2 * self.d.plan.num_stages + self.at_once:
            self.d._wait(self.sends.popleft()[0], 1, "the driver: sending", self.d._next_id - 1 - self.base, {})

    def _post(self, op: Any, buf: torch.Tensor, peer: int, mid: int) -> Any:
        try:
            return post(op, [buf], peer, f"the driver: message {mid - self.base}")
        except CommError as e:  # gloo refuses to post on a connection that is gone
            raise self.d._failure(e, mid - self.base, {}) from None

    def _collect(self) -> None:
        """The oldest message's logits; a sequence's last prefill chunk or decode step picks its next token."""
        d = self.d
        mid, s, kind, take, buf, work = self.inflight.popleft()
        d._wait(work, d.plan.num_stages, f"the driver: waiting for sequence {s}", mid - self.base, {})
        got_kind, got, sent_at, _ = Layout.header(buf)
        if got != mid or got_kind not in (kind, LOST):
            raise d._failure(RuntimeError(f"expected message {mid} of kind {kind}, got {got} of kind {got_kind}"),
                             mid - self.base, {})
        wire = self.wires[kind]
        at, slept = (d._emulator.wait_for(sent_at, wire.layouts[-1].payload_bytes) if take and self.flags & EMULATE
                     else (sent_at, 0.0))
        gone = d._lost_at(Layout.stamp(buf), kind) if got_kind == LOST else d._output_lost(self.stamp, at)
        if gone is not None or s in self.lost:  # this step, or an earlier one of the sequence, was lost
            self.begun.pop(mid, None)
            if s not in self.lost and gone is not None:
                self._lose(s, gone)
            return
        if mid in self.begun:
            d._record_output(mid, sent_at, slept)
            self.traced[mid] = (self.begun.pop(mid), d._trace.now(), PROGRAMS[kind])  # type: ignore[union-attr]
        if not take:
            return
        n = d.plan.num_stages
        outs = wire.split(n, wire.layouts[n].unpack(buf))
        v = wire.plan.outputs[0]
        logits = wire.decoded(v, outs[(v, False)], False, torch.device("cpu"))[:, take - 1]
        tok = self.req.pick(logits)
        if self.eos is not None:
            tok = torch.where(self.live[s], tok, torch.as_tensor(self.req.pad))
            self.live[s] &= ~torch.isin(tok, self.eos)
        self.new[s].append(tok)
        self.times[s].append(time.perf_counter())
        i = len(self.new[s])
        if i == self.req.max_new_tokens or not bool(self.live[s].any()):
            self._finish(s)
            return
        P = self.req.input_ids.shape[1]
        self._send(DECODE, s, tok[:, None], torch.tensor([P + i - 1]), 1)

    def _finish(self, s: int) -> None:
        """Sequence ``s`` is done: every stage frees its slot, and the next waiting sequence starts."""
        d = self.d
        self.finished.add(s)
        mid = d._next_id
        d._next_id += 1
        msg = header_only(FREE, mid, self.flags | (s << SLOT_SHIFT), d.device)
        self._queue(self._post(d.pg.send, msg, 1, mid), msg)
        self._admit()

    def _lose(self, s: int, why: tuple[int, float, list[str]]) -> None:
        """Sequence ``s`` lost a step to a down link: it stops, and every stage frees its slot (after the messages of
        it still in flight, which each stage drops as lost)."""
        self.lost[s] = why
        mid = self.d._next_id
        self.d._next_id += 1
        msg = header_only(FREE, mid, self.flags | (s << SLOT_SHIFT), self.d.device)
        self._queue(self._post(self.d.pg.send, msg, 1, mid), msg)

    def tokens_of(self) -> dict[int, list[int]]:
        """Sequence -> the new tokens of its first row, as made so far."""
        return {s: [int(t[0]) for t in toks] for s, toks in self.new.items()}

    def longest(self) -> int:
        return max(len(t) for t in self.new.values())

    def ids(self, s: int, pad_to: int = 0) -> torch.Tensor:
        """Sequence ``s``'s prompt and new tokens ``[b, P + n]``, padded to ``pad_to`` new tokens."""
        rows = self.req.input_ids[s * self.b:(s + 1) * self.b]
        toks = [t[:, None].to(rows.device) for t in self.new[s]]
        fill = [torch.full((self.b, 1), self.req.pad if self.req.pad is not None else 0, dtype=torch.long)] * \
            max(0, pad_to - len(toks))
        return torch.cat([rows, *toks, *fill], 1)

    def timings(self) -> GenerationTimings:
        ttft = [1e3 * (t[0] - self.sent_at[s]) for s, t in self.times.items() if t]
        gaps = [1e3 * (b - a) for t in self.times.values() for a, b in zip(t, t[1:])]
        total = sum(len(t) for t in self.new.values()) * self.b
        return summarize(statistics.median(ttft) if ttft else math.nan, gaps, total / max(self.t1 - self.t0, 1e-12),
                         self.S * self.b, self.longest())


def _schedule_time(v: Any, name: str) -> float:
    """A schedule time given by the caller: a finite number of seconds."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"rotafx: {name} must be a finite number of schedule seconds, got {v!r}")
    return float(v)


def _split_request(r: Any) -> tuple[tuple, dict[str, Any]]:
    """A request as ``(args, kwargs)``: a tuple or list of inputs, one input, or ``{"args": ..., "kwargs": ...}``."""
    if isinstance(r, Mapping) and set(r) <= {"args", "kwargs"} and r:
        return tuple(r.get("args", ())), dict(r.get("kwargs", {}))
    if isinstance(r, tuple):
        return r, {}
    if isinstance(r, list):
        return tuple(r), {}
    return (r,), {}


def _count(raw: str | None) -> int:
    """A stage's count of span batches (0 when none or not a number: a stage's word is checked, not trusted)."""
    try:
        return max(0, min(int(raw), 1 << 30)) if raw is not None else 0
    except ValueError:
        return 0


def _spans_of(raw: str | None) -> list[tuple[int, str, str, float, float]]:
    """The well-formed spans of a stage's batch ``[[request, track, name, start, end], ...]``; the rest is dropped.

    >>> _spans_of('[[3, "stage 0", "compute", 1.5, 2.0], [true, "t", "n", 1, 2], [4, "t", "n", 2, 1], "x"]')
    [(3, 'stage 0', 'compute', 1.5, 2.0)]
    >>> _spans_of("[" * 100000), _spans_of('[[0, "t", "n", 1' + "0" * 400 + ', 2]]')
    ([], [])
    """
    try:
        batch = json.loads(raw) if raw is not None else []
    except (ValueError, RecursionError):
        return []
    out = []
    for e in batch if isinstance(batch, list) else []:
        if not (isinstance(e, list) and len(e) == 5 and type(e[0]) is int and isinstance(e[1], str)
                and isinstance(e[2], str) and all(type(x) in (int, float) and abs(x) < 1e18 for x in e[3:])):
            continue
        t0, t1 = float(e[3]), float(e[4])
        if math.isfinite(t0) and math.isfinite(t1) and t0 <= t1:
            out.append((e[0], e[1][:200], e[2][:200], t0, t1))
    return out
