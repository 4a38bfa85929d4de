# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""What MONAI's engines (``SupervisedTrainer`` / ``SupervisedEvaluator``) need beyond MONAI's own: batch preparation,
inferers and ignite handlers."""

from .handlers import EarlyStopAfterHandler, NegatedAreaHandler, TextMaskConsistencyHandler
from .inferers import PromptedDiffusionInferer
from .prepare_batch import PromptedDiffusionPrepareBatch

__all__ = [
    "EarlyStopAfterHandler",
    "NegatedAreaHandler",
    "PromptedDiffusionInferer",
    "PromptedDiffusionPrepareBatch",
    "TextMaskConsistencyHandler",
]
