"""C2Seg: consistency-enhanced two-stage text-guided segmentation.

"Towards Text-Mask Consistency in Medical Image Segmentation" (ICLR 2026, no public code). Stage 1 aligns the image
encoder with a frozen text tower by cluster-aware contrastive learning (:class:`C2SegPretrainNet` +
:class:`monai_vlseg.losses.cacl.CaCLLoss`); stage 2 fuses image and text with the Bi-directional Complementary
Attention Module (:class:`BCAM`) and KAN gating (:class:`KGate`) and decodes a mask (:class:`C2Seg`).
The paper gives no equation numbers in the text we follow; comments name the quantity (A, F_v, F_l, g) instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from monai.utils import convert_to_tensor

from monai_vlseg.errors import InputError
from monai_vlseg.nets.blocks.fusion import BCAM, C2SegFusion, DualAttention, KGate
from monai_vlseg.nets.blocks.kan import OverlapPatchEmbed, TokenizedKANBlock
from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder, text_or_empty_prompt
from monai_vlseg.utils import load_checkpoint

__all__ = [
    "CLIP_TEXT_MODEL",
    "C2SegEncoder",
    "KGate",
    "BCAM",
    "DualAttention",
    "C2SegFusion",
    "C2Seg",
    "C2SegPretrainNet",
    "STAGE1_COMMAND",
    "load_encoder_checkpoint",
]

logger = logging.getLogger("monai_vlseg")

#: the paper's text tower (the text half of CLIP ViT-B/32; 512-d tokens).
CLIP_TEXT_MODEL = "openai/clip-vit-base-patch32"
#: the stage-1 run that writes ``<ckpt_dir>/encoder.pt``, what stage 2 (train.json) loads.
STAGE1_COMMAND = "python -m monai.bundle run pretraining --config_file bundles/c2seg/configs/pretrain.json"


class C2SegEncoder(nn.Module):
    """Hybrid CNN + KAN image encoder: five stages, each halving the resolution after the first.

    Convolutional stages are MONAI's ``TwoConv`` (stage 1) and ``Down`` (max-pool + two 3x3 conv); KAN stages are a
    U-KAN overlapping patch embedding (3x3 conv, stride 2) followed by a :class:`TokenizedKANBlock`. The paper's
    best configuration is CNN for the first three stages and KAN for the last two (``kan_stages=2``).

    Args:
        in_channels: image channels.
        features: widths of the five stages.
        kan_stages: how many of the last stages are KAN stages (0-4).
        kan_layers: KAN + depthwise-conv units per KAN block.
        act, norm: MONAI activation / normalisation of the convolutional stages.
        kan_kwargs: :class:`KANLinear` arguments.

    ``forward(x)`` returns the five feature maps, finest first.
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        kan_stages: int = 2,
        kan_layers: int = 1,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = "batch",
        kan_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if len(features) != 5:
            raise ValueError(f"C2SegEncoder needs five stage widths, got {list(features)}.")
        if not 0 <= kan_stages <= 4:
            raise ValueError(f"kan_stages must be in 0..4 (the first stage is convolutional), got {kan_stages}.")
        self.features, self.kan_stages = tuple(features), kan_stages
        stages: list[nn.Module] = [TwoConv(2, in_channels, features[0], act, norm, True)]
        for i in range(1, 5):
            if i >= 5 - kan_stages:
                stages.append(
                    nn.Sequential(
                        OverlapPatchEmbed(features[i - 1], features[i]),
                        TokenizedKANBlock(features[i], kan_layers, **(kan_kwargs or {})),
                    )
                )
            else:
                stages.append(Down(2, features[i - 1], features[i], act, norm, True))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class C2Seg(nn.Module):
    """
    C2Seg network: hybrid CNN + KAN encoder, frozen text encoder, BCAM + K-Gate fusion at the deepest levels, and a
    U-Net decoder (MONAI ``UpCat``: transposed conv, concatenation with the skip, two 3x3 convs) with a 1x1 head.

    ``forward(image, input_ids=None, attention_mask=None)`` returns logits (B, out_channels, H, W). Without text (or
    rows whose attention mask is all zero) a learned empty prompt stands for the text tokens.

    Ablation switches (the paper's table): ``fusion="none"`` (a: vision only), ``"duala"`` (b), ``"bcam"`` with
    ``k_gate=False`` (c), ``"bcam"`` with ``k_gate=True`` (d, and e/f after stage-1 pretraining with hard / CaCL
    labels). ``kan_stages`` varies the encoder (0: all CNN; 2: the paper's best).

    Args:
        in_channels: image channels; out_channels: output channels (1 for a sigmoid mask).
        features: widths of the five encoder stages (the decoder mirrors them).
        kan_stages, kan_layers: see :class:`C2SegEncoder`.
        text_encoder: text model for :class:`~monai_vlseg.nets.blocks.FrozenTextEncoder`: "default" (the packaged offline encoder), a local
            folder or a cached HuggingFace id; the paper uses :data:`CLIP_TEXT_MODEL`.
        text_config: config overrides that build a random-init text tower (tests, parameter counts).
        text_len: tokenizer max_length (the empty prompt's length).
        fusion: "bcam", "duala" or "none"; k_gate: KAN gates; fusion_levels: encoder levels (0-4) fused with text.
        gate_hidden: hidden width of the gates (channels // 4 when None); num_heads: BCAM heads.
        grid_size, spline_order, grid_range: KAN settings of every KAN layer.
        act, norm: MONAI activation / normalisation of the convolutional stages and the decoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        kan_stages: int = 2,
        kan_layers: int = 1,
        text_encoder: str | None = "default",
        text_config: dict | None = None,
        text_len: int = 24,
        fusion: str = "bcam",
        k_gate: bool = True,
        fusion_levels: Sequence[int] = (3, 4),
        gate_hidden: int | None = None,
        num_heads: int = 1,
        grid_size: int = 5,
        spline_order: int = 3,
        grid_range: Sequence[float] = (-1.0, 1.0),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if fusion not in ("bcam", "duala", "none"):
            raise ValueError(f"fusion must be 'bcam', 'duala' or 'none', got '{fusion}'.")
        if any(not 0 <= i <= 4 for i in fusion_levels):
            raise ValueError(f"fusion_levels must be encoder levels in 0..4, got {list(fusion_levels)}.")
        kan_kwargs = dict(grid_size=grid_size, spline_order=spline_order, grid_range=tuple(grid_range))
        self.in_channels, self.text_len, self.fusion_mode = in_channels, text_len, fusion
        self.encoder = C2SegEncoder(in_channels, features, kan_stages, kan_layers, act, norm, kan_kwargs)
        self.text_encoder = FrozenTextEncoder(
            text_encoder, frozen=True, random_init=text_config is not None, config_overrides=text_config
        )
        text_dim = self.text_encoder.hidden_size
        self.empty_prompt = nn.Parameter(torch.randn(text_len, text_dim) * 0.02)
        self.fusion_levels = tuple(sorted(set(fusion_levels))) if fusion != "none" else ()
        self.fusions = nn.ModuleDict(
            {
                str(i): C2SegFusion(features[i], text_dim, fusion, k_gate, gate_hidden, num_heads, **kan_kwargs)
                for i in self.fusion_levels
            }
        )
        self.decoder = nn.ModuleList(
            UpCat(2, features[i + 1], features[i], features[i], act, norm, True, halves=True) for i in range(3, -1, -1)
        )
        self.head = nn.Conv2d(features[0], out_channels, 1)

    def encode_text(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text tokens (B, text_len, D) and their validity mask; the learned empty prompt (all valid) where
        there is no text."""
        return text_or_empty_prompt(self.text_encoder, self.empty_prompt, input_ids, attention_mask, batch)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False)  # MONAI engines pass MetaTensors; keep the net plain
        if image.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels}-channel images, got shape {tuple(image.shape)}.")
        h, w = image.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"C2Seg needs image sizes divisible by 16, got {h}x{w}.")
        feats = self.encoder(image)
        if self.fusion_levels:
            text, mask = self.encode_text(input_ids, attention_mask, image.shape[0])
            for i in self.fusion_levels:
                feats[i] = self.fusions[str(i)](feats[i], text, mask)
        y = feats[4]
        for up, skip in zip(self.decoder, feats[3::-1]):
            y = up(y, skip)
        return self.head(y)


