"""Built-in example models (pure PyTorch, randomly initialised, nothing downloaded)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "LlamaConfig",
    "RMSNorm",
    "Llama",
    "llama",
    "llama70b",
    "LLAMA_70B",
    "SmallGPT",
    "small_gpt",
    "mlp",
    "convnet",
    "EXAMPLES",
    "example_inputs",
    "KVCache",
    "CachedDecoder",
    "CachedLayer",
]


# ---------------------------------------------------------------------------
# static KV cache (generation)


class KVCache(nn.Module):
    """One attention layer's static key/value cache: buffers ``k_cache``/``v_cache`` of shape
    ``(batch, kv_heads, max_len, head_dim)``, written in place (``index_copy_``) at the positions of new tokens.

    >>> c = KVCache(1, 2, 8, 4)
    >>> k, v = c.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.arange(3))
    >>> k.shape, float(k[0, 0, :, 0].sum())
    (torch.Size([1, 2, 8, 4]), 3.0)
    """

    def __init__(self, batch_size: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, kv_heads, max_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, k: torch.Tensor, v: torch.Tensor, cache_position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (``(batch, kv_heads, new, head_dim)``) at ``cache_position`` (``new`` positions);
        return the whole caches."""
        self.k_cache.index_copy_(2, cache_position, k)
        self.v_cache.index_copy_(2, cache_position, v)
        return self.k_cache, self.v_cache

    def mask(self, cache_position: torch.Tensor) -> torch.Tensor:
        """``(new, max_len)`` booleans: the query at ``cache_position[i]`` sees the cached positions ``<=`` it."""
        return torch.arange(self.k_cache.shape[2], device=cache_position.device)[None, :] <= cache_position[:, None]


def _check_cache_len(model: nn.Module, batch_size: int, max_len: int) -> None:
    for name, v in (("batch_size", batch_size), ("max_len", max_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"rotafx: static_cache_decoder's {name} must be a positive integer, got {v!r}")
    if max_len > model.max_positions:  # type: ignore[operator]
        raise ValueError(f"rotafx: {type(model).__name__} has {model.max_positions} positions; a cache of "
                         f"max_len={max_len} tokens does not fit them")


# ---------------------------------------------------------------------------
# LLaMA


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a LLaMA-style decoder; sizes are element counts, ``max_seq`` in tokens.

    >>> cfg = LlamaConfig(vocab=128, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128)
    >>> cfg.head_dim
    16
    """

    vocab: int = 32000
    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    mlp: int = 11008
    norm_eps: float = 1e-5
    max_seq: int = 4096
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab", "hidden", "layers", "heads", "kv_heads", "mlp", "max_seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer (got {getattr(self, name)})")
        if self.hidden % self.heads:
            raise ValueError(f"LlamaConfig: hidden must be divisible by heads ({self.hidden} % {self.heads} != 0)")
        if self.heads % self.kv_heads:
            raise ValueError(f"LlamaConfig: heads must be divisible by kv_heads ({self.heads} % {self.kv_heads} != 0)")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: rotary embedding needs an even head_dim (hidden / heads = {self.head_dim})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head (``hidden // heads``)."""
        return self.hidden // self.heads

    @property
    def num_params(self) -> int:
        """Parameter count by formula (untied embedding and head, no biases)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        block = 2 * h * h + 2 * h * kv + 3 * h * self.mlp + 2 * h
        return self.vocab * h + self.layers * block + h + self.vocab * h


LLAMA_70B = LlamaConfig(vocab=32000, hidden=8192, layers=80, heads=64, kv_heads=8, mlp=28672, norm_eps=1e-5, max_seq=4096)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation: ``weight * x * rsqrt(mean(x^2) + eps)`` over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaAttention(nn.Module):
    """Grouped-query attention with rotary position embedding; no biases."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.heads * cfg.head_dim, cfg.hidden, bias=False)
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """``cache``: attend to the cached keys and values too, the new ones written at ``cache_position``."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        # rotary position embedding: rotate each (i, i + d/2) pair by position * inv_freq[i]
        # (fp32 even in a half model: exact positions)
        pos = (torch.arange(s, device=x.device, dtype=torch.float32) if cache_position is None
               else cache_position.to(torch.float32))
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if cos.dtype != q.dtype:  # a half-precision model keeps the angles in fp32 and rotates in its own dtype
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        mask = None
        if cache is not None:
            k, v = cache.update(k, v, cache_position)  # type: ignore[arg-type]
            mask = cache.mask(cache_position)  # type: ignore[arg-type]
        # grouped-query attention: each KV head serves heads // kv_heads query heads
        rep, t = self.heads // self.kv_heads, k.shape[2]
        if rep > 1:
            k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, self.heads, t, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, self.heads, t, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=mask is None, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``; no biases."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.mlp, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.mlp, bias=False)
        self.down_proj = nn.Linear(cfg.mlp, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm decoder block: attention and MLP, each with an RMSNorm in front and a residual around."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """LLaMA-style decoder: token ids (batch, seq) -> logits (batch, seq, vocab)."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] > self.config.max_seq:
            raise ValueError(f"sequence length must be at most max_seq ({input_ids.shape[-1]} > {self.config.max_seq})")
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))

    @property
    def max_positions(self) -> int:
        """The longest sequence it takes (``config.max_seq``), prompt and generated tokens together."""
        return self.config.max_seq

    def static_cache_decoder(self, batch_size: int, max_len: int) -> "CachedDecoder":
        """A decoder of this model with a static KV cache for ``batch_size`` sequences of ``max_len`` tokens:
        ``forward(input_ids, cache_position)`` -> logits, the protocol :func:`rotafx.generate` uses.

        It shares this model's weights; each ``layers.i`` holds its cache (``layers.i.cache.k_cache``,
        ``v_cache``), written in place at ``cache_position``.

        >>> m = llama(LlamaConfig(vocab=128, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, max_seq=32))
        >>> ids = torch.randint(0, 128, (1, 6))
        >>> dec = m.static_cache_decoder(1, 16)
        >>> _ = dec(ids[:, :5], torch.arange(5))
        >>> torch.allclose(dec(ids[:, 5:], torch.tensor([5]))[:, -1], m(ids)[:, -1], atol=1e-5)
        True
        """
        _check_cache_len(self, batch_size, max_len)
        w = self.embed_tokens.weight
        caches = [KVCache(batch_size, self.config.kv_heads, max_len, self.config.head_dim, w.dtype, w.device)
                  for _ in self.layers]
        return CachedDecoder(self.embed_tokens, self.layers, caches, self.norm, self.lm_head)


