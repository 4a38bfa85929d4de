# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Text–mask consistency: does a predicted mask agree with what the report says?

Two per-image checks beside Dice/IoU (C2Seg, issue 5):

- **count**: the number of lesions the text states ("two infected areas", "a single polyp") against the number of
  connected components of the predicted mask;
- **laterality**: the side the text states (left / right / bilateral) against the side(s) of the image on which the
  predicted components lie.

The side convention is a parameter: on a PA chest radiograph (and by the radiological convention used for axial CT)
the patient's left is on the image's right, so ``left_on_image_right=True`` is the default. For photographs
(endoscopy, dermoscopy) "left" in a description usually means the image's left: set it to ``False``.

Images whose text states no count (or no side) score NaN for that check and are left out of the mean; when no
image of a run states one, the aggregate is NaN (absent), never 0.0. The side of a chest report is read with
:func:`monai_vlseg.transforms.report.parse_chest_findings` when it names lung zones, so a negated side ("the left
lung is clear") does not count as stated.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from monai_vlseg._lazy import lazy_exports
from monai_vlseg.transforms.lesions import mask_laterality, mask_lesions
from monai_vlseg.transforms.report import parse_chest_findings

__all__ = [
    "LATERALITY_CODES",
    "NegatedAreaMetric",
    "TextMaskConsistencyMetric",
    "mask_laterality",
    "mask_lesions",
    "parse_laterality",
    "parse_lesion_count",
]

_NUMBERS = {
    "zero": 0, "no": 0, "one": 1, "single": 1, "a": 1, "an": 1, "solitary": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
}  # fmt: skip
_FINDINGS = (
    r"areas?|regions?|lesions?|opacit(?:y|ies)|infiltrates?|consolidations?|nodules?|masses|mass|foci|focus|spots?"
    r"|patch(?:es)?|polyps?|tumou?rs?|nuclei|nucleus|moles?|nevi|nevus|findings?"
)
_NUMBER_WORDS = "|".join(sorted(_NUMBERS, key=len, reverse=True))
# a number word or digits, up to three modifiers ("infected", "medium sized", "ground-glass"), then a finding noun
_COUNT_RE = re.compile(
    rf"\b(\d+|{_NUMBER_WORDS})\s+(?:(?!(?:\d+|{_NUMBER_WORDS})\b)[\w-]+\s+){{0,3}}?({_FINDINGS})\b", re.I
)
_SIDE_RE = re.compile(r"\b(left|right|bilateral(?:ly)?|both\s+(?:sides|lungs))\b", re.I)

#: integer codes of a laterality (bit 1: image-independent patient left, bit 2: patient right)
LATERALITY_CODES = {"none": 0, "left": 1, "right": 2, "bilateral": 3}


def parse_lesion_count(text: str) -> int | None:
    """Lesion count stated in ``text`` (first "<number> [modifiers] <finding>" phrase), or None if none is stated."""
    m = _COUNT_RE.search(text or "")
    if m is None:
        return None
    word = m.group(1).lower()
    return int(word) if word.isdigit() else _NUMBERS[word]


def parse_laterality(text: str) -> str | None:
    """"left", "right" or "bilateral" as stated in ``text`` (the patient's side), or None if no side is stated.

    A chest report that names lung zones gives the sides of its (not negated) zones. Otherwise: "bilateral" /
    "both lungs", or both "left" and "right" mentioned, give "bilateral"; "unilateral" alone states no side.
    """
    chest = parse_chest_findings(text or "")
    if chest.zones or chest.sides_only:
        sides = {z.split()[1] for z in chest.zones} | set(chest.sides_only)
        return "bilateral" if len(sides) == 2 else sides.pop()
    words = {w.lower().split()[0] for w in _SIDE_RE.findall(text or "")}
    if any(w.startswith(("bilateral", "both")) for w in words) or {"left", "right"} <= words:
        return "bilateral"
    if "left" in words:
        return "left"
    if "right" in words:
        return "right"
    return None


class TextMaskConsistencyMetric(CumulativeIterationMetric):
    """Per-image agreement (1 or 0, NaN when the text states nothing) between report text and predicted mask.

    Args:
        kind: ``"count"`` (stated lesion count == number of predicted components) or ``"laterality"`` (stated side ==
            side(s) of the predicted components; a prediction with no component never agrees).
        lateral_axis: spatial axis running from the image's left to its right. MONAI's PNG and DICOM readers put
            the image's columns first (``(x, y)``), hence 0.
        left_on_image_right: radiological convention (PA radiographs, axial CT); ``False`` for photographs.
        min_area_fraction: components smaller than this fraction of the image are noise and not counted.
        reduction: MONAI metric reduction over the per-image scores (NaN ignored).

    Call with ``y_pred`` a batch-first tensor or a list of channel-first binary masks (channel 0 is the background
    when there is more than one channel; the union of the others is used) and ``y`` the list of report texts.
    """

    def __init__(
        self,
        kind: str = "count",
        lateral_axis: int = 0,
        left_on_image_right: bool = True,
        min_area_fraction: float = 0.001,
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__()
        if kind not in ("count", "laterality"):
            raise ValueError(f"kind must be 'count' or 'laterality', got {kind!r}.")
        self.kind = kind
        self.lateral_axis = lateral_axis
        self.left_on_image_right = left_on_image_right
        self.min_area_fraction = min_area_fraction
        self.reduction = reduction

    def encode_text(self, text: str) -> float:
        """The stated count, or the laterality code, of one text; NaN when the text states none."""
        value: Any = parse_lesion_count(text) if self.kind == "count" else parse_laterality(text)
        if value is None:
            return float("nan")
        return float(value if self.kind == "count" else LATERALITY_CODES[value])

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if y is None:
            raise ValueError("TextMaskConsistencyMetric needs the report texts as y.")
        texts = [y] if isinstance(y, str) else list(y)
        codes = torch.tensor([[self.encode_text(str(t))] for t in texts], dtype=torch.float32)
        if isinstance(y_pred, torch.Tensor):
            y_pred = list(y_pred)
        if len(y_pred) != len(codes):
            raise ValueError(f"{len(y_pred)} predictions but {len(codes)} texts.")
        return super().__call__(list(y_pred), list(codes), **kwargs)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore
        pred = y_pred[0]
        fg = pred[1:].sum(0) if pred.shape[0] > 1 else pred[0]
        labels, n = mask_lesions(fg, self.min_area_fraction)
        stated = float(y.reshape(-1)[0]) if y is not None else float("nan")
        if np.isnan(stated):
            score = float("nan")
        elif self.kind == "count":
            score = float(n == int(stated))
        else:
            side = mask_laterality(labels, n, self.lateral_axis, self.left_on_image_right)
            score = float(LATERALITY_CODES[side] == int(stated))
        return torch.tensor([[score]], dtype=torch.float32)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):  # no image was scored: absent
            return torch.tensor(float("nan"))
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))  # nothing stated: absent, not 0.0



