# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers the bundles need beyond MONAI's own: early stopping after a minimum of epochs, and the text–mask
consistency metric (:mod:`monai_vlseg.metrics.consistency`) for MONAI evaluators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler, IgniteMetricHandler

from monai_vlseg.metrics.consistency import TextMaskConsistencyMetric

__all__ = ["EarlyStopAfterHandler", "TextMaskConsistencyHandler"]


class EarlyStopAfterHandler(EarlyStopHandler):
    """MONAI's :class:`~monai.handlers.EarlyStopHandler`, attached to the trainer, whose patience only starts to
    count after ``min_epochs`` epochs (UA-VLS: patience 20 after a 20-epoch minimum).

    Args:
        patience: validations without improvement before training stops.
        score_function: ``f(trainer) -> float``, higher is better, e.g. the evaluator's key metric.
        min_epochs: epochs always trained.
        interval: check every ``interval`` epochs (the validation interval), after the ValidationHandler.
        min_delta, cumulative_delta: as in ignite's EarlyStopping.
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable,
        min_epochs: int = 0,
        interval: int = 1,
        min_delta: float = 0.0,
        cumulative_delta: bool = False,
    ) -> None:
        super().__init__(patience, score_function, None, min_delta, cumulative_delta, epoch_level=True)
        self.min_epochs, self.interval = min_epochs, interval

    def attach(self, engine: Engine) -> None:
        self.set_trainer(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        if engine.state.epoch < self.min_epochs and self._handler is not None:
            self._handler.counter = 0


class TextMaskConsistencyHandler(IgniteMetricHandler):
    """Ignite handler of :class:`TextMaskConsistencyMetric` for MONAI evaluators.

    Reads ``pred`` from the evaluator's (decollated) output and the report string ``text_key`` from its (decollated)
    batch, so evaluate configs add it like any other metric::

        "val_count_accuracy": {"_target_": "monai_vlseg.engines.TextMaskConsistencyHandler", "kind": "count"}

    Per-image scores go to ``engine.state.metric_details`` (MetricsSaver writes them).
    """

    def __init__(
        self,
        kind: str = "count",
        lateral_axis: int = 0,
        left_on_image_right: bool = True,
        min_area_fraction: float = 0.001,
        pred_key: str = "pred",
        text_key: str = "text",
        save_details: bool = True,
    ) -> None:
        metric = TextMaskConsistencyMetric(kind, lateral_axis, left_on_image_right, min_area_fraction)
        self.pred_key, self.text_key = pred_key, text_key
        super().__init__(metric_fn=metric, save_details=save_details)

    def iteration_completed(self, engine: Any) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):  # not decollated: batch-first tensors and lists
            preds, texts = outputs[self.pred_key], batch[self.text_key]
        else:
            preds = [o[self.pred_key] for o in outputs]
            texts = [b[self.text_key] for b in _as_list(batch)]
        if not isinstance(texts, Sequence) or isinstance(texts, str):
            texts = [texts]
        self.update((preds, [str(t) for t in texts]))


def _as_list(batch: Any) -> list:
    return list(batch) if isinstance(batch, (list, tuple)) else [batch]
