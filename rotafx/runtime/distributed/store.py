"""The rendezvous store, authenticated: only processes that hold the cluster's secret can read or write a key.

``torch.distributed.TCPStore`` accepts any client and lists its keys to anyone, so the
driver runs this store instead (a thread in its process, listening on exactly the
address asked for). A connection starts with a challenge-response both ways (each side
proves it holds the secret by an HMAC of two fresh nonces; the secret never travels);
every later frame carries an HMAC under a key derived for that connection, with a
sequence number, so frames cannot be forged, altered or replayed. A client that fails
the challenge is disconnected before it reads or writes anything. The store is
authenticated, not encrypted: keys and values (addresses, digests, counters; never
tensors) travel in the clear.

:class:`AuthStore` is a ``torch.distributed.Store``, so gloo and NCCL rendezvous through
it as through ``TCPStore``. The server also records when each key was last written and
when each client connected and disconnected: the driver's fault monitor reads both
(a stage's heartbeat key, a stage process that is gone).
"""

from __future__ import annotations

import collections
import datetime
import hmac
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Sequence

import torch.distributed as dist

from .secret import tag

__all__ = ["StoreServer", "AuthStore", "StoreRefused", "StoreGone", "connect"]

MAGIC = b"rotafx-store/1\n"
NONCE = 32
MAX_FRAME = 16 << 20
HANDSHAKE_S = 2.0  # a client proves itself within this, or is dropped
MAX_PENDING = 64  # unauthenticated connections handled at once; more are dropped (the client retries)
_OK, _TIMEOUT, _ERR = b"\x00", b"\x01", b"\x02"


class StoreRefused(RuntimeError):
    """The other side did not prove it holds the secret (or is not a rotafx store)."""


class StoreGone(ConnectionError):
    """The connection to the store closed."""


