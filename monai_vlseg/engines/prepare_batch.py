# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Batch preparation for MONAI's engines beyond ``PrepareBatchExtraInput``: LCPDN's stage-1 (DDPM) batches, and
batches of images with several reports each (the report-guided CT bundle)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines.utils import DiffusionPrepareBatch, PrepareBatch, default_prepare_batch

__all__ = ["PromptedDiffusionPrepareBatch", "ReportsPrepareBatch"]


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


class ReportsPrepareBatch(PrepareBatch):
    """Batches whose items carry R reports each (:class:`monai_vlseg.transforms.RandPickReportsd`: label (B, R, ...),
    token ids and masks (B, R, L)) as B * R rows: the image repeated once per report, one label channel and one report
    per row. Items with one report ((B, 1, ...) label, (B, L) tokens) pass through as ``PrepareBatchExtraInput``.

    Args:
        text_keys: batch keys passed to the network as keyword arguments.
    """

    def __init__(self, text_keys: Sequence[str] = ("input_ids", "attention_mask")) -> None:
        self.text_keys = tuple(text_keys)

    def __call__(
        self, batchdata: dict[str, torch.Tensor], device: str | torch.device | None = None,
        non_blocking: bool = False, **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:  # fmt: skip
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        b, r = label.shape[:2]
        extra = {k: batchdata[k].to(device, non_blocking=non_blocking) for k in self.text_keys if k in batchdata}
        if r > 1 or any(v.ndim == 3 for v in extra.values()):  # (B, R, L) tokens: one row per report, R = 1 too
            for k, v in extra.items():
                if v.ndim != 3 or tuple(v.shape[:2]) != (b, r):
                    raise ValueError(f"'{k}' must be (batch, reports, length) = ({b}, {r}, L), got {tuple(v.shape)}")
            image = image.repeat_interleave(r, dim=0)
            label = label.reshape(b * r, 1, *label.shape[2:])
            extra = {k: v.reshape(b * r, v.shape[-1]) for k, v in extra.items()}
        return image, label, (), extra
