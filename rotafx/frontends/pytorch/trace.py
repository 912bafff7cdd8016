"""Trace: ``torch.export`` a model once, for profiling, partitioning and plan export alike."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.fx as fx

from ...layers import ProfileError
from ..sizes import positive_int

__all__ = ["Traced", "trace", "as_args", "example_args", "batch_of", "device_of", "require_module"]

# loggers that print a traceback or a graph for a failure torch.export then raises (and rotafx reports in one line)
_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch.fx.experimental.symbolic_shapes", "torch.export._trace")


@dataclass(frozen=True)
class Traced:
    """A model traced by :func:`trace`.

    ``weights`` maps each weight placeholder of ``graph_module`` to its weight's name;
    a weight tied to another (an output head sharing the embedding) is named by its
    first name, so it is counted once. ``params`` are the names of the parameters among
    them; ``values`` the tensor behind each name; ``mutated`` the buffers ``forward()``
    writes to (batch norm in training mode); ``in_spec``/``out_spec`` the pytree
    structure of the inputs ``(args, kwargs)`` and of the outputs.
    """

    graph_module: fx.GraphModule
    weights: dict[str, str]
    params: frozenset[str]
    values: dict[str, torch.Tensor]
    mutated: tuple[str, ...]
    in_spec: Any
    out_spec: Any


def as_args(example_inputs: Any) -> tuple:
    """Positional example inputs as a tuple: a tuple as it is, a list as a tuple, anything else alone.

    >>> as_args([1, 2]), as_args(3)
    ((1, 2), (3,))
    """
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def trace(model: torch.nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None) -> Traced:
    """``torch.export`` (non-strict, without gradients) ``model`` on its example inputs.

    Raises :class:`~rotafx.layers.ProfileError` with the first line of torch's message
    and what to check when the model cannot be exported (or is not a module).

    >>> t = trace(torch.nn.Linear(4, 2), (torch.randn(3, 4),))
    >>> sorted(t.weights.values()), sorted(t.params)
    (['bias', 'weight'], ['bias', 'weight'])
    """
    require_module(model, "trace")
    args = as_args(example_inputs)
    if example_kwargs is not None and not isinstance(example_kwargs, Mapping):
        raise ProfileError(f"rotafx: example_kwargs must map forward()'s keyword names to values, got "
                           f"{type(example_kwargs).__name__}")
    try:
        # fx records a Python stack trace per node; on a 5,000-node model that is a third of the time
        with torch.no_grad(), _no_fx_stack_traces(), _quiet(_NOISY_LOGGERS), _stderr_without_partial_graph(), \
                _without_kv_cache(model, example_kwargs):
            ep = torch.export.export(model, args, dict(example_kwargs or {}), strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "data-dependent" in first:
            raise ProfileError(
                f"rotafx: {type(model).__name__}'s forward() decides on the value of a tensor ({first}); torch.export "
                f"traces one program for every input, so it cannot follow a branch, a loop or a size chosen by the "
                f"data. Write the branch with torch.where or torch.cond, or compile the model with "
                f"torch.compile(model, backend='rotastellar'), which splits the graph at such a point") from e
        unknown = re.search(r"Found <class '([\w.]+)'> in output, which is not a known type", str(e))
        if unknown is not None:
            kind = unknown.group(1)
            fix = (f"it is a key/value cache: pass example_kwargs={{'use_cache': False}} (and call the model that way), "
                   f"or compile it with torch.compile(model.forward, backend='rotastellar'), which keeps the cache"
                   if kind.endswith("Cache") else
                   f"register it with torch.utils._pytree.register_pytree_node, or return its tensors instead")
            raise ProfileError(f"rotafx: {type(model).__name__} returns a {kind}, which torch.export cannot take apart "
                               f"into tensors; {fix}") from e
        raise ProfileError(
            f"rotafx: torch.export could not trace {type(model).__name__}: {first}\n"
            f"Check that example_inputs match forward()'s signature and sit on the model's device "
            f"({device_of(model)}), or make the failing code traceable (torch.compile with backend='rotastellar' "
            f"handles graph breaks)"
        ) from e
    sig = ep.graph_signature
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    # torch.export lifts a tied weight once per name (lm_head.weight and embed.weight, one of them
    # unused); name every tensor by its first name so that it is counted once
    canonical: dict[str, str] = {}
    values: dict[str, torch.Tensor] = {}
    for named in (model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)):
        first: dict[int, str] = {}
        for name, t in named:
            canonical[name] = first.setdefault(id(t), name)
            values.setdefault(canonical[name], t)
    weights = {ph: canonical.get(w, w) for ph, w in lifted.items()}
    for ph, w in lifted.items():  # lifted constants (and anything the module does not name) come from the program
        if weights[ph] not in values:
            src = ep.constants.get(w, ep.state_dict.get(w))
            if src is not None:
                values[weights[ph]] = src
    mutated = {**sig.buffers_to_mutate, **getattr(sig, "user_inputs_to_mutate", {})}
    return Traced(graph_module=ep.graph_module, weights=weights,
                  params=frozenset(canonical.get(w, w) for w in sig.inputs_to_parameters.values()),
                  values=values, mutated=tuple(sorted(mutated.values())), in_spec=ep.call_spec.in_spec,
                  out_spec=ep.call_spec.out_spec)


def require_module(model: Any, what: str) -> None:
    """Raise a :class:`~rotafx.layers.ProfileError` that says what to pass when ``model`` is not an ``nn.Module`` instance."""
    if isinstance(model, torch.nn.Module):
        return
    if inspect.isclass(model) and issubclass(model, torch.nn.Module):
        hint = f"the class {model.__name__} itself; pass an instance, {model.__name__}(...)"
    elif isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        hint = (f"a {type(model).__name__} ({model!r}); build the model first (a file of an ONNX model goes to "
                f"ModelProfile.from_onnx)")
    elif callable(model):
        hint = (f"a {type(model).__name__} ({getattr(model, '__name__', type(model).__name__)}); wrap it in an "
                f"nn.Module whose forward() calls it, or compile it with torch.compile(fn, backend='rotastellar')")
    else:
        hint = f"a {type(model).__name__}"
    raise ProfileError(f"rotafx: {what} expects a torch.nn.Module instance, got {hint}")


@contextlib.contextmanager
def _without_kv_cache(model: torch.nn.Module, example_kwargs: Mapping[str, Any] | None) -> Iterator[None]:
    """Trace a model that would return its key/value cache (a transformers causal LM, ``config.use_cache``) without
    it, unless the caller passed ``use_cache``: the traced program is one forward pass, and a generation keeps its
    cache on the stages instead (:func:`rotafx.generate`). The configs are as they were afterwards."""
    cfg = getattr(model, "config", None)
    configs = [] if cfg is None or "use_cache" in (example_kwargs or {}) else [cfg]
    text = getattr(cfg, "get_text_config", None)
    if configs and callable(text) and text() is not cfg:
        configs.append(text())
    changed = [c for c in configs if getattr(c, "use_cache", None) is True]
    for c in changed:
        c.use_cache = False
    try:
        yield
    finally:
        for c in changed:
            c.use_cache = True


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """Raise these loggers above ERROR for the duration."""
    loggers = [logging.getLogger(n) for n in names]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


@contextlib.contextmanager
def _stderr_without_partial_graph() -> Iterator[None]:
    """Hold what is written to stderr meanwhile, and pass it on without the partial graph torch.export prints
    before it raises (its failure is reported as one ProfileError)."""
    held = io.StringIO()
    real = sys.stderr
    sys.stderr = held
    try:
        yield
    except Exception as e:
        graph = getattr(e, "partial_fx_graph", None)
        text = held.getvalue()
        if isinstance(graph, str) and graph:
            text = text.replace(graph + "\n", "").replace(graph, "")
        real.write(text)
        raise
    else:
        real.write(held.getvalue())
    finally:
        sys.stderr = real


@contextlib.contextmanager
def _no_fx_stack_traces() -> Iterator[None]:
    """Turn off fx's per-node stack traces for the duration (rotafx's errors do not use them)."""
    saved = torch.fx.config.do_not_emit_stack_traces
    torch.fx.config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        torch.fx.config.do_not_emit_stack_traces = saved


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (``cpu`` when it has none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def batch_of(args: tuple, default: int | None = None) -> int | None:
    """The size of the first dimension of the first tensor among ``args``."""
    for a in args:
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return int(a.shape[0])
    return default


def example_args(model: torch.nn.Module, example_inputs: Any, batch_size: int | None, seq_len: int) -> tuple:
    """The example inputs as a tuple, or ones rotafx builds: token ids ``batch x seq_len`` for a model that
    starts with an ``nn.Embedding``, ``batch x in_features`` for one that starts with an ``nn.Linear``."""
    if batch_size is not None:
        batch_size = positive_int(batch_size, "batch_size")
    seq_len = positive_int(seq_len, "seq_len", "the number of tokens in each example sequence")
    if example_inputs is not None:
        args = as_args(example_inputs)
        b = batch_of(args)
        if b == 0:
            first = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0)
            raise ProfileError(f"rotafx: the example inputs have batch 0 (the first tensor's shape is "
                               f"{tuple(first.shape)}), which prices nothing; give a batch of at least 1")
        if batch_size is not None and b is not None and b != batch_size:
            raise ProfileError(f"rotafx: batch_size={batch_size} but example_inputs have batch {b}; give one or the other")
        return args
    batch = batch_size or 1
    device = device_of(model)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Embedding):
            return (torch.zeros(batch, seq_len, dtype=torch.long, device=device),)
        if isinstance(mod, torch.nn.Linear):
            return (torch.zeros(batch, mod.in_features, dtype=mod.weight.dtype, device=device),)
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            break
    raise ProfileError(
        f"rotafx: cannot guess example inputs for {type(model).__name__} (it does not start with an nn.Embedding or "
        f"an nn.Linear); pass example_inputs=(torch.randn(batch, ...),) shaped as its forward() expects"
    )