def _fields(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _parse(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise ValueError("truncated field")
        (n,) = struct.unpack_from(">I", data, i)
        i += 4
        if i + n > len(data):
            raise ValueError("truncated field")
        out.append(data[i:i + n])
        i += n
    return out


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """``n`` bytes; with ``deadline`` (``time.monotonic()``) all of them by then, however slowly they drip in."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreRefused("the handshake took too long")
            sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise StoreGone("the connection closed")
        buf += chunk
    return bytes(buf)


class _Channel:
    """Frames over an authenticated socket: length, payload, HMAC(session key, direction, sequence, payload)."""

    def __init__(self, sock: socket.socket, key: bytes, out_dir: bytes, in_dir: bytes) -> None:
        self.sock, self.key, self.out_dir, self.in_dir = sock, key, out_dir, in_dir
        self.sent = self.received = 0

    def send(self, payload: bytes) -> None:
        mac = tag(self.key, self.out_dir, str(self.sent), payload)
        self.sent += 1
        self.sock.sendall(struct.pack(">I", len(payload)) + payload + mac)

    def recv(self) -> bytes:
        (n,) = struct.unpack(">I", _recv_exact(self.sock, 4))
        if n > MAX_FRAME:
            raise StoreRefused(f"a frame of {n} bytes (at most {MAX_FRAME})")
        payload = _recv_exact(self.sock, n)
        mac = _recv_exact(self.sock, 32)
        if not hmac.compare_digest(mac, tag(self.key, self.in_dir, str(self.received), payload)):
            raise StoreRefused("a frame whose digest does not match (forged, altered or replayed)")
        self.received += 1
        return payload


def _handshake_server(sock: socket.socket, secret: bytes) -> _Channel:
    deadline = time.monotonic() + HANDSHAKE_S  # the whole handshake, not each read: a slow drip loses its slot
    ns = os.urandom(NONCE)
    sock.sendall(MAGIC + ns)
    got = _recv_exact(sock, NONCE + 32, deadline)
    nc, proof = got[:NONCE], got[NONCE:]
    if not hmac.compare_digest(proof, tag(secret, b"client", ns, nc)):
        raise StoreRefused("the client does not hold the cluster's secret")
    sock.sendall(tag(secret, b"server", ns, nc))
    return _Channel(sock, tag(secret, b"session", ns, nc), b"S", b"C")


def _handshake_client(sock: socket.socket, secret: bytes, where: str) -> _Channel:
    head = _recv_exact(sock, len(MAGIC) + NONCE)
    if head[:len(MAGIC)] != MAGIC:
        raise StoreRefused(f"{where} is not a rotafx driver (it did not answer as a rotafx store)")
    ns, nc = head[len(MAGIC):], os.urandom(NONCE)
    sock.sendall(nc + tag(secret, b"client", ns, nc))
    try:
        proof = _recv_exact(sock, 32)
    except (StoreGone, OSError):
        raise StoreRefused(f"the driver at {where} refused this process: its secret is not the driver's "
                           f"(give every process the same ROTAFX_SECRET or secret file)") from None
    if not hmac.compare_digest(proof, tag(secret, b"server", ns, nc)):
        raise StoreRefused(f"the process at {where} does not hold the cluster's secret: it is not this run's driver")
    return _Channel(sock, tag(secret, b"session", ns, nc), b"C", b"S")


class _Keys:
    """The store's contents, with a condition for blocking reads and the time each key was last written."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.updated: dict[str, float] = {}
        self.cond = threading.Condition()

    def _put(self, k: str, v: bytes) -> None:
        self.data[k] = v
        self.updated[k] = time.monotonic()
        self.cond.notify_all()

    def _wait(self, keys: Sequence[str], timeout_s: float) -> bool:
        t = min(max(0.0, timeout_s), threading.TIMEOUT_MAX) if timeout_s == timeout_s else 0.0
        return self.cond.wait_for(lambda: all(k in self.data for k in keys), timeout=t)

    def handle(self, op: bytes, args: list[bytes]) -> tuple[bytes, list[bytes]]:
        """One request: (status, result fields)."""
        def s(i: int) -> str:
            return args[i].decode()

        with self.cond:
            if op == b"set":
                self._put(s(0), args[1])
                return _OK, []
            if op == b"get":
                if not self._wait([s(0)], float(s(1))):
                    return _TIMEOUT, [f"key {s(0)!r} not set within {float(s(1)):g} s".encode()]
                return _OK, [self.data[s(0)]]
            if op == b"add":
                v = int(self.data.get(s(0), b"0")) + int(s(1))
                self._put(s(0), str(v).encode())
                return _OK, [str(v).encode()]
            if op == b"check":
                return _OK, [b"1" if all(k.decode() in self.data for k in args) else b"0"]
            if op == b"wait":
                keys = [k.decode() for k in args[1:]]
                if not self._wait(keys, float(s(0))):
                    return _TIMEOUT, [f"keys {keys} not set within {float(s(0)):g} s".encode()]
                return _OK, []
            if op == b"cset":
                k, expected, desired = s(0), args[1], args[2]
                cur = self.data.get(k)
                if (cur is None and expected == b"") or cur == expected:
                    self._put(k, desired)
                    return _OK, [desired]
                return _OK, [expected if cur is None else cur]
            if op == b"del":
                found = self.data.pop(s(0), None) is not None
                self.updated.pop(s(0), None)
                return _OK, [b"1" if found else b"0"]
            if op == b"num":
                return _OK, [str(len(self.data)).encode()]
        return _ERR, [b"unknown operation " + op[:32]]


class StoreServer:
    """The driver's store: a thread accepting authenticated clients on exactly ``host:port``."""

    def __init__(self, host: str, port: int, secret: bytes) -> None:
        self.host, self.port, self._secret = host, port, secret
        self.keys = _Keys()
        self.rejected: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)  # (peer address, why)
        self._clients: dict[str, tuple[float, float | None]] = {}  # identity -> (connected, disconnected)
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._pending = threading.BoundedSemaphore(MAX_PENDING)
        self._closed = False
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            self._listener = socket.socket(family, kind, proto)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(addr)
            self._listener.listen(128)
        except socket.gaierror as e:
            raise OSError(e.errno, f"{host!r} is not a name or address this machine can resolve ({e.strerror}); "
                          f"give master_addr as an address of this host") from None
        threading.Thread(target=self._accept, name="rotafx-store", daemon=True).start()

    # -- what the driver reads ---------------------------------------------------------
    def updated(self, key: str) -> float | None:
        """``time.monotonic()`` when ``key`` was last written, or None."""
        with self.keys.cond:
            return self.keys.updated.get(key)

    def client(self, identity: str) -> tuple[float, float | None] | None:
        """When the client that said it is ``identity`` connected and (if it has) disconnected."""
        with self._lock:
            return self._clients.get(identity)

    def close(self) -> None:
        """Stop accepting and drop every client (their processes see the driver gone)."""
        self._closed = True
        for s in [self._listener, *list(self._socks)]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    # -- the threads -------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, addr = self._listener.accept()
            except OSError as e:  # out of descriptors, a connection aborted: the store goes on
                if self._closed:
                    return
                self.rejected.append(("?", f"accept failed: {e.strerror or e}"))
                time.sleep(0.05)
                continue
            if not self._pending.acquire(blocking=False):
                sock.close()
                self.rejected.append((str(addr), "too many connections waiting to authenticate"))
                continue
            threading.Thread(target=self._serve, args=(sock, addr), daemon=True).start()

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        identity = None
        with self._lock:
            self._socks.add(sock)
        try:
            try:
                sock.settimeout(HANDSHAKE_S)
                ch = _handshake_server(sock, self._secret)
                sock.settimeout(None)
            except (StoreRefused, StoreGone, OSError) as e:
                self.rejected.append((str(addr), str(e)))
                return
            finally:
                self._pending.release()
            while True:
                try:
                    fields = _parse(ch.recv())
                    op, args = fields[0], fields[1:]
                    if op == b"hello":
                        identity = args[0].decode()
                        with self._lock:
                            self._clients[identity] = (time.monotonic(), None)
                        status, out = _OK, []
                    else:
                        status, out = self.keys.handle(op, args)
                except (StoreGone, OSError):
                    return
                except (StoreRefused, ValueError, IndexError, UnicodeDecodeError, OverflowError) as e:
                    self.rejected.append((str(addr), f"a bad frame: {e}"))
                    return
                try:
                    ch.send(status + _fields(*out))
                except OSError:  # the client left while it was answered
                    return
        finally:
            with self._lock:
                self._socks.discard(sock)
                if identity is not None and identity in self._clients:
                    self._clients[identity] = (self._clients[identity][0], time.monotonic())
            sock.close()


class AuthStore(dist.Store):
    """A ``torch.distributed.Store`` over an authenticated connection (or, in the driver, the server itself)."""

    def __init__(self, call: Callable[[bytes, list[bytes]], tuple[bytes, list[bytes]]], timeout_s: float,
                 close: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self._call, self._close = call, close
        self._timeout_s = float(timeout_s)

    def _do(self, op: bytes, *args: bytes) -> list[bytes]:
        status, out = self._call(op, list(args))
        if status == _TIMEOUT:
            raise dist.DistStoreError(f"rotafx store: {out[0].decode() if out else 'timed out'}")
        if status != _OK:
            raise RuntimeError(f"rotafx store: {out[0].decode(errors='replace') if out else 'error'}")
        return out

    @staticmethod
    def _b(v: Any) -> bytes:
        return v.encode() if isinstance(v, str) else bytes(v)

    def _secs(self, timeout: Any) -> float:
        if timeout is None:
            return self._timeout_s
        return timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)

    def set(self, key: str, value: Any) -> None:
        self._do(b"set", key.encode(), self._b(value))

    def get(self, key: str) -> bytes:
        return self._do(b"get", key.encode(), repr(self._timeout_s).encode())[0]

    def add(self, key: str, value: int) -> int:
        return int(self._do(b"add", key.encode(), str(int(value)).encode())[0])

    def check(self, keys: list[str]) -> bool:
        return self._do(b"check", *(k.encode() for k in keys))[0] == b"1"

    def wait(self, keys: list[str], timeout: Any = None) -> None:
        self._do(b"wait", repr(self._secs(timeout)).encode(), *(k.encode() for k in keys))

    def compare_set(self, key: str, expected: Any, desired: Any) -> bytes:
        return self._do(b"cset", key.encode(), self._b(expected), self._b(desired))[0]

    def delete_key(self, key: str) -> bool:
        return self._do(b"del", key.encode())[0] == b"1"

    def num_keys(self) -> int:
        return int(self._do(b"num")[0])

    def set_timeout(self, timeout: datetime.timedelta) -> None:
        self._timeout_s = timeout.total_seconds()

    def close(self) -> None:
        """Close the connection (a client store; the driver's own view closes nothing)."""
        self._close()

    @classmethod
    def local(cls, server: StoreServer, timeout_s: float) -> "AuthStore":
        """The driver's view of its own server, with no socket in between."""
        return cls(server.keys.handle, timeout_s)


def connect(host: str, port: int, secret: bytes, identity: str, timeout_s: float,
            io_timeout: float | None = None) -> AuthStore:
    """A client of the driver's store, authenticated as holding ``secret``, named ``identity`` to the driver.

    Retries until ``timeout_s`` while nobody listens (the driver may start later) or the
    server drops the connection before its greeting (it is busy); raises
    :class:`StoreRefused` at once when the other side refuses the secret or does not hold it.
    ``io_timeout``: a request unanswered for that long is :class:`StoreGone`.
    """
    where = f"{host}:{port}"
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, min(HANDSHAKE_S, deadline - time.monotonic())))
        except OSError as e:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nobody listens at {where} after {timeout_s:g} s ({e.strerror or e})") from None
            time.sleep(0.1)
            continue
        try:
            ch = _handshake_client(sock, secret, where)
            break
        except StoreRefused:
            sock.close()
            raise
        except (StoreGone, OSError) as e:  # dropped before the greeting: a busy server; try again, a little later
            sock.close()
            if time.monotonic() >= deadline:
                raise StoreRefused(f"the process at {where} kept closing the connection before it authenticated "
                                   f"({e}); is it a rotafx driver, and is something flooding it?") from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    sock.settimeout(io_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lock = threading.Lock()

    def call(op: bytes, args: list[bytes]) -> tuple[bytes, list[bytes]]:
        with lock:
            try:
                ch.send(_fields(op, *args))
                reply = ch.recv()
            except OSError as e:
                raise StoreGone(f"the driver's store at {where} is gone ({e})") from None
        fields = _parse(reply[1:])
        return reply[:1], fields

    def close() -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    store = AuthStore(call, timeout_s, close)
    store._do(b"hello", identity.encode())
    return store
