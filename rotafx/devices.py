"""Torch devices named by users: each checked against this machine (the type exists, the index is there)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["existing_device"]


def existing_device(spec: Any, where: str, error: type[Exception] = ValueError) -> torch.device:
    """``spec`` as a torch device that exists on this machine, or ``error`` (a ValueError) saying why not.

    >>> existing_device("cpu", "devices")
    device(type='cpu')
    """
    try:
        d = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        kind = str(spec).split(":")[0]
        raise error(f"rotafx: {where} = {spec!r}: {kind!r} is not a torch device type ({str(e).splitlines()[0]}); "
                    f"use 'cpu', 'cuda:0', ...") from None
    if d.type == "cpu":
        return torch.device("cpu")
    if d.type == "meta":
        raise error(f"rotafx: {where} = {spec!r}: the meta device holds no data and cannot run a stage; "
                    f"use 'cpu' or 'cuda:0'")
    mod = getattr(torch, d.type, None)
    available = bool(mod is not None and hasattr(mod, "is_available") and mod.is_available())
    if not available:
        raise error(f"rotafx: {where} = {spec!r}, but this machine has no {d.type} device "
                    f"(torch.{d.type}.is_available() is False); map that node to 'cpu' or to a device that exists")
    count = int(mod.device_count()) if hasattr(mod, "device_count") else 1
    index = d.index if d.index is not None else (int(mod.current_device()) if hasattr(mod, "current_device") else 0)
    if index >= count:
        raise error(f"rotafx: {where} = {spec!r}, but this machine has {count} {d.type} device(s) "
                    f"({d.type}:0 .. {d.type}:{count - 1})")
    return torch.device(d.type, index)
