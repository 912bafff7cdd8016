"""``rotafx::transfer``: move a tensor to the next stage's device, optionally compressed on the way.

The op is a :func:`torch.library.custom_op`, so ``torch.compile`` and inductor keep
it as one opaque call and the plan stays visible in the compiled code.

Codecs (floating tensors only; integer and bool tensors always travel as they are,
and a codec never widens a tensor: ``fp16`` on an ``fp16`` tensor sends it as is):

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

The receiver gets the tensor back in its original dtype, shape and strides (dense
tensors), on the destination device.

>>> import torch
>>> x = torch.tensor([[1.0, -0.5, 0.25]])
>>> torch.ops.rotafx.transfer(x, torch.device("cpu"), "int8")
tensor([[ 1.0000, -0.5039,  0.2520]])
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["CODECS", "transfer", "transfer_value", "move_value", "encode", "decode", "error_bound", "check_codec"]

# codec -> the dtype a floating tensor travels as
CODECS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}


def check_codec(codec: str | None) -> str | None:
    """Normalise a codec name (``None`` and ``"none"`` mean no codec), or raise naming the known ones."""
    if codec is None or codec == "none":
        return None
    if codec not in CODECS:
        raise ValueError(f"rotafx: unknown transfer codec {codec!r}; use one of None, 'fp16', 'bf16', 'int8'")
    return codec


def _compresses(x: torch.Tensor, codec: str | None) -> bool:
    """Whether ``codec`` makes ``x`` smaller (floating tensors wider than the wire dtype only)."""
    return codec is not None and x.is_floating_point() and CODECS[codec].itemsize < x.element_size()


def encode(x: torch.Tensor, codec: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compress ``x`` for the wire: ``(payload, scale)``; ``scale`` is only set for int8."""
    if not _compresses(x, codec):
        return x, None
    if codec == "int8":
        xf = x.float()
        amax = xf.abs().amax(dim=-1, keepdim=True) if x.dim() else xf.abs()
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(xf / scale).clamp_(-127, 127).to(torch.int8)
        return q, scale
    return x.to(CODECS[codec]), None  # type: ignore[index]


def decode(payload: torch.Tensor, scale: torch.Tensor | None, like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Undo :func:`encode` on ``device``: a tensor with ``like``'s dtype, shape and strides."""
    out = torch.empty_like(like, device=device)
    if scale is not None:
        out.copy_(payload.to(device).float() * scale.to(device))
    else:
        out.copy_(payload.to(device, non_blocking=True))
    return out


def error_bound(x: torch.Tensor, codec: str | None) -> torch.Tensor:
    """The largest error :func:`transfer` may make on each element of ``x`` under ``codec`` (see the table)."""
    xf = x.detach().double()
    if not _compresses(x, codec):
        return torch.zeros_like(xf)
    if codec == "fp16":
        return torch.maximum(xf.abs() * 2.0**-11, torch.full_like(xf, 2.0**-25))
    if codec == "bf16":
        return xf.abs() * 2.0**-8
    amax = xf.abs().amax(dim=-1, keepdim=True) if x.dim() else xf.abs()
    # s / 2, plus the fp32 arithmetic of scale and dequantisation and the rounding back to x's dtype
    eps = max(torch.finfo(torch.float32).eps, torch.finfo(x.dtype).eps)
    return (amax / 127.0) / 2 * (1 + 4 * eps) + xf.abs() * 2 * eps


@torch.library.custom_op("rotafx::transfer", mutates_args=())
def transfer(x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    """Send ``x`` to ``device``: compress with ``codec`` on the sender, decompress to ``x``'s dtype on arrival.

    Always returns a new tensor (a custom op's output may not alias its input).
    """
    codec = check_codec(codec)
    if not _compresses(x, codec):
        return x.to(device, copy=True)
    payload, scale = encode(x, codec)
    return decode(payload, scale, x, device)


@transfer.register_fake
def _(x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    return torch.empty_like(x, device=device)


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    ctx.src_device = inputs[0].device


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    # the gradient goes back over the same link, uncompressed (a straight-through estimator for codecs)
    return transfer(grad, ctx.src_device, None), None, None


transfer.register_autograd(_backward, setup_context=_setup_context)


def transfer_value(x: Any, device: torch.device, codec: str | None = None) -> Any:
    """:func:`transfer` every tensor in ``x`` (a tensor, or a tuple or list of them); other values pass as they are."""
    if isinstance(x, torch.Tensor):
        return torch.ops.rotafx.transfer(x, device, codec)
    if isinstance(x, (tuple, list)):
        return type(x)(transfer_value(v, device, codec) for v in x)
    return x



def move_value(x: Any, device: torch.device) -> Any:
    """``Tensor.to(device)`` on every tensor in ``x`` (no copy when already there); other values pass as they are."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(move_value(v, device) for v in x)
    return x
