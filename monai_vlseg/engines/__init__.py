# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""What MONAI's engines (``SupervisedTrainer`` / ``SupervisedEvaluator``) need beyond MONAI's own: batch preparation,
inferers, ignite handlers, and the whole training state for resuming a run."""

from .checkpoint import RandomStates, TrainingStateLoader, TrainingStateSaver, training_objects
from .handlers import EarlyStopAfterHandler, NegatedAreaHandler, TextMaskConsistencyHandler
from .inferers import PromptedDiffusionInferer
from .prepare_batch import PromptedDiffusionPrepareBatch

__all__ = [
    "EarlyStopAfterHandler",
    "NegatedAreaHandler",
    "PromptedDiffusionInferer",
    "PromptedDiffusionPrepareBatch",
    "RandomStates",
    "TextMaskConsistencyHandler",
    "TrainingStateLoader",
    "TrainingStateSaver",
    "training_objects",
]
