"""Losses of the monai-vlseg methods."""

from .cacl import CaCLLoss, InfoNCELoss, cacl_soft_targets, soft_info_nce
from .seu import SEULoss
from .text_supervised import CLIPContrastiveLoss, TextSupervisedLoss

__all__ = [
    "CLIPContrastiveLoss",
    "CaCLLoss",
    "InfoNCELoss",
    "SEULoss",
    "TextSupervisedLoss",
    "cacl_soft_targets",
    "soft_info_nce",
]
