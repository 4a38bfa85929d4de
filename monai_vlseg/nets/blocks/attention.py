"""Attention pieces shared by the text-guided networks: sinusoidal positions and multi-head attention with
separate query / key / value inputs (so keys can carry positions while values do not)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["sinusoidal_positions", "MultiHeadAttention"]


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Vaswani et al. sinusoidal encoding, (length, dim): sin on even, cos on odd channels."""
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe if dtype is None else pe.to(dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, ``softmax(Q K^T / sqrt(d_k)) V`` per head, heads concatenated
    and projected (Vaswani et al.). ``forward(q, k=None, v=None)``: self-attention when k and v are omitted.

    Args:
        dim: model width (query, key and value inputs all have this width).
        num_heads: number of heads.
        qkv_bias: bias of the q/k/v projections.
        qk_norm: LayerNorm on each head's queries and keys (as in UA-VLS's official code).
        attn_drop: dropout on attention weights; proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 4,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """q: (B, Nq, dim); k, v: (B, Nk, dim) (default q) -> (B, Nq, dim)."""
        k = q if k is None else k
        v = k if v is None else v
        qh = self.q_norm(self._heads(self.q(q)))
        kh = self.k_norm(self._heads(self.k(k)))
        vh = self._heads(self.v(v))
        out = F.scaled_dot_product_attention(qh, kh, vh, dropout_p=self.attn_drop if self.training else 0.0)
        b, _, nq, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, nq, -1)))
