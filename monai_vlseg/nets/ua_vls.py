"""UA-VLS: uncertainty-aware vision-language segmentation.

Das et al., "Uncertainty-Aware Vision-Language Segmentation for Medical Imaging" (UA-VLS). Equation numbers below
are the paper's. Where the paper leaves a detail open, the official code (arya-domain/UA-VLS) decides; where the two
differ, the paper is followed unless ``residual="official"`` is asked for (see bundles/ua_vls/docs/README.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import SubpixelUpsample, UnetOutBlock, UnetrUpBlock
from monai.utils import convert_to_tensor
from transformers import ConvNextConfig, ConvNextModel

from monai_vlseg.nets.blocks.attention import MultiHeadAttention, sinusoidal_positions
from monai_vlseg.nets.blocks.mamba import SelectiveSSM
from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder, text_or_empty_prompt
from monai_vlseg.utils import load_pretrained

__all__ = ["SSMix", "MoDAB", "UAVLS", "CONVNEXT_TINY"]

#: ConvNeXt-Tiny (facebook/convnext-tiny-224) architecture, used with random weights when no checkpoint is given.
CONVNEXT_TINY = {"hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 9, 3], "num_channels": 3}


class SSMix(nn.Module):
    """State Space Mixer over text tokens (eqs. 13-19).

    ``T_H = Linear(T')`` (13), split into P, Q (14), ``tanh(DWConv1d)`` on both (15), ``[dt, B, C] = Linear(P~)``
    (16), ``softplus(dt + bias)`` (17), selective scan with skip E = D (18), ``Linear_tokens(Concat(SCAN, Q~))``
    (19) which also maps ``in_tokens`` to ``out_tokens`` tokens. As in the official code the projection is
    ``d_model -> expand * d_model`` and P, Q take half each, so the concatenation is ``expand * d_model`` wide.

    Args:
        d_model: token width.
        in_tokens: text length N (the tokenizer's max_length).
        out_tokens: tokens after the mixer.
        d_state: SSM state size (16); d_conv: depthwise kernel (4); expand: gamma (1).
    """

    def __init__(
        self, d_model: int, in_tokens: int, out_tokens: int, d_state: int = 16, d_conv: int = 4, expand: int = 1
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        if self.d_inner % 2:
            raise ValueError(f"SSMix needs an even expand * d_model, got {self.d_inner}.")
        half = self.d_inner // 2
        self.in_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.conv_p = nn.Conv1d(half, half, d_conv, groups=half)
        self.conv_q = nn.Conv1d(half, half, d_conv, groups=half)
        self.same_pad = ((d_conv - 1) // 2, d_conv - 1 - (d_conv - 1) // 2)  # PyTorch's 'same' split
        self.ssm = SelectiveSSM(half, d_state, dt_rank="auto", d_model=d_model)
        self.token_proj = nn.Linear(in_tokens, out_tokens, bias=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B, N_in, d_model) -> (B, N_out, expand * d_model)."""
        p, q = self.in_proj(t).transpose(1, 2).chunk(2, dim=1)  # (13, 14)
        p = torch.tanh(self.conv_p(F.pad(p, self.same_pad)))  # (15)
        q = torch.tanh(self.conv_q(F.pad(q, self.same_pad)))
        scan = self.ssm(p.unsqueeze(1))[:, 0]  # (16-18)
        return self.token_proj(torch.cat([scan, q], dim=1)).transpose(1, 2)  # (19)


class MoDAB(nn.Module):
    """Modality Decoding Attention Block (eqs. 3-12).

    Text: ``T_SSMix = GELU(SSMix(LeakyReLU(Linear(T'))))`` (3). Vision: ``X' = SPE(LN(X))`` (4), self-attention (5-7),
    ``X_SA = X' + LN(SelfAttn(X'))`` (8); cross-attention with ``Q = SPE(LN(X_SA))``, ``K = SPE(T_SSMix)``,
    ``V = T_SSMix`` (9-11); ``F = X + alpha * LN(X_CA)`` (12).

    Args:
        channels: visual width C_i.
        text_dim: width of the text encoder's tokens D.
        in_tokens: text length; out_tokens: tokens kept after SSMix (24 / 12 / 9 in the official decoder).
        num_heads: heads of both attentions (4).
        alpha_init: initial alpha (1.421, the official code's value).
        residual: "paper" (eqs. 8 and 12 as written) or "official" (the official code: ``X_SA = X + LN(SA(X'))``
            and ``F = X_SA + alpha * LN(X_CA)``).
        attn_drop, proj_drop: self-attention dropouts (0.1 in the official code).
    """

    def __init__(
        self,
        channels: int,
        text_dim: int,
        in_tokens: int = 24,
        out_tokens: int = 24,
        num_heads: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 1,
        alpha_init: float = 1.421,
        residual: str = "paper",
        attn_drop: float = 0.1,
        proj_drop: float = 0.1,
    ) -> None:
        super().__init__()
        if residual not in ("paper", "official"):
            raise ValueError(f"residual must be 'paper' or 'official', got '{residual}'.")
        self.residual = residual
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, channels),
            nn.LeakyReLU(),
            SSMix(channels, in_tokens, out_tokens, d_state, d_conv, expand),
            nn.GELU(),
        )
        text_width = expand * channels
        if text_width != channels:
            self.text_proj.append(nn.Linear(text_width, channels))
        self.norm_x = nn.LayerNorm(channels)
        self.norm_sa_in = nn.LayerNorm(channels)
        self.norm_sa_out = nn.LayerNorm(channels)
        self.norm_ca_out = nn.LayerNorm(channels)
        self.self_attn = MultiHeadAttention(channels, num_heads, qk_norm=True, attn_drop=attn_drop, proj_drop=proj_drop)
        self.cross_attn = MultiHeadAttention(channels, num_heads)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x: (B, L, C) visual tokens; text: (B, N, D) text tokens -> (B, L, C)."""
        t = self.text_proj(text)  # (3)
        pos_x = sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        x_p = self.norm_x(x) + pos_x  # (4)
        x_sa = (x_p if self.residual == "paper" else x) + self.norm_sa_out(self.self_attn(x_p))  # (5-8)
        q = self.norm_sa_in(x_sa) + pos_x  # (9)
        k = t + sinusoidal_positions(t.shape[1], t.shape[2], t.device, t.dtype)  # (10)
        x_ca = self.cross_attn(q, k, t)  # (11)
        return (x if self.residual == "paper" else x_sa) + self.alpha * self.norm_ca_out(x_ca)  # (12)


class _DecoderStage(nn.Module):
    """MoDAB on the deep tokens, then MONAI's UnetrUpBlock: 2x2 transposed conv, concat with the skip, two 3x3
    conv + norm + LeakyReLU (the paper's TransConv + CRB, eqs. 20-21)."""

    def __init__(self, in_channels: int, out_channels: int, text_dim: int, text_len: int, out_tokens: int, **kw):
        super().__init__()
        self.modab = MoDAB(in_channels, text_dim, text_len, out_tokens, **kw.pop("modab"))
        self.up = UnetrUpBlock(2, in_channels, out_channels, 3, 2, norm_name=kw.pop("norm_name"))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.modab(x.flatten(2).transpose(1, 2), text).transpose(1, 2).reshape(b, c, h, w)
        return self.up(x, skip)


class UAVLS(nn.Module):
    """UA-VLS network: ConvNeXt encoder, frozen text encoder, three MoDAB decoder stages and a sub-pixel head.

    ``forward(image, input_ids=None, attention_mask=None)`` returns logits (B, out_channels, H, W). Without text (or
    for rows whose attention mask is all zero) a learned empty prompt stands for the text features: the paper's
    "inference without text" setting, and what ``monai.bundle verify_net_in_out`` feeds.

    Args:
        in_channels: image channels; a grey image is repeated to the encoder's 3 channels (1 or 3).
        out_channels: output channels (1 for a binary mask with sigmoid).
        vision_encoder: ConvNeXt HuggingFace id or local folder (e.g. "facebook/convnext-tiny-224"); None builds
            the architecture given by ``vision_config`` with random weights (the offline default).
        vision_config: ConvNextConfig fields for the random-init encoder (default :data:`CONVNEXT_TINY`).
        text_encoder: text model id or local folder for :class:`FrozenTextEncoder` (None: the packaged offline
            default; the paper uses "microsoft/BiomedVLP-CXR-BERT-specialized" with trust_remote_code).
        text_config: config overrides for a random-init text encoder (tests); implies random text weights.
        text_trust_remote_code: passed to the text model loader (CXR-BERT needs it).
        text_len: tokenizer max_length (24).
        decoder_text_lens: text tokens kept by SSMix in the three decoder stages (24, 12, 9).
        num_heads: attention heads (4).
        head_channels: channels of the sub-pixel head (24).
        residual: MoDAB residual form, "paper" or "official".
        norm_name: decoder normalisation (MONAI name, "batch").
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        vision_encoder: str | None = None,
        vision_config: dict | None = None,
        text_encoder: str | None = None,
        text_config: dict | None = None,
        text_trust_remote_code: bool = False,
        text_len: int = 24,
        decoder_text_lens: Sequence[int] = (24, 12, 9),
        num_heads: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        ssmix_expand: int = 1,
        alpha_init: float = 1.421,
        head_channels: int = 24,
        residual: str = "paper",
        norm_name: str = "batch",
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey, repeated to RGB) or 3, got {in_channels}.")
        self.in_channels = in_channels
        if vision_encoder:
            self.vision = load_pretrained(ConvNextModel, vision_encoder)
        else:
            self.vision = ConvNextModel(ConvNextConfig(**{**CONVNEXT_TINY, **(vision_config or {})}))
        dims = list(self.vision.config.hidden_sizes)
        if len(dims) != 4 or len(decoder_text_lens) != 3:
            raise ValueError("UA-VLS needs a 4-stage encoder and 3 decoder text lengths.")
        self.text_encoder = FrozenTextEncoder(
            text_encoder,
            trust_remote_code=text_trust_remote_code,
            random_init=text_config is not None,
            config_overrides=text_config,
        )
        text_dim = self.text_encoder.hidden_size
        self.text_len = text_len
        self.empty_prompt = nn.Parameter(torch.randn(text_len, text_dim) * 0.02)
        modab = dict(
            num_heads=num_heads, d_state=d_state, d_conv=d_conv, expand=ssmix_expand, alpha_init=alpha_init,
            residual=residual,
        )  # fmt: skip
        self.decoder = nn.ModuleList(
            _DecoderStage(dims[3 - i], dims[2 - i], text_dim, text_len, n, modab=dict(modab), norm_name=norm_name)
            for i, n in enumerate(decoder_text_lens)
        )
        # Sub-pixel network: conv, pixel shuffle x4, pad + AvgPool (eqs. 22-24), then a 1x1 conv (25).
        self.head = nn.Sequential(
            SubpixelUpsample(2, dims[0], head_channels, scale_factor=4),
            UnetOutBlock(2, head_channels, out_channels),
        )

    def encode_text(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int):
        """Frozen text features (eq. 2), (B, text_len, D); the learned empty prompt where there is no text."""
        return text_or_empty_prompt(self.text_encoder, self.empty_prompt, input_ids, attention_mask, batch)[0]

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False)  # MONAI engines pass MetaTensors; keep the net plain
        if image.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels}-channel images, got shape {tuple(image.shape)}.")
        h, w = image.shape[-2:]
        if h % 32 or w % 32:
            raise ValueError(f"UA-VLS needs image sizes divisible by 32, got {h}x{w}.")
        x = image.expand(-1, 3, -1, -1) if self.in_channels == 1 else image
        feats = self.vision(x, output_hidden_states=True).hidden_states[1:]  # four stages (eq. 1)
        text = self.encode_text(input_ids, attention_mask, image.shape[0])
        y = feats[3]
        for i, stage in enumerate(self.decoder):
            y = stage(y, feats[2 - i], text)
        return self.head(y)
