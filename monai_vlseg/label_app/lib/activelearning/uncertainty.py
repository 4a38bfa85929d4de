"""Most-uncertain-first active learning over the per-image uncertainty score of the bundles' inference
(:class:`monai_vlseg.transforms.UncertaintyMapd`: the mean normalised entropy over the mask and its edge band).

- ``POST /scoring/uncertainty`` runs :class:`UncertaintyScoring`: each unlabelled image through an infer task (its
  text from the image's ``.txt``, as ``/infer`` without a text), its score stored in the datastore's image info under
  :data:`SCORE_KEY`, with the model that gave it. Images the task cannot run (no text, an unreadable file) are left
  unscored and listed in the result.
- ``POST /activelearning/most_uncertain`` runs :class:`MostUncertain`: the unlabelled image with the highest stored
  score (ties: the image id), or nothing when no unlabelled image has a score (run the scoring first).

MONAI Label 0.8.5's own ``Epistemic`` strategy orders by the time since an image was last served, not by its score,
so it is not used here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

#: image-info key of the stored score (and ``<key>_model``: the infer task that gave it).
SCORE_KEY = "vlseg_uncertainty"


class UncertaintyScoring(ScoringMethod):
    """Score every unlabelled image with one infer task's uncertainty (see the module docstring).

    Args:
        infers: the app's infer tasks by model name; the request's ``model`` picks one (default: the first).
        key: image-info key of the score.
    """

    def __init__(self, infers: Mapping[str, Any], key: str = SCORE_KEY) -> None:
        super().__init__("Uncertainty of the model's mask (mean entropy over the mask and its edge band)")
        self.infers, self.key = dict(infers), key

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        if not self.infers:
            raise ValueError("no infer task to score with")
        model = request.get("model") or next(iter(self.infers))
        task = self.infers[model]
        scores: dict[str, float] = {}
        skipped: dict[str, str] = {}
        for image_id in datastore.get_unlabeled_images():
            try:
                uri = datastore.get_image_uri(image_id)  # a remote datastore fetches (and registers) the image here
                label, result = task({"image": uri, "result_extension": ".nii.gz"})
            except Exception as err:  # noqa: BLE001 - one image that cannot be scored does not stop the others
                skipped[image_id] = str(getattr(err, "detail", None) or err)[:200]
                logger.warning("uncertainty scoring: %s skipped (%s)", image_id, skipped[image_id])
                continue
            if isinstance(label, str) and os.path.isfile(label):
                os.remove(label)
            score = (result or {}).get("uncertainty_score")
            if score is None:
                skipped[image_id] = "the infer task returned no uncertainty_score (uncertainty off in inference.json?)"
                continue
            scores[image_id] = float(score)
            datastore.update_image_info(image_id, {self.key: scores[image_id], f"{self.key}_model": model})
        logger.info("uncertainty scoring with %s: %d scored, %d skipped", model, len(scores), len(skipped))
        return {"model": model, "scores": scores, "skipped": skipped}


class MostUncertain(Strategy):
    """The unlabelled image with the highest stored uncertainty score (see the module docstring)."""

    def __init__(self, key: str = SCORE_KEY) -> None:
        super().__init__("Most uncertain unlabelled image first (run /scoring/uncertainty before)")
        self.key = key

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        scored = {}
        for image_id in datastore.get_unlabeled_images():
            value = (datastore.get_image_info(image_id) or {}).get(self.key)
            if value is not None:
                scored[image_id] = float(value)
        if not scored:
            logger.info("most_uncertain: no unlabelled image has a score; run /scoring/uncertainty first")
            return None
        best = max(sorted(scored), key=scored.get)
        return {"id": best, self.key: scored[best]}
