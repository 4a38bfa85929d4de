"""Metrics beside MONAI's Dice/IoU/HD95: text–mask consistency (lesion count and laterality)."""

from .consistency import (
    TextMaskConsistencyHandler,
    TextMaskConsistencyMetric,
    mask_laterality,
    mask_lesions,
    parse_laterality,
    parse_lesion_count,
)

__all__ = [
    "TextMaskConsistencyHandler",
    "TextMaskConsistencyMetric",
    "mask_laterality",
    "mask_lesions",
    "parse_laterality",
    "parse_lesion_count",
]
