"""MONAI transforms of monai_vlseg: report text (findings, de-identification, chest findings), text (tokenise, drop,
set) and image/mask handling."""

from .image import (
    BinarizeMask,
    BinarizeMaskd,
    CheckInputd,
    EnsureChannels,
    EnsureChannelsd,
    InputSpec,
    SaveOverlayd,
)
from .keywords import SelectKeywords, SelectKeywordsd
from .lesions import KeepReportedFindingsd
from .report import PrepareReportd, SaveReportReviewd
from .text import (
    RandTextDropoutd,
    SetTextd,
    TokenizeText,
    TokenizeTextd,
    normalize_text,
)

__all__ = [
    "BinarizeMask",
    "BinarizeMaskd",
    "CheckInputd",
    "EnsureChannels",
    "EnsureChannelsd",
    "InputSpec",
    "KeepReportedFindingsd",
    "PrepareReportd",
    "RandTextDropoutd",
    "SaveOverlayd",
    "SaveReportReviewd",
    "SelectKeywords",
    "SelectKeywordsd",
    "SetTextd",
    "TokenizeText",
    "TokenizeTextd",
    "normalize_text",
]
