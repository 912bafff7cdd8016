"""Transport: the messages between neighbouring processes, their byte layout and codec, and the waits, groups and store they go over.

Each message is one flat byte buffer: a 32-byte header (kind, request id, the time it was
handed to the link, flags) and the hop's tensors, each at a 16-byte aligned offset.
Shapes are static (from ``plan.json``), so every receive is posted before the message
exists, sized for the largest message the hop can carry: a one-pass request (``DATA``), or,
for a plan with generation programs, a prefill chunk (``PREFILL``), a decode step
(``DECODE``) or a header alone (``FREE``: drop a sequence's cache); gloo delivers a shorter
message into a larger buffer, and the header's kind says which layout it has. A generation
message names its sequence's cache slot in the flags' upper bits (:data:`SLOT_SHIFT`).
With link windows in force (:meth:`~.driver.Driver.set_link_windows`) the header also carries a
:class:`Stamp`: which windows, and one instant in wall and schedule time, from which a stage
reckons the schedule time a message arrives; a message that arrives while a link it crossed is
down is not computed, and a header alone (``LOST``) goes on to the driver in its place.
Every wait has a timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from ...plan.schema import PLAN_FILE, HopSpec, PlanSpec, TensorSpec
from ...units import first_line
from ...wire import decode, encode
from .secret import tag

__all__ = ["DistributedError", "CommError", "Layout", "Wire", "wait", "post", "make_group", "check_links", "backend_for",
           "check_endpoint", "plan_digest", "free_port", "local_address", "get_key", "set_quietly", "shutdown", "who",
           "HEADER_BYTES", "EMULATE", "TRACE", "DATA", "STOP", "PREFILL", "DECODE", "FREE", "LOST", "SLOT_SHIFT", "PREFIX", "BEAT_S",
           "MAX_TIMEOUT_S", "header_only", "wires_of", "largest", "PROGRAMS", "endpoint_from_env", "stage_from_env",
           "check_world", "LinkDownError", "Stamp", "NO_STAMP"]

# int64 kind, request id, sent-at (ns since the epoch), flags, then the Stamp: link windows version, wall (ns),
# schedule time (float64 bits), hop
HEADER_BYTES = 64
EMULATE = 1  # flag: apply link emulation to this request
TRACE = 2  # flag: the stages record this request's spans for the driver's trace
ALIGN = 16
DATA, STOP, PREFILL, DECODE, FREE, LOST = 0, 1, 2, 3, 4, 5  # LOST: a header alone, for a message a down link dropped
SLOT_SHIFT = 16  # a generation message's flags: bit 0 EMULATE, bit 1 TRACE, bits 16.. the sequence's cache slot
PROGRAMS = {PREFILL: "prefill", DECODE: "decode"}
PREFIX = "rotafx/"
BEAT_S = 0.2  # a stage's heartbeat period
MAX_TIMEOUT_S = 1e7  # about 115 days: longer is a mistake (and overflows thread waits)


class DistributedError(RuntimeError):
    """A stage failed, hung or could not be reached.

    ``stage`` is the stage held responsible (``None`` when unknown), ``node`` its topology
    node, ``completed`` the indices of the requests whose outputs arrived and ``outputs``
    those outputs (index -> output).
    """

    def __init__(self, message: str, *, stage: int | None = None, node: str | None = None,
                 completed: Sequence[int] = (), outputs: Mapping[int, Any] | None = None,
                 tokens: Mapping[int, Sequence[int]] | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.node = node
        self.completed = list(completed)
        self.outputs = dict(outputs or {})
        self.tokens = {k: list(v) for k, v in (tokens or {}).items()}  # Driver.generate: sequence -> its new tokens


class LinkDownError(DistributedError):
    """Requests lost because a link they crossed was out of every window (:meth:`~.driver.Driver.set_link_windows`).

    Unlike its base class this is no fault of a stage: the pipeline is still up, and a later call goes through
    where the links are up again. ``lost`` lists the requests lost (for :meth:`~.driver.Driver.generate`, the
    sequences that did not finish), ``completed``/``outputs`` those answered, ``tokens`` (generation) the new tokens
    each sequence got, ``links`` the links found down (``"src -> dst"``) and ``t_s`` the earliest schedule time a
    request was lost (``None`` when unknown).
    """

    def __init__(self, message: str, *, lost: Sequence[int], links: Sequence[str] = (), t_s: float | None = None,
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self.lost = list(lost)
        self.links = list(links)
        self.t_s = t_s


@dataclass(frozen=True)
class Stamp:
    """A message's place in schedule time: ``windows``, the version of the link windows the driver put in force
    (0: none), and one instant as wall clock (``wall_ns``, ns since the epoch) and schedule time (``sched_s``);
    schedule time runs at the windows' time scale from there. A ``LOST`` message carries the schedule time it was
    found lost at in ``sched_s`` and the hop that dropped it in ``hop``."""

    windows: int = 0
    wall_ns: int = 0
    sched_s: float = 0.0
    hop: int = -1

    def at(self, wall_s: float, time_scale: float) -> float:
        """The schedule time of wall-clock time ``wall_s``."""
        return self.sched_s + (wall_s - self.wall_ns / 1e9) * time_scale

    def fields(self) -> list[int]:
        return [self.windows, self.wall_ns, struct.unpack("q", struct.pack("d", self.sched_s))[0], self.hop]


NO_STAMP = Stamp()


class CommError(RuntimeError):
    """A send or receive that failed or timed out, with the peer rank."""

    def __init__(self, message: str, peer: int, timed_out: bool) -> None:
        super().__init__(message)
        self.peer = peer
        self.timed_out = timed_out


@dataclass(frozen=True)
class Layout:
    """Where each tensor of one hop's message lies in its byte buffer."""

    specs: tuple[TensorSpec, ...]
    offsets: tuple[int, ...]
    nbytes: int

    @classmethod
    def of(cls, plan: PlanSpec, hop: HopSpec) -> "Layout":
        specs = tuple(plan.entry_specs(hop))
        offsets, off = [], HEADER_BYTES
        for s in specs:
            offsets.append(off)
            off += -(-s.nbytes // ALIGN) * ALIGN
        return cls(specs, tuple(offsets), off)

    @property
    def payload_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs)

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.empty(self.nbytes, dtype=torch.uint8, device=device)

    def pack(self, kind: int, request: int, tensors: Sequence[torch.Tensor], device: torch.device, flags: int = 0,
             stamp: Stamp = NO_STAMP) -> torch.Tensor:
        buf = self.empty(device)
        for spec, off, t in zip(self.specs, self.offsets, tensors):
            if not spec.matches(t):
                raise RuntimeError(f"rotafx: internal: message tensor {TensorSpec.of(t).describe()} != {spec.describe()}")
            if spec.nbytes:
                buf[off:off + spec.nbytes].copy_(t.contiguous().reshape(-1).view(torch.uint8))
        header = torch.tensor([kind, request, time.time_ns(), flags, *stamp.fields()], dtype=torch.int64)
        buf[:HEADER_BYTES].copy_(header.view(torch.uint8))
        return buf

    @staticmethod
    def header(buf: torch.Tensor) -> tuple[int, int, float, int]:
        h = buf[:HEADER_BYTES].cpu().view(torch.int64).tolist()
        return int(h[0]), int(h[1]), h[2] / 1e9, int(h[3])

    @staticmethod
    def stamp(buf: torch.Tensor) -> Stamp:
        """The header's :class:`Stamp` (from a peer: the caller checks what it uses)."""
        v, wall, bits, hop = buf[:HEADER_BYTES].cpu().view(torch.int64).tolist()[4:]
        return Stamp(int(v), int(wall), struct.unpack("d", struct.pack("q", bits))[0], int(hop))

    def unpack(self, buf: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for spec, off in zip(self.specs, self.offsets):
            t = buf[off:off + spec.nbytes].view(spec.torch_dtype).view(spec.shape) if spec.nbytes else \
                torch.empty(spec.shape, dtype=spec.torch_dtype, device=buf.device)
            out.append(t)
        return out


class Wire:
    """Turns a hop's message into values and back, applying the plan's codec where the hop says so."""

    def __init__(self, plan: PlanSpec) -> None:
        self.plan = plan
        self.layouts = [Layout.of(plan, h) for h in plan.hops]

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


def wires_of(plan: PlanSpec) -> dict[int, "Wire"]:
    """The wire of each message kind that carries tensors: the one-pass plan's, and its generation programs'."""
    out = {DATA: Wire(plan)}
    if plan.generation is not None:
        out.update({k: Wire(plan.generation.program(name)) for k, name in PROGRAMS.items()})
    return out


def largest(wires: Mapping[int, "Wire"], hop: int) -> int:
    """Bytes of the largest message hop ``hop`` carries, of any kind."""
    return max(w.layouts[hop].nbytes for w in wires.values())


def header_only(kind: int, request: int, flags: int, device: torch.device, stamp: Stamp = NO_STAMP) -> torch.Tensor:
    """A message that is its header alone (``FREE``, ``LOST``)."""
    return Layout((), (), HEADER_BYTES).pack(kind, request, [], device, flags, stamp)


def wait(work: Any, timeout_s: float, peer: int, what: str) -> None:
    """Wait for a send or receive, or raise :class:`CommError` naming the peer (and whether it timed out)."""
    try:
        work.wait(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as e:
        msg = str(e)
        timed_out = "Timed out" in msg or "timeout" in msg.lower()
        raise CommError(f"{what}: {first_line(e)}", peer, timed_out) from None


def post(op: Any, tensors: list[torch.Tensor], peer: int, what: str) -> Any:
    """Start a send or receive (``op`` is ``pg.send`` or ``pg.recv``); gloo refuses at once on a connection that is
    gone, which is the peer's failure: a :class:`CommError` naming it, as a failed wait is."""
    try:
        return op(tensors, peer, 0)
    except RuntimeError as e:
        raise CommError(f"{what}: {first_line(e)}", peer, False) from None


def make_group(backend: str, store: Any, rank: int, size: int, timeout_s: float, bind: str | None = None) -> Any:
    """A gloo or NCCL process group of ``size`` ranks over ``store``; gloo listens on ``bind`` only when given."""
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = datetime.timedelta(seconds=timeout_s)
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=bind) if bind else
                         dist.ProcessGroupGloo.create_default_device()]
        return dist.ProcessGroupGloo(store, rank, size, opts)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = datetime.timedelta(seconds=timeout_s)
        return dist.ProcessGroupNCCL(store, rank, size, opts)
    raise ValueError(f"rotafx: backend must be 'gloo' (CPU) or 'nccl' (CUDA), got {backend!r}")


