"""Choosing tokens and the loop of a generation, with no model in it: what every runtime that generates shares.

:func:`rotafx.generate` (in process, from a loaded plan) and the distributed ``Driver`` all check a
request the same way (:func:`check_request`), pick each token the same way (:func:`next_tokens`:
greedy, or sampled as transformers does), cut the prompt into the prefill's chunks the same way
(:func:`chunks`, :func:`padded`) and run the same prefill-then-decode loop (:func:`decode_loop`). This
module imports nothing of the profiler, the solvers or the backend, so a stage process's driver needs
none of them.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["GenerationError", "GenerationTimings", "next_tokens", "filtered_logits", "token_ids", "Request",
           "check_request", "decode_loop", "summarize", "chunks", "padded", "prompt_groups", "generate_left_padded"]


class GenerationError(ValueError):
    """Generation cannot run as asked; the message starts with ``rotafx:``, names the value and the fix."""


@dataclass(frozen=True)
class GenerationTimings:
    """Measured times of one :func:`generate` call (wall clock, milliseconds).

    ``ttft_ms``: prefill and the first token; ``decode_ms``: each later decode step and its
    token; ``tpot_ms``: their median (``nan`` with one new token); ``tokens_per_s``: the new
    tokens of every sequence over the whole call.
    """

    ttft_ms: float
    decode_ms: tuple[float, ...]
    tpot_ms: float
    tokens_per_s: float
    batch_size: int
    new_tokens: int


# ---------------------------------------------------------------------------
# choosing the next token


def next_tokens(logits: torch.Tensor, *, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each sequence from its logits ``[B, vocab]``: greedy, or sampled as transformers does.

    Sampling divides by ``temperature``, keeps the ``top_k`` largest logits, then the smallest set of
    the most likely tokens whose probability reaches ``top_p`` (at least one), and draws from what is left.

    Args:
        logits: ``[B, vocab]`` scores of the next token.
        do_sample: draw instead of taking the argmax.
        temperature, top_k, top_p: the sampling filters (``None``: off).
        generator: the random generator of the draw (on the logits' device).

    Returns:
        ``[B]`` token ids (long), on the logits' device.

    >>> next_tokens(torch.tensor([[0.0, 2.0, 1.0]]))
    tensor([1])
    >>> next_tokens(torch.tensor([[0.0, 2.0, 1.0]]), do_sample=True, top_k=1)
    tensor([1])
    """
    if not do_sample:
        return logits.argmax(-1)
    scores = filtered_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)


def filtered_logits(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None) -> torch.Tensor:
    """``logits / temperature`` with every token outside ``top_k`` and ``top_p`` set to ``-inf`` (float32).

    >>> filtered_logits(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), top_k=2)
    tensor([[3., 2., -inf, -inf]])
    """
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, order = scores.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # the probability of the more likely tokens
        drop = before >= top_p
        drop[..., 0] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    return scores


