"""A stage process: load one stage of a plan, join the driver, and for each request receive, compute and send on.

Run it with ``rotafx serve --plan DIR --stage i`` or ``python -m rotafx.runtime.distributed``. It loads
torch, the plan reader and this runtime; no profiler and no solver.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from ...plan.load import load, load_cached_stage
from ...plan.schema import PlanError, read_plan
from ...units import first_line
from ..links import LinkEmulator, LinkWindows
from .secret import SecretError, resolve_secret
from .store import StoreGone, StoreRefused, connect
from ..tracing import link_track, stage_track
from .transport import (BEAT_S, DATA, DECODE, EMULATE, FREE, LOST, PREFIX, PROGRAMS, SLOT_SHIFT, STOP, TRACE, CommError,
                        DistributedError, Stamp,
                        Layout, backend_for, check_endpoint, check_links, get_key, header_only, largest, local_address,
                        make_group, plan_digest, post, set_quietly, shutdown, wait, who, wires_of, endpoint_from_env,
                        stage_from_env, check_world)

__all__ = ["StageServer", "serve", "main", "add_serve_args", "serve_from_args"]

WATCH_IO_S = 30.0  # the watchdog gives up on a driver that answers nothing for this long (stopped, or cut off)


class StageServer:
    """Stage ``stage`` of the plan in ``plan_dir``, served until the driver says stop (:meth:`run`).

    Loads and checks the stage when made (a bad plan fails here, naming the file).
    ``timeout`` bounds each send and each receive of a request already under way (s);
    ``idle_timeout`` bounds the wait for the next request; ``join_timeout`` the wait for
    every process to join. The cluster's secret is ``secret``, else the contents of
    ``secret_file``, else ``$ROTAFX_SECRET`` (the driver's; checked when the stage joins).
    :meth:`before_compute` is called before each request is computed: a subclass can
    count, log or inject faults there.
    """

    def __init__(self, plan_dir: str | os.PathLike[str], stage: int, *, master_addr: str = "127.0.0.1",
                 master_port: int = 29500, timeout: float = 60.0, idle_timeout: float = 7 * 24 * 3600.0,
                 join_timeout: float = 120.0, emulate_links: bool = False, device: Any = None,
                 backend: str | None = None, threads: int | None = None, secret: str | bytes | None = None,
                 secret_file: str | os.PathLike[str] | None = None) -> None:
        check_endpoint(master_addr, master_port, timeout=timeout, idle_timeout=idle_timeout, join_timeout=join_timeout)
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise ValueError(f"rotafx: stage must be a stage index (an integer), got {stage!r}")
        self._secret = resolve_secret(secret, secret_file, who=f"stage {stage}")
        if threads:
            torch.set_num_threads(threads)
        self.plan_dir = plan_dir
        self.plan = read_plan(plan_dir)
        self.stage = stage
        self.loaded = load(plan_dir, stage=stage, device=device)
        # a causal LM's prefill and decode programs, a KV cache per sequence slot (Driver.generate)
        self.cached = (load_cached_stage(self.loaded.plan, stage, self.loaded.device)
                       if self.loaded.plan.generation is not None else None)
        self.master_addr, self.master_port = master_addr, master_port
        self.timeout, self.idle_timeout, self.join_timeout = timeout, idle_timeout, join_timeout
        self.emulate_links = emulate_links
        self.backend = backend_for(self.loaded.device, backend)
        self.name = f"stage {stage} ({self.loaded.node})"
        self.rank, self.size = stage + 1, self.plan.num_stages + 1
        self.next_rank = self.rank + 1 if self.rank + 1 < self.size else 0
        self.pending: collections.deque[tuple[Any, torch.Tensor]] = collections.deque()  # sends in flight
        self.pg: Any = None
        # the spans of traced requests, [request, track, name, start, end] (wall clock, s), until the watchdog
        # publishes them to the driver's store as batch ``stage{i}/spans/{k}`` (``stage{i}/spans``: batches so far)
        self.spans: collections.deque[list[list[Any]]] = collections.deque()  # a message's spans per item
        self._span_lock = threading.Lock()
        self._span_batches = 0
        self._windows: dict[int, LinkWindows] = {}  # link windows version -> the windows (Driver.set_link_windows)
        self.broken: set[int] = set()  # cache slots whose sequence lost a message here: the rest of it is lost too

    def publish_spans(self, store: Any) -> None:
        """Put the spans recorded since the last call in the driver's store, as one batch."""
        with self._span_lock:
            batch = []
            while self.spans:  # deque appends and pops are atomic: a message sent meanwhile waits for the next batch
                batch.extend(self.spans.popleft())
            if not batch:
                return
            k = self._span_batches
            store.set(f"{PREFIX}stage{self.stage}/spans/{k}", json.dumps(batch))
            self._span_batches = k + 1
            store.set(f"{PREFIX}stage{self.stage}/spans", str(k + 1))

    def windows(self, store: Any, version: int) -> LinkWindows:
        """The link windows of version ``version``, read once from the driver's store (``links/{version}``) and checked."""
        got = self._windows.get(version)
        if got is None:
            if not 0 < version < 1 << 31:
                raise RuntimeError(f"a message names link windows version {version}, which no driver writes")
            raw = get_key(store, f"links/{version}")
            if raw is None:
                raise RuntimeError(f"a message names link windows version {version}, which the driver's store lacks")
            got = self._windows[version] = LinkWindows.from_json(raw)
        return got

    def before_compute(self, request: int) -> None:
        """Called before request ``request`` is computed (after its inputs arrived); does nothing here."""

    def _send(self, msg: torch.Tensor, name: str) -> None:
        """Send ``msg`` to the next rank, keeping at most two sends in flight."""
        peer = self.next_rank
        self.pending.append((post(self.pg.send, [msg], peer, f"{name}: sending to {who(self.plan, peer)}"), msg))
        while len(self.pending) > 2:
            wait(self.pending.popleft()[0], self.timeout, peer, f"{name}: sending to {who(self.plan, peer)}")

    def _lost(self, store: Any, stamp: Stamp, at: float, links: Any, kind: int, slot: int) -> bool:
        """Whether a message that arrived at wall time ``at`` over ``links`` is lost: a link was out of every window
        at the schedule time it arrived, or it belongs to a sequence that lost a message here before."""
        if kind in PROGRAMS and slot in self.broken:
            return True
        windows = self.windows(store, stamp.windows)
        if not windows.down(links, stamp.at(at, windows.time_scale)):
            return False
        if kind in PROGRAMS:
            self.broken.add(slot)
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send in flight has been delivered."""
        what = f"{self.name}: sending to {who(self.plan, self.next_rank)}"
        while self.pending:
            wait(self.pending.popleft()[0], self.timeout if timeout is None else timeout, self.next_rank, what)

    def run(self) -> int:
        """Join the driver (rank ``stage + 1``) and serve requests until it says stop; returns 0.

        Raises :class:`DistributedError` naming the stage (and the peer) on failure.
        """
        plan, stage, st, dev = self.plan, self.stage, self.loaded, self.loaded.device
        rank, name = self.rank, self.name
        where = f"{self.master_addr}:{self.master_port}"
        try:
            store = connect(self.master_addr, self.master_port, self._secret, f"stage{stage}", self.join_timeout)
            # the watchdog's own connection: a driver that stops answering for WATCH_IO_S is gone
            watch = connect(self.master_addr, self.master_port, self._secret, f"stage{stage}/watch", self.join_timeout,
                            io_timeout=WATCH_IO_S)
        except StoreRefused as e:
            raise DistributedError(f"rotafx: {name}: {e}", stage=stage, node=st.node) from None
        except (TimeoutError, StoreGone, OSError) as e:
            raise DistributedError(f"rotafx: {name} could not reach the driver at {where} within {self.join_timeout:g} s "
                                   f"({e}); start the driver (rank 0) first, or pass --master-addr/--master-port "
                                   f"(MASTER_ADDR/MASTER_PORT) where it listens", stage=stage, node=st.node) from None
        stop_watch = threading.Event()
        watch.add(f"{PREFIX}stage{stage}/beat", 1)  # the first heartbeat, before the driver counts on them
        # from here an abort (a stage that never joins, a wrong plan) ends this process too
        progress = self.progress = {"state": "joining", "sent": "-1"}  # what the watchdog reports with each beat
        threading.Thread(target=_watchdog, args=(watch, stage, name, where, stop_watch, progress),
                         kwargs={"publish": lambda: self.publish_spans(watch)}, daemon=True).start()
        try:
            store.set(f"{PREFIX}stage{stage}/plan", plan_digest(self.plan_dir))
            store.set(f"{PREFIX}stage{stage}/status", f"joining pid {os.getpid()} on {socket.gethostname()}")
            bind = local_address(self.master_addr, self.master_port) if self.backend == "gloo" else None
            try:
                self.pg = pg = make_group(self.backend, dist.PrefixStore("rotafx/pg/", store), rank, self.size,
                                          self.join_timeout, bind=bind)
            except Exception as e:  # noqa: BLE001 - another stage never came, or the driver gave up
                # the store error that stopped gloo comes back as gloo's RuntimeError: ask the store itself
                try:
                    aborted = store.get(PREFIX + "abort").decode() if store.check([PREFIX + "abort"]) else None
                    gone = False
                except StoreGone:
                    aborted, gone = None, True
                if aborted:
                    why = f"the driver aborted the run: {aborted}"
                elif gone:
                    why = (f"the driver at {where} ended the run while this stage was joining (did another stage "
                           f"not join? the driver's error says)")
                else:
                    why = f"the process group did not form within {self.join_timeout:g} s ({first_line(e)})"
                raise DistributedError(f"rotafx: {name}: {why}", stage=stage, node=st.node) from None
            nonce = get_key(store, "nonce") or ""
            check_links(pg, rank, self.size, self._secret, nonce, self.join_timeout, dev, name)
        except BaseException as e:
            stop_watch.set()  # this thread reports it: the watchdog stays quiet
            if isinstance(e, StoreGone):
                raise DistributedError(f"rotafx: {name}: the driver at {where} went away while this stage joined",
                                       stage=stage, node=st.node) from None
            if isinstance(e, DistributedError):
                set_quietly(store, f"stage{stage}/error", json.dumps({"kind": "join", "message": str(e)}))
            raise
        wires = wires_of(plan)
        size = largest(wires, stage)  # every receive fits any message this hop carries
        lin, lout = wires[DATA].layouts[stage], wires[DATA].layouts[stage + 1]
        # what each kind of message waits for when links are emulated: this hop's links; a decode step at stage 0
        # also the sampled token's trip back from the last node (the cost model's token_return)
        back = tuple(plan.generation.return_links) if plan.generation is not None and stage == 0 else ()
        me = plan.stages[stage]
        compute_track = stage_track(me.chain_index, me.node, dev)
        in_track = link_track(plan.stages[stage - 1].node if stage else "input", me.node)
        emulators = {k: LinkEmulator((*plan.hops[stage].links, *(back if k == DECODE else ()))) for k in wires}
        store.set(f"{PREFIX}stage{stage}/status", "running")
        peer = rank - 1  # the rank we are waiting on
        last = stage == plan.num_stages - 1
        try:
            buf = torch.empty(size, dtype=torch.uint8, device=dev)
            work = post(pg.recv, [buf], rank - 1, f"{name}: receiving from {who(plan, rank - 1)}")
            while True:
                # idle or not, this stage cannot tell a quiet driver from a stuck neighbour: the driver's
                # timeout finds a hang and aborts everyone (see Driver._diagnose)
                progress["state"] = "waiting for the next request"
                peer = rank - 1
                wait(work, self.idle_timeout, peer, f"{name}: receiving from {who(plan, peer)}")
                arrived = time.time()
                kind, req, sent_at, flags = Layout.header(buf)
                stamp = Layout.stamp(buf)
                traced = bool(flags & TRACE) and kind in (DATA, *PROGRAMS)
                mine: list[list[Any]] = []  # this message's spans, handed to the watchdog together once it is sent
                if traced:  # from the moment the sender handed it over until this stage took it
                    mine.append([req, in_track, "in flight", sent_at, arrived])
                if kind == STOP:
                    out = lout.pack(STOP, req, [torch.zeros(s.shape, dtype=s.torch_dtype, device=dev) for s in lout.specs], dev)
                    peer = self.next_rank
                    what = f"{name}: passing stop to {who(plan, peer)}"
                    wait(post(pg.send, [out], peer, what), self.timeout, peer, what)
                    stop_watch.set()  # the run is over: the driver may close its store any moment now
                    break
                wire = wires.get(kind)
                if wire is None and kind not in (FREE, LOST):
                    raise RuntimeError(f"a message of kind {kind} (request {req}), which this stage does not know"
                                       + ("; the plan has no generation programs" if kind in PROGRAMS else ""))
                got = wire.split(stage, wire.layouts[stage].unpack(buf)) if wire is not None else {}
                buf = torch.empty(size, dtype=torch.uint8, device=dev)
                # the next request arrives while this one runs
                work = post(pg.recv, [buf], rank - 1, f"{name}: receiving from {who(plan, rank - 1)}")
                slot = flags >> SLOT_SHIFT
                if kind == FREE:  # a sequence ended: its cache goes, and the stages after this one are told
                    if self.cached is not None:
                        self.cached.free(slot)
                    self.broken.discard(slot)
                    if not last:
                        self._send(header_only(FREE, req, flags, dev), name)
                    continue
                if kind == LOST:  # a link before this stage dropped the request: the driver is told
                    self._send(header_only(LOST, req, flags, dev, stamp), name)
                    progress["sent"] = str(req)
                    continue
                ready = arrived  # the end of what this stage last recorded of the request
                at = sent_at  # when it arrived: handed over, or as the emulated links deliver it
                if self.emulate_links or flags & EMULATE:
                    t0 = time.time()
                    at, _ = emulators[kind].wait_for(sent_at, wire.layouts[stage].payload_bytes)
                    if traced:
                        mine.append([req, compute_track, "receive", arrived, t0])
                        ready = time.time()
                        mine.append([req, in_track, "emulated link delay", t0, ready])
                if stamp.windows and self._lost(store, stamp, at, emulators[kind].links, kind, slot):
                    windows = self.windows(store, stamp.windows)
                    t = stamp.at(at, windows.time_scale)
                    self._send(header_only(LOST, req, flags, dev, Stamp(stamp.windows, stamp.wall_ns, t, stage)), name)
                    progress["sent"] = str(req)
                    continue
                progress["state"] = f"computing request {req}"
                self.before_compute(req)
                local: dict[str, torch.Tensor] = {}
                ins = []
                prog = wire.plan
                for v in prog.stages[stage].inputs:
                    if v in prog.constants:  # baked into the program: never on the wire
                        ins.append(prog.constants[v])
                        continue
                    key = (v, True) if (v, True) in got else (v, False)
                    local[v] = wire.decoded(v, got[key], key[1], dev)
                    ins.append(local[v])
                t0 = time.time()
                with torch.no_grad():
                    outs = st(*ins) if kind == DATA else self.cached.run(PROGRAMS[kind], slot, *ins)  # type: ignore[union-attr]
                if traced:
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    mine.append([req, compute_track, "receive", ready, t0])  # unpack and decode the inputs
                    ready = time.time()
                    mine.append([req, compute_track, "compute" if kind == DATA else PROGRAMS[kind], t0, ready])
                local.update(zip(prog.stages[stage].outputs, outs))
                msg = wire.layouts[stage + 1].pack(kind, req, wire.gather(stage + 1, got, local), dev, flags, stamp)
                if traced:  # pack the outputs (gloo sends them in the background)
                    mine.append([req, compute_track, "send", ready, time.time()])
                    self.spans.append(mine)
                self._send(msg, name)
                progress["sent"] = str(req)
            self.flush()
            try:
                self.publish_spans(store)  # before "done": the driver reads them when it closes
                store.set(f"{PREFIX}stage{stage}/status", "done")
            except StoreGone:  # the driver got the stop back and left first: a normal end
                pass
        except StoreGone:
            raise DistributedError(f"rotafx: {name}: the driver at {where} is gone (it ended or was killed) while "
                                   f"this stage served", stage=stage, node=st.node) from None
        except CommError as e:
            what = "timed out" if e.timed_out else "lost the connection"
            if e.peer == rank - 1:  # upstream is gone: pass on what this stage finished, so the driver can report it
                try:
                    self.flush(min(self.timeout, 5.0))
                except CommError:
                    pass
            set_quietly(store, f"stage{stage}/error", json.dumps({"kind": "peer", "peer": e.peer, "timed_out": e.timed_out,
                                                                  "message": str(e)}))
            aborted = None
            for _ in range(10):  # the driver may be a moment behind: give it a second to say what it found
                aborted = get_key(store, "abort")
                if aborted:
                    break
                time.sleep(0.1)
            if aborted:  # the driver found the fault first: say what it found
                raise DistributedError(f"rotafx: {name}: the driver aborted the run: {aborted}", stage=stage,
                                       node=st.node) from None
            raise DistributedError(f"rotafx: {name} {what} with {who(plan, e.peer)}: {e}", stage=stage, node=st.node) from None
        except Exception as e:
            set_quietly(store, f"stage{stage}/error", json.dumps({"kind": "self", "message": f"{type(e).__name__}: {e}"}))
            raise DistributedError(f"rotafx: {name} failed: {type(e).__name__}: {e}", stage=stage, node=st.node) from e
        finally:
            stop_watch.set()
            shutdown(pg)
        return 0


def serve(plan_dir: str | os.PathLike[str], stage: int, **options: Any) -> int:
    """Run stage ``stage`` of the plan in ``plan_dir`` until the driver says stop; returns 0.

    Options as for :class:`StageServer` (``master_addr``, ``master_port``, ``timeout``,
    ``idle_timeout``, ``join_timeout``, ``emulate_links``, ``device``, ``backend``,
    ``threads``). Raises :class:`DistributedError` naming the stage (and the peer) on failure.
    """
    return StageServer(plan_dir, stage, **options).run()


def _watchdog(store: Any, stage: int, name: str, where: str, stop: threading.Event, progress: Mapping[str, str],
              period_s: float = BEAT_S, publish: Any = None) -> None:
    """Send a heartbeat every ``period_s``, with the stage's ``progress`` (its state and the last request it sent on:
    what the driver reads to find a hang, kept off the request path); exit the process when the driver aborts the
    run or its store is gone."""
    said: dict[str, str] = {}
    while not stop.wait(period_s):
        try:
            for key, value in list(progress.items()):
                if said.get(key) != value:
                    store.set(f"{PREFIX}stage{stage}/{key}", value)
                    said[key] = value
            if publish is not None:  # a traced request's spans, with the beat
                publish()
            store.add(f"{PREFIX}stage{stage}/beat", 1)
            if store.check([PREFIX + "abort"]):
                msg = store.get(PREFIX + "abort").decode()
                if stop.wait(1.0):  # the main thread saw it too and reports it
                    return
                sys.stderr.write(f"rotafx: {name}: the driver aborted the run: {msg}\n")
                sys.stderr.flush()
                os._exit(3)
        except Exception:  # noqa: BLE001 - the connection to the driver is gone
            # the main thread may be saying so itself (it sets ``stop`` as it fails): one line, not two
            if stop.wait(1.0):
                return
            sys.stderr.write(f"rotafx: {name}: the driver at {where} is gone; exiting\n")
            sys.stderr.flush()
            os._exit(3)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The options of ``rotafx serve`` (the CLI's and this module's)."""
    p.add_argument("--plan", required=True, help="the plan directory (the same on every host)")
    env_stage = stage_from_env()  # under torchrun: RANK - 1
    p.add_argument("--stage", type=int, required=env_stage is None, default=env_stage,
                   help="which stage of the plan to run (0 .. stages-1; rank = stage + 1; default $RANK - 1)")
    p.add_argument("--master-addr", default=None, help="the driver's host (default $MASTER_ADDR or 127.0.0.1)")
    p.add_argument("--master-port", type=int, default=None, help="the driver's port (default $MASTER_PORT or 29500)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for each send or receive of a request under way")
    p.add_argument("--idle-timeout", type=float, default=7 * 24 * 3600.0, help="seconds to wait for the next request")
    p.add_argument("--join-timeout", type=float, default=120.0, help="seconds for every process to join")
    p.add_argument("--emulate-links", action="store_true", help="delay messages as the plan's topology links would")
    p.add_argument("--device", default=None, help="torch device for this stage (default: the one it was exported on)")
    p.add_argument("--backend", default=None, choices=["gloo", "nccl"], help="default: gloo on CPU, nccl on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--secret-file", default=None,
                   help="a file holding the cluster's secret (default: $ROTAFX_SECRET); the driver's must match")


