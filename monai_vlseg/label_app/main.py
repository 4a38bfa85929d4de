"""MONAI Label app serving the monai-vlseg bundles (``main.py`` of the app folder): the text-guided ones with the
report text of each request, the image-only ones without.

Lay an app folder out with ``python -m monai_vlseg.label_app.prepare --bundle bundles/ua_vls --app APP`` and start
it with::

    monailabel start_server --app APP --studies STUDIES --conf models ua_vls

``--conf models`` names bundles under ``APP/model/`` (comma-separated; ``all`` or none: every bundle there). The
app serves local bundles only and never contacts the model zoo (MONAI Label's ``zoo_source`` is not read).
Other ``--conf`` options are passed to :class:`TextBundleInferTask` (``empty_text``, ``load_strict``, ``preload``).

Active learning: ``POST /scoring/uncertainty`` scores the unlabelled images with a bundle's uncertainty, and
``POST /activelearning/most_uncertain`` returns the most uncertain one (``lib/activelearning``).
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask

import monai_vlseg

from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random

try:  # the app folder's own lib/ (written by prepare, editable per app) ...
    from lib.activelearning import MostUncertain, UncertaintyScoring
    from lib.infers import TextBundleInferTask
except ImportError:  # ... or the installed package's, when imported as monai_vlseg.label_app.main
    from monai_vlseg.label_app.lib.activelearning import MostUncertain, UncertaintyScoring
    from monai_vlseg.label_app.lib.infers import TextBundleInferTask

logger = logging.getLogger(__name__)


def local_bundles(model_dir: str, models: str | None) -> dict[str, str]:
    """Bundle folders ``{name: model_dir/name}`` for the comma-separated ``models`` (``all`` or empty: every folder
    of ``model_dir`` holding ``configs/metadata.json``). A name without a folder is an error: nothing is downloaded."""
    names = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not names or names == ["all"]:
        found = sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []
        names = [n for n in found if os.path.isfile(os.path.join(model_dir, n, "configs", "metadata.json"))]
        if not names:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"no bundles in {model_dir}: lay one out with `python -m monai_vlseg.label_app.prepare --bundle "
                f"bundles/<name> --app {os.path.dirname(model_dir)}`",
            )
    bundles = {}
    for name in names:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(os.path.join(path, "configs", "metadata.json")):
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"bundle '{name}' not found at {path} (this app serves local bundles only): lay it out with "
                f"`python -m monai_vlseg.label_app.prepare --bundle bundles/{name} --app {os.path.dirname(model_dir)}`",
            )
        bundles[name] = path
    return bundles


class VLSegApp(MONAILabelApp):
    """MONAI Label app with one :class:`TextBundleInferTask` per local bundle (``--conf models a,b``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.bundles = local_bundles(self.model_dir, (conf or {}).get("models"))
        logger.info(f"+++ monai-vlseg bundles: {self.bundles}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai-vlseg",
            description='Text-guided segmentation with monai-vlseg bundles; send the text as params {"text": "..."}',
            version=monai_vlseg.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            task = TextBundleInferTask(path, self.conf)
            if not task.is_valid():
                raise MONAILabelException(
                    MONAILabelError.APP_INIT_ERROR,
                    f"bundle '{name}' at {path} cannot be served: it needs configs/inference.json and models/model.pt "
                    "(or models/model.ts); see the server log above",
                )
            infers[name] = task
        return infers

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        """``/scoring/uncertainty``: every unlabelled image's uncertainty score, stored in the datastore."""
        return {"uncertainty": UncertaintyScoring(self._infers)}

    def init_strategies(self) -> dict[str, Strategy]:
        """``/activelearning/most_uncertain`` (the highest stored score first) and MONAI Label's ``random``."""
        return {"most_uncertain": MostUncertain(), "random": Random()}
