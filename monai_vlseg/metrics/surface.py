# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""HD95 that does not flatter: an empty prediction of a non-empty label is a miss, not a gap in the mean.

MONAI's :class:`~monai.metrics.HausdorffDistanceMetric` returns NaN for an image whose prediction is empty, and the
mean leaves NaN out, so a model that predicts nothing on its hardest images reports a better HD95. Here such an
image scores the largest distance the image allows (its diagonal, in the units of ``spacing``), and
:class:`EmptyPredictionMetric` counts them, so a report can say how many there were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["EmptyPredictionMetric", "HausdorffDistanceMissMetric"]


def _empty_pred(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(batch, channel) True where the prediction is empty and the label is not."""
    dims = tuple(range(2, y_pred.ndim))
    return (y_pred.sum(dims) == 0) & (y.sum(dims) > 0)


class HausdorffDistanceMissMetric(HausdorffDistanceMetric):
    """:class:`~monai.metrics.HausdorffDistanceMetric` in which an empty prediction of a non-empty label scores the
    image diagonal instead of NaN (a miss). Arguments as MONAI's; ``spacing`` (default 1 per axis) also scales the
    diagonal. Two empty masks still score NaN (nothing to measure)."""

    def __init__(
        self,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        percentile: float | None = 95,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__(include_background, distance_metric, percentile, directed, reduction, get_not_nans)
        self.spacing = spacing

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:  # type: ignore[override]
        kwargs.setdefault("spacing", self.spacing)
        dist = super()._compute_tensor(y_pred, y, **kwargs)
        missed = _empty_pred(y_pred, y)
        if not self.include_background:
            missed = missed[:, 1:]
        shape = torch.tensor(y_pred.shape[2:], dtype=torch.float64)
        space = torch.as_tensor(1.0 if self.spacing is None else self.spacing, dtype=torch.float64)
        diagonal = float(torch.linalg.vector_norm((shape - 1).clamp(min=1) * space))
        return torch.where(missed.to(dist.device), torch.full_like(dist, diagonal), dist)


class EmptyPredictionMetric(CumulativeIterationMetric):
    """The number of images whose prediction is empty while the label is not (summed over images and channels).

    Args:
        include_background: count channel 0 too.
    """

    def __init__(self, include_background: bool = False) -> None:
        super().__init__()
        self.include_background = include_background

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore
        if y is None:
            raise ValueError("EmptyPredictionMetric needs the labels as y.")
        missed = _empty_pred(y_pred, y).float()
        return missed if self.include_background else missed[:, 1:]

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("no predictions to count yet.")
        total, _ = do_metric_reduction(data, MetricReduction.SUM)
        return total
