"""Devices: the torch device that runs each stage of the chain, checked against this machine."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..devices import existing_device
from ..topology import Topology

__all__ = ["BackendError", "torch_device", "resolve_devices"]


class BackendError(ValueError):
    """A bad option, device or topology given to the backend; the message starts with ``rotafx:``."""


def torch_device(spec: Any, where: str) -> torch.device:
    """``spec`` as a torch device that exists on this machine, or a :class:`BackendError` saying why not.

    >>> torch_device("cpu", "devices")
    device(type='cpu')
    """
    return existing_device(spec, where, BackendError)


def resolve_devices(topology: Topology, devices: Any, home: torch.device | None) -> tuple[torch.device, ...]:
    """The torch device of every chain stage, from the ``devices`` option (``None``: every node on ``home``)."""
    chain = topology.chain
    if devices is None:
        d = home or torch.device("cpu")
        return tuple(d for _ in chain)
    if isinstance(devices, (str, torch.device)):
        d = torch_device(devices, "devices")
        return tuple(d for _ in chain)
    if isinstance(devices, Mapping):
        unknown = sorted(set(map(str, devices)) - set(topology.devices))
        if unknown:
            raise BackendError(f"rotafx: devices names {unknown}, which are not nodes of the topology "
                               f"({', '.join(topology.devices)})")
        missing = [n for n in dict.fromkeys(chain) if n not in devices]
        if missing:
            raise BackendError(f"rotafx: devices gives no torch device for the node(s) {missing} of the chain "
                               f"{' -> '.join(chain)}; add e.g. {{{missing[0]!r}: 'cpu'}}")
        resolved = {n: torch_device(devices[n], f"devices[{n!r}]") for n in dict.fromkeys(chain)}
        return tuple(resolved[n] for n in chain)
    if isinstance(devices, Sequence):
        if len(devices) != len(chain):
            raise BackendError(f"rotafx: devices lists {len(devices)} devices but the chain has {len(chain)} stages "
                               f"({' -> '.join(chain)}); give one per stage or a dict node -> device")
        out = tuple(torch_device(d, f"devices[{i}] (node {chain[i]})") for i, d in enumerate(devices))
        for i, a in enumerate(chain):
            for j in range(i):
                if chain[j] == a and out[j] != out[i]:
                    raise BackendError(f"rotafx: node {a} appears twice in the chain but devices maps it to {out[j]} and {out[i]}")
        return out
    raise BackendError(f"rotafx: devices must be a dict node -> device, a list or a device, got {type(devices).__name__}")
