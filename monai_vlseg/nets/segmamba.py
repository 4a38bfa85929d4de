"""SegMamba: a tri-oriented Mamba encoder with a UNETR-style decoder for 3D medical image segmentation.

Xing, Ye, Yang, Liu, Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation",
MICCAI 2024 (arXiv 2401.13560). Layout as in the official code (ge-xing/SegMamba, ``model_segmamba/segmamba.py``):

- stem ``Conv k7 s2`` to ``feature_size[0]``, then three ``InstanceNorm -> Conv k2 s2`` down-samplings;
- every stage i: a gated spatial convolution (GSC) block, then ``depths[i]`` tri-oriented Mamba (ToM) layers
  ``x + ToM(LN(x))`` whose three orders (forward, backward, inter-slice with ``num_slices[i]`` = 64/32/16/8) are
  summed before the output projection (:class:`monai_vlseg.nets.blocks.mamba.MambaLayer` with ``CROSS_3D``);
- the official arrays are (D, H, W) with D the slices (SimpleITK order); MONAI's are (X, Y, Z) after ``Orientationd``
  RAS, so the slice axis is an argument (``slice_axis``, default the last spatial axis = z) and every ToM layer reads
  the map with that axis first: forward = slice by slice, inter-slice = each in-plane position through the slices;
- stage outputs: ``InstanceNorm -> MLP (1x1 conv, GELU, 1x1 conv, hidden 2C)``;
- decoder: MONAI ``UnetrBasicBlock`` on the input and on each stage output, a ``hidden_size`` bottleneck block,
  four ``UnetrUpBlock`` and a final ``UnetrBasicBlock`` + ``UnetOutBlock``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.layers import Conv, Norm
from monai.utils import convert_to_tensor
from torch import nn
from torch.utils.checkpoint import checkpoint

from monai_vlseg.nets.blocks.mamba import MambaLayer, token_dims
from monai_vlseg.ops.cross_scan import CROSS_3D

__all__ = ["GSC", "SEGMAMBA_NUM_SLICES", "MlpChannel", "SegMamba", "SegMambaEncoder", "ToMLayer"]

#: inter-slice scan lengths of the four stages in the official code (64 = depth of the 64^3 stage-1 map of a 128^3 patch).
SEGMAMBA_NUM_SLICES: tuple[int, ...] = (64, 32, 16, 8)


class GSC(nn.Module):
    """Gated spatial convolution: ``x + C1(C3(C3(x)) (*) C1(x))`` (the paper's GSC formula; C = conv block).

    The official code fuses the two branches by addition (``x1 + x2``) where the paper's formula gates them by a
    product; the
    ``fusion`` argument picks one ("add", the default, reproduces the released weights' architecture).
    Every conv block is ``Conv -> InstanceNorm (no affine) -> ReLU``.

    Args:
        channels: input = output channels.
        spatial_dims: 2 or 3.
        fusion: "add" (official code) or "mul" (the paper's product).
    """

    def __init__(self, channels: int, spatial_dims: int = 3, fusion: str = "add") -> None:
        super().__init__()
        if fusion not in ("add", "mul"):
            raise ValueError(f"GSC fusion must be 'add' or 'mul', got '{fusion}'.")
        self.fusion = fusion
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.INSTANCE, spatial_dims]

        def block(k: int) -> nn.Sequential:
            return nn.Sequential(conv(channels, channels, k, 1, k // 2), norm(channels), nn.ReLU())

        self.proj1, self.proj2, self.proj3, self.proj4 = block(3), block(3), block(1), block(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.proj2(self.proj1(x))
        x2 = self.proj3(x)
        fused = x1 + x2 if self.fusion == "add" else x1 * x2
        return x + self.proj4(fused)


class ToMLayer(nn.Module):
    """Tri-oriented Mamba layer (the paper's ToM formula): ``x + ToM(LN(x))`` on a (B, C, *spatial) map.

    ToM is the foundation's :class:`~monai_vlseg.nets.blocks.mamba.MambaLayer` with the three
    :data:`~monai_vlseg.ops.cross_scan.CROSS_3D` orders (forward, backward, inter-slice), each with its own conv1d
    and SSM parameters, summed before ``out_proj`` as in the official ``bimamba_type="v3"``. The tokens are read
    with ``slice_axis`` first (the other axes in their order), as the official code reads its (D, H, W) arrays:
    forward finishes one slice before the next, inter-slice steps through the slices at each in-plane position.

    Args:
        dim: channels.
        num_slices: blocks of the inter-slice order (None: the size of the slice axis).
        d_state, d_conv, expand: Mamba settings (16, 4, 2).
        use_checkpoint: recompute this layer in the backward pass (activation memory of one layer instead of all).
        slice_axis: spatial axis of the slices (-1: the last, z of MONAI's (X, Y, Z); 0 reads the map as it is
            stored, the official (D, H, W) layout).
    """

    def __init__(
        self,
        dim: int,
        num_slices: int | None = None,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        use_checkpoint: bool = False,
        slice_axis: int = -1,
    ) -> None:
        super().__init__()
        self.num_slices, self.use_checkpoint, self.slice_axis = num_slices, use_checkpoint, int(slice_axis)
        self.norm = nn.LayerNorm(dim)
        self.mamba = MambaLayer(dim, d_state, d_conv, expand, directions=CROSS_3D, nslices=num_slices)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        dims = token_dims(x.ndim - 2, self.slice_axis)
        moved = [x.shape[d] for d in dims]  # (B, S, *in-plane, C)
        tokens = x.permute(dims).reshape(moved[0], -1, moved[-1])  # (B, L, C): one copy, which LayerNorm needs anyway
        out = self.mamba(self.norm(tokens), moved[1:-1])
        return x + out.reshape(moved).permute([dims.index(d) for d in range(x.ndim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2:].numel()
        if self.num_slices and n % self.num_slices:
            raise ValueError(
                f"ToM inter-slice scan: a {tuple(x.shape[2:])} map has {n} tokens, not divisible into "
                f"num_slices={self.num_slices}; use a patch size that makes it divisible (e.g. a multiple of 128 "
                "per side for the paper's 64/32/16/8) or num_slices=None (one block per slice of the slice axis)."
            )
        if self.use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self._mix, x, use_reentrant=False)
        return self._mix(x)


class MlpChannel(nn.Module):
    """Channel MLP on a stage output: ``Conv1x1(C -> hidden) -> GELU -> Conv1x1(hidden -> C)``."""

    def __init__(self, channels: int, hidden: int, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.fc1, self.act, self.fc2 = conv(channels, hidden, 1), nn.GELU(), conv(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SegMambaEncoder(nn.Module):
    """The four TSMamba stages of SegMamba: (down-sampling, GSC, ToM layers) x 4, each output normed and MLP'd.

    Args:
        in_channels: image channels.
        depths: ToM layers per stage (2, 2, 2, 2).
        dims: stage widths (48, 96, 192, 384).
        num_slices: inter-slice blocks per stage (64, 32, 16, 8); None entries: the size of the slice axis.
        spatial_dims: 3 (2 works too).
        d_state, d_conv, expand: Mamba settings.
        gsc_fusion: see :class:`GSC`.
        use_checkpoint: recompute ToM layers in the backward pass.
        slice_axis: spatial axis of the slices, see :class:`ToMLayer` (-1: z of MONAI's (X, Y, Z)).
    """

    def __init__(
        self,
        in_channels: int = 1,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (48, 96, 192, 384),
        num_slices: Sequence[int | None] | None = SEGMAMBA_NUM_SLICES,
        spatial_dims: int = 3,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        gsc_fusion: str = "add",
        use_checkpoint: bool = False,
        slice_axis: int = -1,
    ) -> None:
        super().__init__()
        if not (len(depths) == len(dims) == 4):
            raise ValueError(f"SegMamba has four stages: got depths={list(depths)}, dims={list(dims)}.")
        num_slices = [None] * 4 if num_slices is None else list(num_slices)
        if len(num_slices) != 4:
            raise ValueError(f"num_slices needs one entry per stage (4), got {num_slices}.")
        if not -spatial_dims <= slice_axis < spatial_dims:
            raise ValueError(f"slice_axis={slice_axis} is not an axis of a {spatial_dims}D map.")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.INSTANCE, spatial_dims]
        self.downsample = nn.ModuleList([nn.Sequential(conv(in_channels, dims[0], 7, 2, 3))])  # stem k7 s2
        for i in range(3):
            self.downsample.append(nn.Sequential(norm(dims[i]), conv(dims[i], dims[i + 1], 2, 2)))
        self.gscs = nn.ModuleList([GSC(d, spatial_dims, gsc_fusion) for d in dims])
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[
                    ToMLayer(dims[i], num_slices[i], d_state, d_conv, expand, use_checkpoint, slice_axis)
                    for _ in range(depths[i])
                ]
            )
            for i in range(4)
        )
        self.norms = nn.ModuleList([norm(d) for d in dims])
        self.mlps = nn.ModuleList([MlpChannel(d, 2 * d, spatial_dims) for d in dims])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, *spatial) -> four maps at 1/2, 1/4, 1/8, 1/16 resolution with ``dims`` channels."""
        outs = []
        for down, gsc, stage, norm, mlp in zip(self.downsample, self.gscs, self.stages, self.norms, self.mlps):
            x = stage(gsc(down(x)))
            outs.append(mlp(norm(x)))
        return outs


class SegMamba(nn.Module):
    """SegMamba (Xing et al., MICCAI 2024): TSMamba encoder + UNETR-style convolutional decoder.

    Args:
        in_channels: image channels (1 for CT, 4 for BraTS).
        out_channels: classes including background (logits; softmax for multi-label output).
        depths: ToM layers per stage.
        feature_size: stage widths (48, 96, 192, 384); the decoder uses the same widths.
        hidden_size: bottleneck width (768).
        num_slices: inter-slice scan blocks per stage (64, 32, 16, 8 as in the official code, sized for 128^3
            patches; None entries: the size of the slice axis of each stage's map).
        norm_name: decoder normalisation (MONAI name, "instance").
        res_block: residual decoder blocks.
        spatial_dims: 3 (2 is accepted for experiments).
        d_state, d_conv, expand: Mamba settings (16, 4, 2).
        gsc_fusion: "add" (official code) or "mul" (the paper's product).
        use_checkpoint: recompute ToM layers in the backward pass (bounded CPU memory at 96^3-128^3 patches).
        slice_axis: spatial axis of the slices, which the ToM layers scan through (-1: the last = z of MONAI's RAS
            (X, Y, Z) arrays; 0: the first, the official (D, H, W) layout).

    Input spatial sizes must be multiples of 16.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 13,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_size: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        num_slices: Sequence[int | None] | None = SEGMAMBA_NUM_SLICES,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        spatial_dims: int = 3,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        gsc_fusion: str = "add",
        use_checkpoint: bool = False,
        slice_axis: int = -1,
    ) -> None:
        super().__init__()
        f = list(feature_size)
        self.spatial_dims = spatial_dims
        self.encoder = SegMambaEncoder(
            in_channels, depths, f, num_slices, spatial_dims, d_state, d_conv, expand, gsc_fusion, use_checkpoint,
            slice_axis,
        )

        def basic(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(spatial_dims, cin, cout, 3, 1, norm_name, res_block)

        def up(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(spatial_dims, cin, cout, 3, 2, norm_name, res_block)

        self.encoder1 = basic(in_channels, f[0])  # full resolution, on the image
        self.encoder2, self.encoder3, self.encoder4 = basic(f[0], f[1]), basic(f[1], f[2]), basic(f[2], f[3])
        self.encoder5 = basic(f[3], hidden_size)  # bottleneck at 1/16
        self.decoder5, self.decoder4 = up(hidden_size, f[3]), up(f[3], f[2])
        self.decoder3, self.decoder2 = up(f[2], f[1]), up(f[1], f[0])
        self.decoder1 = basic(f[0], f[0])
        self.out = UnetOutBlock(spatial_dims, f[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> (B, out_channels, *spatial) logits."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"SegMamba expects a (B, C, {'D, H, W' if self.spatial_dims == 3 else 'H, W'}) tensor, got {tuple(x.shape)}.")
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"SegMamba input spatial sizes must be multiples of 16, got {tuple(x.shape[2:])}.")
        x = convert_to_tensor(x, track_meta=False)  # MetaTensor -> Tensor: the scan's work buffers are plain tensors
        s1, s2, s3, s4 = self.encoder(x)
        enc1, enc2, enc3, enc4 = self.encoder1(x), self.encoder2(s1), self.encoder3(s2), self.encoder4(s3)
        dec = self.decoder5(self.encoder5(s4), enc4)
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        return self.out(self.decoder1(dec))
