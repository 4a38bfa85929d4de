"""VM-UNet: a pure state-space (Mamba) U-shaped network for 2D medical image segmentation.

Ruan, Li, Xiang, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation", 2024 (arXiv 2402.02491).
Layout as in the official code (JCruan519/VM-UNet, ``models/vmunet/vmamba.py``, read for facts only):

- patch embedding: ``Conv 4x4 stride 4 -> LayerNorm`` to 96 channels (channels-last tokens);
- encoder: four stages of visual state-space (VSS) blocks, depths [2, 2, 2, 2] at widths 96 / 192 / 384 / 768, each
  stage but the last ending in a patch merging (2x2 neighbours concatenated, ``LayerNorm(4C) -> Linear(4C, 2C)``):
  MONAI's :class:`~monai.networks.nets.swin_unetr.PatchMergingV2`, whose 2D concatenation order (0,0), (1,0),
  (0,1), (1,1) and parameter names (``norm``, ``reduction``) are the official ones;
- VSS block: ``x + DropPath(SS2D(LN(x)))`` with no MLP; SS2D reads the map along four orders
  (:data:`~monai_vlseg.ops.cross_scan.CROSS_2D`) with grouped B/C, sums them, ``LayerNorm`` and ``SiLU(z)`` gate
  (the foundation's :class:`~monai_vlseg.nets.blocks.mamba.VSSBlock` / ``SS2D``);
- decoder: four stages, depths [2, 2, 2, 1] at 768 / 384 / 192 / 96, stages 2-4 starting with a patch expanding
  (``Linear(2C, 4C)`` + pixel shuffle x2 + ``LayerNorm(C)``); the encoder maps are added (additive skips) to the
  decoder input of stages 2-4;
- head: final patch expanding x4 (``Linear(C, 16 C/4)`` + pixel shuffle + ``LayerNorm(C/4)``) and a 1x1 conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import trunc_normal_
from monai.networks.nets.swin_unetr import PatchMergingV2
from monai.utils import convert_to_tensor
from torch.utils.checkpoint import checkpoint

from monai_vlseg.nets.blocks.mamba import VSSBlock

__all__ = ["PatchEmbed2D", "PatchExpand2D", "VSSLayer", "VMUNet"]


class PatchEmbed2D(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` patches to ``embed_dim`` tokens: ``Conv(k=s=p) -> LayerNorm``.

    (B, C, H, W) -> (B, H/p, W/p, embed_dim), channels-last as every VSS block expects.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchExpand2D(nn.Module):
    """Up-sampling of a channels-last map by ``scale``: ``Linear(in_dim, scale^2 * out_dim)`` (no bias), each
    token's vector laid out as a ``scale x scale`` cell of ``out_dim`` channels (pixel shuffle), ``LayerNorm(out_dim)``.

    VM-UNet uses it twice: the decoder's patch expanding (``scale=2``, ``in_dim = 2 out_dim``) and the final x4
    expanding (``scale=4``, ``out_dim = in_dim / 4``).
    """

    def __init__(self, in_dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.scale, self.out_dim = scale, out_dim
        self.expand = nn.Linear(in_dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, in_dim) -> (B, s H, s W, out_dim)."""
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, self.out_dim).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, self.out_dim))


