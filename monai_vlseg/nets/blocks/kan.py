"""Kolmogorov-Arnold Network layers, written once for every network of the package.

:class:`KANLinear` is a KAN layer (Liu et al., "KAN: Kolmogorov-Arnold Networks", 2024): every input-output edge
carries a learnable univariate function ``phi(x) = w_b * silu(x) + w_s * sum_i c_i B_i(x)``, a SiLU "base" branch
plus a cubic B-spline on a uniform grid. It is vectorised: all edges are evaluated as two matrix products (the base
branch and the spline coefficients applied to the B-spline basis of every input), no loop over edges.

:class:`TokenizedKANBlock` is the U-KAN (Li et al., "U-KAN Makes Strong Backbone for Medical Image Segmentation and
Generation", 2024) block for feature maps: flatten the map into tokens, then KAN linear layers each followed by a
depthwise 3x3 convolution on the pixel grid, normalisation and activation, with a residual connection.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KANLinear", "KAN", "TokenizedKANBlock", "OverlapPatchEmbed"]


class KANLinear(nn.Module):
    """
    KAN layer ``y_j = sum_i [ w_b[j, i] * silu(x_i) + w_s[j, i] * sum_k c[j, i, k] B_k(x_i) ]``.

    The B-spline basis ``B_k`` of order ``spline_order`` (3: cubic) lives on ``grid_size`` uniform intervals of
    ``grid_range``, extended by ``spline_order`` knots on each side so that every input in the range sees
    ``spline_order + 1`` non-zero basis functions; outside the extended grid the spline is zero and the base branch
    carries the signal.

    Args:
        in_features: input width; out_features: output width.
        grid_size: number of grid intervals (5).
        spline_order: B-spline order (3).
        grid_range: interval covered by the grid ((-1, 1)).
        scale_noise: std of the initial spline coefficients, divided by ``grid_size`` (small: starts close to the
            base branch).
        scale_base, scale_spline: initial scales of the base weights and of the per-edge spline scalers.
        base_activation: activation of the base branch (SiLU).
        bias: add a bias to the output (off in the KAN paper; the base branch already gives an affine-like path).

    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        scale_noise: float = 0.1,
        scale_base: float = 1.0,
        scale_spline: float = 1.0,
        base_activation: type[nn.Module] = nn.SiLU,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if grid_size < 1 or spline_order < 0:
            raise ValueError(f"grid_size must be >= 1 and spline_order >= 0, got {grid_size}, {spline_order}.")
        lo, hi = float(grid_range[0]), float(grid_range[1])
        if not hi > lo:
            raise ValueError(f"grid_range must be increasing, got {tuple(grid_range)}.")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        h = (hi - lo) / grid_size
        knots = lo + h * torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32)
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())  # (in, G + 2k + 1)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.base_activation = base_activation()
        self.scale_noise, self.scale_base, self.scale_spline = scale_noise, scale_base, scale_spline
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * self.scale_base)
        nn.init.normal_(self.spline_weight, std=self.scale_noise / self.grid_size)
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * self.scale_spline)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline basis by the Cox-de Boor recursion, vectorised: ``(M, in) -> (M, in, grid_size + order)``."""
        grid = self.grid.to(x.dtype)  # (in, K)
        x = x.unsqueeze(-1)
        bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)  # order 0
        for k in range(1, self.spline_order + 1):
            left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * bases[..., :-1]
            right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:-k]) * bases[..., 1:]
            bases = left + right
        return bases

    @property
    def scaled_spline_weight(self) -> torch.Tensor:
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLinear expects {self.in_features} input features, got shape {tuple(x.shape)}.")
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        base = F.linear(self.base_activation(x), self.base_weight)
        spline = F.linear(self.b_splines(x).flatten(1), self.scaled_spline_weight.flatten(1))
        out = base + spline
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)


class KAN(nn.Sequential):
    """A stack of :class:`KANLinear` layers of widths ``layers`` (e.g. ``[1, 4, 1]``); KAN layers need no
    activation in between. ``kwargs`` go to every layer."""

    def __init__(self, layers: list[int] | tuple[int, ...], **kwargs) -> None:
        if len(layers) < 2:
            raise ValueError(f"a KAN needs at least an input and an output width, got {layers}.")
        super().__init__(*(KANLinear(a, b, **kwargs) for a, b in zip(layers[:-1], layers[1:])))


class OverlapPatchEmbed(nn.Module):
    """U-KAN's down-sampling patch embedding: 3x3 convolution with stride 2 and LayerNorm over channels.
    ``(B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TokenizedKANBlock(nn.Module):
    """
    Tokenised KAN block for 2-D feature maps (U-KAN style): ``x + f(LN(x))`` where ``f`` is ``num_layers`` times
    [KANLinear on the tokens -> depthwise 3x3 conv on the pixel grid -> BatchNorm -> ReLU].

    Args:
        channels: token width C (input and output).
        num_layers: KAN + depthwise-conv units (3 as in U-KAN).
        kan_kwargs: extra :class:`KANLinear` arguments (grid_size, spline_order, grid_range, ...).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, num_layers: int = 3, **kan_kwargs) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.norm = nn.LayerNorm(channels)
        self.kans = nn.ModuleList(KANLinear(channels, channels, **kan_kwargs) for _ in range(num_layers))
        self.dwconvs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels), nn.ReLU())
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x.flatten(2).transpose(1, 2))  # (B, HW, C)
        for kan, dw in zip(self.kans, self.dwconvs):
            y = kan(y)
            y = dw(y.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return x + y.transpose(1, 2).reshape(b, c, h, w)
