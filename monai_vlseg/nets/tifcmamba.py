# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""TIFCMamba: text-supervised segmentation with a Mamba UNet and Bi-Dimension Fusion (BiDF).

Pan, Huang & Zheng, "MAMBA-Based Weakly Supervised Medical Image Segmentation with Cross-Modal Textual Information",
MICCAI 2025 (poster; no public code). Components, with the poster's notation:

- :class:`~monai_vlseg.nets.blocks.clip.CLIPTowers` — CLIP image encoder E_I and text encoder E_T (HuggingFace
  ``CLIPModel``); frozen during segmentation training. ``openai/clip-vit-base-patch16`` by id (local cache / folder
  only), or a small random CLIP config that the bundle first trains contrastively on the image-text pairs (no masks;
  see the bundle docs).
- :class:`BiDF` — Bi-Dimension Fusion: text expanded over the image grid and fused per patch, [image, image-text,
  text] concatenated on channels, then spatial fusion (2D selective scan, SS2D) and channel fusion (1D selective
  scan over the channel axis) give F_fuse.
- :class:`TIFCImageSegmenter` — Phi_I: VSS-block (VM-UNet SS2D) UNet whose decoder stages fuse the keyword W_T by BiDF.
- :class:`TIFCTextSegmenter` — Phi_T: a word-level mask M_T over the description's tokens given the keyword.
- :class:`TIFCMamba` — M_I = sigmoid(<e^I, e^T>) (the poster's dot product of the last decoder feature with the CLIP
  text feature); in text-supervised training it also builds I-hat / T-hat and returns their CLIP embeddings and the
  region-level (mask-pooled patch) embeddings for :class:`monai_vlseg.losses.text_supervised.TextSupervisedLoss`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from torch import nn

from monai_vlseg.nets.blocks.attention import MultiHeadAttention
from monai_vlseg.nets.blocks.clip import SMALL_CLIP, CLIPTowers
from monai_vlseg.nets.blocks.mamba import SS2D, MambaLayer, VSSBlock

__all__ = [
    "SMALL_CLIP",
    "TIFC_CONFIGS",
    "BiDF",
    "CLIPTowers",
    "TIFCImageSegmenter",
    "TIFCMamba",
    "TIFCOutput",
    "TIFCTextSegmenter",
    "TrivialPrior",
]

