# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Ignite handlers the bundles need beyond MONAI's own: early stopping after a minimum of epochs, the text–mask
consistency metric (:mod:`monai_vlseg.metrics.consistency`) for MONAI evaluators, and the manifest of an inference
run (what was written from which input and text, what was skipped and why)."""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Callable

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler, IgniteMetricHandler

from monai_vlseg.engines.skipping import SKIPPED_KEY
from monai_vlseg.errors import InputsSkippedError, OutputExistsError
from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.metrics.consistency import NegatedAreaMetric, TextMaskConsistencyMetric
from monai_vlseg.metrics.uncertainty import UncertaintyRankingMetric
from monai_vlseg.transforms.image import OUTPUT_NAME_KEY
from monai_vlseg.transforms.report import deidentify

__all__ = ["EarlyStopAfterHandler", "ManifestSaver", "NegatedAreaHandler", "TextMaskConsistencyHandler"]

logger = logging.getLogger(__name__)


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


class FindingsAgreementHandler(IgniteMetricHandler):
    """Ignite handler of :class:`monai_vlseg.metrics.FindingsAgreementMetric`: a volume's predicted lesions against
    the count and sides its own report names (the item's ``named_count`` / ``named_sides``, kept when
    :func:`monai_vlseg.bundle.shuffle_texts` permutes the texts), in patient space::

        "val_count_agreement": {"_target_": "monai_vlseg.engines.FindingsAgreementHandler", "kind": "count"}
    """

    def __init__(self, kind: str = "count", min_volume_mm3: float = 100.0, pred_key: str = "pred",
                 save_details: bool = True) -> None:  # fmt: skip
        from monai_vlseg.metrics.findings import FindingsAgreementMetric

        self.pred_key = pred_key
        super().__init__(metric_fn=FindingsAgreementMetric(kind, min_volume_mm3), save_details=save_details)

    def iteration_completed(self, engine: Any) -> None:
        preds, items = _preds_and_items(engine, self.pred_key)
        named = [(int(b.get("named_count", 0)), str(b.get("named_sides", ""))) for b in items]
        self.metric_fn(preds, named)


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


class UncertaintyRankingHandler(IgniteMetricHandler):
    """Ignite handler of :class:`~monai_vlseg.metrics.UncertaintyRankingMetric`: per image, the uncertainty score
    that :class:`~monai_vlseg.transforms.UncertaintyMapd` put into the evaluator's output (``score_key``) against the
    Dice of the final mask with the label (the foreground channels' mean; 1.0 when both are empty)::

        "val_uncertainty_auroc": {"_target_": "monai_vlseg.engines.UncertaintyRankingHandler", "kind": "auroc"}

    ``kind="score"`` keeps the per-image scores as details (MetricsSaver writes them beside the per-image Dice).
    """

    def __init__(
        self, kind: str = "auroc", poor_dice: float = 0.5, score_key: str = "uncertainty_score",
        pred_key: str = "pred", label_key: str = "label",
    ) -> None:  # fmt: skip
        self.score_key, self.pred_key, self.label_key = score_key, pred_key, label_key
        super().__init__(metric_fn=UncertaintyRankingMetric(kind, poor_dice), save_details=kind == "score")

    def iteration_completed(self, engine: Any) -> None:
        from monai.metrics import compute_dice

        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        scores, dices = [], []
        for o in outputs:
            pred, label = torch.as_tensor(o[self.pred_key]), torch.as_tensor(o[self.label_key])
            fg = slice(1, None) if pred.shape[0] > 1 else slice(None)  # one-hot: the classes after the background
            dice = compute_dice(pred[None, fg].float(), label[None, fg].float(), ignore_empty=False)
            scores.append(float(o[self.score_key]))
            dices.append(float(dice.nanmean()))
        self.update((torch.tensor(scores), torch.tensor(dices)))


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


class ManifestSaver:
    """The record of an inference run, for an evaluator whose data come through
    :class:`~monai_vlseg.engines.SkipFailedDataset`: ``<output_dir>/manifest.csv`` and ``manifest.json`` hold one row
    per input, in order: the input, its output name, ``written`` or ``skipped`` and why, the text the network read
    (de-identified), the files written (mask, overlay, DICOM SEG, probability and uncertainty maps, heat overlay), the
    uncertainty score (:class:`~monai_vlseg.transforms.UncertaintyMapd`), the review flag, and the checkpoint with its
    SHA-256. Both are rewritten atomically every few seconds during the run and at its end (``"complete": true``).

    An ``output_dir`` that holds an earlier run's outputs (its manifest, or masks / overlays / a review CSV of a
    version without one) is refused when the saver is made, before anything runs, unless ``overwrite``; then the
    files the earlier manifest lists are removed when the run starts, so the folder holds one run (files of a
    version without a manifest are overwritten where the new run writes the same names).
    :meth:`raise_if_skipped` (the last step of ``run`` in ``inference.json``) ends a run that skipped inputs with an
    :class:`~monai_vlseg.errors.InputsSkippedError` naming the count and the manifest: the command exits non-zero
    after every good input's outputs are written.

    Args:
        output_dir: the run's output folder.
        checkpoint: the checkpoint file the network was loaded from.
        overwrite: replace an earlier run's outputs instead of refusing the folder.
        outputs: manifest column -> item key of an output path (what the savers put into the item).
        text_key, image_key: item keys of the text and the image.
        flush_interval: seconds between rewrites during the run.
    """

    #: manifest columns, in order; ``outputs`` columns go after ``text``.
    COLUMNS = ("input", "output_name", "status", "reason", "text")
    TAIL = ("uncertainty", "needs_review", "checkpoint", "checkpoint_sha256")
    #: output columns (manifest column -> item key of the path written) when ``outputs`` is not given.
    OUTPUTS = {
        "mask": "pred_path", "overlay": "overlay_path", "dicom_seg": "pred_dicom_seg", "probability": "prob_path",
        "uncertainty_map": "uncertainty_path", "uncertainty_overlay": "uncertainty_overlay_path",
        "probability_seg": "prob_dicom_seg",
    }  # fmt: skip

    def __init__(
        self,
        output_dir: str | os.PathLike,
        checkpoint: str | os.PathLike | None = None,
        overwrite: bool = False,
        outputs: Mapping[str, str] | None = None,
        text_key: str = "text",
        image_key: str = "image",
        flush_interval: float = 5.0,
    ) -> None:
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        self.checkpoint = os.path.abspath(os.fspath(checkpoint)) if checkpoint else ""
        self.overwrite = bool(overwrite)
        self.outputs = dict(outputs or self.OUTPUTS)
        self.text_key, self.image_key, self.flush_interval = text_key, image_key, flush_interval
        self.csv_path = os.path.join(self.output_dir, "manifest.csv")
        self.json_path = os.path.join(self.output_dir, "manifest.json")
        self.rows: list[dict[str, Any]] = []
        self.checkpoint_sha256 = ""
        self._flushed = 0.0
        earlier = self.earlier_outputs()
        if earlier and not self.overwrite:
            raise OutputExistsError(
                f"{self.output_dir} holds the outputs of an earlier run ({len(earlier)} file(s), e.g. "
                f"{os.path.basename(earlier[0])}); give another output_dir, or --overwrite true to replace them"
            )

    def earlier_outputs(self, listed_only: bool = False) -> list[str]:
        """Files of an earlier run in ``output_dir``: those its manifest lists, the manifest and the review CSV, and
        (unless ``listed_only``) anything named like a mask or an overlay (``*_seg.*``, ``*_overlay.png``)."""
        if not os.path.isdir(self.output_dir):
            return []
        found = []
        if os.path.isfile(self.json_path):
            try:
                with open(self.json_path, encoding="utf-8") as f:
                    rows = json.load(f).get("items", [])
            except (OSError, ValueError, AttributeError):
                rows = []
            for row in rows:
                for col in self.outputs:
                    path = row.get(col) if isinstance(row, dict) else None
                    if path and os.path.isfile(path) and os.path.dirname(os.path.abspath(path)) == self.output_dir:
                        found.append(path)
            found += [self.json_path]
        patterns = ("manifest.csv", "report_review.csv") + (
            () if listed_only else ("*_seg.*", "*_overlay.png", "*_prob.*", "*_uncertainty.*")
        )
        found += [p for pat in patterns for p in sorted(glob.glob(os.path.join(glob.escape(self.output_dir), pat)))]
        return list(dict.fromkeys(found))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        if self.overwrite:  # only what the earlier run's manifest names; other files are overwritten where named alike
            for path in self.earlier_outputs(listed_only=True):
                os.remove(path)
        self.rows = []
        self.checkpoint_sha256 = _sha256(self.checkpoint) if self.checkpoint and os.path.isfile(self.checkpoint) else ""
        self._flushed = time.monotonic()

    def iteration_completed(self, engine: Engine) -> None:
        for record in getattr(engine.state, SKIPPED_KEY, None) or []:
            self.rows.append(self._row(record, "skipped", record.get("reason", "")))
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, list) and isinstance(batch, list):  # decollated: one dict per written item
            for b, o in zip(batch, outputs):
                self.rows.append(self._row({**b, **o}, "written"))
        if time.monotonic() - self._flushed >= self.flush_interval:
            self.save(complete=False)

    def completed(self, engine: Engine) -> None:
        self.save(complete=True)
        written = sum(r["status"] == "written" for r in self.rows)
        logger.info("inference: %d input(s) written, %d skipped; manifest: %s", written, len(self.rows) - written,
                    self.csv_path)  # fmt: skip

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """The rows of the skipped inputs."""
        return [r for r in self.rows if r["status"] == "skipped"]

    def raise_if_skipped(self) -> None:
        """Raise an :class:`~monai_vlseg.errors.InputsSkippedError` (one line: the count, the first input skipped
        and why, the manifest) when the run skipped inputs."""
        skipped = self.skipped
        if not skipped:
            return
        first = f"{skipped[0]['input']}: {skipped[0]['reason']}"
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        raise InputsSkippedError(
            f"inference wrote {len(self.rows) - len(skipped)} of {len(self.rows)} input(s) and skipped {len(skipped)} "
            f"({first}{more}); see {self.csv_path}"
        )

    def _row(self, item: Mapping[str, Any], status: str, reason: str = "") -> dict[str, Any]:
        image = item.get(self.image_key)
        meta = getattr(image, "meta", None) or {}
        source = meta.get("filename_or_obj") or image
        text = item.get(self.text_key)
        text = deidentify(text)[0] if isinstance(text, str) and text.strip() else ""
        row = {
            "input": os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(source or ""),
            "output_name": str(item.get(OUTPUT_NAME_KEY) or ""),
            "status": status,
            "reason": reason,
            "text": text,
        }
        for col, key in self.outputs.items():
            path = item.get(key) if status == "written" else None
            row[col] = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) and path else ""
        score = item.get("uncertainty_score") if status == "written" else None
        row["uncertainty"] = "" if score is None else round(float(score), 4)
        review = item.get("needs_review")
        row["needs_review"] = "" if review is None else bool(review.item() if hasattr(review, "item") else review)
        row["checkpoint"], row["checkpoint_sha256"] = self.checkpoint, self.checkpoint_sha256
        return row

    def save(self, complete: bool = True) -> None:
        """Write ``manifest.csv`` and ``manifest.json`` (atomically)."""
        columns = [*self.COLUMNS, *self.outputs, *self.TAIL]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        written = sum(r["status"] == "written" for r in self.rows)
        summary = {"inputs": len(self.rows), "written": written, "skipped": len(self.rows) - written}
        doc = {
            "complete": complete, "summary": summary,
            "checkpoint": {"path": self.checkpoint, "sha256": self.checkpoint_sha256}, "items": self.rows,
        }  # fmt: skip
        atomic_write_bytes(self.csv_path, buf.getvalue().encode("utf-8"))
        atomic_write_bytes(self.json_path, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))
        self._flushed = time.monotonic()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
