"""MONAI Label train task for the monai-vlseg bundles: the bundle's own ``train.json`` on the datastore's labels, with
each image's report text for the text-guided bundles.

MONAI Label 0.8.5's :class:`~monailabel.tasks.train.bundle.BundleTrainTask` cannot run these bundles as they are:
its datalist holds only ``image`` and ``label`` (a text-guided network needs the ``text``), it overrides
``train#dataset#data`` (the bundle's text-length check and run record read ``datalist``) and it inserts a
``CheckpointLoader`` at the head of ``train#handlers`` (which shifts the handler that ``training_state`` names by index).
:class:`TextBundleTrainTask` keeps its request options and runs the bundle's ``training`` with:

- a datalist file (``<bundle>/monailabel/datalist_<run>.json``: ``training`` / ``validation`` split of the labelled
  images of the network's dimensions — radiographs for a 2D bundle, volumes for a 3D one —, ``val_split`` of the
  request) passed as the bundle's ``datalist``; each item's ``text`` is the report the
  datastore found for the image (``<image id>.txt`` beside it: the study's SR or the reports CSV). A text-guided bundle
  leaves out labelled images without a report, and says which;
- the app's configuration overrides (``configs/overrides.json``, written by ``prepare --overrides``), so the network
  trained is the one served;
- ``pretrained`` (default true): the served ``models/model.pt`` loaded into the network before the first epoch (a
  ``CheckpointLoader`` appended to ``train#handlers``);
- ``--overwrite true``: the run's best checkpoint replaces ``models/model.pt`` (with its record, ``models/model.json``),
  which the infer task reloads on its next request.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import monai.bundle
import nibabel as nib
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.train.bundle import BundleTrainTask

from monai_vlseg.datalist import write_datalist
from monai_vlseg.label_app.prepare import OVERRIDES_FILE

try:  # the app folder's lib/ (written by prepare) ... or the installed package's
    from lib.infers.text_bundle import text_beside_image
except ImportError:
    from monai_vlseg.label_app.lib.infers.text_bundle import text_beside_image

__all__ = ["TextBundleTrainTask", "OVERRIDES_FILE"]

logger = logging.getLogger(__name__)

class TextBundleTrainTask(BundleTrainTask):
    """Train a bundle of this project on the datastore's final labels (see the module docstring).

    Args:
        path: the bundle folder (``<app>/model/<name>``).
        conf: the server's ``--conf`` options.
        text_guided: the bundle reads a report (its infer task has a text tokeniser); items then need a text.
        dimension: the network's spatial dimensions (2: radiographs, 3: CT/MR volumes); the datastore's labelled
            images of the other kind (one server serves both) are left out.
    """

    def __init__(
        self, path: str, conf: Mapping[str, str] | None, text_guided: bool, dimension: int, **kwargs: Any
    ) -> None:
        kwargs.setdefault("load_strict", True)
        super().__init__(path, dict(conf or {}), **kwargs)
        self.text_guided = bool(text_guided)
        self.dimension = int(dimension)

    def config(self) -> dict[str, Any]:
        options = super().config()
        for k in ("multi_gpu", "gpus", "tracking", "tracking_uri", "tracking_experiment_name"):
            options.pop(k, None)  # one process, the bundle's own logging
        options.update(max_epochs=10, val_split=0.2, run_id="training")
        return options

    def _fetch_datalist(self, request: Mapping[str, Any], datastore: Datastore) -> list[dict[str, Any]]:
        items, no_text, other = [], [], []
        for d in datastore.datalist():
            if not d or not d.get("label"):
                continue
            if len(nib.load(d["image"]).shape) != self.dimension:
                other.append(os.path.basename(d["image"]))
                continue
            item = {"image": d["image"], "label": d["label"]}
            if self.text_guided:
                text, _ = text_beside_image(d["image"])
                if not text:
                    no_text.append(os.path.basename(d["image"]))
                    continue
                item.update(text=text, text_source="report")
            items.append(item)
        if other:
            logger.info("%d labelled image(s) not %dD left out: %s", len(other), self.dimension, ", ".join(other))
        if no_text:
            logger.warning("%d labelled image(s) without a report left out: %s", len(no_text), ", ".join(no_text))
        if not items:
            why = " with a report (an SR in the study, or a reports CSV)" if self.text_guided else ""
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT, f"no labelled {self.dimension}D image{why} to train on"
            )
        return items

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        request = dict(request)
        items = self._fetch_datalist(request, datastore)
        train, val = self._partition_datalist(items, {"val_split": float(request.get("val_split", 0.2))})
        if not val:
            logger.warning("too few labelled images to hold any out: validation runs on the %d training image(s)",
                           len(train))  # fmt: skip
            val = list(train)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_name = f"monailabel-{stamp}"
        datalist = write_datalist(
            {"training": train, "validation": val, "meta": {"source": "MONAI Label datastore", "laterality": "patient"}},
            os.path.join(self.bundle_path, "monailabel", f"datalist_{run_name}.json"),
            relative=False,  # the datastore's cache, wherever it is
        )
        max_epochs = int(request.get("max_epochs", 10))
        overrides: dict[str, Any] = {
            "bundle_root": self.bundle_path,
            "datalist": datalist,
            "max_epochs": max_epochs,
            "min_epochs": min(int(self.bundle_config.get("min_epochs", 1) or 1), max_epochs),
            "run_name": run_name,
            "overwrite": True,
        }
        ckpt = os.path.join(self.bundle_path, "models", "model.pt")
        if request.get("pretrained", True) and os.path.isfile(ckpt):
            loader = {"_target_": "CheckpointLoader", "load_path": ckpt, "load_dict": {"model": "@network"},
                      "strict": bool(self.load_strict), "map_location": "cpu"}  # fmt: skip
            overrides["train#handlers"] = [*self.bundle_config.get("train#handlers", []), loader]
        configs = [self.bundle_config_path]
        extra = os.path.join(self.bundle_path, "configs", OVERRIDES_FILE)
        if os.path.isfile(extra):
            configs.append(extra)
        logger.info("training %s: %d image(s), %d for validation, %d epoch(s); run %s", self.bundle_path, len(train),
                    len(val), max_epochs, run_name)  # fmt: skip
        monai.bundle.run(
            run_id=str(request.get("run_id") or "training"),
            meta_file=self.bundle_metadata_path,
            config_file=configs,
            **overrides,
        )
        run_dir = os.path.join(self.bundle_path, "runs", run_name)
        return {"run": run_dir, "checkpoint": ckpt, "training": len(train), "validation": len(val),
                "datalist": datalist}  # fmt: skip
