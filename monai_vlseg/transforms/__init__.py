"""MONAI transforms of monai_vlseg: report text (findings, de-identification, chest findings), text (tokenise, drop,
set) and image/mask handling."""

from .image import (
    OUTPUT_NAME_KEY,
    BinarizeMask,
    BinarizeMaskd,
    CheckInputd,
    CheckSameSized,
    EnsureChannels,
    EnsureChannelsd,
    InputSpec,
    PatientCoordinatesd,
    SaveImageAtomicd,
    SaveOverlayd,
    output_stem,
    unique_output_names,
)
from .keywords import SelectKeywords, SelectKeywordsd
from .lesions import CheckReportFindingsd, KeepReportedFindingsd
from .report import PrepareReportd, SaveReportReviewd
from .uncertainty import SaveHeatOverlayd, UncertaintyMapd
from .text import (
    RandPickReportsd,
    RandTextDropoutd,
    SetTextd,
    TokenizeText,
    TokenizeTextd,
    normalize_text,
)

__all__ = [
    "OUTPUT_NAME_KEY",
    "BinarizeMask",
    "BinarizeMaskd",
    "CheckInputd",
    "CheckSameSized",
    "EnsureChannels",
    "EnsureChannelsd",
    "InputSpec",
    "CheckReportFindingsd",
    "KeepReportedFindingsd",
    "PatientCoordinatesd",
    "PrepareReportd",
    "RandPickReportsd",
    "RandTextDropoutd",
    "SaveHeatOverlayd",
    "SaveImageAtomicd",
    "SaveOverlayd",
    "SaveReportReviewd",
    "SelectKeywords",
    "SelectKeywordsd",
    "SetTextd",
    "TokenizeText",
    "TokenizeTextd",
    "UncertaintyMapd",
    "normalize_text",
    "output_stem",
    "unique_output_names",
]