def _check_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not do_sample:
        if temperature != 1.0 or top_k is not None or top_p is not None:
            raise GenerationError(f"rotafx: temperature={temperature}, top_k={top_k}, top_p={top_p} shape sampling, "
                                  f"but do_sample=False takes the most likely token; pass do_sample=True")
        return
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise GenerationError(f"rotafx: temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise GenerationError(f"rotafx: top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise GenerationError(f"rotafx: top_p must be in (0, 1] or None, got {top_p!r}")


def _is_transformers(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "can_generate")


def token_ids(model: torch.nn.Module | None, eos_token_id: Any, pad_token_id: Any) -> tuple[list[int], int | None]:
    """The EOS ids and the pad id; ``None`` takes a transformers model's ``generation_config``, as its generate does."""
    gen = getattr(model, "generation_config", None) if model is not None and _is_transformers(model) else None
    if eos_token_id is None and gen is not None:
        eos_token_id = gen.eos_token_id
    if pad_token_id is None and gen is not None:
        pad_token_id = gen.pad_token_id
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if any(isinstance(e, bool) or not isinstance(e, int) for e in eos):
        raise GenerationError(f"rotafx: eos_token_id must be an int, a list of ints or None, got {eos_token_id!r}")
    if pad_token_id is None and eos:
        pad_token_id = eos[0]
    return eos, pad_token_id


@dataclass(frozen=True)
class Request:
    """A checked generation request (what :func:`generate` and ``Driver.generate`` share)."""

    input_ids: torch.Tensor
    max_new_tokens: int
    eos: tuple[int, ...]
    pad: int | None
    pick: Any  # logits [B, vocab] -> tokens [B]


def check_request(input_ids: Any, max_new_tokens: Any, attention_mask: Any, do_sample: bool, temperature: float,
                  top_k: int | None, top_p: float | None, eos: Sequence[int], pad: int | None, limit: int | None,
                  limit_what: str, fix: str, generator: torch.Generator | None = None) -> Request:
    """Check a request's prompt, length and options (``limit``: the most tokens a sequence may reach, said as
    ``limit_what``; ``fix``: how to get more), or raise :class:`GenerationError`."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        what = (f"a {input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
                else type(input_ids).__name__)
        raise GenerationError(f"rotafx: input_ids must be a [batch, prompt] tensor of long token ids, got {what}; "
                              f"e.g. ids[None] for one prompt")
    B, P = (int(x) for x in input_ids.shape)
    if B < 1 or P < 1:
        raise GenerationError(f"rotafx: input_ids of shape {(B, P)} has no prompt; give at least one token per sequence")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"rotafx: max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if prompt_groups(input_ids, attention_mask) is not None:  # the callers generate a padded batch by lengths
        raise GenerationError("rotafx: a padded prompt reached the generation loop; generate it through "
                              "generate_left_padded")
    _check_sampling(do_sample, temperature, top_k, top_p)
    total = P + max_new_tokens
    if limit is not None and total > limit:
        raise GenerationError(f"rotafx: the prompt ({P} tokens) and max_new_tokens ({max_new_tokens}) make {total} "
                              f"tokens, over the {limit} {limit_what}; ask for at most {max(limit - P, 0)} new tokens, "
                              f"shorten the prompt{fix}")
    pick = lambda lg: next_tokens(lg, do_sample=do_sample, temperature=temperature, top_k=top_k,  # noqa: E731
                                  top_p=top_p, generator=generator)
    return Request(input_ids, max_new_tokens, tuple(eos), pad, pick)


def prompt_groups(input_ids: Any, attention_mask: Any) -> list[tuple[int, torch.Tensor]] | None:
    """The rows of a left-padded batch by prompt length: ``[(length, rows), ...]``, longest first; ``None`` when
    nothing is padded (no mask, or all ones).

    >>> ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4]])
    >>> prompt_groups(ids, torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]]))
    [(3, tensor([1])), (2, tensor([0])), (1, tensor([2]))]

    Raises:
        GenerationError: the mask's shape is not the ids', a row is padded on the right or in the middle, or a
            row has no token.
    """
    if attention_mask is None or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        return None  # check_request says what is wrong with the ids
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        what = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise GenerationError(f"rotafx: attention_mask must be a tensor of the shape of input_ids "
                              f"{tuple(input_ids.shape)}, got {what}")
    real = (attention_mask != 0).cpu()
    if bool(real.all()):
        return None
    B, P = real.shape
    lengths = real.sum(1)
    left = torch.arange(P)[None, :] >= (P - lengths)[:, None]
    bad = (real != left).any(1).nonzero().flatten().tolist()
    if bad:
        raise GenerationError(f"rotafx: row {bad[0]} of the attention_mask ({real[bad[0]].int().tolist()}) is not padded "
                              f"on the left; a decoder-only model generates after the last token of each row, so pad "
                              f"prompts on the left (tokenizer.padding_side = 'left'), as transformers' generate wants")
    empty = (lengths == 0).nonzero().flatten().tolist()
    if empty:
        raise GenerationError(f"rotafx: row {empty[0]} of the attention_mask has no token (all zeros); drop that row")
    groups: dict[int, list[int]] = {}
    for r, n in enumerate(lengths.tolist()):
        groups.setdefault(int(n), []).append(r)
    return [(n, torch.tensor(rows)) for n, rows in sorted(groups.items(), reverse=True)]


def generate_left_padded(input_ids: torch.Tensor, groups: Sequence[tuple[int, torch.Tensor]], pad: int | None,
                         timings: bool, run: Any) -> Any:
    """A left-padded batch generated one prompt length at a time (``run(ids) -> ids`` or ``(ids, timings)`` on the
    unpadded rows of a length), put back as transformers returns it: each row's ids as given (its padding too), then
    its new tokens, a row that stopped early filled with ``pad``. Timings: the first group's TTFT, every group's
    decode steps, tokens/s over the whole call."""
    B, P = (int(x) for x in input_ids.shape)
    t0 = time.perf_counter()
    made: list[tuple[torch.Tensor, torch.Tensor]] = []
    measured: list[GenerationTimings] = []
    for n, rows in groups:
        got = run(input_ids[rows.to(input_ids.device)][:, P - n:])
        ids, t = got if timings else (got, None)
        made.append((rows, ids[:, n:]))
        if t is not None:
            measured.append(t)
    new = max(m.shape[1] for _, m in made)
    out = torch.full((B, new), pad if pad is not None else 0, dtype=input_ids.dtype)
    for rows, m in made:
        out[rows, :m.shape[1]] = m.to(out.device)
    ids = torch.cat([input_ids, out.to(input_ids.device)], 1)
    if not timings:
        return ids
    elapsed = time.perf_counter() - t0
    return ids, summarize(measured[0].ttft_ms, [d for t in measured for d in t.decode_ms],
                          sum(t.batch_size * t.new_tokens for t in measured) / max(elapsed, 1e-12), B, new)


def decode_loop(req: Request, prefill: Any, decode: Any, sync: Any, timings: bool) -> Any:
    """Prefill ``req``'s prompt (``prefill(ids) -> logits [B, vocab]``), then pick a token and decode it
    (``decode(tokens [B, 1], position) -> logits``) until ``max_new_tokens`` or every sequence's EOS."""
    input_ids = req.input_ids
    B, P = input_ids.shape
    out = [input_ids]
    t0 = time.perf_counter()
    logits = prefill(input_ids)
    eos_t = torch.tensor(req.eos, device=logits.device) if req.eos else None
    unfinished = torch.ones(B, dtype=torch.bool, device=logits.device)
    steps: list[float] = []
    ttft = 0.0
    last = t0
    for i in range(req.max_new_tokens):
        tok = req.pick(logits)
        if eos_t is not None:
            tok = torch.where(unfinished, tok, torch.as_tensor(req.pad, device=tok.device))
            unfinished &= ~torch.isin(tok, eos_t)
        out.append(tok[:, None].to(input_ids.device))
        sync()
        now = time.perf_counter()
        if i == 0:
            ttft = now - t0
        else:
            steps.append(now - last)
        last = now
        if i == req.max_new_tokens - 1 or (eos_t is not None and not bool(unfinished.any())):
            break
        logits = decode(tok[:, None], P + i)
    ids = torch.cat(out, 1)
    if not timings:
        return ids
    n = ids.shape[1] - P
    return ids, summarize(1e3 * ttft, [1e3 * s for s in steps], B * n / max(last - t0, 1e-12), B, n)


