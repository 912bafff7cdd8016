"""The dtype a frontend prices floating tensors at (``dtype="float16"``: 2 bytes per element)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["torch_dtype", "float_itemsize"]

_ALIASES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "half": "float16", "fp64": "float64"}


def torch_dtype(dtype: Any) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name (``"float16"``, ``"fp16"``, ``"bfloat16"``); ``None`` stays ``None``.

    >>> torch_dtype("fp16")
    torch.float16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    t = getattr(torch, _ALIASES.get(name, name), None)
    if not isinstance(t, torch.dtype):
        raise ValueError(f"rotafx: unknown dtype {dtype!r}; use e.g. 'float16', 'bfloat16' or torch.float16")
    return t


def float_itemsize(dtype: Any) -> int | None:
    """Bytes per element that floating tensors are priced at under ``dtype`` (``None``: their own size).

    >>> float_itemsize("bf16"), float_itemsize(None)
    (2, None)
    """
    t = torch_dtype(dtype)
    return None if t is None else t.itemsize
