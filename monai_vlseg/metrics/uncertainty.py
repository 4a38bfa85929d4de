# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Does the per-image uncertainty score (:func:`monai_vlseg.transforms.uncertainty.uncertainty_score`) point at the
images a model got wrong? Two numbers over an evaluation split:

- ``auroc``: the area under the ROC curve of the score as a detector of a poor segmentation (Dice below
  ``poor_dice``, 0.5): 1.0 ranks every poor image above every good one, 0.5 is chance; NaN when the split holds only
  poor or only good images.
- ``spearman``: Spearman's rank correlation between the score and the Dice; negative is the useful sign (more
  uncertain, lower Dice).
- ``score``: the mean score, with the per-image scores as details (MetricsSaver's ``*_raw.csv``), from which a
  review threshold is chosen on a validation split (``scripts/demo_accuracy.py``).

Calibration of the probabilities themselves is MONAI's :class:`~monai.handlers.CalibrationError` (expected
calibration error), beside it in the evaluate configs.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.rocauc import compute_roc_auc

__all__ = ["UncertaintyRankingMetric", "rank_correlation"]


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman's rho of two 1D tensors (ties get their mean rank); NaN with fewer than 3 pairs or a constant one."""
    from scipy.stats import spearmanr

    if x.numel() < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return math.nan
    return float(spearmanr(x.double().numpy(), y.double().numpy()).statistic)


class UncertaintyRankingMetric(CumulativeIterationMetric):
    """Ranking of per-image uncertainty scores against per-image Dice (see the module docstring).

    Call with ``y_pred`` the scores and ``y`` the Dice values, each (B,) or (B, 1); :meth:`aggregate` gives the
    ``kind`` over every image seen.

    Args:
        kind: ``"auroc"``, ``"spearman"`` or ``"score"``.
        poor_dice: Dice below which a segmentation counts as poor (``auroc``).
    """

    def __init__(self, kind: str = "auroc", poor_dice: float = 0.5) -> None:
        super().__init__()
        if kind not in ("auroc", "spearman", "score"):
            raise ValueError(f"kind must be 'auroc', 'spearman' or 'score', got {kind!r}.")
        self.kind, self.poor_dice = kind, float(poor_dice)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("UncertaintyRankingMetric needs the Dice values as y.")
        score = torch.as_tensor(y_pred).float().reshape(-1, 1)
        return score if self.kind == "score" else torch.cat((score, torch.as_tensor(y).float().reshape(-1, 1)), 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        pairs = self.get_buffer()
        if not isinstance(pairs, torch.Tensor) or pairs.numel() == 0:
            return torch.tensor(math.nan)
        pairs = pairs[~torch.isnan(pairs).any(1)]
        if self.kind == "score":
            return pairs[:, 0].mean() if pairs.numel() else torch.tensor(math.nan)
        score, dice = pairs[:, 0], pairs[:, 1]
        if self.kind == "spearman":
            return torch.tensor(rank_correlation(score, dice))
        poor = (dice < self.poor_dice).float()
        if poor.numel() == 0 or poor.min() == poor.max():
            return torch.tensor(math.nan)
        return torch.tensor(float(compute_roc_auc(score, poor)))
