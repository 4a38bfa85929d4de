# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Batch preparation for MONAI's engines beyond ``PrepareBatchExtraInput``: LCPDN's stage-1 (DDPM) batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, default_prepare_batch

__all__ = ["PromptedDiffusionPrepareBatch"]


class PromptedDiffusionPrepareBatch(DiffusionPrepareBatch):
    """Stage-1 batches for :class:`PromptedDiffusionInferer`: images mapped from [0, 1] to [-1, 1], noise target,
    random timesteps, and the text tokens passed on as keyword arguments.

    Args:
        num_train_timesteps: timesteps of the scheduler.
        text_keys: batch keys forwarded to the network (``input_ids``, ``attention_mask``); missing keys are skipped.
    """

    def __init__(self, num_train_timesteps: int, text_keys: Sequence[str] = ("input_ids", "attention_mask")) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps)
        self.text_keys = tuple(text_keys)

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None,
        non_blocking: bool = False, **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:  # fmt: skip
        images = default_prepare_batch(batchdata, device, non_blocking, **kwargs)[0] * 2.0 - 1.0
        noise = self.get_noise(images).to(device, non_blocking=non_blocking)
        timesteps = self.get_timesteps(images).to(device, non_blocking=non_blocking)
        extra = {k: batchdata[k].to(device, non_blocking=non_blocking) for k in self.text_keys if k in batchdata}
        return images, self.get_target(images, noise, timesteps), (), {"noise": noise, "timesteps": timesteps, **extra}