class C2SegPretrainNet(nn.Module):
    """Stage 1 (CaCL pretraining) view of a :class:`C2Seg`: image embedding ``v`` (global average of the deepest
    encoder features, linearly projected into the frozen text space) and text embedding ``l`` (masked mean of the
    frozen text tokens), both L2-normalised.

    ``forward(image, input_ids, attention_mask)`` returns ``torch.stack([v, l], 1)``, (B, 2, D), so that MONAI's
    ``SupervisedTrainer`` can pass one tensor to the loss (``pred[:, 0]``, ``pred[:, 1]``).

    Args:
        network: the segmentation network whose ``encoder`` and ``text_encoder`` are used (and trained / frozen).
    """

    def __init__(self, network: C2Seg) -> None:
        super().__init__()
        self.network = network
        self.image_proj = nn.Linear(network.encoder.features[-1], network.text_encoder.hidden_size)

    @property
    def encoder(self) -> C2SegEncoder:
        return self.network.encoder

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False)
        v = self.image_proj(self.network.encoder(image)[-1].mean(dim=(2, 3)))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        tokens, _ = self.network.text_encoder(input_ids, attention_mask)
        m = attention_mask.to(tokens.dtype).unsqueeze(-1)
        l = (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)
        return torch.stack([F.normalize(v, dim=-1), F.normalize(l.to(v.dtype), dim=-1)], dim=1)


