"""MONAI transforms of monai_vlseg: text (tokenise, drop, set) and image/mask handling."""

from .image import (
    BinarizeMask,
    BinarizeMaskd,
    EnsureChannels,
    EnsureChannelsd,
    SaveOverlayd,
)
from .keywords import SelectKeywords, SelectKeywordsd
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
    "EnsureChannels",
    "EnsureChannelsd",
    "RandTextDropoutd",
    "SaveOverlayd",
    "SelectKeywords",
    "SelectKeywordsd",
    "SetTextd",
    "TokenizeText",
    "TokenizeTextd",
    "normalize_text",
]
