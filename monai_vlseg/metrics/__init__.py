"""Metrics beside MONAI's Dice/IoU: text–mask consistency (lesion count and laterality; for volumes in patient space,
``findings``), and an HD95 that counts an
empty prediction as a miss (with the number of such images), and how well an uncertainty score ranks the poor
segmentations.

Their ignite handler for MONAI evaluators is :class:`monai_vlseg.engines.TextMaskConsistencyHandler`."""

from monai_vlseg._lazy import lazy_exports

from .consistency import (
    NegatedAreaMetric,
    TextMaskConsistencyMetric,
    mask_laterality,
    mask_lesions,
    parse_laterality,
    parse_lesion_count,
)
from .findings import FindingsAgreementMetric, patient_side_components
from .surface import EmptyPredictionMetric, HausdorffDistanceMissMetric
from .uncertainty import UncertaintyRankingMetric, rank_correlation

__all__ = [
    "EmptyPredictionMetric",
    "FindingsAgreementMetric",
    "HausdorffDistanceMissMetric",
    "NegatedAreaMetric",
    "TextMaskConsistencyMetric",
    "UncertaintyRankingMetric",
    "mask_laterality",
    "mask_lesions",
    "parse_laterality",
    "parse_lesion_count",
    "patient_side_components",
    "rank_correlation",
]

# moved to monai_vlseg.engines in 0.2
__getattr__, __dir__ = lazy_exports(
    __name__, {"TextMaskConsistencyHandler": "monai_vlseg.engines.handlers"}, moved=True
)
