"""Ignite handlers the bundles need beyond MONAI's own."""

from __future__ import annotations

from typing import Callable

from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

__all__ = ["EarlyStopAfterHandler"]


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
