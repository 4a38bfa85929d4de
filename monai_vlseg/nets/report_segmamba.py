"""ReportSegMamba: SegMamba conditioned on a radiology report, for segmenting in a CT volume the findings its report
names (and leaving the ones it does not).

The image path is :class:`~monai_vlseg.nets.segmamba.SegMamba` (TSMamba encoder with tri-oriented Mamba, UNETR-style
decoder) unchanged. The report is encoded once by the frozen text encoder
(:class:`~monai_vlseg.nets.blocks.FrozenTextEncoder`; a learned empty prompt when there is none) and enters where the
network decides *which* lesion: C2Seg's KAN-gated bi-directional complementary attention
(:class:`~monai_vlseg.nets.blocks.C2SegFusion`, the same module as the 2D network's, on the flattened 3D grid) fuses it
into the two deepest encoder maps (1/8, 1/16: organ and side are coarse, global facts) and into the first two decoder
maps (1/16 -> 1/8, 1/8 -> 1/4), so the skip connections that carry every lesion's edges are gated by the text before
the full-resolution decoder draws them. TK-Mamba (text-driven 3D Mamba with KAN) conditions its decoder the same way;
this network reuses the project's KAN attention instead of its group-rational KAN.

``forward(image, input_ids, attention_mask)`` as the 2D text-guided networks; ``forward(image, text=(tokens, mask))``
takes the report already encoded (:meth:`encode_text`), which
:class:`monai_vlseg.engines.TextSlidingWindowInferer` does once per volume for all its windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.utils import convert_to_tensor

from monai_vlseg.nets.blocks.fusion import C2SegFusion
from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder, text_or_empty_prompt
from monai_vlseg.nets.segmamba import SEGMAMBA_NUM_SLICES, SegMamba

__all__ = ["ReportSegMamba"]


class ReportSegMamba(SegMamba):
    """SegMamba with report conditioning (see the module docstring).

    Args:
        in_channels, out_channels, depths, feature_size, hidden_size, num_slices, norm_name, res_block, d_state,
            d_conv, expand, gsc_fusion, use_checkpoint, slice_axis: :class:`~monai_vlseg.nets.segmamba.SegMamba`'s.
        text_encoder: text model of :class:`~monai_vlseg.nets.blocks.FrozenTextEncoder` ("default": the packaged
            offline MiniLM; a local folder; a cached HuggingFace id).
        text_config: config overrides that build a random-init text tower (tests).
        text_len: tokenizer max_length (the empty prompt's length).
        encoder_fusion: encoder levels (0-3: 1/2 ... 1/16) fused with the text.
        decoder_fusion: decoder outputs fused with the text (0: after ``decoder5`` at 1/8, 1: after ``decoder4`` at
            1/4).
        fusion, k_gate, num_heads, grid_size, spline_order: of :class:`~monai_vlseg.nets.blocks.C2SegFusion`.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_size: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        num_slices: Sequence[int | None] | None = SEGMAMBA_NUM_SLICES,
        norm_name: str | tuple = "instance",
        res_block: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        gsc_fusion: str = "add",
        use_checkpoint: bool = False,
        slice_axis: int = -1,
        text_encoder: str | None = "default",
        text_config: dict | None = None,
        text_len: int = 64,
        encoder_fusion: Sequence[int] = (2, 3),
        decoder_fusion: Sequence[int] = (0, 1),
        fusion: str = "bcam",
        k_gate: bool = True,
        num_heads: int = 1,
        grid_size: int = 5,
        spline_order: int = 3,
    ) -> None:
        super().__init__(
            in_channels, out_channels, depths, feature_size, hidden_size, num_slices, norm_name, res_block, 3,
            d_state, d_conv, expand, gsc_fusion, use_checkpoint, slice_axis,
        )  # fmt: skip
        if any(not 0 <= i <= 3 for i in encoder_fusion) or any(not 0 <= i <= 1 for i in decoder_fusion):
            raise ValueError(f"encoder_fusion levels are 0-3, decoder_fusion 0-1; got {encoder_fusion}, {decoder_fusion}")
        f = list(feature_size)
        self.text_len = int(text_len)
        self.text_encoder = FrozenTextEncoder(
            text_encoder, frozen=True, random_init=text_config is not None, config_overrides=text_config
        )
        text_dim = self.text_encoder.hidden_size
        self.empty_prompt = nn.Parameter(torch.randn(self.text_len, text_dim) * 0.02)
        kw = dict(fusion=fusion, k_gate=k_gate, num_heads=num_heads, spatial_dims=3, grid_size=grid_size,
                  spline_order=spline_order)  # fmt: skip
        self.encoder_fusion = tuple(sorted(set(encoder_fusion)))
        self.decoder_fusion = tuple(sorted(set(decoder_fusion)))
        self.text_enc = nn.ModuleDict({str(i): C2SegFusion(f[i], text_dim, **kw) for i in self.encoder_fusion})
        self.text_dec = nn.ModuleDict({str(i): C2SegFusion(f[3 - i], text_dim, **kw) for i in self.decoder_fusion})

    def encode_text(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text tokens (B, text_len, D) and their validity mask; the learned empty prompt (all valid) for rows
        without text (no ``input_ids``, or an all-zero ``attention_mask``)."""
        return text_or_empty_prompt(self.text_encoder, self.empty_prompt, input_ids, attention_mask, batch)

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B, in_channels, X, Y, Z) and the report -> (B, out_channels, X, Y, Z) logits."""
        x = convert_to_tensor(image, track_meta=False)
        if x.ndim != 5 or any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"ReportSegMamba expects (B, C, X, Y, Z) with sizes divisible by 16, got {tuple(x.shape)}.")
        b = x.shape[0]
        tokens, mask = self.encode_text(input_ids, attention_mask, b) if text is None else text
        if tokens.shape[0] != b:  # one report for every window of a volume
            tokens, mask = tokens.expand(b, -1, -1), mask.expand(b, -1)
        s = list(self.encoder(x))
        for i in self.encoder_fusion:
            s[i] = s[i] + self.text_enc[str(i)](s[i], tokens, mask)  # residual: the image path stays SegMamba's
        enc1, enc2, enc3, enc4 = self.encoder1(x), self.encoder2(s[0]), self.encoder3(s[1]), self.encoder4(s[2])
        dec = self.decoder5(self.encoder5(s[3]), enc4)
        if 0 in self.decoder_fusion:
            dec = dec + self.text_dec["0"](dec, tokens, mask)
        dec = self.decoder4(dec, enc3)
        if 1 in self.decoder_fusion:
            dec = dec + self.text_dec["1"](dec, tokens, mask)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        return self.out(self.decoder1(dec))
