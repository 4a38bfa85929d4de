# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""An inference run that skips a bad input instead of stopping at it.

Three pieces, one per stage of MONAI's pipeline, so that the item a transform fails on travels past the network as
a record, whatever the batch size or number of workers:

- :class:`SkipFailedDataset`: MONAI's ``Dataset`` whose items, when their transforms raise, come back as
  ``{SKIPPED_KEY: {"image", "reason", ...}}``;
- :func:`skip_failed_collate`: the ``DataLoader``'s ``collate_fn``, collating the good items and carrying the
  skipped records beside them;
- :func:`skip_failed_iteration`: the evaluator's ``iteration_update``; it logs one ERROR line per skipped input
  (file and reason), leaves them in ``engine.state.skipped_inputs`` for
  :class:`~monai_vlseg.engines.ManifestSaver`, and runs MONAI's own iteration on the good items, if any.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import Dataset, list_data_collate

from monai_vlseg.errors import InputError

__all__ = ["SKIPPED_KEY", "SkipFailedDataset", "failure_reason", "skip_failed_collate", "skip_failed_iteration"]

logger = logging.getLogger(__name__)

#: batch key of the records of skipped items (and the ``engine.state`` attribute they end up in, ``skipped_inputs``).
SKIPPED_KEY = "skipped_inputs"
_WRAPPER = re.compile(r"^applying transform <([\w.]+) object")


def failure_reason(err: BaseException, path: Any = None) -> str:
    """Why an item failed, in one line: the message of the error MONAI's ``applying transform`` wrappers hide (with
    the transform it came from), without ``path`` when the error names that file first."""
    step = None
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        m = _WRAPPER.match(str(err))
        if m is None:
            break
        step = m.group(1).rsplit(".", 1)[-1]
        err = err.__cause__
    if isinstance(err, InputError):
        same = err.path is not None and path is not None and os.path.abspath(err.path) == os.path.abspath(str(path))
        text = err.reason if same or err.path is None else str(err)
    else:
        text = f"{type(err).__name__}: {err}" + (f" (in {step})" if step and step != "Compose" else "")
    text = " ".join(text.split())
    return text if len(text) <= 500 else text[:497] + "..."


def _input_name(item: Any) -> str:
    image = item.get("image") if isinstance(item, Mapping) else item
    if isinstance(image, (list, tuple)):
        image = image[0] if image else ""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else str(image)


class SkipFailedDataset(Dataset):
    """MONAI's :class:`~monai.data.Dataset` for inference: an item whose transforms raise comes back as
    ``{SKIPPED_KEY: record}`` (the record holds the item's entries, ``image`` as a path, and ``reason``) instead of
    stopping the run. Use it with :func:`skip_failed_collate` and :func:`skip_failed_iteration`."""

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except MemoryError:
            raise
        except Exception as err:  # anything a transform raises on a bad file: unreadable, unsuitable, inconsistent
            item = self.data[index]
            scalars = (str, int, float, bool)
            record = {k: v for k, v in item.items() if isinstance(v, scalars)} if isinstance(item, Mapping) else {}
            image = _input_name(item)
            record.update(image=image, reason=failure_reason(err, image))
            return {SKIPPED_KEY: record}


def skip_failed_collate(batch: Sequence[Any]) -> Any:
    """``collate_fn`` for a :class:`SkipFailedDataset`: MONAI's ``list_data_collate`` of the good items, plus the
    records of the skipped ones under ``SKIPPED_KEY`` (an empty dict of good items when all were skipped)."""
    skipped = [b[SKIPPED_KEY] for b in batch if isinstance(b, Mapping) and SKIPPED_KEY in b]
    good = [b for b in batch if not (isinstance(b, Mapping) and SKIPPED_KEY in b)]
    out = list_data_collate(good) if good else {}
    if skipped:
        out[SKIPPED_KEY] = skipped
    return out


def skip_failed_iteration(engine: Any, batch: Any) -> Any:
    """The ``iteration_update`` of an evaluator fed by :func:`skip_failed_collate`: log one ERROR line per skipped
    input (its file and the reason, never its text), keep their records in ``engine.state.skipped_inputs``, and run
    the evaluator's own iteration on the good items (none: the network does not run and the output is ``[]``)."""
    skipped = batch.pop(SKIPPED_KEY, []) if isinstance(batch, dict) else []
    for record in skipped:
        logger.error("%s: skipped (%s)", record["image"], record["reason"])
    engine.state.skipped_inputs = skipped
    if isinstance(batch, dict) and not batch:
        return []
    return engine._iteration(engine, batch)