class VSSLayer(nn.Module):
    """``depth`` VSS blocks at one resolution (channels-last), optionally recomputed in the backward pass.

    Args:
        dim: channels.
        depth: number of blocks.
        drop_path: stochastic depth rate per block (a sequence of ``depth`` rates, or one rate for all).
        d_state, d_conv, expand: SS2D settings (16, 3, 2).
        use_checkpoint: activation checkpointing of each block.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: float | Sequence[float] = 0.0,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f"VSSLayer: {len(rates)} drop-path rates for {depth} blocks.")
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=r, d_state=d_state, d_conv=d_conv, expand=expand) for r in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled() and x.requires_grad:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class VMUNet(nn.Module):
    """VM-UNet (Ruan et al., 2024): VSS-block encoder and decoder with additive skips, image in, logits out.

    Args:
        in_channels: image channels (1 for grey, 3 for RGB; the official code repeats grey images to three channels
            to reuse ImageNet weights, here the patch embedding takes ``in_channels`` directly).
        out_channels: output channels (logits; 1 with a sigmoid for a binary mask as in the paper's ISIC setting,
            or the number of classes including background with a softmax).
        dims: encoder widths (96, 192, 384, 768), each twice the one before (patch merging doubles the width); the
            decoder uses them in reverse order.
        depths: VSS blocks per encoder stage ([2, 2, 2, 2] in the paper's ISIC configuration).
        depths_decoder: VSS blocks per decoder stage, deepest first ([2, 2, 2, 1]).
        patch_size: patch embedding size (4) and the final expanding factor.
        d_state, d_conv, expand: SS2D settings (16, 3, 2).
        drop_path_rate: largest stochastic depth rate (0.2), linear over the encoder blocks and, reversed, over the
            decoder blocks.
        use_checkpoint: recompute VSS blocks in the backward pass (less activation memory, ~30 % slower).

    Input spatial sizes must be multiples of ``patch_size * 2 ** (len(dims) - 1)`` (32 for the paper's layout).
    Unlike the official code, which ends in ``sigmoid`` for one class, the output is logits (MONAI convention).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        patch_size: int = 4,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        drop_path_rate: float = 0.2,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        dims, depths, depths_decoder = [int(d) for d in dims], [int(d) for d in depths], [int(d) for d in depths_decoder]
        n = len(dims)
        if n < 1 or len(depths) != n or len(depths_decoder) != n:
            raise ValueError(
                f"VMUNet needs one encoder and one decoder depth per stage: dims={dims}, depths={depths}, "
                f"depths_decoder={depths_decoder}."
            )
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if any(b != 2 * a for a, b in zip(dims[:-1], dims[1:])):
            raise ValueError(f"VMUNet dims must double from stage to stage (patch merging C -> 2C), got {dims}.")
        if dims[0] % patch_size:
            raise ValueError(f"dims[0]={dims[0]} must be divisible by patch_size={patch_size} for the final expanding.")
        self.in_channels, self.out_channels, self.patch_size = in_channels, out_channels, patch_size
        self.size_divisor = patch_size * 2 ** (n - 1)
        ssm = {"d_state": d_state, "d_conv": d_conv, "expand": expand, "use_checkpoint": use_checkpoint}
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dpr_dec = torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1]

        self.patch_embed = PatchEmbed2D(in_channels, dims[0], patch_size)
        self.encoder = nn.ModuleList(
            VSSLayer(dims[i], depths[i], dpr[sum(depths[:i]) : sum(depths[: i + 1])], **ssm) for i in range(n)
        )
        self.downsample = nn.ModuleList(PatchMergingV2(dims[i], spatial_dims=2) for i in range(n - 1))
        dec_dims = dims[::-1]
        self.upsample = nn.ModuleList(PatchExpand2D(dec_dims[i - 1], dec_dims[i], 2) for i in range(1, n))
        self.decoder = nn.ModuleList(
            VSSLayer(dec_dims[i], depths_decoder[i], dpr_dec[sum(depths_decoder[:i]) : sum(depths_decoder[: i + 1])], **ssm)
            for i in range(n)
        )
        self.final_expand = PatchExpand2D(dims[0], dims[0] // patch_size, patch_size)
        self.head = nn.Conv2d(dims[0] // patch_size, out_channels, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Official initialisation: truncated normal (std 0.02) for every ``nn.Linear``, LayerNorm (1, 0); the SSM
        parameters (x/dt projections, A, D) keep Mamba's initialisation, convolutions PyTorch's default."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W) logits."""
        x = convert_to_tensor(x, track_meta=False)  # MONAI's batches: plain tensors through the scan (new_empty buffers)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"VMUNet expects (B, {self.in_channels}, H, W) images, got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"VMUNet input size {h}x{w} is not a multiple of {self.size_divisor} (patch {self.patch_size} and "
                f"{len(self.encoder) - 1} patch mergings); resize or pad the image."
            )
        x = self.patch_embed(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            skips.append(x)  # the input of encoder stage i (stage 0's, the patch embedding, is not used: as official)
            x = stage(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        for i, stage in enumerate(self.decoder):
            if i > 0:
                x = self.upsample[i - 1](x + skips[-i])  # additive skip, then patch expanding
            x = stage(x)
        x = self.final_expand(x).permute(0, 3, 1, 2)
        return self.head(x)
