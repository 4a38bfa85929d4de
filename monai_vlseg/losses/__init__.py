"""Losses of the monai-vlseg methods."""

from .seu import SEULoss

__all__ = ["SEULoss"]