class NegatedAreaMetric(CumulativeIterationMetric):
    """Per image, the fraction of the area of the findings a report negates ("no opacity in the left apex") that
    the prediction covers: 0 is right, 1 segments all of them. NaN where the report negates no visible finding;
    the aggregate is NaN (absent) when no image has one.

    Call with ``y_pred`` the binary predictions and ``y`` the masks of the negated findings (channel-first; channel 0
    is the background when there is more than one channel).
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore
        if y is None:
            raise ValueError("NegatedAreaMetric needs the negated-finding masks as y.")
        fg = (y_pred[:, 1:].sum(1) if y_pred.shape[1] > 1 else y_pred[:, 0]) > 0.5
        neg = (y[:, 1:].sum(1) if y.shape[1] > 1 else y[:, 0]) > 0.5
        dims = tuple(range(1, fg.ndim))
        area = neg.sum(dims).float()
        covered = (fg & neg).sum(dims).float()
        return torch.where(area > 0, covered / area.clamp(min=1), torch.full_like(area, float("nan")))[:, None]

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):  # no image was scored: absent
            return torch.tensor(float("nan"))
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return torch.where(not_nans > 0, f, torch.full_like(f, float("nan")))


# the ignite handler moved to monai_vlseg.engines.handlers in 0.2 (handlers sit above metrics, as in MONAI)
__getattr__, __dir__ = lazy_exports(
    __name__, {"TextMaskConsistencyHandler": "monai_vlseg.engines.handlers"}, moved=True
)