def _die_with_parent() -> None:
    """Under ``launch_local`` (``ROTAFX_PARENT_PID`` set): the kernel kills this process when its launcher dies,
    even while it is stopped (Linux; elsewhere the watchdog's timeout ends it)."""
    parent = os.environ.get("ROTAFX_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # the launcher died before the request was made
        os._exit(3)


def serve_from_args(args: argparse.Namespace, server: type[StageServer] = StageServer, **extra: Any) -> int:
    """Serve from parsed ``rotafx serve`` arguments; a failure prints one line and returns 3."""
    _die_with_parent()
    try:
        addr, port = endpoint_from_env(args.master_addr, args.master_port)
        check_world(read_plan(args.plan).num_stages, f"stage {args.stage}")
        return server(args.plan, args.stage, master_addr=addr, master_port=port, timeout=args.timeout,
                      idle_timeout=args.idle_timeout, join_timeout=args.join_timeout, emulate_links=args.emulate_links,
                      device=args.device, backend=args.backend, threads=args.threads,
                      secret_file=getattr(args, "secret_file", None), **extra).run()
    except SecretError as e:
        print(str(e), file=sys.stderr, flush=True)
        return 2
    except (DistributedError, PlanError) as e:
        print(str(e), file=sys.stderr, flush=True)
        return 3
    except ValueError as e:  # a bad port in the environment
        print(str(e), file=sys.stderr, flush=True)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``rotafx serve`` arguments -> a :class:`StageServer`; prints a failure on one line and returns 3."""
    ap = argparse.ArgumentParser(prog="rotafx serve")
    add_serve_args(ap)
    return serve_from_args(ap.parse_args(argv))

