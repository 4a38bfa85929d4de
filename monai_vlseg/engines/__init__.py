# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""What MONAI's engines (``SupervisedTrainer`` / ``SupervisedEvaluator``) need beyond MONAI's own: batch preparation,
inferers, ignite handlers, the whole training state for resuming a run, and the pieces of an inference run that
skips bad inputs and records what it did."""

from .checkpoint import RandomStates, TrainingStateLoader, TrainingStateSaver, training_objects
from .handlers import (
    EarlyStopAfterHandler,
    FindingsAgreementHandler,
    ManifestSaver,
    NegatedAreaHandler,
    TextMaskConsistencyHandler,
    UncertaintyRankingHandler,
)
from .inferers import PromptedDiffusionInferer, TextSlidingWindowInferer
from .prepare_batch import PromptedDiffusionPrepareBatch, ReportsPrepareBatch
from .skipping import SkipFailedDataset, failure_reason, skip_failed_collate, skip_failed_iteration

__all__ = [
    "EarlyStopAfterHandler",
    "FindingsAgreementHandler",
    "ManifestSaver",
    "NegatedAreaHandler",
    "PromptedDiffusionInferer",
    "PromptedDiffusionPrepareBatch",
    "ReportsPrepareBatch",
    "RandomStates",
    "SkipFailedDataset",
    "TextMaskConsistencyHandler",
    "TextSlidingWindowInferer",
    "UncertaintyRankingHandler",
    "TrainingStateLoader",
    "TrainingStateSaver",
    "training_objects",
    "failure_reason",
    "skip_failed_collate",
    "skip_failed_iteration",
]
