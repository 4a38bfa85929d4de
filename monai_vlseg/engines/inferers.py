# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Inferers beside MONAI's: the stage-1 DDPM objective of a text-prompted diffusion UNet (LCPDN), and sliding-window
inference of a text-guided volume network that encodes the report once per volume."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import DiffusionInferer, SlidingWindowInferer
from torch import nn

__all__ = ["PromptedDiffusionInferer", "TextSlidingWindowInferer"]


class TextSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's :class:`~monai.inferers.SlidingWindowInferer` for a network with ``encode_text(input_ids,
    attention_mask, batch)`` and ``forward(window, text=(tokens, mask))`` (e.g.
    :class:`monai_vlseg.nets.report_segmamba.ReportSegMamba`): the report is encoded once per volume and the same
    tokens go with every window (a plain sliding window would run the text encoder once per window batch).

    ``inferer(inputs, network, input_ids, attention_mask)``: a batch of volumes is run one volume at a time, each
    with its own report. Arguments as :class:`~monai.inferers.SlidingWindowInferer`'s.
    """

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Any,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        net = getattr(network, "module", network)  # DistributedDataParallel
        outputs = []
        for i in range(inputs.shape[0]):
            ids = None if input_ids is None else input_ids[i : i + 1]
            mask = None if attention_mask is None else attention_mask[i : i + 1]
            text = net.encode_text(ids, mask, 1)
            outputs.append(super().__call__(inputs[i : i + 1], lambda w, t=text: network(w, text=t), *args, **kwargs))
        return torch.cat(outputs, 0) if len(outputs) > 1 else outputs[0]


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
