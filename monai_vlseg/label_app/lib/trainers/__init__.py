"""Train tasks of the monai-vlseg MONAI Label app."""

from .text_bundle import OVERRIDES_FILE, TextBundleTrainTask

__all__ = ["OVERRIDES_FILE", "TextBundleTrainTask"]
