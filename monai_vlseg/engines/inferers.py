# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Inferers beside MONAI's: the stage-1 DDPM objective of a text-prompted diffusion UNet (LCPDN)."""

from __future__ import annotations

import torch
from monai.inferers import DiffusionInferer
from torch import nn

__all__ = ["PromptedDiffusionInferer"]


class PromptedDiffusionInferer(DiffusionInferer):
    """MONAI's DiffusionInferer for a network that also takes the clean image and the text (the CPRFL prompt):
    ``network(x_t, timesteps, image=inputs, input_ids=..., attention_mask=...)``; the stage-1 DDPM objective."""

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = self.scheduler.add_noise(original_samples=inputs, noise=noise, timesteps=timesteps)
        return diffusion_model(noisy, timesteps, image=inputs, input_ids=input_ids, attention_mask=attention_mask)
