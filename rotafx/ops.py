"""``rotafx::transfer``: move a tensor to the next stage's device, optionally compressed on the way.

The op is a ``torch.library`` operator with a fake (meta) kernel and an autograd
formula, so ``torch.compile`` and inductor keep it as one opaque call and the plan
stays visible in the compiled code. The codecs (``fp16``, ``bf16``, ``int8``) and their
error bounds are :mod:`rotafx.wire`'s; the receiver gets the tensor back in its
original dtype, shape and strides (dense tensors), on the destination device.

>>> import torch
>>> x = torch.tensor([[1.0, -0.5, 0.25]])
>>> torch.ops.rotafx.transfer(x, torch.device("cpu"), "int8")
tensor([[ 1.0000, -0.5039,  0.2520]])
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_current_functorch_interpreter

from .wire import check_codec, compresses, decode, encode

__all__ = ["transfer", "transfer_value", "move_value"]


# The op is defined with torch.library directly rather than with @custom_op: custom_op's generated
# wrappers (an aliasing check, a dynamo-disable frame, a metadata object and a redispatch per call)
# cost several times the copy itself, and a pipeline calls the op once per crossing tensor per step.
_lib = torch.library.Library("rotafx", "FRAGMENT")
_lib.define("transfer(Tensor x, Device device, str? codec=None) -> Tensor", tags=(torch.Tag.pt2_compliant_tag,))
_op = torch.ops.rotafx.transfer.default


def _transfer_kernel(x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    """The op on every backend: a copy, or encode on the sender and decode on ``device``."""
    if codec is not None:
        codec = check_codec(codec)
    if not compresses(x, codec):
        return x.to(device, copy=True)
    payload, scale = encode(x, codec)
    return decode(payload, scale, x, device)


class _Transfer(torch.autograd.Function):
    """The op under autograd: the gradient goes back over the same link, uncompressed
    (a straight-through estimator for codecs)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, device: torch.device, codec: Optional[str]) -> torch.Tensor:
        ctx.src_device = x.device
        with torch._C._AutoDispatchBelowAutograd():
            return _op(x, device, codec)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return _op(grad, ctx.src_device, None), None, None


class _TransferUnderFunc(torch.autograd.Function):
    """The transfer under ``torch.func`` transforms (grad, vmap, jacrev): the kernel's own ATen ops
    with the same straight-through gradient. (The op's autograd formula runs inside the dispatcher,
    where functorch cannot run an ``autograd.Function``.)"""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, device: torch.device, codec: Optional[str]) -> torch.Tensor:
        return _transfer_kernel(x, device, codec)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.src_device, ctx.dst_device = inputs[0].device, inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return grad.to(ctx.src_device), None, None

    @staticmethod
    def jvp(ctx: Any, x_t: torch.Tensor, *_: Any) -> torch.Tensor:
        return x_t.to(ctx.dst_device, copy=True)  # straight through, as the gradient


_DIFFERENTIATING = frozenset({TransformType.Grad, TransformType.Jvp, TransformType.Vmap})


def _under_func_transform() -> bool:
    """Whether the innermost ``torch.func`` transform is one :class:`_TransferUnderFunc` serves
    (grad, jvp, vmap); functionalization goes through the op."""
    return (torch._C._are_functorch_transforms_active()
            and retrieve_current_functorch_interpreter().key() in _DIFFERENTIATING)


_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
_K = torch._C.DispatchKey
# the dispatch key sets of a call on a plain CPU or CUDA tensor, with no mode, subclass or transform in the way
_PLAIN_KEYSETS = frozenset(torch._C.DispatchKeySet(backend).add(autograd).raw_repr()
                           for backend, autograd in ((_K.CPU, _K.AutogradCPU), (_K.CUDA, _K.AutogradCUDA)))


def _autograd_kernel(keyset: Any, x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        if torch._C._are_functorch_transforms_active():
            raise RuntimeError("rotafx: torch.ops.rotafx.transfer cannot be differentiated under torch.func transforms "
                               "(an autograd formula inside the dispatcher); call rotafx.ops.transfer(x, device, codec), "
                               "as the rotafx runtime does, which gives the same values and gradient")
        return _Transfer.apply(x, device, codec)
    if keyset.raw_repr() in _PLAIN_KEYSETS:
        # the next kernel would be _transfer_kernel itself: call it rather than dispatch to it again
        return _transfer_kernel(x, device, codec)
    with torch._C._AutoDispatchBelowAutograd():  # fake tensors, tracing, functionalization: dispatch on
        return _op.redispatch(keyset & _AFTER_AUTOGRAD, x, device, codec)


def _fake(x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    return torch.empty_like(x, device=device)


_lib.impl("transfer", _transfer_kernel, "CompositeExplicitAutograd")
_lib.impl("transfer", _autograd_kernel, "Autograd", with_keyset=True)
torch.library.register_fake("rotafx::transfer", _fake, lib=_lib)


def _nothing_in_the_way(x: torch.Tensor) -> bool:
    """Whether calling the op on ``x`` would only reach :func:`_transfer_kernel`: a plain tensor,
    no gradient to record, no tracer, mode or transform that must see the op."""
    return (type(x) is torch.Tensor and not (x.requires_grad and torch.is_grad_enabled())
            and not torch._C._len_torch_dispatch_stack() and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active() and not torch._C._get_tracing_state())


def transfer(x: torch.Tensor, device: torch.device, codec: Optional[str] = None) -> torch.Tensor:
    """Send ``x`` to ``device``: compress with ``codec`` on the sender, decompress to ``x``'s dtype on arrival.

    The same as ``torch.ops.rotafx.transfer(x, device, codec)``, and cheaper to run eagerly: where
    nothing would see the call (no autograd, tracing, mode or transform) it runs the op's kernel
    without a trip through the dispatcher; otherwise it calls the op. The in-process runtime runs
    the program's transfers through this function. Under ``torch.func`` transforms (grad, jvp, vmap)
    it runs the kernel's ATen ops with the op's straight-through derivative, which the op itself
    cannot; a tracer inside such a transform then records those ops, not the op. Always returns a
    new tensor (the op's output never aliases its input).
    """
    if not torch.compiler.is_compiling():
        if _nothing_in_the_way(x):
            return _transfer_kernel(x, device, codec)
        if _under_func_transform():
            return _TransferUnderFunc.apply(x, device, codec)
    return _op(x, device, codec)


def transfer_value(x: Any, device: torch.device, codec: str | None = None) -> Any:
    """:func:`transfer` every tensor in ``x`` (a tensor, or a tuple or list of them); other values pass as they are."""
    if isinstance(x, torch.Tensor):
        return transfer(x, device, codec)
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