LINK_TAG = 1  # the tag of the link check's messages (requests use 0)


def check_links(pg: Any, rank: int, size: int, secret: bytes, nonce: str, timeout_s: float, device: torch.device,
                name: str) -> None:
    """Each rank proves to the next one that it holds the secret, over the process group, before any tensor.

    Rank ``r`` sends ``HMAC(secret, link, run nonce, r -> r+1)`` to rank ``r + 1`` (the last
    to the driver) and checks the one from ``r - 1``: a process that took a neighbour's
    place in the group without the secret is found here. Raises :class:`DistributedError`.
    """
    nxt, prv = (rank + 1) % size, (rank - 1) % size
    mine = torch.tensor(list(tag(secret, b"link", nonce, f"{rank}->{nxt}")), dtype=torch.uint8, device=device)
    got = torch.zeros(32, dtype=torch.uint8, device=device)
    try:
        recv = pg.recv([got], prv, LINK_TAG)
        wait(pg.send([mine], nxt, LINK_TAG), timeout_s, nxt, f"{name}: the link check")
        wait(recv, timeout_s, prv, f"{name}: the link check")
    except (CommError, RuntimeError) as e:
        raise DistributedError(f"rotafx: {name}: the link check with its neighbours failed: {e}") from None
    if not hmac.compare_digest(bytes(got.cpu().tolist()), tag(secret, b"link", nonce, f"{prv}->{rank}")):
        raise DistributedError(f"rotafx: {name}: the process connected as rank {prv} does not hold the cluster's "
                               f"secret; it is not one of this run's processes (nothing was exchanged with it)")


