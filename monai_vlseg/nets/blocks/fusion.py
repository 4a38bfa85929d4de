"""Image-text fusion of C2Seg (KAN-gated Bi-directional Complementary Attention, and the DualA ablation), on the
flattened grid of a 2D or 3D feature map: shared by :class:`monai_vlseg.nets.c2seg.C2Seg` and
:class:`monai_vlseg.nets.report_segmamba.ReportSegMamba`."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv

from .attention import MultiHeadAttention
from .kan import KANLinear

__all__ = ["BCAM", "C2SegFusion", "DualAttention", "KGate"]


class KGate(nn.Module):
    """KAN attention gate: ``g = tanh(KAN2(ReLU(KAN1(F))))`` and ``F * g`` (element-wise, g in [-1, 1]).

    Args:
        channels: width of F; hidden: width between the two KAN layers.
    Shapes: ``(B, P, C) -> (B, P, C)``.
    """

    def __init__(self, channels: int, hidden: int, **kan_kwargs) -> None:
        super().__init__()
        self.kan1 = KANLinear(channels, hidden, **kan_kwargs)
        self.kan2 = KANLinear(hidden, channels, **kan_kwargs)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        g = torch.tanh(self.kan2(F.relu(self.kan1(f))))  # g = tanh(KAN2(ReLU(KAN1(F))))
        return f * g


def _masked_fill(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~keep, torch.finfo(scores.dtype).min)


class BCAM(nn.Module):
    """Bi-directional Complementary Attention Module.

    KAN projections (after LayerNorm, which brings the inputs into the KAN grid range) give ``V_key, V_value`` from
    the vision tokens ``V`` (P x C) and ``L_key, L_value`` from the text tokens ``L`` (N x C_t). With
    ``A = V_key L_key^T / sqrt(d)`` (P x N):

    - vision-dominant ``F_v = Softmax_N(A) L_value`` (P x C);
    - language-dominant: ``W = Softmax_P(A^T)`` (N x P), each token's spatial weights applied to the vision values
      and summed over the tokens, ``F_l[p] = sum_n W[n, p] V_value[p]`` (P x C, on the pixel grid).

    Padding tokens are excluded from both softmaxes' token side. ``F_l`` is multiplied by ``P / N_valid`` so that a
    uniform attention weighs every pixel by 1 (a fixed rescaling; the paper does not state the scale). With
    ``num_heads > 1`` the key width and the value channels are split into heads, each with its own A.

    Args:
        channels: vision width C (also the output width); text_dim: text token width C_t.
        key_dim: d (default C); num_heads: attention heads (1 as in the paper).
        kan_kwargs: :class:`KANLinear` arguments.

    ``forward(v, l, mask)``: v (B, P, C), l (B, N, C_t), mask (B, N) bool -> (F_v, F_l), both (B, P, C).
    """

    def __init__(
        self, channels: int, text_dim: int, key_dim: int | None = None, num_heads: int = 1, **kan_kwargs
    ) -> None:
        super().__init__()
        key_dim = key_dim or channels
        if key_dim % num_heads or channels % num_heads:
            raise ValueError(f"key_dim {key_dim} and channels {channels} must be divisible by num_heads {num_heads}.")
        self.num_heads, self.key_dim = num_heads, key_dim
        self.norm_v, self.norm_l = nn.LayerNorm(channels), nn.LayerNorm(text_dim)
        self.v_key = KANLinear(channels, key_dim, **kan_kwargs)
        self.v_value = KANLinear(channels, channels, **kan_kwargs)
        self.l_key = KANLinear(text_dim, key_dim, **kan_kwargs)
        self.l_value = KANLinear(text_dim, channels, **kan_kwargs)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, h, n, c/h)

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, p, c = v.shape
        if mask is None:
            mask = torch.ones(l.shape[:2], dtype=torch.bool, device=l.device)
        mask = mask.bool()
        v, l = self.norm_v(v), self.norm_l(l)
        vk, vv = self._heads(self.v_key(v)), self._heads(self.v_value(v))
        lk, lv = self._heads(self.l_key(l)), self._heads(self.l_value(l))
        a = vk @ lk.transpose(-1, -2) / math.sqrt(self.key_dim // self.num_heads)  # A: (B, h, P, N)
        keep = mask[:, None, None, :]
        f_v = torch.softmax(_masked_fill(a, keep), dim=-1) @ lv  # F_v = Softmax_N(A) L_value
        w = torch.softmax(a.transpose(-1, -2), dim=-1)  # W = Softmax_P(A^T): (B, h, N, P)
        n_valid = mask.sum(1).clamp(min=1).to(w.dtype)[:, None, None]  # (B, 1, 1)
        token_sum = (w * mask[:, None, :, None].to(w.dtype)).sum(2)  # sum over tokens: (B, h, P)
        f_l = (token_sum * (p / n_valid)).unsqueeze(-1) * vv  # F_l[p] = sum_n W[n, p] V_value[p]
        merge = lambda x: x.transpose(1, 2).reshape(b, p, c)  # noqa: E731
        return merge(f_v), merge(f_l)


class DualAttention(nn.Module):
    """DualA-style bi-directional cross-attention (ablation row b): the text tokens are updated from the image
    (``L' = L + Attn(L, V, V)``), then the image attends to the updated tokens (``F_v = Attn(V, L', L')``); the
    language side stays a set of tokens, so the two outputs are the vision tokens V and F_v.

    ``forward(v, l, mask)``: v (B, P, C), l (B, N, C_t) -> (V, F_v), both (B, P, C).
    """

    def __init__(self, channels: int, text_dim: int, num_heads: int = 4) -> None:
        super().__init__()
        self.text_proj = nn.Linear(text_dim, channels)
        self.norm_v, self.norm_l = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.text_update = MultiHeadAttention(channels, num_heads)
        self.vision_attn = MultiHeadAttention(channels, num_heads)

    def forward(
        self, v: torch.Tensor, l: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        l = self.text_proj(l)
        vn = self.norm_v(v)
        l = l + self.text_update(self.norm_l(l), vn, vn)
        if mask is not None:  # padding tokens cannot be attended to: zero them, their keys stay non-informative
            l = l * mask[..., None].to(l.dtype)
        return v, self.vision_attn(vn, l, l)


class C2SegFusion(nn.Module):
    """Image-text fusion at one encoder level: two paths from BCAM (F_v, F_l) or DualA (V, F_v), each optionally
    reweighted by its own :class:`KGate`, concatenated and mixed by a 1x1 convolution (``F_out``).

    Args:
        channels: vision width; text_dim: text token width.
        fusion: "bcam" or "duala".
        k_gate: use the KAN gates.
        gate_hidden: hidden width of the gates (default channels // 4).
        num_heads: BCAM heads (1) / DualA heads (4 when BCAM uses 1).
        spatial_dims: 2 (C2Seg) or 3 (the report-guided CT network): the math is the same on the flattened grid.
    ``forward(x, l, mask)``: x (B, C, *spatial) -> (B, C, *spatial).
    """

    def __init__(
        self,
        channels: int,
        text_dim: int,
        fusion: str = "bcam",
        k_gate: bool = True,
        gate_hidden: int | None = None,
        num_heads: int = 1,
        spatial_dims: int = 2,
        **kan_kwargs,
    ) -> None:
        super().__init__()
        if fusion == "bcam":
            self.attn: nn.Module = BCAM(channels, text_dim, num_heads=num_heads, **kan_kwargs)
        elif fusion == "duala":
            self.attn = DualAttention(channels, text_dim, num_heads=max(num_heads, 4) if channels % 4 == 0 else 1)
        else:
            raise ValueError(f"fusion must be 'bcam' or 'duala', got '{fusion}'.")
        hidden = gate_hidden or max(channels // 4, 1)
        self.gates = nn.ModuleList(KGate(channels, hidden, **kan_kwargs) for _ in range(2)) if k_gate else None
        self.mix = Conv[Conv.CONV, spatial_dims](2 * channels, channels, 1)

    def forward(self, x: torch.Tensor, l: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        paths = self.attn(x.flatten(2).transpose(1, 2), l, mask)
        if self.gates is not None:
            paths = tuple(g(f) for g, f in zip(self.gates, paths))  # F^g = F * g, per path
        f = torch.cat(paths, dim=-1).transpose(1, 2).reshape(b, 2 * c, *spatial)
        return self.mix(f)  # F_out = Conv1x1(Concat(F_v^g, F_l^g))
