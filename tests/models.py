"""Small model registry for the tests: the built-in zoo plus a standalone transformer block."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from rotafx.models import EXAMPLES, LlamaConfig, convnet, example_inputs, llama, llama70b, mlp, small_gpt

__all__ = [
    "EXAMPLES",
    "LlamaConfig",
    "convnet",
    "example_inputs",
    "llama",
    "llama70b",
    "mlp",
    "small_gpt",
    "TransformerBlock",
    "tiny_llama",
    "ZOO",
]


class TransformerBlock(nn.Module):
    """Pre-LN encoder block on (batch, seq, d): ``x + o(sdpa(q, k, v))``, then ``x + fc2(gelu(fc1(ln2(x))))``.

    Separate q/k/v/o projections with bias, non-causal attention, LayerNorm with affine.
    """

    def __init__(self, d: int, heads: int, mlp: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"TransformerBlock: d must be divisible by heads ({d} % {heads} != 0)")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(b, s, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def tiny_llama(layers: int = 2) -> nn.Module:
    """A LLaMA of the zoo's architecture small enough to run on CPU (hidden 64, 4 heads, 2 KV heads)."""
    return llama(LlamaConfig(vocab=128, hidden=64, layers=layers, heads=4, kv_heads=2, mlp=128, max_seq=64))


# name -> (factory, inputs at batch size b); everything here runs on CPU in well under a second
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[int], tuple[torch.Tensor, ...]]]] = {
    "mlp": (mlp, lambda b: example_inputs("mlp", b)),
    "convnet": (convnet, lambda b: example_inputs("convnet", b)),
    "small-gpt": (small_gpt, lambda b: example_inputs("small-gpt", b)),
    "small-gpt-tied": (lambda: small_gpt(tied=True), lambda b: example_inputs("small-gpt", b)),
    "tiny-llama": (tiny_llama, lambda b: (torch.randint(0, 128, (b, 16)),)),
    "transformer-block": (lambda: nn.Sequential(TransformerBlock(32, 4, 64), TransformerBlock(32, 4, 64)),
                          lambda b: (torch.randn(b, 8, 32),)),
}
