"""MONAI Label app serving the monai-vlseg bundles (``main.py`` of the app folder): the text-guided ones with the
report text of each request, the image-only ones without.

Lay an app folder out with ``python -m monai_vlseg.label_app.prepare --bundle bundles/ua_vls --app APP`` and start
it with::

    monailabel start_server --app APP --studies STUDIES --conf models ua_vls

``--conf models`` names bundles under ``APP/model/`` (comma-separated; ``all`` or none: every bundle there). The
app serves local bundles only and never contacts the model zoo (MONAI Label's ``zoo_source`` is not read).
Other ``--conf`` options are passed to :class:`TextBundleInferTask` (``empty_text``, ``load_strict``, ``preload``).

Against a PACS, ``--studies http://HOST:PORT/dicom-web`` (Orthanc's DICOMweb root, or any DICOMweb server) serves its
image series (CR/DX radiographs, CT/MR series) through :class:`~lib.datastore.VLSegDICOMwebDatastore`: the report of
each study comes from its DICOM SR, or from a CSV (``--conf reports_csv FILE --conf report_key AccessionNumber
--conf report_column report``; ``--conf sr_concepts Findings,Impression`` keeps only those SR sections), and a
saved label goes back to the server as a DICOM SEG. ``--conf dicomweb_filter '{"Modality": "CR"}'`` narrows the
listing; ``--conf listing_ttl_s 60``: how long a listing is reused.

Training: ``POST /train/<model>`` runs the bundle's own ``train.json`` on the datastore's final labels (with each
image's report for a text-guided bundle) and replaces ``models/model.pt``, which the infer task then uses
(``lib/trainers``).

Active learning: ``POST /scoring/uncertainty`` scores the unlabelled images with a bundle's uncertainty, and
``POST /activelearning/most_uncertain`` returns the most uncertain one (``lib/activelearning``).
"""

from __future__ import annotations

import json
import logging
import os

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

import monai_vlseg

try:  # the app folder's own lib/ (written by prepare, editable per app) ...
    from lib.activelearning import MostUncertain, UncertaintyScoring
    from lib.datastore import VLSegDICOMwebDatastore
    from lib.infers import TextBundleInferTask
    from lib.trainers import TextBundleTrainTask
except ImportError:  # ... or the installed package's, when imported as monai_vlseg.label_app.main
    from monai_vlseg.label_app.lib.activelearning import MostUncertain, UncertaintyScoring
    from monai_vlseg.label_app.lib.datastore import VLSegDICOMwebDatastore
    from monai_vlseg.label_app.lib.infers import TextBundleInferTask
    from monai_vlseg.label_app.lib.trainers import TextBundleTrainTask

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
        if isinstance(self._datastore, VLSegDICOMwebDatastore):  # names of the segments of a saved label
            self._datastore.labels_by_model = {n: dict(t.labels) for n, t in infers.items() if t.labels}
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        """``/train/<model>``: every served bundle with a ``configs/train.json``."""
        trainers: dict[str, TrainTask] = {}
        for name, path in self.bundles.items():
            infer = self._infers[name]
            task = TextBundleTrainTask(path, self.conf, text_guided=infer.text_guided, dimension=infer.dimension)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_remote_datastore(self) -> Datastore:
        """A DICOMweb server (see the module docstring); XNAT and DSA as MONAI Label has them."""
        if settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
            return super().init_remote_datastore()
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            from dicomweb_client.session_utils import create_session_from_user_pass

            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX, stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )  # fmt: skip
        conf = self.conf or {}
        concepts = [c.strip() for c in conf.get("sr_concepts", "").split(",") if c.strip()]
        return VLSegDICOMwebDatastore(
            client,
            cache_path=(settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip() or None,
            search_filter=json.loads(conf.get("dicomweb_filter") or "{}"),
            reports_csv=conf.get("reports_csv") or None,
            report_key=conf.get("report_key", "AccessionNumber"),
            report_column=conf.get("report_column", "report"),
            sr_concepts=concepts or None,
            listing_ttl_s=float(conf.get("listing_ttl_s", 60)),
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        )

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        """``/scoring/uncertainty``: every unlabelled image's uncertainty score, stored in the datastore."""
        return {"uncertainty": UncertaintyScoring(self._infers)}

    def init_strategies(self) -> dict[str, Strategy]:
        """``/activelearning/most_uncertain`` (the highest stored score first) and MONAI Label's ``random``."""
        return {"most_uncertain": MostUncertain(), "random": Random()}
