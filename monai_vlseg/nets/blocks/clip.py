# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""CLIP towers (HuggingFace ``CLIPModel`` / ``CLIPVisionModel``) with the inputs the networks need: images in [0, 1]
of any size and channel count, soft-masked text tokens, and frozen weights through which gradients still reach the
inputs. Used by TIFCMamba (image and text towers) and LCPDN (image tower only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

from monai_vlseg.utils import load_pretrained

__all__ = ["CLIP_MEAN", "CLIP_STD", "SMALL_CLIP", "SMALL_CLIP_VISION", "CLIPImageEncoder", "CLIPTowers"]

#: CLIP's image normalisation (RGB mean and standard deviation).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: offline default of both towers: a small random CLIP config (TIFCMamba trains it in its CLIP stage); vocab = the
#: default tokenizer's.
SMALL_CLIP: dict[str, Any] = {
    "projection_dim": 128,
    "text_config": {
        "vocab_size": 30522,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": 101,
        "eos_token_id": 102,
        "pad_token_id": 0,
    },
    "vision_config": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 8,
    },
}

#: offline default of the image tower alone: a small random CLIP vision transformer (224 px, 16 px patches).
SMALL_CLIP_VISION: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 16,
}


class CLIPTowers(nn.Module):
    """CLIP image tower E_I and, with ``text_tower``, text tower E_T.

    State-dict keys are those of the HuggingFace model under ``model.``.

    Args:
        model_name_or_path: a CLIP id (e.g. ``openai/clip-vit-base-patch16``) in the local HF cache or a local folder
            (:func:`monai_vlseg.utils.load_pretrained`, offline); ``None`` builds random towers from ``config``.
        config: for ``model_name_or_path=None``: ``CLIPConfig`` keyword arguments (default :data:`SMALL_CLIP`), or
            ``CLIPVisionConfig`` ones without the text tower (default :data:`SMALL_CLIP_VISION`).
        frozen: parameters without gradients, eval mode kept by ``train()``; gradients still flow to the inputs.
        text_tower: both towers (``CLIPModel``); False: the image tower alone (``CLIPVisionModel``).
        attn_implementation: HF attention backend ("eager" works with soft text masks everywhere); None: the
            transformers default.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: Mapping[str, Any] | None = None,
        frozen: bool = True,
        text_tower: bool = True,
        attn_implementation: str | None = "eager",
    ) -> None:
        super().__init__()
        self.text_tower = text_tower
        attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        if model_name_or_path not in (None, "", "random"):
            self.model = load_pretrained(CLIPModel if text_tower else CLIPVisionModel, model_name_or_path, **attn)
        else:
            cfg_cls = CLIPConfig if text_tower else CLIPVisionConfig
            cfg = cfg_cls(**dict(config or (SMALL_CLIP if text_tower else SMALL_CLIP_VISION)))
            if attn_implementation is not None:
                cfg._attn_implementation = attn_implementation
            self.model = CLIPModel(cfg) if text_tower else CLIPVisionModel(cfg)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.set_frozen(frozen)

    @property
    def vision_model(self) -> nn.Module:
        """The image transformer (``CLIPModel.vision_model``, or the ``CLIPVisionModel`` itself)."""
        return self.model.vision_model if self.text_tower else self.model

    @property
    def vision_config(self) -> CLIPVisionConfig:
        return self.model.config.vision_config if self.text_tower else self.model.config

    @property
    def hidden_size(self) -> int:
        """Width of the image tower's tokens (:meth:`image_tokens`)."""
        return int(self.vision_config.hidden_size)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def embed_dim(self) -> int:
        return int(self._text_model_config().projection_dim)

    @property
    def text_hidden(self) -> int:
        return int(self._text_model_config().text_config.hidden_size)

    @property
    def eos_token_id(self) -> int:
        return int(self._text_model_config().text_config.eos_token_id)

    def _text_model_config(self) -> CLIPConfig:
        if not self.text_tower:
            raise AttributeError("this CLIPTowers has no text tower (text_tower=False): no text or projected features.")
        return self.model.config

    def set_frozen(self, frozen: bool = True) -> CLIPTowers:
        """Freeze (e.g. segmentation stage) or unfreeze (CLIP stage); returns self for configs."""
        self.frozen = frozen
        self.model.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> CLIPTowers:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _pixels(self, image: torch.Tensor) -> torch.Tensor:
        """[0, 1] image (B, 1 or 3, H, W) -> CLIP input (3 channels, CLIP size, CLIP normalisation)."""
        if image.shape[1] == 1:
            image = image.expand(-1, 3, -1, -1)
        s = self.image_size
        if tuple(image.shape[-2:]) != (s, s):
            image = F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """image in [0, 1] -> the image tower's last hidden states (B, 1 + P, hidden_size): CLS and patch tokens."""
        return self.vision_model(pixel_values=self._pixels(image)).last_hidden_state

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image in [0, 1] -> (global embedding (B, E), patch embeddings (B, P, E)); not normalised."""
        self._text_model_config()
        hidden = self.vision_model.post_layernorm(self.image_tokens(image))
        proj = self.model.visual_projection(hidden)
        return proj[:, 0], proj[:, 1:]

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Context-free token embeddings (B, L, H) of the text tower (no position, no attention)."""
        self._text_model_config()
        return self.model.text_model.embeddings.token_embedding(input_ids)

    def special_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) bool: the start token (position 0) and the EOS tokens."""
        first = torch.arange(input_ids.shape[1], device=input_ids.device) == 0
        return first[None] | (input_ids == self.eos_token_id)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids -> (text embedding (B, E) at the EOS token, token hidden states (B, L, H)).

        ``token_weights`` (B, L) in [0, 1] soft-masks the token embeddings: a token with weight w enters as
        ``w * emb(token) + (1 - w) * emb(pad)``; differentiable in the weights.
        """
        self._text_model_config()
        tm = self.model.text_model
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emb = tm.embeddings.token_embedding(input_ids)
        if token_weights is not None:
            pad_id = self.model.config.text_config.pad_token_id or 0
            pad = tm.embeddings.token_embedding.weight[pad_id]
            w = token_weights.to(emb.dtype).unsqueeze(-1)
            emb = w * emb + (1 - w) * pad
        hidden = tm.embeddings(inputs_embeds=emb)
        n = input_ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
        allowed = causal[None] & attention_mask.bool()[:, None, :]
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=hidden.device)[None]  # no all-masked rows
        mask4d = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        mask4d = mask4d.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[:, None]
        hidden = tm.encoder(inputs_embeds=hidden, attention_mask=mask4d).last_hidden_state
        hidden = tm.final_layer_norm(hidden)
        eos = (input_ids == self.eos_token_id) & attention_mask.bool()
        # the EOS token; a truncated text without EOS uses its last real token
        last = attention_mask.long().sum(1).clamp(min=1) - 1
        pos = torch.where(eos.any(1), eos.int().argmax(1), last)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]
        return self.model.text_projection(pooled), hidden

    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        keyword_ids: torch.Tensor | None = None,
        keyword_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Contrastive training of the towers: (B, B) image-to-text logits ``scale * cos(E_I(x_i), E_T(t_j))``; with
        the keyword phrases too, (2, B, B): the descriptions' and the keywords' logits."""
        img = F.normalize(self.encode_image(image)[0], dim=-1)
        scale = self.model.logit_scale.exp().clamp(max=100)
        texts = [(input_ids, attention_mask)] + ([(keyword_ids, keyword_mask)] if keyword_ids is not None else [])
        logits = [scale * img @ F.normalize(self.encode_text(i, m)[0], dim=-1).t() for i, m in texts]
        return logits[0] if len(logits) == 1 else torch.stack(logits)


class CLIPImageEncoder(CLIPTowers):
    """The image tower alone with LCPDN's defaults (``config`` fields override :data:`SMALL_CLIP_VISION`, the
    transformers attention default); ``forward`` returns :meth:`CLIPTowers.image_tokens`, CPRFL's keys/values."""

    def __init__(
        self, model_name_or_path: str | None = None, config: Mapping[str, Any] | None = None, frozen: bool = True
    ) -> None:
        config = {**SMALL_CLIP_VISION, **(config or {})}
        super().__init__(model_name_or_path, config, frozen, text_tower=False, attn_implementation=None)

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """image: (B, 1 or 3, H, W) in [0, 1] -> (B, 1 + P, hidden_size); no autograd graph when frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.image_tokens(image)