def endpoint_from_env(addr: str | None = None, port: int | None = None) -> tuple[str, int]:
    """The driver's address and port: those given, else as ``torchrun`` sets them (``MASTER_ADDR``,
    ``MASTER_PORT``), else ``127.0.0.1:29500``. ``$ROTAFX_PORT`` overrides the port; under a torchrun
    agent that hosts its own store at ``MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE=True``) the driver's
    is the next port, ``MASTER_PORT + 1``. Raises ``ValueError`` for a port that is not a number."""
    env = os.environ
    host = addr if addr is not None else (env.get("MASTER_ADDR") or "127.0.0.1")  # a given "" is checked, not replaced
    if port is not None:
        return host, port
    text, shift = env.get("ROTAFX_PORT"), 0
    if not text:
        text = env.get("MASTER_PORT") or "29500"
        shift = 1 if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else 0
    try:
        return host, int(text) + shift
    except ValueError:
        raise ValueError(f"rotafx: the driver's port ($ROTAFX_PORT or $MASTER_PORT) must be a TCP port 1..65535, "
                         f"got {text!r}") from None


def stage_from_env() -> int | None:
    """The stage a ``torchrun`` worker serves: ``$RANK - 1`` (rank 0 is the driver), None without ``$RANK``."""
    rank = os.environ.get("RANK", "")
    return int(rank) - 1 if rank.isdigit() and int(rank) >= 1 else None


