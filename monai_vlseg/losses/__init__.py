"""Losses of the monai-vlseg methods."""

from .cacl import CaCLLoss, InfoNCELoss, cacl_soft_targets, soft_info_nce
from .seu import SEULoss

__all__ = ["CaCLLoss", "InfoNCELoss", "SEULoss", "cacl_soft_targets", "soft_info_nce"]
