"""MONAI transforms of monai_vlseg."""

from .text import RandTextDropoutd, SetTextd, TokenizeText, TokenizeTextd, normalize_text

__all__ = ["normalize_text", "RandTextDropoutd", "SetTextd", "TokenizeText", "TokenizeTextd"]
