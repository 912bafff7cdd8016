"""Token generation in process: prefill and decode programs of a static-cache decoder, placed by the pipeline's cut.

A causal LM generates through a *decoder* of itself with a static KV cache held as module
buffers: ``decoder(input_ids, cache_position) -> logits``, the cache of layer ``i`` read and
written in place only by layer ``i``'s ops. :func:`generate` traces that decoder twice (a
prefill program over a chunk of the prompt, a decode program over one token), places each
layer on the node the pipeline put it on (no solve), and makes both programs hold the
pipeline's own weight tensors and one cache: the cache stays on its stage, like the weights,
and a decode step ships one hidden state per hop.

The decoder of a model (:func:`decoder_of`):

* a model with a ``static_cache_decoder(batch_size, max_len)`` method (the protocol; rotafx's
  ``SmallGPT`` and ``Llama`` have one): the module it returns, with
  ``forward(input_ids, cache_position) -> logits`` and its cache as buffers written with
  ``index_copy_``; an optional ``max_positions`` attribute bounds prompt + new tokens;
* a transformers causal LM: its own layers over a ``transformers.StaticCache``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..backend.devices import BackendError
from ..backend.options import Config
from ..backend.partition import PartitionSource
from ..backend.plan import plan_graph
from ..frontends.pytorch import trace
from ..frontends.pytorch.module import check_traced
from ..layers import ProfileError
from ..profile import ModelProfile
from .loaded import LoadedPipeline
from .sampling import (GenerationError, GenerationTimings, Request, _is_transformers, check_request,  # noqa: F401
                       chunks, decode_loop, filtered_logits, generate_left_padded, next_tokens, padded, prompt_groups,
                       summarize, token_ids)
from .local import PipelineModule, _set

__all__ = ["generate", "GenerationTimings", "GenerationError", "next_tokens", "decoder_of", "context_length",
           "CONTEXT_STEP", "token_ids", "check_request", "decode_loop", "chunks", "padded", "summarize", "Request"]

CONTEXT_STEP = 64  # the max context of the programs is prompt + new tokens rounded up to a multiple of this


# ---------------------------------------------------------------------------
# the decoder of a model


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest sequence the model takes (``max_positions``, or a transformers config's
    ``max_position_embeddings`` / ``n_positions``), or ``None`` when it says none."""
    n = getattr(model, "max_positions", None)
    if isinstance(n, int):
        return n
    cfg = getattr(model, "config", None)
    if _is_transformers(model) and cfg is not None:
        cfg = cfg.get_text_config()
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
    return None


def decoder_of(model: torch.nn.Module, batch_size: int, max_len: int) -> torch.nn.Module:
    """A static-cache decoder of ``model`` for ``batch_size`` sequences of at most ``max_len`` tokens.

    Args:
        model: a model with ``static_cache_decoder(batch_size, max_len)``, or a transformers causal LM.
        batch_size: sequences in the cache.
        max_len: tokens per sequence in the cache.

    Returns:
        A module in eval mode with ``forward(input_ids, cache_position) -> logits`` whose cache tensors are buffers.

    Raises:
        GenerationError: the model has no decoder (what to implement is said), or is not a causal LM.

    >>> from rotafx.models import small_gpt
    >>> dec = decoder_of(small_gpt(), 1, 16)
    >>> dec(torch.zeros(1, 4, dtype=torch.long), torch.arange(4)).shape
    torch.Size([1, 4, 256])
    """
    if callable(getattr(model, "static_cache_decoder", None)):
        return model.static_cache_decoder(batch_size, max_len).eval()
    if _is_transformers(model):
        if not model.can_generate():
            raise GenerationError(f"rotafx: {type(model).__name__} is not a causal language model (transformers says it "
                                  f"cannot generate); load it with AutoModelForCausalLM to generate tokens")
        return _TransformersDecoder(model, batch_size, max_len).eval()
    raise GenerationError(
        f"rotafx: {type(model).__name__} has no decoder with a KV cache for rotafx.generate: give it a method "
        f"static_cache_decoder(batch_size, max_len) returning a module whose forward(input_ids, cache_position) returns "
        f"logits and keeps each layer's cache in buffers written in place (index_copy_), as rotafx.models.SmallGPT "
        f"does; or compile it, torch.compile(model.forward, backend='rotastellar'), and call model.generate")


