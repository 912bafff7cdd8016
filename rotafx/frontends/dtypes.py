"""The dtype a frontend prices floating tensors at (``dtype="float16"``: 2 bytes per element)."""

from __future__ import annotations

from typing import Any

import torch

from ..layers import ProfileError

__all__ = ["torch_dtype", "float_itemsize"]

_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "half": "float16", "fp64": "float64"}


def torch_dtype(dtype: Any) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name (``"float16"``, ``"fp16"``, ``"half"``, ``"bfloat16"``, ``"bf16"``,
    ``"float32"``, ``"fp32"``, ``"torch.float16"``); ``None`` stays ``None``. Anything else raises
    :class:`~rotafx.layers.ProfileError`.

    >>> torch_dtype("fp16")
    torch.float16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = dtype.strip().lower().removeprefix("torch.") if isinstance(dtype, str) else None
    t = getattr(torch, _ALIASES.get(name, name), None) if name else None
    if not isinstance(t, torch.dtype):
        raise ProfileError(f"rotafx: unknown dtype {dtype!r}; use a torch.dtype (torch.float16) or one of its names: "
                           f"'float16' / 'fp16', 'bfloat16' / 'bf16', 'float32' / 'fp32'")
    return t


def float_itemsize(dtype: Any) -> int | None:
    """Bytes per element that floating tensors are priced at under ``dtype`` (``None``: their own size).

    >>> float_itemsize("bf16"), float_itemsize(None)
    (2, None)
    """
    t = torch_dtype(dtype)
    return None if t is None else t.itemsize
