"""LCPDN: lightweight cross-text-vision prompting diffusion network for text-guided segmentation.

Spec: "Lightweight cross-text-vision prompting diffusion network for medical image segmentation" (anonymous, seed 002).
Base method: TextDiff (Feng, MICCAI 2024): a frozen DDPM UNet, the image noised at t in {50, 150, 250} with one shared
noise, one UNet pass per t, decoder output blocks hooked for features, and a trainable pixel classifier (no iterative
sampling). LCPDN adds

* CPRFL (eqs. 1-5): text tokens attend to image tokens F^I, ``tanh(Z) * Q W^Q`` averaged over tokens and projected
  into the UNet's time embedding, ``P = M + TextProj(E)``. The paper takes F^I from CLIP's frozen image encoder; no
  CLIP weights are shipped or downloadable here, so the default takes them from the frozen diffusion UNet itself
  (``vision_encoder="unet"``, :meth:`PromptedDiffusionUNet.unet_image_tokens`: the UNet's middle-block activations for
  the clean image at t = 0, the encoder that stage 1 trained on the data set's own images), and a CLIP vision tower
  is one argument away (``vision_encoder="openai/clip-vit-base-patch16"`` or a local folder);
* LTFR (eqs. 7-11): at every feature scale the text (its real tokens, not the padding) is repeated/truncated to the
  spatial length, concatenated with the image features, fused by an MLP and mixed back with sigmoid position weights;
  all scales are upsampled, concatenated and classified per pixel.

The diffusion backbone is MONAI's :class:`~monai.networks.nets.DiffusionModelUNet` with a
:class:`~monai.networks.schedulers.DDPMScheduler`. The prompt enters through a forward hook on the UNet's
``time_embed`` module and the decoder features through forward hooks on its up-block sub-modules, so the UNet's own
``forward`` runs unchanged.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from monai.utils import convert_to_tensor
from torch import nn

from monai_vlseg._lazy import lazy_exports
from monai_vlseg.errors import CheckpointNotFoundError
from monai_vlseg.nets.blocks.clip import SMALL_CLIP_VISION, CLIPImageEncoder
from monai_vlseg.nets.blocks.text_encoder import FrozenTextEncoder
from monai_vlseg.utils import load_checkpoint

__all__ = [
    "PAPER_UNET",
    "SMALL_CLIP_VISION",
    "CPRFL",
    "LTFR",
    "CLIPImageEncoder",
    "PromptedDiffusionUNet",
    "LCPDN",
    "decoder_output_block",
]

#: DiffusionModelUNet arguments of guided-diffusion's 256x256 unconditional DDPM (the frozen UNet TextDiff uses:
#: 256 base channels, multipliers 1,1,2,2,4,4, two res blocks, attention at 32/16/8 px, 64-channel heads,
#: residual up/down-sampling). Its decoder output blocks 4, 6, 8, 12 have 1024, 512, 512, 256 channels.
PAPER_UNET: dict[str, Any] = {
    "channels": [256, 256, 512, 512, 1024, 1024],
    "attention_levels": [False, False, False, True, True, True],
    "num_res_blocks": 2,
    "num_head_channels": 64,
    "norm_num_groups": 32,
    "resblock_updown": True,
}

class _StopForward(Exception):
    """Raised by the last feature hook: the decoder blocks after it are not needed."""


def decoder_output_block(unet: DiffusionModelUNet, index: int) -> nn.Module:
    """The sub-module of ``unet`` whose output is guided-diffusion's ``output_blocks[index]`` (TextDiff's "block").

    A guided-diffusion output block is one res block, its attention (at attention levels) and, for the last block of
    a level, the upsampler; MONAI groups the ``num_res_blocks + 1`` of them per level in ``unet.up_blocks``.
    """
    per_level = [len(b.resnets) for b in unet.up_blocks]
    if not 0 <= index < sum(per_level):
        raise ValueError(f"decoder block {index} does not exist: this UNet has {sum(per_level)} output blocks.")
    level = 0
    while index >= per_level[level]:
        index -= per_level[level]
        level += 1
    block = unet.up_blocks[level]
    if index == per_level[level] - 1 and getattr(block, "upsampler", None) is not None:
        return block.upsampler
    if hasattr(block, "attentions"):
        return block.attentions[index]
    return block.resnets[index]


def _decoder_block_channels(unet: DiffusionModelUNet, index: int) -> int:
    per_level = [len(b.resnets) for b in unet.up_blocks]
    level, rest = 0, index
    while rest >= per_level[level]:
        rest -= per_level[level]
        level += 1
    return int(list(reversed(unet.block_out_channels))[level])


def _is_bare_unet_checkpoint(path: str) -> bool:
    """Whether ``path`` holds a bare ``DiffusionModelUNet`` state dict (no ``unet.`` prefix); read memory-mapped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return False  # load_checkpoint reports the unreadable file
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    return isinstance(state, Mapping) and len(state) > 0 and not any(str(k).startswith("unet.") for k in state)