class CachedLayer(nn.Module):
    """A decoder block (``block``) and its :class:`KVCache` (``cache``)."""

    def __init__(self, block: nn.Module, cache: KVCache) -> None:
        super().__init__()
        self.block = block
        self.cache = cache

    def forward(self, x: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.cache, cache_position)


class CachedDecoder(nn.Module):
    """``forward(input_ids, cache_position)`` -> logits through a model's own blocks, each with a static cache:
    what ``static_cache_decoder`` of :class:`Llama` and :class:`SmallGPT` return (their weights, not copies)."""

    def __init__(self, embed: nn.Module, blocks: nn.ModuleList, caches: list[KVCache], norm: nn.Module,
                 lm_head: nn.Module) -> None:
        super().__init__()
        self.embed = embed
        self.layers = nn.ModuleList(CachedLayer(b, c) for b, c in zip(blocks, caches))
        self.norm = norm
        self.lm_head = lm_head

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        x = (self.embed(input_ids, cache_position) if isinstance(self.embed, _GPTEmbedding)
             else self.embed(input_ids))
        for layer in self.layers:
            x = layer(x, cache_position)
        return self.lm_head(self.norm(x))


def llama(config: LlamaConfig, device: torch.device | str | None = None) -> Llama:
    """A LLaMA-style decoder of the given shape, built on ``device`` (``"meta"``: no memory).

    >>> m = llama(LlamaConfig(vocab=128, hidden=64, layers=2, heads=4, kv_heads=2, mlp=128, max_seq=32))
    >>> m(torch.zeros(1, 8, dtype=torch.long)).shape
    torch.Size([1, 8, 128])
    """
    if device is None:
        return Llama(config)
    with torch.device(device):
        return Llama(config)


def llama70b(device: torch.device | str = "meta") -> Llama:
    """LLaMA-70B's shape (80 layers, hidden 8192, 64 heads, 8 KV heads, 68,976,648,192 params), on ``meta`` by default.

    On ``meta`` it takes no memory and can be profiled on a laptop; on a real device it
    needs 276 GB for FP32 weights.

    >>> m = llama70b()
    >>> sum(p.numel() for p in m.parameters())
    68976648192
    """
    return llama(LLAMA_70B, device=device)


# ---------------------------------------------------------------------------
# GPT


