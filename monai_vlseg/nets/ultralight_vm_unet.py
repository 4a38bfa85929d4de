"""UltraLight VM-UNet: a 0.049M-parameter UNet with parallel vision Mamba (PVM) layers, for skin lesions.

Wu, Liu, Liang, Chang, "UltraLight VM-UNet: Parallel Vision Mamba Significantly Reduces Parameters for Skin Lesion
Segmentation", Patterns 2025 (arXiv 2403.20035). Layout as in the official code (wurenkai/UltraLight-VM-UNet,
``models/UltraLight_VM_UNet.py``, ``c_list=(8, 16, 24, 32, 48, 64)``, ``split_att="fc"``, ``bridge=True``):

- encoder: three ``3x3 conv -> GroupNorm(4) -> 2x max-pool -> GELU`` stages, then ``PVM -> GN -> pool -> GELU``
  twice and a last ``PVM -> GELU`` (no norm, no pool); five down-samplings;
- the PVM layer (:class:`~monai_vlseg.nets.blocks.mamba.PVMLayer`, four parts): ``LN``, the channels split into four
  groups read by one shared Mamba (one forward scan) plus a scaled residual, the same ``LN`` again, ``Linear``;
- skip connections pass the SC attention bridge (:class:`SCAttBridge`: a spatial gate shared by the five levels,
  then channel gates from the concatenated pooled features) and are *added* to the decoder maps;
- decoder: ``PVM -> GN -> GELU`` (+ skip), two ``PVM -> GN -> 2x bilinear -> GELU`` (+ skip) and two
  ``3x3 conv -> GN -> 2x bilinear -> GELU`` (+ skip); a 1x1 conv and a last 2x bilinear up-sampling.

Differences to the official code, on purpose: the output is logits (the official forward ends in a sigmoid; the
bundles' losses and post-processing apply it), and the Mamba's time-step projection keeps Mamba's initialisation
(the official ``_init_weights`` also resets ``dt_proj``'s bias to 0 because it is an ``nn.Linear`` there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

from monai_vlseg.nets.blocks.mamba import PVMLayer

__all__ = ["SCAttBridge", "UltraLightVMUNet"]


class SCAttBridge(nn.Module):
    """Spatial-channel attention bridge over the skip maps (the official ``SC_Att_Bridge``).

    Spatial (SAB): ``t_i = t_i + t_i * sigmoid(conv7_d3([mean_c t_i, max_c t_i]))`` with one conv for all levels.
    Channel (CAB): the levels' global average pools are concatenated (sum(c_i) values), mixed by a 1D conv (k=3, no
    bias), and each level's gate is ``sigmoid(Linear_i(.))``; ``out_i = gate_i * t'_i + sab_i`` where ``t'_i`` is the
    SAB output and ``sab_i`` the spatially gated map before the residual.

    Args:
        channels: channels of each skip level.
        split_att: "fc" (a Linear per level, the paper's choice) or "conv" (a 1x1 Conv1d per level).
    """

    def __init__(self, channels: Sequence[int], split_att: str = "fc") -> None:
        super().__init__()
        if split_att not in ("fc", "conv"):
            raise ValueError(f"split_att must be 'fc' or 'conv', got '{split_att}'.")
        total = sum(channels)
        self.split_att = split_att
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=9, dilation=3), nn.Sigmoid())
        self.mix = nn.Conv1d(1, 1, kernel_size=3, padding=1, bias=False)
        self.gates = nn.ModuleList(
            nn.Linear(total, c) if split_att == "fc" else nn.Conv1d(total, c, 1) for c in channels
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        gated = []
        for t in feats:
            att = self.spatial(torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], 1))
            gated.append(att * t)
        feats = [g + t for g, t in zip(gated, feats)]
        pooled = torch.cat([t.mean((2, 3)) for t in feats], 1).unsqueeze(1)  # (B, 1, sum c_i)
        mixed = self.mix(pooled)
        outs = []
        for gate, g, t in zip(self.gates, gated, feats):
            a = gate(mixed.squeeze(1)) if self.split_att == "fc" else gate(mixed.transpose(1, 2)).squeeze(-1)
            outs.append(torch.sigmoid(a)[..., None, None] * t + g)
        return outs


class UltraLightVMUNet(nn.Module):
    """UltraLight VM-UNet (Wu et al., 2024).

    Args:
        in_channels: image channels (3: dermoscopy / endoscopy RGB).
        out_channels: classes (logits; 1 for a sigmoid binary mask).
        c_list: channels of the six encoder stages (8, 16, 24, 32, 48, 64): 0.049M parameters; the PVM stages'
            channels must be divisible by 4.
        split_att: channel-gate heads of the bridge, "fc" or "conv".
        bridge: use the SC attention bridge on the skips.
        d_state, d_conv, expand: Mamba settings of the PVM layers (16, 4, 2).

    Input sizes must be multiples of 32.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        c_list: Sequence[int] = (8, 16, 24, 32, 48, 64),
        split_att: str = "fc",
        bridge: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
    ) -> None:
        super().__init__()
        c = list(c_list)
        if len(c) != 6:
            raise ValueError(f"UltraLightVMUNet has six stages: c_list needs six entries, got {c}.")

        def pvm(cin: int, cout: int) -> PVMLayer:
            return PVMLayer(cin, cout, parts=4, d_state=d_state, d_conv=d_conv, expand=expand)

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, padding=1)

        self.encoders = nn.ModuleList(
            [conv(in_channels, c[0]), conv(c[0], c[1]), conv(c[1], c[2]), pvm(c[2], c[3]), pvm(c[3], c[4]),
             pvm(c[4], c[5])]
        )  # fmt: skip
        self.enc_norms = nn.ModuleList(nn.GroupNorm(4, ch) for ch in c[:5])
        self.bridge = SCAttBridge(c[:5], split_att) if bridge else None
        self.decoders = nn.ModuleList(
            [pvm(c[5], c[4]), pvm(c[4], c[3]), pvm(c[3], c[2]), conv(c[2], c[1]), conv(c[1], c[0])]
        )
        self.dec_norms = nn.ModuleList(nn.GroupNorm(4, ch) for ch in reversed(c[:5]))
        self.final = nn.Conv2d(c[0], out_channels, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official initialisation of Linear and Conv layers (trunc-normal 0.02; He-normal by fan-out)."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv1d):
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.out_channels // m.groups)))
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W) logits."""
        if x.ndim != 4:
            raise ValueError(f"UltraLightVMUNet expects a (B, C, H, W) tensor, got {tuple(x.shape)}.")
        if any(s % 32 for s in x.shape[2:]):
            raise ValueError(f"UltraLightVMUNet input sizes must be multiples of 32, got {tuple(x.shape[2:])}.")
        x = convert_to_tensor(x, track_meta=False)
        skips = []
        for enc, norm in zip(self.encoders[:5], self.enc_norms):  # eqs.: norm before pool, GELU after
            x = F.gelu(F.max_pool2d(norm(enc(x)), 2, 2))
            skips.append(x)
        x = F.gelu(self.encoders[5](x))
        if self.bridge is not None:
            skips = self.bridge(skips)
        for i, (dec, norm, skip) in enumerate(zip(self.decoders, self.dec_norms, reversed(skips))):
            x = norm(dec(x))
            x = F.gelu(x if i == 0 else self._up(x)) + skip
        return self._up(self.final(x))