class _TransformersDecoder(torch.nn.Module):
    """A transformers causal LM over a ``StaticCache``: ``forward(input_ids, cache_position) -> logits``.

    Like transformers' ``TorchExportableModuleWithStaticCache``, but the cache's position counters
    are not state: each layer's counter is a copy of ``cache_position[0]`` made in the call, so no
    tensor is written on one stage and read on another; only the key and value caches (buffers
    ``key_cache_i``/``value_cache_i``) persist, each read and written by its own layer.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int, max_len: int) -> None:
        super().__init__()
        from transformers import StaticCache  # an optional dependency: only a transformers model brings it
        from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
        from transformers.integrations.executorch import get_head_shapes

        self.model = model
        cfg = model.config.get_text_config()
        self.cache = StaticCache(config=cfg, max_cache_len=max_len)
        for i, layer in enumerate(self.cache.layers):
            # a sliding-window layer keeps its length in a Python int, which a traced program would hold at 0 (its
            # mask then covers the first position only); a full-length static layer gives the same attention, as
            # the model's sliding-window mask hides what lies outside the window
            if type(layer) is StaticSlidingWindowLayer:  # not its subclasses (linear attention keeps more state)
                self.cache.layers[i] = StaticLayer(max_cache_len=max_len)
        heads, head_dim = get_head_shapes(cfg)
        self.cache.early_initialization(batch_size, heads, head_dim, model.dtype, model.device)
        for i, layer in enumerate(self.cache.layers):
            if not hasattr(layer, "keys") or not hasattr(layer, "cumulative_length"):
                raise GenerationError(f"rotafx: {type(model).__name__}'s cache layer {i} is a {type(layer).__name__}, "
                                      f"not a static layer; rotafx.generate supports full-attention caches only")
            self.register_buffer(f"key_cache_{i}", layer.keys, persistent=False)
            self.register_buffer(f"value_cache_{i}", layer.values, persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        layers = self.cache.layers
        saved = [layer.cumulative_length for layer in layers]
        try:
            for layer in layers:
                layer.cumulative_length = cache_position[0].clone()
            return self.model(input_ids=input_ids, cache=self.cache, use_cache=True).logits
        finally:
            for layer, s in zip(layers, saved):
                layer.cumulative_length = s


# ---------------------------------------------------------------------------
# the programs


def context_length(total: int, limit: int | None) -> int:
    """The max context the programs are built for: ``total`` tokens rounded up to a multiple of
    :data:`CONTEXT_STEP` (64), at most ``limit`` (the model's positions), so that calls of similar
    lengths reuse them.

    >>> context_length(20, None), context_length(65, None), context_length(60, 62)
    (64, 128, 62)
    """
    n = -(-total // CONTEXT_STEP) * CONTEXT_STEP
    return min(n, limit) if limit is not None else n


@dataclass(frozen=True)
class _Programs:
    """The two programs of one (batch, max context), sharing their weights and the cache."""

    prefill: PipelineModule
    decode: PipelineModule
    chunk: int  # prompt tokens per prefill call
    max_len: int
    state: tuple[torch.Tensor, ...]  # the cache tensors, each once


def _mutated(gm: torch.fx.GraphModule, weights: dict[str, str]) -> frozenset[str]:
    """The weights the graph writes in place (the cache)."""
    out = set()
    for n in gm.graph.nodes:
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable:
            for a, arg in zip(n.target._schema.arguments, n.args):
                if a.alias_info is not None and a.alias_info.is_write and isinstance(arg, torch.fx.Node) \
                        and arg.name in weights:
                    out.add(weights[arg.name])
    return frozenset(out)


def _stage_of_layers(pipeline: PipelineModule) -> tuple[dict[str, int], dict[int, set[int]]]:
    """The chain stage of each of the pipeline's layers by name, and the stages holding each source tensor (by id)."""
    part = pipeline.plan.partition
    by_name = {l.name: int(s) for l, s in zip(part.profile.layers, part.stages)}
    index = {id(st.module): st.index for st in pipeline.stages}
    holders: dict[int, set[int]] = {}
    for slot in pipeline.rewritten.weights:
        holders.setdefault(id(slot.source), set()).update(index[id(m)] for m, _, _ in slot.copies if id(m) in index)
    return by_name, holders


def _assignment(pipeline: PipelineModule, values: dict[str, torch.Tensor]) -> Any:
    """The stage of every layer of a decoder's profile: the pipeline's layer of the same name (the decoder may
    add a prefix, ``model.``), else the stage that holds its weights, else the stage of the layer before it."""
    by_name, holders = _stage_of_layers(pipeline)

    def assign(profile: ModelProfile) -> list[int]:
        found: list[int | None] = []
        for layer in profile.layers:
            named = [s for n, s in by_name.items() if layer.name == n or layer.name.endswith("." + n)]
            held = sorted({s for w in layer.weight_names if w in values for s in holders.get(id(values[w]), ())})
            found.append(named[0] if len(named) == 1 else held[-1] if held else None)
        first = next((s for s in found if s is not None), 0)
        stages, last = [], first
        for s in found:
            last = max(last, s) if s is not None else last
            stages.append(last)
        return stages

    return assign


def _held(module: PipelineModule) -> dict[tuple[str, torch.device], torch.Tensor]:
    """(weight name, device) -> the tensor a stage of ``module`` holds."""
    return {(slot.name, dev): getattr(mod, attr) for slot in module.rewritten.weights for mod, attr, dev in slot.copies}


def _share(module: PipelineModule, held: dict[tuple[str, torch.device], torch.Tensor]) -> None:
    """Make every stage of ``module`` hold the tensor ``held`` gives for its weight and device (not its own copy)."""
    for slot in module.rewritten.weights:
        for mod, attr, dev in slot.copies:
            t = held.get((slot.name, dev))
            if t is not None and getattr(mod, attr) is not t:
                _set(mod, attr, t)


def _build(pipeline: PipelineModule, source: PartitionSource, batch: int, max_len: int, chunk: int) -> _Programs:
    """Trace the decoder for a chunk of the prompt and for one token, and place both as the pipeline is placed."""
    model = source.model
    decoder = decoder_of(model, batch, max_len)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    cfg = Config.make({"inner": "eager", **source.options})
    by_source = {id(slot.source): {dev: getattr(mod, attr) for mod, attr, dev in slot.copies}
                 for slot in pipeline.rewritten.weights}
    programs: list[PipelineModule] = []
    held: dict[tuple[str, torch.device], torch.Tensor] = {}
    for n in (chunk, 1):
        kwargs = {"input_ids": torch.zeros(batch, n, dtype=torch.long, device=device),
                  "cache_position": torch.arange(n, device=device)}
        try:
            traced = trace(decoder, (), kwargs)
            check_traced(traced.graph_module, traced.weights, type(model).__name__)
        except ProfileError as e:
            raise GenerationError(f"rotafx: the static-cache decoder of {type(model).__name__} does not trace: "
                                  f"{str(e).removeprefix('rotafx: ')}{_COMPILE_INSTEAD}") from (e.__cause__ or e)
        state = _mutated(traced.graph_module, traced.weights)
        if not programs:  # the prefill: the pipeline's tensors, where it holds them
            held = {(q, d): t for q, v in traced.values.items() for d, t in by_source.get(id(v), {}).items()}
        # a weight held on one device only is placed without a copy; _share fixes the others
        values = dict(traced.values)
        for (q, _), t in held.items():
            values[q] = t
        try:
            plan = plan_graph(traced.graph_module, traced.weights, traced.params, values, cfg,
                              name=f"{type(model).__name__} {'decode' if n == 1 and programs else 'prefill'}",
                              in_spec=traced.in_spec, out_spec=traced.out_spec,
                              assignment=_assignment(pipeline, traced.values), state=state)
        except ProfileError as e:
            raise GenerationError(f"rotafx: the static-cache decoder of {type(model).__name__} cannot be profiled: "
                                  f"{str(e).removeprefix('rotafx: ')}{_COMPILE_INSTEAD}") from e
        _share(plan.module, held)
        programs.append(plan.module)
        held = _held(plan.module)  # the decode program holds the prefill's tensors
    cache = {id(t): t for (q, _), t in _held(programs[0]).items() if q in state}
    return _Programs(prefill=programs[0], decode=programs[1], chunk=chunk, max_len=max_len, state=tuple(cache.values()))


_COMPILE_INSTEAD = ("; to generate with this model across stages anyway, compile its forward with the backend "
                    "(model.forward = torch.compile(model.forward, backend='rotastellar')) and call model.generate")


def programs_for(pipeline: PipelineModule, batch: int, max_len: int) -> _Programs:
    """The prefill and decode programs of ``pipeline`` for ``batch`` sequences of ``max_len`` tokens, built at the
    first call and kept on the pipeline."""
    source: PartitionSource = pipeline.__dict__["source"]
    cached = pipeline.__dict__.setdefault("_generation_programs", {})
    if (batch, max_len) not in cached:
        chunk = _example_length(source)
        cached[(batch, max_len)] = _build(pipeline, source, batch, max_len, min(chunk, max_len))
    return cached[(batch, max_len)]


def _example_length(source: PartitionSource) -> int:
    """Tokens per sequence of the example ``partition`` was given (the prefill's chunk)."""
    for a in (*source.example_inputs, *source.example_kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim() >= 2 and not a.is_floating_point():
            return int(a.shape[1])
    return CONTEXT_STEP


# ---------------------------------------------------------------------------
# generate


def _source(pipeline: Any) -> PartitionSource:
    if not isinstance(pipeline, PipelineModule):
        raise GenerationError(f"rotafx: generate takes the module rotafx.partition returns, a plan rotafx.load "
                              f"returns, or a rotafx Driver; got {type(pipeline).__name__}")
    source = pipeline.__dict__.get("source")
    if not isinstance(source, PartitionSource):
        raise GenerationError("rotafx: this PipelineModule was not made by rotafx.partition (a torch.compile graph "
                              "has no model to generate from); call model.generate on a model whose forward is "
                              "compiled with backend='rotastellar', or partition it with rotafx.partition")
    return source


def generate(pipeline: Any, input_ids: torch.Tensor, max_new_tokens: int = 20, *,
             attention_mask: torch.Tensor | None = None, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, generator: torch.Generator | None = None,
             timings: bool = False, **options: Any) -> torch.Tensor | tuple[torch.Tensor, GenerationTimings]:
    """Generate tokens with a model split by :func:`rotafx.partition`, its KV cache on the stages of its layers.

    The first call for a batch size and a max context (prompt + new tokens, rounded up to a multiple
    of 64, at most the model's positions: :func:`context_length`) builds a prefill and a decode
    program of the model's static-cache decoder (:func:`decoder_of`), each layer on the node the
    pipeline put it on, sharing the pipeline's weights and one cache; later calls reuse them. The
    prompt goes through the prefill in chunks of the length of ``partition``'s example (the last
    chunk padded; padded positions are overwritten before they are read), then one decode step per token.

    ``pipeline`` may also be a plan directory loaded with :func:`rotafx.load` (exported with
    generation programs: ``rotafx.export(..., max_context=N)``): its programs run in this process,
    each sequence in its own cache slot on every stage, at most ``max_context`` tokens per
    sequence; or a :class:`~rotafx.runtime.distributed.Driver`, whose ``generate`` runs it
    across processes (``options`` go to it).

    Args:
        pipeline: what ``rotafx.partition(model, (input_ids,), topology=...)`` returned for a causal LM, a
            :class:`~rotafx.runtime.loaded.LoadedPipeline`, or a ``Driver``.
        input_ids: ``[B, P]`` prompt token ids (long), every row a real prompt of ``P`` tokens.
        max_new_tokens: tokens to add to each sequence.
        attention_mask: ``[B, P]``, 1 for a token and 0 for padding; a batch padded on the left (as a tokenizer
            with ``padding_side='left'`` gives it) is generated one prompt length at a time and returned as
            transformers returns it (the padding kept, new tokens after it).
        do_sample: sample instead of taking the most likely token (:func:`next_tokens`).
        temperature, top_k, top_p: sampling filters (with ``do_sample``).
        eos_token_id: a sequence stops at it (an int or a list); ``None``: a transformers model's
            ``generation_config.eos_token_id`` (a plan keeps it), none for other models.
        pad_token_id: what a finished sequence gets (default: its EOS id, or the model's pad id).
        generator: the random generator of the draws (on the device of the logits).
        timings: also return a :class:`GenerationTimings`.
        options: for a ``Driver`` only (``sequences``, ``emulate_links``).

    Returns:
        ``[B, P + n]`` token ids, the prompt first, as transformers' ``generate`` gives them
        (``n <= max_new_tokens``: fewer when every sequence has stopped); with ``timings``,
        ``(ids, GenerationTimings)``.

    Raises:
        GenerationError: a pipeline without a model to generate from (a compiled graph, a plan without
            generation programs), a model without a decoder or not causal, bad token ids or options,
            a mask padded on the right, or prompt + new tokens over the model's positions or the plan's max context.
        BackendError: the cache does not fit a node's memory (naming the node, the bytes and the fix).

    >>> import torch, rotafx
    >>> from rotafx.models import small_gpt
    >>> _ = torch.manual_seed(0)
    >>> m = small_gpt().eval()
    >>> ids = torch.randint(0, 256, (1, 8))
    >>> pm = rotafx.partition(m, (ids,))
    >>> out = rotafx.generate(pm, ids, max_new_tokens=4)
    >>> out.shape, torch.equal(out[:, :8], ids)
    (torch.Size([1, 12]), True)
    """
    sampling = dict(attention_mask=attention_mask, do_sample=do_sample, temperature=temperature, top_k=top_k,
                    top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, generator=generator,
                    timings=timings)
    if getattr(type(pipeline), "generates_across_processes", False):  # a Driver, a LocalCluster
        return pipeline.generate(input_ids, max_new_tokens, **sampling, **options)
    shape = options.pop("_shape", None)  # a left-padded call's group: run at the whole batch's (rows, tokens)
    if options:
        raise GenerationError(f"rotafx: generate got options {sorted(options)}, which only a Driver takes")
    if isinstance(pipeline, LoadedPipeline):
        return _generate_loaded(pipeline, input_ids, max_new_tokens, **sampling)
    source = _source(pipeline)
    eos, pad = token_ids(source.model, eos_token_id, pad_token_id)
    groups = prompt_groups(input_ids, attention_mask)
    if groups is not None:  # left padding: each prompt length on its own, the rows put back as they came
        whole = (int(input_ids.shape[0]), int(input_ids.shape[1]) + max_new_tokens)

        def one_length(ids: torch.Tensor) -> Any:
            # the group's rows, then copies of its first up to the whole batch: every group runs on the programs
            # (and the one cache) of the whole batch instead of building its own
            g = ids.shape[0]
            rows = torch.cat([ids, ids[:1].expand(whole[0] - g, -1)]) if g < whole[0] else ids
            got = generate(pipeline, rows, max_new_tokens, **{**sampling, "attention_mask": None, "eos_token_id": eos,
                                                               "pad_token_id": pad}, _shape=whole)
            if not timings:
                return got[:g]
            ids_out, t = got
            return ids_out[:g], dataclasses.replace(t, batch_size=g, tokens_per_s=t.tokens_per_s * g / whole[0])

        return generate_left_padded(input_ids, groups, pad, timings, one_length)
    limit = max_positions(source.model)
    req = check_request(input_ids, max_new_tokens, attention_mask, do_sample, temperature, top_k, top_p, eos, pad,
                        limit, f"positions of {type(source.model).__name__}", "", generator)
    B, P = input_ids.shape
    max_len = context_length(shape[1] if shape is not None else P + max_new_tokens, limit)
    planned = pipeline.__dict__.get("generation_plan")
    if planned is not None:  # a pipeline planned for generation: its cache is as long as the plan made room for
        ctx = planned.estimate.generation.prompt_len + planned.estimate.generation.new_tokens
        if P + max_new_tokens <= ctx:
            max_len = ctx
    try:
        progs = programs_for(pipeline, B, max_len)
    except BackendError as e:
        how = "as planned" if planned is not None and max_len == ctx else f"rounded up to a multiple of {CONTEXT_STEP}"
        raise BackendError(f"{e} (the KV cache holds {B} sequence(s) x {max_len} tokens: prompt {P} + "
                           f"{max_new_tokens} new, {how})") from e
    for program, kind in ((progs.prefill, "prefill"), (progs.decode, "decode")):  # pipeline.trace(path) records them
        program.__dict__["_trace"] = pipeline.__dict__.get("_trace")
        program.__dict__["_trace_kind"] = kind
    devices = {t.device for t in progs.state}
    sync = (lambda: [torch.cuda.synchronize(d) for d in devices if d.type == "cuda"]) if timings else (lambda: None)
    with torch.no_grad():
        for t in progs.state:  # a fresh cache: no position a previous call wrote is read
            t.zero_()
        return decode_loop(
            req, lambda ids: _prefill(lambda i, p: progs.prefill(input_ids=i, cache_position=p), ids, progs.chunk,
                                      progs.max_len),
            lambda tok, pos: progs.decode(input_ids=tok, cache_position=torch.tensor([pos], device=tok.device))[:, -1],
            sync, timings)


def _generate_loaded(pipeline: LoadedPipeline, input_ids: torch.Tensor, max_new_tokens: int, *,
                     attention_mask: Any, do_sample: bool, temperature: float, top_k: int | None,
                     top_p: float | None, eos_token_id: Any, pad_token_id: Any, generator: Any,
                     timings: bool) -> Any:
    """:func:`generate` on a loaded plan: its generation programs, each group of ``batch_size`` rows a cache slot."""
    gen = pipeline.plan.generation
    if gen is None:
        raise GenerationError("rotafx: this plan has no generation programs (it was exported for one forward pass); "
                              "export it again with max_context=N (rotafx.export(model, (ids,), path=..., "
                              "max_context=256)) to generate from it")
    eos, pad = token_ids(None, eos_token_id if eos_token_id is not None else list(gen.eos_token_id) or None,
                         pad_token_id if pad_token_id is not None else gen.pad_token_id)
    groups = prompt_groups(input_ids, attention_mask)
    if groups is not None:
        return generate_left_padded(input_ids, groups, pad, timings, lambda ids: _generate_loaded(
            pipeline, ids, max_new_tokens, attention_mask=None, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, eos_token_id=eos, pad_token_id=pad, generator=generator, timings=timings))
    req = check_request(input_ids, max_new_tokens, attention_mask, do_sample, temperature, top_k, top_p, eos, pad,
                        gen.max_context, "tokens of the plan's max_context", "or export the plan again with a larger "
                        "max_context", generator)
    B, b = int(input_ids.shape[0]), gen.batch_size
    if B % b:
        raise GenerationError(f"rotafx: the plan's generation programs take {b} sequence(s) per call, and input_ids "
                              f"has {B}; give a multiple of {b}")
    slots = range(B // b)
    first = input_ids.device

    def step(kind: str, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([pipeline.step(kind, s, ids[s * b:(s + 1) * b], pos).to(first) for s in slots], 0)

    devices = {st.device for st in pipeline.cached_stages}
    sync = (lambda: [torch.cuda.synchronize(d) for d in devices if d.type == "cuda"]) if timings else (lambda: None)
    try:
        with torch.no_grad():
            return decode_loop(req, lambda ids: _prefill(lambda i, p: step("prefill", i, p), ids, gen.prefill_chunk,
                                                         gen.max_context),
                               lambda tok, pos: step("decode", tok, torch.tensor([pos]))[:, -1], sync, timings)
    finally:
        for s in slots:
            pipeline.free(s)


def _prefill(run: Any, input_ids: torch.Tensor, C: int, max_len: int) -> torch.Tensor:
    """Run the prompt through the prefill (``run(ids [B, C], positions [C]) -> logits``), a chunk at a time; the
    logits of its last token ``[B, vocab]``."""
    logits = None
    for start, n in chunks(input_ids.shape[1], C, max_len):
        logits = run(*padded(input_ids, start, n, C))[:, n - 1]
    assert logits is not None
    return logits