class CPRFL(nn.Module):
    """Text-vision-alignment prompt of CPRFL (eqs. 1-4): text tokens query the image tokens.

    Args:
        text_dim: feature size of the text tokens (queries Q).
        image_dim: feature size of the image tokens (keys/values K, V).
        embed_dim: shared latent size D of W^Q, W^K, W^V.
        time_embed_dim: size d of the diffusion UNet's time embedding (W_t maps D to d, eq. 4).
    """

    def __init__(self, text_dim: int, image_dim: int, embed_dim: int, time_embed_dim: int) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(embed_dim)
        self.w_q = nn.Linear(text_dim, embed_dim, bias=False)
        self.w_k = nn.Linear(image_dim, embed_dim, bias=False)
        self.w_v = nn.Linear(image_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(embed_dim, time_embed_dim)  # W_t, b_t (eq. 4)

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            text: (B, N, text_dim) token features.
            image: (B, M, image_dim) image token features.
            text_mask: (B, N), 1 for tokens, 0 for padding (padding is left out of the mean of eq. 3).

        Returns:
            TextProj(E), (B, time_embed_dim): what eq. 5 adds to the time embedding.
        """
        q = self.w_q(text)
        attn = torch.softmax(q @ self.w_k(image).transpose(1, 2) * self.scale, dim=-1)  # eq. 1
        z = attn @ self.w_v(image)  # eq. 1
        q_star = torch.tanh(z) * q  # eq. 2
        if text_mask is None:
            e = q_star.mean(dim=1)  # eq. 3
        else:
            m = text_mask.to(q_star.dtype).unsqueeze(-1)
            e = (q_star * m).sum(1) / m.sum(1).clamp_min(1.0)  # eq. 3 over the real tokens
        return self.text_proj(e)  # eq. 4


class LTFR(nn.Module):
    """Lightweight text-vision fusion representation at one scale (eqs. 7-10).

    Args:
        channels: channels D of the image features at this scale.
        text_dim: feature size of the text tokens (projected to ``channels`` for the dimensional alignment).
        hidden_channels: hidden width of the fusion MLP (default ``channels``).
    """

    def __init__(self, channels: int, text_dim: int, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or channels
        self.text_proj = nn.Linear(text_dim, channels)
        self.mlp = nn.Sequential(nn.Linear(2 * channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.gate = nn.Linear(channels, 1)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """image: (B, D, H, W); text: (B, N, text_dim); text_mask: (B, N), 1 for the text's tokens, 0 for padding
        after them (right padding, as the tokenizers here pad). Returns H_fuse, (B, D, H, W).

        The text's own tokens are repeated (or truncated) to the M = H*W positions, so the padding up to
        ``text_len`` never enters and a longer ``text_len`` changes nothing for a text that fits; without a mask all
        N tokens are repeated."""
        b, c, h, w = image.shape
        f_img = image.flatten(2).transpose(1, 2)  # (B, M, D)
        m = h * w
        t = self.text_proj(text)
        n = t.shape[1]
        pos = torch.arange(m, device=t.device)
        if text_mask is None:
            idx = (pos % n).expand(b, m)
        else:
            lengths = text_mask.to(torch.long).sum(1).clamp(1, n)  # a row without text: its zero token
            if int(lengths.max()) > m and not getattr(self, "_warned_short", False):
                self._warned_short = True
                warnings.warn(
                    f"LTFR at a {h}x{w} scale has {m} positions, fewer than the {int(lengths.max())} text tokens: the "
                    f"tokens after the first {m} do not reach this scale (a larger image or fewer tokens avoid it).",
                    stacklevel=2,
                )
            idx = pos[None] % lengths[:, None]
        t = torch.gather(t, 1, idx.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # replicate or truncate to M tokens
        f_fuse = self.mlp(torch.cat([f_img, t], dim=-1))  # eqs. 7-8
        lam = torch.sigmoid(self.gate(f_fuse))  # position-dependent weights in [0, 1]
        f_star = lam * f_fuse + (1.0 - lam) * f_img  # eq. 9
        h_fuse = f_star * f_img  # eq. 10
        return h_fuse.transpose(1, 2).reshape(b, c, h, w)


class PromptedDiffusionUNet(nn.Module):
    """The CPRFL branch: MONAI's DiffusionModelUNet whose time embedding receives the text-vision prompt (eq. 5).

    ``forward(x, timesteps, image=None, input_ids=None, attention_mask=None)`` predicts the noise of ``x`` (the
    stage-1 DDPM objective); :meth:`prompt` and :meth:`run_unet` are the pieces LCPDN uses for feature extraction.
    Images are in the DDPM range [-1, 1].

    Args:
        in_channels: image channels (the UNet predicts noise with as many channels).
        unet_config: DiffusionModelUNet arguments (default :data:`PAPER_UNET`; ``spatial_dims``, ``in_channels``
            and ``out_channels`` are set here).
        vision_encoder: where CPRFL's image tokens F^I come from. ``"unet"`` (default; ``None`` too): the UNet's own
            middle-block features of the clean image (:meth:`unet_image_tokens`), trained in stage 1, nothing random
            and nothing to download. A CLIP id or folder (the paper: ``openai/clip-vit-base-patch16``, loaded offline
            by :func:`monai_vlseg.utils.load_pretrained`): that frozen CLIP vision tower (:class:`CLIPImageEncoder`).
            ``"random"``: a randomly initialised CLIP vision tower from ``vision_config`` (tests and parameter counts
            only: frozen random features are no image encoder).
        vision_config: ``CLIPVisionConfig`` fields of the ``"random"`` tower.
        text_encoder / text_config / text_trust_remote_code: text tower for :class:`FrozenTextEncoder`
            (the paper: ``emilyalsentzer/Bio_ClinicalBERT``; None: the packaged offline default).
        prompt_dim: latent size D of CPRFL.
        use_prompt: False drops CPRFL (TextDiff's unconditioned UNet; the ablation "without CPRFL").
        num_train_timesteps / beta_schedule: the DDPMScheduler.
        frozen_unet: freeze the UNet weights (stage 2); False for stage-1 DDPM training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        unet_config: dict | None = None,
        vision_encoder: str | None = "unet",
        vision_config: dict | None = None,
        text_encoder: str | None = None,
        text_config: dict | None = None,
        text_trust_remote_code: bool = False,
        prompt_dim: int = 768,
        use_prompt: bool = True,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear_beta",
        frozen_unet: bool = True,
    ) -> None:
        super().__init__()
        cfg = {**PAPER_UNET, **(unet_config or {})}
        cfg.update(spatial_dims=2, in_channels=in_channels, out_channels=in_channels)
        self.unet = DiffusionModelUNet(**cfg)
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=beta_schedule)
        self.text_encoder = FrozenTextEncoder(
            text_encoder, trust_remote_code=text_trust_remote_code, random_init=text_config is not None,
            config_overrides=text_config,
        )  # fmt: skip
        self.vision_encoder = "unet" if vision_encoder in (None, "", "unet") else str(vision_encoder)
        if self.vision_encoder == "unet" and vision_config is not None:
            raise ValueError(
                "vision_config configures a random CLIP vision tower, but vision_encoder is 'unet' (the UNet's own "
                "features); set vision_encoder='random' for a random tower (tests only) or drop vision_config."
            )
        if self.vision_encoder == "random" and vision_config is None:
            raise ValueError("vision_encoder='random' needs vision_config (the CLIPVisionConfig fields of the tower).")
        self.vision = None
        if use_prompt and self.vision_encoder != "unet":
            name = None if self.vision_encoder == "random" else self.vision_encoder
            self.vision = CLIPImageEncoder(name, vision_config)
        image_dim = int(self.unet.block_out_channels[-1]) if self.vision is None else self.vision.hidden_size
        time_embed_dim = int(self.unet.time_embed[-1].out_features)
        self.cprfl = CPRFL(self.text_encoder.hidden_size, image_dim, prompt_dim, time_embed_dim) if use_prompt else None
        self.frozen_unet = frozen_unet
        if frozen_unet:
            self.unet.requires_grad_(False)
            self.unet.eval()

    def train(self, mode: bool = True) -> PromptedDiffusionUNet:
        super().train(mode)
        if self.frozen_unet:
            self.unet.eval()
        return self

    def encode_text(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen text token features (B, N, D_text) and mask; no text gives one all-zero token."""
        if input_ids is None:
            dim = self.text_encoder.hidden_size
            return torch.zeros(batch, 1, dim, device=device), torch.zeros(batch, 1, dtype=torch.long, device=device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.text_encoder(input_ids, attention_mask)

    def unet_image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """The default image tokens F^I of CPRFL for images in [-1, 1]: (B, 1 + M, C).

        One unprompted pass of the UNet's encoder over the clean image at t = 0 (a timestep the DDPM objective
        trains on), stopped after the middle block; its M = (H / 2^(L-1)) * (W / 2^(L-1)) activations of C channels
        are the patch tokens, their mean the global token in front (CLIP's CLS place), each token layer-normalised
        without parameters so that CPRFL sees one scale whatever the checkpoint. Computed without gradients: the
        features are read, as the paper reads its frozen CLIP encoder's, also in stage 1 while the UNet trains."""
        captured: list[torch.Tensor] = []

        def _save(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            captured.append(out)
            raise _StopForward

        handle = self.unet.middle_block.register_forward_hook(_save)
        t0 = torch.zeros(image.shape[0], dtype=torch.long, device=image.device)
        try:
            with torch.no_grad():
                self.unet(image, t0)
        except _StopForward:
            pass
        finally:
            handle.remove()
        h = captured[0].flatten(2).transpose(1, 2)  # (B, M, C)
        tokens = torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)
        return F.layer_norm(tokens, tokens.shape[-1:])

    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """CPRFL's image tokens F^I (keys/values) for images in [-1, 1]: the UNet's (:meth:`unet_image_tokens`) or,
        with a CLIP ``vision_encoder``, the frozen CLIP tower's (CLS + patches)."""
        if self.vision is None:
            return self.unet_image_tokens(image)
        return self.vision((image + 1.0) / 2.0)

    def prompt(self, image: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor | None:
        """TextProj(E) of eqs. 1-4 for images in [-1, 1], or None without CPRFL."""
        if self.cprfl is None:
            return None
        vis = self.image_tokens(image)
        return self.cprfl(text.to(vis.dtype), vis, text_mask)

    def run_unet(self, x_t: torch.Tensor, timesteps: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """One UNet pass with ``P = M + TextProj(E)`` (eq. 5) injected by a forward hook on the time embedding."""
        if prompt is None:
            return self.unet(x_t, timesteps)
        handle = self.unet.time_embed.register_forward_hook(lambda _m, _i, out: out + prompt.to(out.dtype))
        try:
            return self.unet(x_t, timesteps)
        finally:
            handle.remove()

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise prediction for the noisy image ``x`` at ``timesteps``, prompted by the clean ``image`` and the text."""
        text, mask = self.encode_text(input_ids, attention_mask, x.shape[0], x.device)
        p = self.prompt(x if image is None else image, text, mask)
        return self.run_unet(x, timesteps, p)


class LCPDN(nn.Module):
    """LCPDN network: prompted frozen diffusion UNet features (CPRFL), LTFR at every scale, pixel classifier.

    ``forward(image, input_ids=None, attention_mask=None)`` takes images in [0, 1] and returns logits
    (B, out_channels, H, W). The image is mapped to [-1, 1], noised at each of ``timesteps`` with one shared noise
    (seeded by ``noise_seed``, the same for every image and call), the prompted UNet runs once per timestep, and the
    outputs of the decoder ``blocks`` (guided-diffusion numbering, see :func:`decoder_output_block`) are captured by
    forward hooks. Per block the timesteps are concatenated (TextDiff), reduced to ``fusion_channels`` by a 1x1 conv,
    fused with the text by LTFR (eqs. 7-10), upsampled bilinearly to the image size and concatenated (eq. 11); the
    classifier is TextDiff's (3x3 conv-BN-ReLU to 128 and 32 channels, 3x3 conv to the output).

    Without text (or with all-zero attention masks) the prompt and the LTFR text are zero features, so the network
    runs with the image alone (what ``verify_net_in_out`` feeds).

    Args:
        in_channels: image channels (1 grey or 3).
        out_channels: output channels (1: binary mask with sigmoid).
        unet_config, vision_encoder, vision_config, text_encoder, text_config, text_trust_remote_code, prompt_dim,
            num_train_timesteps, beta_schedule: see :class:`PromptedDiffusionUNet`.
        timesteps: diffusion steps t at which features are extracted (50, 150, 250).
        blocks: decoder output blocks hooked (4, 6, 8, 12 for QaTa/MosMed; 6, 8, 12, 16 for MoNuSeg).
        noise_seed: seed of the shared noise.
        fusion_channels: channels of every scale after the 1x1 reduction (the LTFR width D).
        ltfr_hidden: hidden width of the LTFR MLP (default ``fusion_channels``).
        classifier_channels: hidden channels of the pixel classifier (128, 32).
        use_cprfl: False: unprompted UNet (ablation).
        use_ltfr: False: no text fusion after the UNet (ablation; the reduced features go to the classifier).
        freeze_diffusion: keep the UNet frozen (stage 2); False trains it (stage 1 through ``self.diffusion``).
        early_exit: stop each UNet pass after the last hooked block (identical features, less compute).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        unet_config: dict | None = None,
        vision_encoder: str | None = "unet",
        vision_config: dict | None = None,
        text_encoder: str | None = None,
        text_config: dict | None = None,
        text_trust_remote_code: bool = False,
        prompt_dim: int = 768,
        timesteps: Sequence[int] = (50, 150, 250),
        blocks: Sequence[int] = (4, 6, 8, 12),
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear_beta",
        noise_seed: int = 0,
        fusion_channels: int = 128,
        ltfr_hidden: int | None = None,
        classifier_channels: Sequence[int] = (128, 32),
        use_cprfl: bool = True,
        use_ltfr: bool = True,
        freeze_diffusion: bool = True,
        early_exit: bool = True,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}.")
        if not timesteps or any(not 0 <= int(t) < num_train_timesteps for t in timesteps):
            raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {list(timesteps)}.")
        self.in_channels = in_channels
        self.diffusion = PromptedDiffusionUNet(
            in_channels, unet_config, vision_encoder, vision_config, text_encoder, text_config,
            text_trust_remote_code, prompt_dim, use_cprfl, num_train_timesteps, beta_schedule, freeze_diffusion,
        )  # fmt: skip
        unet = self.diffusion.unet
        self.timesteps = [int(t) for t in timesteps]
        self.blocks = [int(b) for b in blocks]
        if sorted(set(self.blocks)) != self.blocks:
            raise ValueError(f"blocks must be increasing and distinct, got {list(blocks)}.")
        for b in self.blocks:
            decoder_output_block(unet, b)  # validates the index
        self.noise_seed = noise_seed
        self.early_exit = early_exit
        text_dim = self.diffusion.text_encoder.hidden_size
        n_t = len(self.timesteps)
        self.reduce = nn.ModuleList(
            nn.Conv2d(_decoder_block_channels(unet, b) * n_t, fusion_channels, kernel_size=1) for b in self.blocks
        )
        self.ltfr = (
            nn.ModuleList(LTFR(fusion_channels, text_dim, ltfr_hidden) for _ in self.blocks) if use_ltfr else None
        )
        c1, c2 = classifier_channels
        self.classifier = nn.Sequential(
            Convolution(2, fusion_channels * len(self.blocks), c1, kernel_size=3, act="RELU", norm="BATCH"),
            Convolution(2, c1, c2, kernel_size=3, act="RELU", norm="BATCH"),
            Convolution(2, c2, out_channels, kernel_size=3, conv_only=True),
        )

    def shared_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed noise shared by all timesteps (and images): a seeded normal draw of x's shape."""
        gen = torch.Generator().manual_seed(self.noise_seed)
        return torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)

    def extract_features(self, x0: torch.Tensor, prompt: torch.Tensor | None) -> list[torch.Tensor]:
        """Decoder activations per hooked block, timesteps concatenated on channels: [(B, C_b * T, H_b, W_b)]."""
        unet = self.diffusion.unet
        modules = [decoder_output_block(unet, b) for b in self.blocks]
        noise = self.shared_noise(x0)
        per_block: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        for t in self.timesteps:
            captured: dict[int, torch.Tensor] = {}

            def hook(idx: int, last: bool):
                def _save(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
                    captured[idx] = out
                    if last and self.early_exit:
                        raise _StopForward

                return _save

            handles = [m.register_forward_hook(hook(i, i == len(modules) - 1)) for i, m in enumerate(modules)]
            ts = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            x_t = self.diffusion.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=ts)
            try:
                self.diffusion.run_unet(x_t, ts, prompt)
            except _StopForward:
                pass
            finally:
                for h in handles:
                    h.remove()
            for i in range(len(modules)):
                per_block[i].append(captured[i])
        return [torch.cat(f, dim=1) for f in per_block]

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        image = convert_to_tensor(image, track_meta=False)
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W) images, got shape {tuple(image.shape)}.")
        h, w = image.shape[-2:]
        factor = 2 ** (len(self.diffusion.unet.block_out_channels) - 1)
        if h % factor or w % factor:
            raise ValueError(f"LCPDN needs image sizes divisible by {factor} (the UNet's downsampling), got {h}x{w}.")
        x0 = image * 2.0 - 1.0  # DDPM range
        text, mask = self.diffusion.encode_text(input_ids, attention_mask, image.shape[0], image.device)
        prompt = self.diffusion.prompt(x0, text, mask)  # eqs. 1-4
        feats = self.extract_features(x0, prompt)  # eq. 6
        fused = []
        for i, f in enumerate(feats):
            f = self.reduce[i](f.to(image.dtype))
            if self.ltfr is not None:
                f = self.ltfr[i](f, text.to(f.dtype), mask)  # eqs. 7-10
            fused.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
        return self.classifier(torch.cat(fused, dim=1))  # eq. 11, pixel classifier

    def load_diffusion_checkpoint(
        self, path: str | None, required: bool = True, map_location: str | torch.device = "cpu"
    ) -> LCPDN:
        """Load a stage-1 checkpoint strictly with :func:`monai_vlseg.utils.load_checkpoint` and return self.

        The file holds a :class:`PromptedDiffusionUNet` state dict (or ``{"model": ...}``, what stage 1 saves), or a
        bare ``DiffusionModelUNet`` state dict (loaded into the UNet alone). A missing file raises
        ``FileNotFoundError`` saying to run stage 1; ``required=False`` (the bundles' ``--require_stage1 false``) only
        warns that the frozen UNet stays random.
        """
        target: nn.Module = self.diffusion
        if path and os.path.isfile(path) and _is_bare_unet_checkpoint(path):
            target = self.diffusion.unet
        hint = (
            f"the frozen UNet {'would be' if required else 'is'} random, and with it CPRFL's default image tokens. "
            "Run stage 1 first (configs/pretrain_diffusion.json) or set diffusion_ckpt to a pretrained "
            "DiffusionModelUNet checkpoint"
            + (" (--require_stage1 false trains on the random UNet)." if required else ".")
        )
        if required and not (path and os.path.isfile(path)):  # a bundle run ends with this one line
            raise CheckpointNotFoundError(f"checkpoint '{path}' not found: {hint}")
        load_checkpoint(target, path, required=required, hint=hint, map_location=map_location)
        return self


# moved to monai_vlseg.engines in 0.2 (MONAI keeps prepare-batch and inferers beside its engines)
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PromptedDiffusionPrepareBatch": "monai_vlseg.engines.prepare_batch",
        "PromptedDiffusionInferer": "monai_vlseg.engines.inferers",
    },
    moved=True,
)