def check_world(num_stages: int, who_: str) -> None:
    """``$WORLD_SIZE``, when set (torchrun), is the plan's stages plus the driver."""
    world = os.environ.get("WORLD_SIZE")
    if world is not None and world != str(num_stages + 1):
        raise DistributedError(f"rotafx: {who_}: WORLD_SIZE is {world!r}, but the plan has {num_stages} stage(s): "
                               f"run {num_stages + 1} processes (torchrun --nproc-per-node {num_stages + 1}: rank 0 "
                               f"the driver, rank i + 1 stage i)")


def check_endpoint(addr: Any, port: Any, **timeouts: Any) -> None:
    """``addr``/``port`` a host and a TCP port, each named timeout a positive finite number of seconds."""
    if not isinstance(addr, str) or not addr.strip():
        raise ValueError(f"rotafx: master_addr must be a host name or address, got {addr!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"rotafx: master_port must be a TCP port 1..65535, got {port!r}")
    for name, v in timeouts.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= MAX_TIMEOUT_S):
            raise ValueError(f"rotafx: {name} must be a positive finite number of seconds (at most "
                             f"{MAX_TIMEOUT_S:g}), got {v!r}")


def backend_for(device: torch.device, backend: str | None) -> str:
    """The process group backend for a device: the one asked for, else NCCL on CUDA and gloo elsewhere."""
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


def local_address(host: str, port: int) -> str:
    """The address of this machine's interface that reaches ``host`` (where this process's gloo should listen)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port))  # UDP: no packet is sent, the kernel only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostname()


def get_key(store: Any, key: str) -> str | None:
    """A rotafx key of the store, or None when it is not set (or the store is gone)."""
    try:
        if store.check([PREFIX + key]):
            return store.get(PREFIX + key).decode()
    except Exception:  # noqa: BLE001 - a store that is gone answers nothing
        return None
    return None



def who(plan: PlanSpec, rank: int) -> str:
    """A rank as people read it: the driver, or the stage and its node."""
    return "the driver" if rank == 0 else f"stage {rank - 1} ({plan.stages[rank - 1].node})"


def set_quietly(store: Any, key: str, value: str) -> None:
    """Set a rotafx key of the store, if the store is still there."""
    try:
        store.set(PREFIX + key, value)
    except Exception:  # noqa: BLE001 - the driver (store host) may be gone already
        pass


def shutdown(pg: Any) -> None:
    """Leave a process group, whatever state it is in."""
    try:
        pg.shutdown()
    except Exception:  # noqa: BLE001
        pass