def summarize(ttft_ms: float, decode_ms: Sequence[float], tokens_per_s: float, batch: int, n: int) -> GenerationTimings:
    """A :class:`GenerationTimings` (``tpot_ms`` the median decode step)."""
    return GenerationTimings(ttft_ms=ttft_ms, decode_ms=tuple(decode_ms),
                             tpot_ms=statistics.median(decode_ms) if decode_ms else math.nan,
                             tokens_per_s=tokens_per_s, batch_size=batch, new_tokens=n)


def chunks(P: int, C: int, max_len: int) -> list[tuple[int, int]]:
    """The prefill calls of a ``P``-token prompt in chunks of ``C``: ``(start, n)``, the chunk's tokens
    ``start .. start + n`` padded to ``C`` with its last one (a last chunk with no room to pad is the last ``C``
    tokens again: the same keys and values)."""
    out = []
    for start in range(0, P, C):
        n = min(C, P - start)
        if n < C and start + C > max_len:
            start, n = P - C, C
        out.append((start, n))
    return out


def padded(input_ids: torch.Tensor, start: int, n: int, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ids ``[B, C]`` and positions ``[C]`` of the prefill call ``(start, n)`` (see :func:`chunks`)."""
    ids = input_ids[:, start:start + n]
    if n < C:
        ids = torch.cat([ids, ids[:, -1:].expand(ids.shape[0], C - n)], 1)
    return ids, torch.arange(start, start + C, device=input_ids.device)
