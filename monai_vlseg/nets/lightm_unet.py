"""LightM-UNet: a UNet whose encoder is residual vision Mamba (RVM) layers only, 2D and 3D.

Liao, Zhu, Wang, Pan, Wang, Ma, "LightM-UNet: Mamba Assists in Lightweight UNet for Medical Image Segmentation",
2024 (arXiv 2403.05246). Layout as in the official code (MrBlankness/LightM-UNet, ``nnunetv2/nets/LightMUNet.py``
from commit d2bed4a on, built by ``nnUNetTrainerLightMUNet`` with ``init_filters=32, blocks_down=(1, 2, 2, 4),
blocks_up=(1, 1, 1)`` for both the 2D chest X-ray and the 3D liver CT set):

- stem: a depthwise-separable 3x3(x3) convolution to ``init_filters`` channels (no bias);
- encoder level i: (i > 0) an RVM layer ``init_filters * 2**(i-1) -> init_filters * 2**i`` at the higher
  resolution followed by a 2x max-pool, then ``blocks_down[i]`` residual Mamba blocks
  ``x + RVM(ReLU(GN(RVM(ReLU(GN(x))))))``; no spatial convolution in the encoder;
- the RVM layer is :class:`~monai_vlseg.nets.blocks.mamba.PVMLayer` with one part: ``LN -> Mamba + s * x -> LN ->
  Linear``, one forward scan over the row-major tokens;
- decoder level: ``1x1 conv (no bias) -> 2x (bi/tri)linear up-sampling -> + skip -> ResUpBlock``, where
  ``ResUpBlock(x) = ReLU(GN(DWConv(ReLU(GN(x))) + s * x))``;
- head: ``GN -> ReLU -> depthwise 1x1 (bias) -> pointwise 1x1 (bias)``, logits.

The paper quotes 1.09M parameters (2D); the released code builds 5.01M (2D, 3 -> 2 channels) and 5.02M (3D), 84% of
them in the 1/8-resolution bottleneck (the code has four residual blocks there, eight RVM layers). This module
builds the released code's architecture; ``docs/benchmarks.md`` lists both figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.segresnet_block import get_conv_layer, get_upsample_layer
from monai.networks.layers import get_act_layer, get_norm_layer
from monai.utils import convert_to_tensor
from torch import nn

from monai_vlseg.nets.blocks.mamba import PVMLayer

__all__ = ["LightMUNet", "ResMambaBlock", "ResUpBlock"]


def _dwconv(spatial_dims: int, cin: int, cout: int, kernel_size: int = 3, bias: bool = False) -> nn.Sequential:
    """Depthwise ``kernel_size`` convolution then pointwise 1x1 (the official ``get_dwconv_layer``)."""

    def conv(i: int, o: int, k: int, groups: int) -> Convolution:
        return Convolution(spatial_dims, i, o, kernel_size=k, groups=groups, bias=bias, conv_only=True)

    return nn.Sequential(conv(cin, cin, kernel_size, cin), conv(cin, cout, 1, 1))


class ResMambaBlock(nn.Module):
    """``x + RVM(act(GN(RVM(act(GN(x))))))`` (the official ``ResMambaBlock``)."""

    def __init__(
        self, spatial_dims: int, channels: int, norm: tuple | str, act: tuple | str, **rvm_kwargs
    ) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(norm, spatial_dims, channels)
        self.norm2 = get_norm_layer(norm, spatial_dims, channels)
        self.act = get_act_layer(act)
        self.rvm1 = PVMLayer(channels, channels, parts=1, **rvm_kwargs)
        self.rvm2 = PVMLayer(channels, channels, parts=1, **rvm_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.rvm2(self.act(self.norm2(self.rvm1(self.act(self.norm1(x))))))


class ResUpBlock(nn.Module):
    """``act(GN(DWConv(act(GN(x))) + s * x))`` with one learnable scalar ``s`` (the official ``ResUpBlock``)."""

    def __init__(self, spatial_dims: int, channels: int, norm: tuple | str, act: tuple | str) -> None:
        super().__init__()
        self.norm1 = get_norm_layer(norm, spatial_dims, channels)
        self.norm2 = get_norm_layer(norm, spatial_dims, channels)
        self.act = get_act_layer(act)
        self.conv = _dwconv(spatial_dims, channels, channels, 3)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv(self.act(self.norm1(x))) + self.skip_scale * x))


class LightMUNet(nn.Module):
    """LightM-UNet (Liao et al., 2024), 2D or 3D.

    Args:
        spatial_dims: 2 (chest X-ray) or 3 (CT).
        in_channels: image channels.
        out_channels: classes (logits; 1 for a sigmoid binary mask).
        init_filters: channels of the first level (32 in the paper's runs), doubled per level.
        blocks_down: residual Mamba blocks per encoder level (1, 2, 2, 4); its length is the number of levels.
        blocks_up: ``ResUpBlock`` per decoder level (1, 1, 1).
        norm: MONAI norm (GroupNorm, 8 groups).
        act: MONAI activation (ReLU).
        d_state, d_conv, expand: Mamba settings (16, 4, 2).
        slice_axis: spatial axis the RVM layers read slowest (0: the map as stored, the official (D, H, W) order;
            -1: z of MONAI's (X, Y, Z) volumes, so that the scan finishes one axial slice before the next).
        dropout_prob: dropout after the stem (None, as in the paper's runs).

    Input spatial sizes must be multiples of ``2 ** (len(blocks_down) - 1)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        init_filters: int = 32,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: tuple | str = ("GROUP", {"num_groups": 8}),
        act: tuple | str = ("RELU", {"inplace": True}),
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        slice_axis: int = 0,
        dropout_prob: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"LightMUNet: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"LightMUNet: blocks_up needs len(blocks_down) - 1 = {len(blocks_down) - 1} entries.")
        self.spatial_dims, self.levels = spatial_dims, len(blocks_down)
        rvm = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "slice_axis": slice_axis}
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.conv_init = _dwconv(spatial_dims, in_channels, init_filters, 3)
        self.dropout = nn.Dropout(dropout_prob) if dropout_prob else nn.Identity()
        self.down_layers = nn.ModuleList()
        for i, n in enumerate(blocks_down):
            c = init_filters * 2**i
            # levels after the first: the channel-doubling RVM layer at the higher resolution, then the max-pool
            down = nn.Sequential(PVMLayer(c // 2, c, **rvm), pool(2, 2)) if i else nn.Identity()
            self.down_layers.append(
                nn.Sequential(down, *[ResMambaBlock(spatial_dims, c, norm, act, **rvm) for _ in range(n)])
            )
        self.up_samples, self.up_layers = nn.ModuleList(), nn.ModuleList()
        for i, n in enumerate(blocks_up):
            c = init_filters * 2 ** (self.levels - 1 - i)
            self.up_samples.append(
                nn.Sequential(
                    get_conv_layer(spatial_dims, c, c // 2, kernel_size=1),
                    get_upsample_layer(spatial_dims, c // 2, upsample_mode="nontrainable"),
                )
            )
            self.up_layers.append(nn.Sequential(*[ResUpBlock(spatial_dims, c // 2, norm, act) for _ in range(n)]))
        self.head = nn.Sequential(
            get_norm_layer(norm, spatial_dims, init_filters),
            get_act_layer(act),
            _dwconv(spatial_dims, init_filters, out_channels, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> (B, out_channels, *spatial) logits."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"LightMUNet ({self.spatial_dims}D) expects a (B, C, *spatial) tensor, got {tuple(x.shape)}.")
        m = 2 ** (self.levels - 1)
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"LightMUNet input spatial sizes must be multiples of {m}, got {tuple(x.shape[2:])}.")
        x = convert_to_tensor(x, track_meta=False)
        x = self.dropout(self.conv_init(x))
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        for up, layer, skip in zip(self.up_samples, self.up_layers, reversed(skips[:-1])):
            x = layer(up(x) + skip)
        return self.head(x)
