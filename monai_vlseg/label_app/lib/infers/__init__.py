"""Infer tasks of the monai-vlseg MONAI Label app."""

from .text_bundle import TextBundleInferTask, text_beside_image

__all__ = ["TextBundleInferTask", "text_beside_image"]
