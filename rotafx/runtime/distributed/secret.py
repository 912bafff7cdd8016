"""The cluster's shared secret: where it comes from, and the keyed digests that prove a process holds it.

Every process of a run (the driver and each stage) holds the same secret: given to the
driver as ``secret=`` or ``secret_file=`` (a file that does not exist yet is created,
readable by its owner only, with a new random secret: the driver generated it), or in the
``ROTAFX_SECRET`` environment variable; a stage reads ``--secret-file`` or
``ROTAFX_SECRET``. The secret is never put on a command line, in the store or in a
message; only HMAC-SHA256 digests of fresh nonces go over the network.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

__all__ = ["SecretError", "ENV", "MIN_BYTES", "resolve_secret", "new_secret", "tag"]

ENV = "ROTAFX_SECRET"
MIN_BYTES = 16
_FIX = (f"set {ENV} to the same random string on every host (e.g. `export {ENV}=$(python -c "
        f"'import secrets; print(secrets.token_hex(32))')`) or give a secret file readable only by you")


class SecretError(ValueError):
    """The cluster's secret is missing, unreadable or too short."""


def new_secret() -> str:
    """A fresh random secret (64 hex characters: 256 bits)."""
    return secrets.token_hex(32)


def resolve_secret(secret: str | bytes | None = None, secret_file: str | os.PathLike[str] | None = None, *,
                   create: bool = False, who: str = "this process") -> bytes:
    """The secret as bytes: ``secret``, else the contents of ``secret_file``, else ``$ROTAFX_SECRET``.

    With ``create=True`` (the driver) a ``secret_file`` that does not exist is created with
    mode 0600 and a new random secret. Raises :class:`SecretError` naming what is wrong and
    the fix; the message never contains the secret.
    """
    if secret is not None and secret_file is not None:
        raise SecretError(f"rotafx: {who}: give the secret or a secret file, not both")
    if secret is not None:
        if not isinstance(secret, (str, bytes)) or isinstance(secret, bool):
            raise SecretError(f"rotafx: {who}: the secret must be a string or bytes, got {type(secret).__name__}")
        raw, where = (secret.encode() if isinstance(secret, str) else bytes(secret)).strip(), "the secret given"
    elif secret_file is not None:
        path = Path(secret_file)
        if create and not path.exists():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                raise SecretError(f"rotafx: {who}: cannot create the secret file {path}: {e.strerror}") from None
            with os.fdopen(fd, "w") as f:
                f.write(new_secret() + "\n")
        raw = _read_secret_file(path, who)
        where = f"the secret file {path}"
    elif os.environ.get(ENV):
        raw, where = os.environ[ENV].strip().encode(), f"${ENV}"
    else:
        raise SecretError(f"rotafx: {who} needs the cluster's shared secret, and none was given: {_FIX}")
    if len(raw) < MIN_BYTES:
        raise SecretError(f"rotafx: {who}: {where} is too short ({len(raw)} bytes; at least {MIN_BYTES} are needed): "
                          f"{_FIX}")
    if len(set(raw)) < 6:
        raise SecretError(f"rotafx: {who}: {where} is {len(set(raw))} distinct byte(s) repeated: a placeholder, not a "
                          f"secret; {_FIX}")
    return raw


MAX_FILE_BYTES = 4096


def _read_secret_file(path: Path, who: str) -> bytes:
    """The secret file's contents: a regular file (not a FIFO, a device or a directory), private, at most 4 KiB."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise SecretError(f"rotafx: {who}: the secret file {path} is a directory; give a file") from None
    except OSError as e:
        raise SecretError(f"rotafx: {who}: cannot read the secret file {path}: {e.strerror}; {_FIX}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SecretError(f"rotafx: {who}: the secret file {path} is a directory; give a file")
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"rotafx: {who}: the secret file {path} is not a regular file (a FIFO, socket or "
                              f"device); give a file holding the secret")
        if os.name == "posix" and st.st_mode & 0o077:
            raise SecretError(f"rotafx: {who}: the secret file {path} can be read by others (mode "
                              f"{st.st_mode & 0o777:04o}); make it private with `chmod 600 {path}`")
        if st.st_size > MAX_FILE_BYTES:
            raise SecretError(f"rotafx: {who}: the secret file {path} is {st.st_size} bytes; a secret is at most "
                              f"{MAX_FILE_BYTES} (64 hex characters is plenty)")
        return os.read(fd, MAX_FILE_BYTES + 1).strip()
    finally:
        os.close(fd)


def tag(secret: bytes, *parts: bytes | str) -> bytes:
    """HMAC-SHA256 of the parts (each length-prefixed, so no two part lists give the same message)."""
    msg = b"".join(len(b).to_bytes(4, "big") + b for b in (p.encode() if isinstance(p, str) else p for p in parts))
    return hmac.new(secret, msg, hashlib.sha256).digest()
