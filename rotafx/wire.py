"""The wire: codecs, the bytes a tensor travels as, and the time bytes take on a link (a leaf: imports nothing of rotafx).

Codecs apply to floating tensors only; integer and bool tensors always travel as they
are, and a codec never widens a tensor (``fp16`` on an ``fp16`` tensor sends it as is):

============ =========================== ====================================================
codec        sent as                     error bound on each element ``x`` (fp32 input)
============ =========================== ====================================================
``None``     the tensor itself           exact
``"fp16"``   float16                     ``|x' - x| <= 2**-11 * |x|`` for
                                         ``6.1e-5 <= |x| <= 65504``; ``<= 2**-25`` below
                                         (subnormals); values beyond 65504 become ``inf``
``"bf16"``   bfloat16                    ``|x' - x| <= 2**-8 * |x|`` (fp32's whole range)
``"int8"``   int8 + one fp32 scale per   ``|x' - x| <= s / 2`` with ``s = max|row| / 127``,
             row (last dimension)        the largest magnitude in ``x``'s row over 127
============ =========================== ====================================================

The cost model prices a transfer by :func:`wire_bytes` and :func:`serialization_ms`; the
transfer op (:mod:`rotafx.ops`) and the stage processes apply :func:`encode` and
:func:`decode`; link emulation delays a message by :func:`serialization_ms` plus the
link's latency. One definition serves all of them.

>>> wire_bytes(numel=1000, itemsize=4, floating=True, codec="fp16")
2000
>>> serialization_ms(1_000_000, 100e6)   # 1 MB over 100 Mbit/s
80.0
"""

from __future__ import annotations

import math

import torch

__all__ = ["CODECS", "CODEC_NAMES", "check_codec", "compresses", "wire_bytes", "serialization_ms", "encode", "decode",
           "error_bound"]

# codec -> the dtype a floating tensor travels as
CODECS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
CODEC_NAMES: tuple[str | None, ...] = (None, *CODECS)


def check_codec(codec: str | None) -> str | None:
    """Normalise a codec name (``None`` and ``"none"`` mean no codec), or raise naming the known ones.

    >>> check_codec("none") is None, check_codec("int8")
    (True, 'int8')
    """
    if codec is None or codec == "none":
        return None
    if not isinstance(codec, str) or codec not in CODECS:
        raise ValueError(f"rotafx: unknown transfer codec {codec!r}; use one of None, 'fp16', 'bf16', 'int8'")
    return codec


def wire_bytes(numel: int, itemsize: int, floating: bool, codec: str | None) -> int:
    """Bytes a tensor of ``numel`` elements of ``itemsize`` bytes is sent with under ``codec``.

    The int8 codec's per-row scales are not counted (one fp32 per row: small beside the row).
    """
    codec = check_codec(codec)
    if codec is None or not floating:
        return numel * itemsize
    return numel * min(CODECS[codec].itemsize, itemsize)


def serialization_ms(nbytes: float, bandwidth_bps: float) -> float:
    """Milliseconds to put ``nbytes`` on a link of ``bandwidth_bps`` bits per second (0 on an infinite one)."""
    if math.isinf(bandwidth_bps):
        return 0.0
    return nbytes * 8.0 / bandwidth_bps * 1e3


def compresses(x: torch.Tensor, codec: str | None) -> bool:
    """Whether ``codec`` makes ``x`` smaller (floating tensors wider than the wire dtype only)."""
    return codec is not None and x.is_floating_point() and CODECS[codec].itemsize < x.element_size()


def encode(x: torch.Tensor, codec: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress ``x`` for the wire: ``(payload, scale)``; ``scale`` is only set for int8.

    >>> q, s = encode(torch.tensor([[1.0, -0.5]]), "int8")
    >>> q.tolist(), round(s.item(), 6)
    ([[127, -64]], 0.007874)
    """
    if not compresses(x, codec):
        return x, None
    if codec == "int8":
        xf = x.float()
        if not x.dim():
            amax = xf.abs()
        elif x.shape[-1] == 0:  # rows of no element: nothing to take a maximum of
            amax = xf.new_zeros(*x.shape[:-1], 1)
        else:
            amax = xf.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = (xf / scale).round_().clamp_(-127, 127)  # in place on the one temporary
        return q.to(torch.int8), scale
    return x.to(CODECS[codec]), None  # type: ignore[index]


def decode(payload: torch.Tensor, scale: torch.Tensor | None, like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Undo :func:`encode` on ``device``: a tensor with ``like``'s dtype, shape and strides."""
    out = torch.empty_like(like, device=device)
    out.copy_(payload)  # across devices too; exact for int8 (|q| <= 127)
    if scale is not None:
        out.mul_(scale.to(device))  # computed in the wider of fp32 and out's dtype, rounded once
    return out


def error_bound(x: torch.Tensor, codec: str | None) -> torch.Tensor:
    """The largest error a round trip through ``codec`` may make on each element of ``x`` (see the table)."""
    xf = x.detach().double()
    if not compresses(x, codec):
        return torch.zeros_like(xf)
    if codec == "fp16":
        return torch.maximum(xf.abs() * 2.0**-11, torch.full_like(xf, 2.0**-25))
    if codec == "bf16":
        return xf.abs() * 2.0**-8
    amax = xf.abs().amax(dim=-1, keepdim=True) if x.dim() else xf.abs()
    # s / 2, plus the fp32 arithmetic of scale and dequantisation and the rounding back to x's dtype
    eps = max(torch.finfo(torch.float32).eps, torch.finfo(x.dtype).eps)
    return (amax / 127.0) / 2 * (1 + 4 * eps) + xf.abs() * 2 * eps