#: model sizes. The poster reports T/S/B without numbers; these follow VM-UNet's widths (B = VM-UNet's 96..768).
TIFC_CONFIGS: dict[str, dict[str, Any]] = {
    "T": {"dims": (48, 96, 192, 384), "depths": (1, 1, 2, 1)},
    "S": {"dims": (64, 128, 256, 512), "depths": (2, 2, 2, 2)},
    "B": {"dims": (96, 192, 384, 768), "depths": (2, 2, 2, 2)},
}
def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x: (B, L, C), mask (B, L) -> (B, C)."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class BiDF(nn.Module):
    """Bi-Dimension Fusion of an image feature map with text tokens (TIFCMamba's Mamba Fusion module).

    Stage 1: text tokens are projected to the image width; every patch attends to them (image-text feature) and the
    pooled text is expanded over the grid; [image, image-text, text] are concatenated on channels (3C).
    Stage 2: spatial fusion by a 2D selective scan (SS2D, residual) and channel fusion by a 1D selective scan along
    the channel axis (each channel a token described by its pooled ``channel_pool`` x ``channel_pool`` map; the scan
    output gates the channels). A 1x1 projection back to C added to the image feature gives F_fuse.

    Args:
        dim: image channels C.
        text_dim: text token width.
        spatial: use the 2D selective scan (ablation switch).
        channel: use the 1D channel selective scan (ablation switch).
        num_heads: heads of the patch-to-text attention.
        d_state: SSM state size.
        ss2d_expand: expansion of the SS2D inner width over 3C.
        channel_pool: side of the pooled map describing a channel token.
    """

    def __init__(
        self,
        dim: int,
        text_dim: int,
        spatial: bool = True,
        channel: bool = True,
        num_heads: int = 4,
        d_state: int = 16,
        ss2d_expand: int = 1,
        channel_pool: int = 4,
    ) -> None:
        super().__init__()
        self.spatial, self.channel, self.channel_pool = spatial, channel, channel_pool
        heads = math.gcd(num_heads, dim)
        self.text_proj = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(), nn.Linear(dim, dim)
        )
        self.img_norm = nn.LayerNorm(dim)
        self.cross = MultiHeadAttention(dim, heads)
        c3 = 3 * dim
        if spatial:
            self.spatial_norm = nn.LayerNorm(c3)
            self.ss2d = SS2D(c3, d_state=d_state, expand=ss2d_expand)
        if channel:
            p2 = channel_pool * channel_pool
            self.channel_norm = nn.LayerNorm(p2)
            self.channel_scan = MambaLayer(
                p2, d_state=d_state, directions=("forward", "backward")
            )
            self.channel_gate = nn.Linear(p2, 1)
        self.out = nn.Sequential(
            nn.Conv2d(c3, dim, 1),
            nn.GroupNorm(1, dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, C, H, W); text: (B, L, text_dim); text_mask: (B, L) -> F_fuse (B, C, H, W)."""
        b, c, h, w = x.shape
        t = self.text_proj(text)  # (B, L, C)
        tokens = self.img_norm(x.flatten(2).transpose(1, 2))  # (B, HW, C)
        if (
            text_mask is not None
        ):  # masked keys: keep padding out of the attention by zeroing its values
            t = t * text_mask.to(t.dtype).unsqueeze(-1)
        it = (
            self.cross(tokens, t, t).transpose(1, 2).reshape(b, c, h, w)
        )  # each patch sees the text
        tg = _masked_mean(t, text_mask)[:, :, None, None].expand(
            -1, -1, h, w
        )  # text expanded over the grid
        f = torch.cat([x, it, tg], dim=1)  # (B, 3C, H, W): image, image-text, text
        if self.spatial:  # spatial fusion: 2D selective scan
            fl = f.permute(0, 2, 3, 1)
            f = (fl + self.ss2d(self.spatial_norm(fl))).permute(0, 3, 1, 2)
        if self.channel:  # channel fusion: 1D selective scan over the 3C channel tokens
            p = F.adaptive_avg_pool2d(f, self.channel_pool).flatten(2)  # (B, 3C, p*p)
            s = self.channel_scan(self.channel_norm(p))
            f = (
                f * torch.sigmoid(self.channel_gate(s))[..., None]
            )  # (B, 3C, 1, 1) gates
        return x + self.out(f)


class TIFCImageSegmenter(nn.Module):
    """Phi_I: Mamba UNet of VSS blocks with BiDF keyword fusion in every decoder stage.

    Patch embedding (conv k = s = ``patch_size``), encoder stages of VSS blocks with 2x2 patch merging, decoder
    stages (2x up-projection + additive skip + VSS blocks + BiDF), and a final ``patch_size`` x transposed conv that
    returns the last decoder feature at the input resolution.

    Args:
        in_channels: image channels.
        dims: widths per stage; depths: VSS blocks per encoder stage (the decoder mirrors them).
        text_dim: keyword token width.
        out_dim: width of the returned feature.
        patch_size: stem stride.
        d_state: SSM state size.
        drop_path: stochastic depth rate (max).
        fusion_spatial, fusion_channel: BiDF ablation switches.
    """

    def __init__(
        self,
        in_channels: int = 3,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 2, 2),
        text_dim: int = 512,
        out_dim: int = 32,
        patch_size: int = 4,
        d_state: int = 16,
        drop_path: float = 0.1,
        fusion_spatial: bool = True,
        fusion_channel: bool = True,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(
                f"dims {tuple(dims)} and depths {tuple(depths)} must have the same length."
            )
        self.patch_size, self.num_stages = patch_size, len(dims)
        self.stem = nn.Conv2d(in_channels, dims[0], patch_size, patch_size)
        self.stem_norm = nn.LayerNorm(dims[0])
        dpr = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        k = 0
        for i, (d, n) in enumerate(zip(dims, depths)):
            self.encoder.append(
                nn.Sequential(*[VSSBlock(d, dpr[k + j], d_state) for j in range(n)])
            )
            k += n
            if i < len(dims) - 1:
                self.down.append(nn.Conv2d(d, dims[i + 1], 2, 2))
        self.fuse = nn.ModuleList(
            [
                BiDF(d, text_dim, fusion_spatial, fusion_channel, num_heads, d_state)
                for d in dims
            ]
        )
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(dims[i + 1], dims[i], 2, 2)
                for i in range(len(dims) - 1)
            ]
        )
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(
                    *[VSSBlock(dims[i], 0.0, d_state) for _ in range(depths[i])]
                )
                for i in range(len(dims) - 1)
            ]
        )
        self.head = nn.Sequential(
            nn.ConvTranspose2d(dims[0], out_dim, patch_size, patch_size),
            nn.GroupNorm(1, out_dim),
            nn.GELU(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1),
        )

    @staticmethod
    def _blocks(blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image (B, C, H, W) with H, W divisible by patch_size * 2**(stages-1); keyword tokens (B, L, text_dim)
        -> last decoder feature e^I (B, out_dim, H, W)."""
        f = self.patch_size * 2 ** (self.num_stages - 1)
        if image.shape[-1] % f or image.shape[-2] % f:
            raise ValueError(
                f"image size {tuple(image.shape[-2:])} must be divisible by {f}."
            )
        x = self.stem(image)
        x = self.stem_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        skips = []
        for i, blocks in enumerate(self.encoder):
            x = self._blocks(blocks, x)
            if i < self.num_stages - 1:
                skips.append(x)
                x = self.down[i](x)
        x = self.fuse[-1](x, text, text_mask)
        for i in reversed(range(self.num_stages - 1)):
            x = self.up[i](x) + skips[i]
            x = self.fuse[i](self._blocks(self.decoder[i], x), text, text_mask)
        return self.head(x)


class TIFCTextSegmenter(nn.Module):
    """Phi_T: word-level mask over the description tokens given the keyword.

    Each description token enters with its hidden state, the pooled keyword and three scores of how well it matches
    the keyword: the cosine to the pooled keyword, and the best cosine to any keyword token of the contextual hidden
    states and of the context-free word embeddings (a soft lexical match: the same or a synonymous word scores high
    wherever it stands; CLIP's causal hidden states of one word differ between description and keyword). A
    bidirectional Mamba layer mixes the tokens and a linear head classifies each; padding tokens get mask 0.

    Args:
        text_dim: token width; hidden: inner width; d_state: SSM state size; num_layers: Mamba layers.
    """

    def __init__(
        self,
        text_dim: int = 512,
        hidden: int = 64,
        d_state: int = 16,
        num_layers: int = 1,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * text_dim + 3, hidden)
        self.layers = nn.ModuleList(
            [
                MambaLayer(hidden, d_state=d_state, directions=("forward", "backward"))
                for _ in range(num_layers)
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(num_layers)])
        self.head = nn.Linear(hidden, 1)

    @staticmethod
    def _best_match(a: torch.Tensor, b: torch.Tensor, b_mask: torch.Tensor) -> torch.Tensor:
        """max_j cos(a_i, b_j) over the valid b_j: (B, L, D), (B, K, D), (B, K) -> (B, L, 1); -1 without any."""
        cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(1, 2)
        return cos.masked_fill(~b_mask.bool()[:, None], -1.0).amax(-1, keepdim=True)

    def forward(
        self,
        tokens: torch.Tensor,
        token_mask: torch.Tensor,
        keyword: torch.Tensor,
        keyword_mask: torch.Tensor,
        words: torch.Tensor,
        keyword_words: torch.Tensor,
    ) -> torch.Tensor:
        """Description hidden states ``tokens`` / word embeddings ``words`` (B, L, D) and ``token_mask`` (B, L);
        the keyword's ``keyword`` / ``keyword_words`` (B, K, D) and ``keyword_mask`` (B, K) over its content tokens
        -> M_T logits (B, L) (padding: -1e4)."""
        pooled = _masked_mean(keyword, keyword_mask)
        sim = F.cosine_similarity(tokens, pooled[:, None], dim=-1).unsqueeze(-1)
        feats = [
            tokens,
            pooled[:, None].expand_as(tokens),
            sim,
            self._best_match(tokens, keyword, keyword_mask),
            self._best_match(words, keyword_words, keyword_mask),
        ]
        x = self.proj(torch.cat(feats, dim=-1))
        for norm, layer in zip(self.norms, self.layers):
            x = x + layer(norm(x))
        logits = self.head(x).squeeze(-1)
        return logits.masked_fill(~token_mask.bool(), -1e4)


@dataclass(eq=False)
class TIFCOutput(Mapping):
    """What :class:`TIFCMamba` returns in text-supervised training, read by
    :class:`monai_vlseg.losses.text_supervised.TextSupervisedLoss` by attribute. B: batch, C: image channels,
    H x W: image size, L: description tokens, E: CLIP embedding width, P: CLIP patches.

    It is also a read-only mapping of its field names, so MONAI's engines handle it like the dict a network may
    return (``decollate_batch`` splits it into one dict per image, ``from_engine`` reads keys).
    """

    #: (B, 1, H, W) mask logits of M_I (what eval mode returns alone).
    pred: torch.Tensor
    #: (B, C, H, W) the input image in [0, 1] (the colour-affinity term reads it).
    image: torch.Tensor
    #: (B, 1, H, W) M_I = sigmoid(pred).
    mask_image: torch.Tensor
    #: (B, L) M_T of Phi_T in [0, 1] (0 on padding).
    mask_text: torch.Tensor
    #: (B, E) e^T: CLIP embedding of the description (or the learned empty prompt).
    text: torch.Tensor
    #: (B, E) CLIP image embedding of I-hat (image under M_I, background filled).
    fg_image: torch.Tensor
    #: (B, E) CLIP image embedding of the complement image (image under 1 - M_I).
    bg_image: torch.Tensor
    #: (B, E) CLIP text embedding of T-hat (tokens weighted by M_T).
    fg_text: torch.Tensor
    #: (B, E) CLIP patch embeddings of the full image pooled inside M_I.
    fg_region: torch.Tensor
    #: (B, E) the same pooled outside M_I.
    bg_region: torch.Tensor
    #: (B, P) cosine of each CLIP patch embedding with e^T (CLIP's region-text map, no gradient).
    region_sim: torch.Tensor
    #: (B, L) 1 where a description token is one of the keyword's content tokens (the weak target of Phi_T).
    keyword_tokens: torch.Tensor
    #: (B, L) 1 on the description's content tokens (not padding, start or end).
    token_mask: torch.Tensor

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class TIFCMamba(nn.Module):
    """TIFCMamba: text-supervised segmentation (image segmenter Phi_I, text segmenter Phi_T, CLIP towers).

    ``forward(image, input_ids, attention_mask, keyword_ids, keyword_mask)`` returns the mask logits M_I
    (B, 1, H, W) in eval mode (and in training when ``text_supervised`` is False, e.g. the fully supervised
    comparison). In text-supervised training it returns a :class:`TIFCOutput` (the logits as ``pred``, the masks
    M_I and M_T, and the CLIP embeddings of I-hat, T-hat and the mask-pooled regions) for
    :class:`monai_vlseg.losses.text_supervised.TextSupervisedLoss`. Without text (``input_ids`` None) a learned empty prompt replaces e^T and the keyword tokens.

    Args:
        in_channels: image channels.
        size: ``"T"``, ``"S"`` or ``"B"`` (:data:`TIFC_CONFIGS`); ``dims``/``depths`` override it.
        clip_model: CLIP id/folder or None (random :data:`SMALL_CLIP`-like config, ``clip_config``).
        clip_config: CLIPConfig kwargs for ``clip_model=None``.
        text_supervised: return a :class:`TIFCOutput` in training (False: logits, for mask supervision).
        feature_dim: width of the last decoder feature before its projection to the CLIP embedding.
        fusion_spatial, fusion_channel: BiDF ablation switches (the poster's fusion table).
        text_hidden: Phi_T inner width.
        drop_path, d_state, patch_size: Phi_I settings.
        fill: background fill of I-hat: ``"uniform"`` (random pixels) or ``"shuffle"`` (pixels of another image).
    """

    def __init__(
        self,
        in_channels: int = 3,
        size: str = "B",
        dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        clip_model: str | None = None,
        clip_config: Mapping[str, Any] | None = None,
        text_supervised: bool = True,
        feature_dim: int = 32,
        fusion_spatial: bool = True,
        fusion_channel: bool = True,
        text_hidden: int = 64,
        drop_path: float = 0.1,
        d_state: int = 16,
        patch_size: int = 4,
        fill: str = "uniform",
    ) -> None:
        super().__init__()
        if size not in TIFC_CONFIGS:
            raise ValueError(
                f"size must be one of {sorted(TIFC_CONFIGS)}, got {size!r}"
            )
        for name, flag in (
            ("fusion_spatial", fusion_spatial),
            ("fusion_channel", fusion_channel),
            ("text_supervised", text_supervised),
        ):
            if not isinstance(
                flag, bool
            ):  # a command-line "false" arrives as a (truthy) string
                raise TypeError(
                    f"{name} must be a boolean (on the command line: True/False), got {flag!r}"
                )
        if fill not in ("uniform", "shuffle"):
            raise ValueError(f"fill must be 'uniform' or 'shuffle', got {fill!r}")
        dims = tuple(dims or TIFC_CONFIGS[size]["dims"])
        depths = tuple(depths or TIFC_CONFIGS[size]["depths"])
        self.text_supervised, self.fill, self.in_channels = (
            text_supervised,
            fill,
            in_channels,
        )
        self.clip = CLIPTowers(clip_model, clip_config, frozen=True)
        th, e = self.clip.text_hidden, self.clip.embed_dim
        self.image_segmenter = TIFCImageSegmenter(
            in_channels,
            dims,
            depths,
            th,
            feature_dim,
            patch_size,
            d_state,
            drop_path,
            fusion_spatial,
            fusion_channel,
        )
        self.text_segmenter = TIFCTextSegmenter(th, text_hidden, d_state)
        self.image_proj = nn.Conv2d(feature_dim, e, 1)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))
        self.empty_text = nn.Parameter(torch.zeros(e))
        self.empty_tokens = nn.Parameter(torch.zeros(1, 1, th))
        nn.init.normal_(self.empty_text, std=0.02)
        nn.init.normal_(self.empty_tokens, std=0.02)

    def segmenter_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of Phi_I, Phi_T and the mask head (the CLIP towers excluded)."""
        return [
            p
            for n, p in self.named_parameters()
            if not n.startswith("clip.") and p.requires_grad
        ]

    def _text(self, input_ids, attention_mask, keyword_ids, keyword_mask, batch: int):
        if input_ids is None:
            e_t = self.empty_text[None].expand(batch, -1)
            kw = self.empty_tokens.expand(batch, -1, -1)
            return e_t, None, kw, None, None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if keyword_ids is None:
            keyword_ids, keyword_mask = input_ids, attention_mask
        elif keyword_mask is None:
            keyword_mask = torch.ones_like(keyword_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.clip.frozen):
            e_t, tok = self.clip.encode_text(input_ids, attention_mask)
            _, kw = self.clip.encode_text(keyword_ids, keyword_mask)
        has_text = attention_mask.sum(1) > 0
        e_t = torch.where(has_text[:, None], e_t, self.empty_text[None].to(e_t.dtype))
        kw_has = keyword_mask.sum(1) > 0
        kw = torch.where(kw_has[:, None, None], kw, self.empty_tokens.to(kw.dtype))
        return e_t, tok, kw, keyword_mask, attention_mask

    def _text_mask(self, input_ids, attn, tok, keyword_ids, kw_mask, kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Phi_T logits (B, L) and the keyword-token membership (B, L) bool of each description content token (its
        id is one of the keyword's content tokens: the weak target of ``L_kw``); no keyword: the description's own."""
        kw_ids = input_ids if keyword_ids is None else keyword_ids
        kw_content = kw_mask.bool() & ~self.clip.special_tokens(kw_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.clip.frozen):
            words, kw_words = self.clip.word_embeddings(input_ids), self.clip.word_embeddings(kw_ids)
        logits = self.text_segmenter(tok, attn, kw, kw_content, words, kw_words)
        member = ((input_ids[:, :, None] == kw_ids[:, None, :]) & kw_content[:, None, :]).any(-1)
        return logits, member & attn.bool() & ~self.clip.special_tokens(input_ids)

    def text_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        keyword_ids: torch.Tensor | None = None,
        keyword_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M_T in [0, 1] (B, L) of Phi_T (0 on padding) and the keyword-token membership (B, L) bool, e.g. to see
        which words of a description the model keeps."""
        _, tok, kw, kw_mask, attn = self._text(input_ids, attention_mask, keyword_ids, keyword_mask, len(input_ids))
        logits, member = self._text_mask(input_ids, attn, tok, keyword_ids, kw_mask, kw)
        return torch.sigmoid(logits), member

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keyword_ids: torch.Tensor | None = None,
        keyword_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | TIFCOutput:
        """image (B, C, H, W) in [0, 1], description and keyword tokens (B, L) -> mask logits (B, 1, H, W), or a
        :class:`TIFCOutput` in text-supervised training."""
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} image channels, got {image.shape[1]}."
            )
        image = convert_to_tensor(image, track_meta=False)  # MONAI engines pass MetaTensors; keep the net plain
        b = image.shape[0]
        e_t, tok, kw, kw_mask, attn = self._text(
            input_ids, attention_mask, keyword_ids, keyword_mask, b
        )
        feat = self.image_segmenter(image, kw, kw_mask)  # e^I: last decoder feature
        e_i = F.normalize(self.image_proj(feat), dim=1)
        cos = torch.einsum("bchw,bc->bhw", e_i, F.normalize(e_t, dim=-1)).unsqueeze(1)
        logits = (
            self.logit_scale.exp() * cos + self.logit_bias
        )  # M_I = sigmoid(e^I . e^T)
        if not (self.training and self.text_supervised):
            return logits
        if input_ids is None:
            raise ValueError(
                "text-supervised training needs the description tokens (input_ids)."
            )
        m_i = torch.sigmoid(logits)
        # image under M_I, background filled randomly (I-hat), and the complement image
        if self.fill == "uniform":
            noise = torch.rand_like(image)
        else:
            noise = image.roll(1, dims=0)
        fg_img = m_i * image + (1 - m_i) * noise
        bg_img = (1 - m_i) * image + m_i * noise
        fg_image, _ = self.clip.encode_image(fg_img)
        bg_image, _ = self.clip.encode_image(bg_img)
        with torch.no_grad():
            _, patches = self.clip.encode_image(
                image
            )  # (B, P, E) region features of the full image
        g = round(patches.shape[1] ** 0.5)
        m_p = F.adaptive_avg_pool2d(m_i, g).flatten(1)  # (B, P)
        # CLIP's own region-text map (Image-Text Mutual Alignment target): cos(patch_j, e^T), no gradient
        region_sim = torch.einsum(
            "bpe,be->bp",
            F.normalize(patches, dim=-1),
            F.normalize(e_t.detach(), dim=-1),
        )
        fg_region = (m_p.unsqueeze(-1) * patches).sum(1) / m_p.sum(
            1, keepdim=True
        ).clamp(min=1e-6)
        bg_region = ((1 - m_p).unsqueeze(-1) * patches).sum(1) / (1 - m_p).sum(
            1, keepdim=True
        ).clamp(min=1e-6)
        # text segmenter: M_T over the description tokens given the keyword, then T-hat
        mt_logits, kw_tokens = self._text_mask(input_ids, attn, tok, keyword_ids, kw_mask, kw)
        m_t = torch.sigmoid(mt_logits)
        special = self.clip.special_tokens(input_ids)
        weights = torch.where(special, torch.ones_like(m_t), m_t) * attn
        fg_text, _ = self.clip.encode_text(input_ids, attn, token_weights=weights)
        return TIFCOutput(
            pred=logits,
            image=image,
            mask_image=m_i,
            mask_text=m_t,
            text=e_t,
            fg_image=fg_image,
            bg_image=bg_image,
            fg_text=fg_text,
            fg_region=fg_region,
            bg_region=bg_region,
            region_sim=region_sim,
            keyword_tokens=kw_tokens.to(m_t.dtype),
            token_mask=(attn.bool() & ~special).to(m_t.dtype),
        )


class TrivialPrior(nn.Module):
    """Image-independent baseline masks for the report: ``"whole"`` image or a ``"disc"`` centred in the image of
    radius ``radius`` x the image side. Returns logits (+10 inside, -10 outside); ignores every other input."""

    def __init__(self, kind: str = "disc", radius: float = 0.2) -> None:
        super().__init__()
        if kind not in ("whole", "disc"):
            raise ValueError(f"kind must be 'whole' or 'disc', got {kind!r}")
        self.kind, self.radius = kind, radius

    def forward(self, image: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        b, _, h, w = image.shape
        if self.kind == "whole":
            inside = torch.ones(h, w, dtype=torch.bool, device=image.device)
        else:
            yy = (torch.arange(h, device=image.device) + 0.5) / h - 0.5
            xx = (torch.arange(w, device=image.device) + 0.5) / w - 0.5
            inside = yy[:, None] ** 2 + xx[None] ** 2 <= self.radius**2
        return (
            torch.where(inside, 10.0, -10.0).to(image.dtype).expand(b, 1, h, w).clone()
        )
