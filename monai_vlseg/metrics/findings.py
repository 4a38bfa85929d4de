# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Does a volume's mask say what its report says? Lesion count and laterality, in patient space.

A predicted mask's lesions are its connected components (26-connected, at least ``min_volume_mm3``); each lies on the
patient's left or right by its centroid's position across the midline (x = 0 of the scanner's patient coordinates),
read through the mask's affine — never from an array index, so a series stored in any orientation scores the same.
What the report says is the item's ``named_count`` (lesions it names) and ``named_sides`` (``"left"``, ``"right"``,
``"left,right"`` or ``""``), written by the report-guided CT demo set
(:mod:`monai_vlseg.datasets.synthetic.ct_reports`).

- ``count``: 1 when the number of predicted lesions equals the named count;
- ``laterality``: 1 when the sides the predicted lesions lie on are the named sides (no lesion named and none found
  agrees).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import MetaKeys, SpaceKeys

from monai_vlseg.transforms.lesions import patient_side_components

__all__ = ["FindingsAgreementMetric", "named_sides", "patient_side_components"]  # the last from transforms.lesions


class FindingsAgreementMetric(CumulativeIterationMetric):
    """Agreement of predicted lesions with the report's named count or sides (see the module docstring).

    Call with ``y_pred`` a batch of masks (B, C, X, Y, Z) — MetaTensors with their affine; channel 1 is the lesion
    of a softmax/one-hot output, channel 0 of a single-channel one — and ``y`` the reports' ``(named_count,
    named_sides)`` per image.

    Args:
        kind: ``"count"`` or ``"laterality"``.
        min_volume_mm3: smaller components are not counted as lesions.
    """

    def __init__(self, kind: str = "count", min_volume_mm3: float = 100.0) -> None:
        super().__init__()
        if kind not in ("count", "laterality"):
            raise ValueError(f"kind must be 'count' or 'laterality', got {kind!r}.")
        self.kind, self.min_volume_mm3 = kind, float(min_volume_mm3)

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        scores = []
        for pred, (count, sides) in zip(y_pred, y, strict=True):
            meta = getattr(pred, "meta", {}) or {}
            affine = getattr(pred, "affine", None)
            if affine is None:
                raise ValueError("FindingsAgreementMetric needs MetaTensor masks: the side comes from the affine.")
            fg = pred[1] if pred.shape[0] > 1 else pred[0]
            found = patient_side_components(fg, affine, meta.get(MetaKeys.SPACE, SpaceKeys.RAS.value),
                                            self.min_volume_mm3)  # fmt: skip
            if self.kind == "count":
                ok = len(found) == int(count)
            else:
                named = {s for s in str(sides).split(",") if s}
                ok = {s for s, _ in found} == named
            scores.append(float(ok))
        self.extend(torch.tensor(scores, dtype=torch.float32)[:, None])
        return torch.tensor(scores)[:, None]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore
        raise NotImplementedError  # __call__ scores whole batches (it needs each mask's affine)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        data = self.get_buffer()
        if data is None or not isinstance(data, torch.Tensor) or data.numel() == 0:
            return torch.tensor(float("nan"))
        return data.float().mean()


def named_sides(findings: Sequence[dict[str, Any]]) -> str:
    """The ``named_sides`` value of a list of finding records (``side`` of each)."""
    return ",".join(sorted({str(f["side"]) for f in findings}))