class _GPTEmbedding(nn.Module):
    """Token plus learned position embedding."""

    def __init__(self, vocab: int, d: int, seq: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(seq, d)

    def forward(self, ids: torch.Tensor, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.arange(ids.shape[-1], device=ids.device) if cache_position is None else cache_position
        return self.tokens(ids) + self.positions(pos)


class _GPTBlock(nn.Module):
    """Pre-LN block: causal self-attention (fused qkv, SDPA) and a GELU MLP, each with a residual."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, cache_position: torch.Tensor | None = None) -> torch.Tensor:
        """``cache``: attend to the cached keys and values too, the new ones written at ``cache_position``."""
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.update(k, v, cache_position)  # type: ignore[arg-type]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask(cache_position))  # type: ignore[arg-type]
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        return x + self.fc_out(F.gelu(self.fc(self.ln_2(x))))


class SmallGPT(nn.Module):
    """GPT-style decoder: token ids (batch, seq) -> logits (batch, seq, vocab)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, seq: int, tied: bool) -> None:
        super().__init__()
        self.embed = _GPTEmbedding(vocab, d, seq)
        self.layers = nn.ModuleList(_GPTBlock(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.tokens.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))

    @property
    def max_positions(self) -> int:
        """The longest sequence it takes (its position embeddings), prompt and generated tokens together."""
        return self.embed.positions.num_embeddings

    def static_cache_decoder(self, batch_size: int, max_len: int) -> CachedDecoder:
        """A decoder of this model with a static KV cache for ``batch_size`` sequences of ``max_len`` tokens:
        ``forward(input_ids, cache_position)`` -> logits, the protocol :func:`rotafx.generate` uses.

        It shares this model's weights; each ``layers.i`` holds its cache (``layers.i.cache.k_cache``,
        ``v_cache``), written in place at ``cache_position``.

        >>> m = small_gpt()
        >>> ids = torch.randint(0, 256, (2, 6))
        >>> dec = m.static_cache_decoder(2, 16)
        >>> _ = dec(ids[:, :5], torch.arange(5))
        >>> torch.allclose(dec(ids[:, 5:], torch.tensor([5]))[:, -1], m(ids)[:, -1], atol=1e-5)
        True
        """
        _check_cache_len(self, batch_size, max_len)
        w, d = self.embed.tokens.weight, self.embed.tokens.embedding_dim
        caches = [KVCache(batch_size, blk.heads, max_len, d // blk.heads, w.dtype, w.device)  # type: ignore[arg-type]
                  for blk in self.layers]
        return CachedDecoder(self.embed, self.layers, caches, self.norm, self.lm_head)


def small_gpt(vocab: int = 256, d: int = 64, heads: int = 4, layers: int = 2, seq: int = 32, tied: bool = False) -> SmallGPT:
    """A small GPT (layers ``embed``, ``layers.0`` ..., ``norm``, ``lm_head``); ``tied`` shares the embedding with the head.

    >>> small_gpt()(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 256])
    """
    if d % heads:
        raise ValueError(f"small_gpt: d must be divisible by heads ({d} % {heads} != 0)")
    return SmallGPT(vocab, d, heads, layers, seq, tied)


# ---------------------------------------------------------------------------
# MLP and conv net


def mlp(sizes: tuple[int, ...] = (64, 128, 128, 10)) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU between each two (none after the last).

    >>> mlp((4, 8, 2))
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least two sizes (input and output), got {tuple(sizes)}")
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class ConvBNReLU(nn.Module):
    """3x3 convolution (no bias), batch norm, ReLU.

    Named children, not an ``nn.Sequential``: rotafx reads numbered children as a list
    of layers, and this block is one layer.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))``: two 3x3 convolutions with a skip connection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(c, c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(self.conv1(x))))


class ConvNet(nn.Module):
    """Images (batch, 3, 32, 32) -> class scores (batch, classes)."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = ConvBNReLU(3, width)
        self.down = ConvBNReLU(width, 2 * width, stride=2)
        self.res = ResidualBlock(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.res(self.down(self.stem(x))))
        return self.head(torch.flatten(x, 1))


def convnet(classes: int = 10, width: int = 16) -> ConvNet:
    """A small conv net with a residual block, in eval mode (layers ``stem``, ``down``, ``res``, ``pool``, ``head``).

    >>> convnet()(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return ConvNet(classes, width).eval()


# ---------------------------------------------------------------------------
# registry

EXAMPLES: dict[str, Callable[[], nn.Module]] = {
    "llama70b": llama70b,
    "small-gpt": small_gpt,
    "mlp": mlp,
    "convnet": convnet,
}


def example_inputs(name: str, batch_size: int = 1, seq_len: int | None = None) -> tuple[torch.Tensor, ...]:
    """Inputs for ``EXAMPLES[name]()`` (``llama70b``: meta tokens, seq 128; ``small-gpt``: seq 32).

    ``seq_len`` sets the tokens per sequence of the token models (at most ``small-gpt``'s
    32 positions, ``llama70b``'s 4096); the other examples take no sequence.

    >>> example_inputs("mlp", batch_size=2)[0].shape
    torch.Size([2, 64])
    >>> example_inputs("small-gpt", seq_len=16)[0].shape
    torch.Size([1, 16])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"rotafx: batch_size must be a positive integer, got {batch_size!r}")
    longest = {"llama70b": LLAMA_70B.max_seq, "small-gpt": 32}
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"rotafx: seq_len must be a positive integer, got {seq_len!r}")
        if name in longest and seq_len > longest[name]:
            raise ValueError(f"rotafx: {name} takes at most {longest[name]} tokens per sequence, got seq_len={seq_len}")
    if name == "llama70b":
        return (torch.zeros(batch_size, seq_len or 128, dtype=torch.long, device="meta"),)
    if name == "small-gpt":
        return (torch.randint(0, 256, (batch_size, seq_len or 32)),)
    if name == "mlp":
        return (torch.randn(batch_size, 64),)
    if name == "convnet":
        return (torch.randn(batch_size, 3, 32, 32),)
    raise KeyError(f"no example named {name!r}; choose one of {sorted(EXAMPLES)}")
