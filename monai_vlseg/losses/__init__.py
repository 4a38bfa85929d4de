"""Losses of the monai-vlseg methods."""

from .cacl import CaCLLoss, InfoNCELoss, cacl_soft_targets, soft_info_nce
from .seu import SEULoss
from .text_supervised import CLIPContrastiveLoss, TextSupervisedLoss, colour_affinity_loss, rgb_to_lab

__all__ = [
    "CLIPContrastiveLoss",
    "CaCLLoss",
    "InfoNCELoss",
    "SEULoss",
    "TextSupervisedLoss",
    "cacl_soft_targets",
    "colour_affinity_loss",
    "rgb_to_lab",
    "soft_info_nce",
]
