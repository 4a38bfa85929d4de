# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers the bundles need beyond MONAI's own: early stopping after a minimum of epochs, and the text–mask
consistency metric (:mod:`monai_vlseg.metrics.consistency`) for MONAI evaluators."""

from __future__ import annotations

from typing import Any, Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler, IgniteMetricHandler

from monai_vlseg.metrics.consistency import NegatedAreaMetric, TextMaskConsistencyMetric

__all__ = ["EarlyStopAfterHandler", "NegatedAreaHandler", "TextMaskConsistencyHandler"]


class EarlyStopAfterHandler(EarlyStopHandler):
    """MONAI's :class:`~monai.handlers.EarlyStopHandler`, attached to the trainer, whose patience only starts to
    count after ``min_epochs`` epochs (UA-VLS: patience 20 after a 20-epoch minimum).

    Its ``state_dict`` (the count and best score) goes into the training checkpoint of
    :class:`~monai_vlseg.engines.TrainingStateSaver`.

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

    def state_dict(self) -> dict[str, Any]:
        """Validations without improvement and the best score so far (a resumed run goes on counting)."""
        if self._handler is None:
            raise RuntimeError("EarlyStopAfterHandler has no state before it is attached to a trainer.")
        state = dict(self._handler.state_dict())
        if state.get("best_score") is not None:
            state["best_score"] = float(state["best_score"])  # a NumPy float fails torch.load(weights_only=True)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._handler is None:
            raise RuntimeError("EarlyStopAfterHandler has no state before it is attached to a trainer.")
        self._handler.load_state_dict(state)


class TextMaskConsistencyHandler(IgniteMetricHandler):
    """Ignite handler of :class:`TextMaskConsistencyMetric` for MONAI evaluators.

    Reads ``pred`` from the evaluator's (decollated) output and the report from its (decollated) batch: the
    ``reference_key`` entry when the item has one (the image's own report, which
    :func:`monai_vlseg.bundle.shuffle_texts` keeps when it permutes the texts), else ``text_key``; so evaluate
    configs add it like any other metric::

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
        reference_key: str = "reference_text",
        save_details: bool = True,
    ) -> None:
        metric = TextMaskConsistencyMetric(kind, lateral_axis, left_on_image_right, min_area_fraction)
        self.pred_key, self.text_key, self.reference_key = pred_key, text_key, reference_key
        super().__init__(metric_fn=metric, save_details=save_details)

    def iteration_completed(self, engine: Any) -> None:
        preds, items = _preds_and_items(engine, self.pred_key)
        texts = [str(b.get(self.reference_key, b.get(self.text_key))) for b in items]
        self.update((preds, texts))


class NegatedAreaHandler(IgniteMetricHandler):
    """Ignite handler of :class:`~monai_vlseg.metrics.consistency.NegatedAreaMetric`: the fraction of the findings a
    report negates that the prediction covers. Items carry the mask file of those findings under ``mask_key`` (the
    chest demo's ``test_negated`` split); it is read and resized (nearest) to the prediction's grid here, so the
    evaluate transforms need not change. Items without one score NaN (not scored), so the per-image details keep one
    row per image."""

    def __init__(self, pred_key: str = "pred", mask_key: str = "negated_label", save_details: bool = True) -> None:
        self.pred_key, self.mask_key = pred_key, mask_key
        super().__init__(metric_fn=NegatedAreaMetric(), save_details=save_details)

    def iteration_completed(self, engine: Any) -> None:
        from monai.transforms import LoadImage, Resize

        preds, items = _preds_and_items(engine, self.pred_key)
        load = LoadImage(image_only=True, ensure_channel_first=True)
        masks = [
            Resize(p.shape[1:], mode="nearest")(load(b[self.mask_key]) > 0).to(p.device) if b.get(self.mask_key)
            else torch.zeros_like(p[:1])
            for p, b in zip(preds, items)
        ]  # fmt: skip
        self.update((preds, masks))


def _preds_and_items(engine: Any, pred_key: str) -> tuple[list, list[dict]]:
    """Per-image predictions (from the evaluator's output) and batch items, decollated or not."""
    outputs, batch = engine.state.output, engine.state.batch
    if isinstance(outputs, dict):  # not decollated: batch-first tensors and lists
        preds = list(outputs[pred_key])
        keys = [k for k, v in batch.items() if isinstance(v, (list, tuple)) and len(v) == len(preds)]
        items = [{k: batch[k][i] for k in keys} for i in range(len(preds))]
        return preds, items
    items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    return [o[pred_key] for o in outputs], items