def load_encoder_checkpoint(network: nn.Module, path: str | None, required: bool = True) -> nn.Module:
    """Load a stage-1 image-encoder checkpoint (a state dict of ``network.encoder``, or ``{"encoder": ...}``) into
    ``network`` with :func:`monai_vlseg.utils.load_checkpoint` and return ``network``.

    C2Seg is a two-stage method: stage 2 trains the encoder at a learning rate 10x smaller than the rest because
    stage 1 (CaCL) has aligned it already. So a missing file (or ``path`` None/empty) raises an
    :class:`~monai_vlseg.errors.InputError` naming the file and :data:`STAGE1_COMMAND`. With ``required=False``
    (``--require_pretrained_encoder false``) stage 2 goes on with a randomly initialised encoder, which is a one-stage
    method and not the paper's: that is logged at WARNING in a banner and warned (``UserWarning``).
    A file that does not fit the encoder always raises ``ValueError`` naming the file.
    """
    if path and os.path.isfile(path):
        load_checkpoint(network.encoder, path, required=True, keys=("encoder", "model"))
        return network
    where = f"'{path}'" if path else "none (pretrained_encoder is not set)"
    if required:
        raise InputError(
            path or None,
            f"stage-1 encoder checkpoint {'not found' if path else 'not set'}: C2Seg is a two-stage method, run stage 1 "
            f"first ({STAGE1_COMMAND}, with the same --bundle_root / --ckpt_dir, --datalist and extra config files "
            "such as demo.json as this run; it writes <ckpt_dir>/encoder.pt), or train without it (one-stage, not "
            "the paper's method): --require_pretrained_encoder false",
        )
    msg = (
        f"C2Seg WITHOUT STAGE 1: stage-1 encoder checkpoint {where} not found and --require_pretrained_encoder is "
        "false, so stage 2 trains a RANDOMLY INITIALISED image encoder at the encoder learning rate "
        "(encoder_learning_rate): a one-stage method, not the paper's two-stage C2Seg. To train the paper's method, "
        f"run stage 1 first: {STAGE1_COMMAND}"
    )
    logger.warning("%s\n%s\n%s", "=" * 100, msg, "=" * 100)
    warnings.warn(msg, UserWarning, stacklevel=2)
    return network
