"""MONAI Label datastore over a DICOMweb server (Orthanc, dcm4chee, a cloud PACS) for the monai-vlseg bundles.

MONAI Label 0.8.5's :class:`~monailabel.datastore.dicom.DICOMWebDatastore` is kept for what it does well (QIDO
listing, WADO-RS download into a cache, a local datastore of the cache) and changed where it does not fit this project:

- **images**: every series whose Modality is a radiograph (CR, DX, ...) or a volume (CT, MR, PT) — not only CT — and
  converted with this project's DICOM readers (:func:`monai_vlseg.io.load_dicom_image` /
  :func:`~monai_vlseg.io.load_dicom_series`: MONOCHROME1 inverted, Rescale to HU, sorted slices, gaps resampled or
  refused), not SimpleITK's, so the bundles see what ``monai_vlseg.io.ingest`` and ``scripts/pacs_infer.py`` give them;
- **the report**: the text of the study's DICOM SR (the latest complete one; TEXT items, optionally only some concept
  names), or of a CSV keyed by AccessionNumber / StudyInstanceUID (it wins over the SR), de-identified with the
  study's patient fields, written as ``<image id>.txt`` beside the cached image — where the infer and train tasks look
  for a text when a request brings none;
- **labels**: a label saved through ``PUT /datastore/label`` is checked against the image's grid and stored to the
  server as a DICOM SEG written by :func:`monai_vlseg.io.write_dicom_seg` (highdicom; one segment per label value,
  named from the request's ``label_info`` / ``labels`` or the model's ``channel_def``; SegmentAlgorithmType
  SEMIAUTOMATIC), not with dcmqi (which MONAI Label downloads from GitHub at start-up);
- **what counts as labelled**: an image series referenced by a SEG whose segments are MANUAL or SEMIAUTOMATIC. A SEG
  of AUTOMATIC segments is a model's proposal (``scripts/pacs_infer.py`` stores those) and is never taken as a label
  to train on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.datastore.utils.convert import binary_to_image
from monailabel.datastore.utils.dicom import dicom_web_download_series
from monailabel.interfaces.datastore import DefaultLabelTag
from pydicom.dataset import Dataset

from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.io import (
    PROJECTION_MODALITIES,
    VOLUME_MODALITIES,
    DicomReadError,
    dicom_files_in,
    dicom_seg_to_label,
    load_dicom_image,
    load_dicom_series,
    read_dataset,
    save_nifti,
    write_dicom_seg,
)
from monai_vlseg.io.ingest import _sr_sort_key, read_reports_csv, sr_text
from monai_vlseg.transforms.report import deidentify

__all__ = ["VLSegDICOMwebDatastore", "LABEL_ALGORITHM_TYPES"]

logger = logging.getLogger(__name__)

#: SegmentAlgorithmType of a SEG that counts as a label (a reader drew or corrected it).
LABEL_ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC")
_TAGS = {"modality": "00080060", "series": "0020000E", "study": "0020000D", "accession": "00080050"}


def _value(item: Mapping[str, Any], tag: str) -> str:
    values = (item.get(_TAGS[tag]) or {}).get("Value") or [""]
    return str(values[0]).strip()


class VLSegDICOMwebDatastore(DICOMWebDatastore):
    """See the module docstring.

    Args:
        client: the DICOMweb client (MONAI Label builds it from ``--studies`` and its settings).
        cache_path: local cache (default ``~/.cache/monailabel/dicom/<hash of the URL>``).
        search_filter: extra QIDO filters of the series listed (default: all; image modalities are kept).
        reports_csv, report_key, report_column: a CSV of report texts, joined on ``report_key`` (``AccessionNumber``
            or ``StudyInstanceUID``) through the column of that name, the text in ``report_column``.
        sr_concepts: keep only SR TEXT items with these concept names (e.g. ``("Findings", "Impression")``).
        listing_ttl_s: seconds a series listing is reused (a new study shows up after at most this long).
        fetch_by_frame: MONAI Label's frame-wise WADO download.
    """

    def __init__(
        self,
        client: Any,
        cache_path: str | None = None,
        search_filter: Mapping[str, Any] | None = None,
        reports_csv: str | None = None,
        report_key: str = "AccessionNumber",
        report_column: str = "report",
        sr_concepts: Sequence[str] | None = None,
        listing_ttl_s: float = 60.0,
        fetch_by_frame: bool = False,
    ) -> None:
        super().__init__(client, dict(search_filter or {}), cache_path, fetch_by_frame, convert_to_nifti=True)
        if report_key not in ("AccessionNumber", "StudyInstanceUID"):
            raise ValueError(f"report_key must be AccessionNumber or StudyInstanceUID, got {report_key!r}")
        self.report_key = report_key
        self.reports = read_reports_csv(reports_csv, report_key, report_column) if reports_csv else {}
        self.sr_concepts = list(sr_concepts) if sr_concepts else None
        self.listing_ttl_s = float(listing_ttl_s)
        #: label names of the served models ({model: {name: value}}), set by the app; used when a save names none
        self.labels_by_model: dict[str, dict[str, int]] = {}
        self._listing: tuple[float, dict[str, dict[str, str]]] | None = None
        self._seg_refs: dict[str, tuple[str, bool] | None] = {}  # SEG series -> (image series, is a label)

    # ------------------------------------------------------------------ listing

    def _series(self) -> dict[str, dict[str, str]]:
        """``{series UID: {modality, study, accession}}`` of the image series on the server (cached briefly)."""
        if self._listing is None or time.monotonic() - self._listing[0] > self.listing_ttl_s:
            found = self._client.search_for_series(
                search_filters=self._search_filter, fields=["AccessionNumber", "Modality", "StudyInstanceUID"]
            )
            images = PROJECTION_MODALITIES + VOLUME_MODALITIES
            series = {
                _value(s, "series"): {k: _value(s, k) for k in ("modality", "study", "accession")}
                for s in found
                if _value(s, "modality").upper() in images
            }
            self._listing = (time.monotonic(), series)
        return self._listing[1]

    def list_images(self) -> list[str]:
        return sorted(self._series())

    def _labels_on_server(self) -> dict[str, tuple[str, str]]:
        """``{image series: (study, SEG series)}`` of the labels (SEGs of MANUAL/SEMIAUTOMATIC segments; the newest
        per image when there are several)."""
        images = self._series()
        out: dict[str, tuple[str, str]] = {}
        for s in self._client.search_for_series(search_filters={"Modality": "SEG"}):
            study, seg_series = _value(s, "study"), _value(s, "series")
            if seg_series not in self._seg_refs:
                meta = Dataset.from_json(self._client.retrieve_series_metadata(study, seg_series)[0])
                refs = meta.get("ReferencedSeriesSequence") or []
                kinds = {str(x.get("SegmentAlgorithmType", "")).upper() for x in meta.get("SegmentSequence") or []}
                self._seg_refs[seg_series] = (
                    (str(refs[0].SeriesInstanceUID), bool(kinds) and kinds <= set(LABEL_ALGORITHM_TYPES))
                    if refs
                    else None
                )
            ref = self._seg_refs[seg_series]
            if ref is None or not ref[1]:
                continue  # no reference, or a model's proposal (AUTOMATIC)
            if ref[0] in images:
                out[ref[0]] = (study, seg_series)
        return out

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(self._labels_on_server())

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labelled = self._labels_on_server()
        return [s for s in self.list_images() if s not in labelled]

    # ------------------------------------------------------------------ images and reports

    def _image_dir(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), image_id))

    def get_image_uri(self, image_id: str) -> str:
        """The cached NIfTI of series ``image_id`` (downloaded and converted on first use), with the study's report
        as ``<image_id>.txt`` beside it when one is found."""
        image_dir = self._image_dir(image_id)
        nii = os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz")
        if os.path.isfile(nii):
            return os.path.realpath(nii)
        if not os.path.isdir(image_dir) or not os.listdir(image_dir):
            dicom_web_download_series(None, image_id, image_dir, self._client, self._fetch_by_frame)
        files = dicom_files_in(image_dir)
        header = read_dataset(files[0], stop_before_pixels=True)
        modality = str(header.get("Modality", "")).upper()
        if modality in VOLUME_MODALITIES:
            image = load_dicom_series(files)
        elif len(files) == 1:
            image = load_dicom_image(files[0])
        else:
            raise HTTPException(
                status_code=422,
                detail=f"series {image_id}: {len(files)} {modality} images in one series; one radiograph per series "
                "is served (a 2D network segments one projection at a time)",
            )
        for note in image.warnings:
            logger.warning("series %s: %s", image_id, note)
        self._write_report(image_id, header)
        with tempfile.TemporaryDirectory() as tmp:
            converted = save_nifti(image.array, image.affine, os.path.join(tmp, f"{image_id}.nii.gz"))
            LocalDatastore.add_image(self, image_id, converted, self._dicom_info(image_id))
        return os.path.realpath(nii)

    def report_for(self, header: Dataset) -> tuple[str | None, str]:
        """The report text of the study of ``header`` and where it came from (``"csv"``, ``"sr <SOP UID>"``)."""
        key = str(header.get(self.report_key, "") or "").strip()
        if key and key in self.reports:
            return self.reports[key], "csv"
        study = str(header.StudyInstanceUID)
        best: tuple[tuple, str, str] | None = None
        for s in self._client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SR"}):
            for ds in self._client.retrieve_series(study, _value(s, "series")):
                text = sr_text(ds, self.sr_concepts)
                if text and (best is None or _sr_sort_key(ds) >= best[0]):
                    best = (_sr_sort_key(ds), text, str(ds.SOPInstanceUID))
        return (best[1], f"sr {best[2]}") if best else (None, "none")

    def _write_report(self, image_id: str, header: Dataset) -> None:
        text, source = self.report_for(header)
        txt = os.path.join(self._datastore.image_path(), f"{image_id}.txt")
        if not text:
            logger.info("series %s: no report (%s not in the CSV, no SR with text in the study)", image_id,
                        self.report_key)  # fmt: skip
            return
        text, removed = deidentify(text, header)  # the study's patient fields and any names, IDs, dates
        atomic_write_bytes(txt, (text + "\n").encode("utf-8"))
        logger.info("series %s: report from %s (%d characters, %d identifier(s) removed)", image_id, source,
                    len(text), removed)  # fmt: skip

    # ------------------------------------------------------------------ labels

    def _segment_names(self, values: Sequence[int], info: Mapping[str, Any]) -> list[str]:
        """Names of segments 1..max(values): from ``label_info`` ([{"name", "idx"}], as 3D Slicer sends), ``labels``
        ({name: value}, as /infer returns) or the ``model``'s labels; the one served model's when there is one."""
        names: dict[int, str] = {}
        for item in info.get("label_info") or []:
            if isinstance(item, Mapping) and item.get("name") is not None and item.get("idx") is not None:
                names[int(item["idx"])] = str(item["name"])
        if not names and isinstance(info.get("labels"), Mapping):
            names = {int(v): str(k) for k, v in info["labels"].items()}
        model = info.get("model")
        if not names and model in self.labels_by_model:
            names = {int(v): str(k) for k, v in self.labels_by_model[model].items()}
        if not names and len(self.labels_by_model) == 1:
            names = {int(v): str(k) for k, v in next(iter(self.labels_by_model.values())).items()}
        top = max(values) if len(values) else 0
        missing = [v for v in range(1, top + 1) if v not in names]
        if missing:
            raise HTTPException(
                status_code=400,
                detail=f"label values {missing} have no name: send params {{\"model\": \"<name>\"}} (one of "
                f"{sorted(self.labels_by_model)}), {{\"labels\": {{\"<name>\": <value>}}}} or \"label_info\"",
            )
        return [names[v] for v in range(1, top + 1)]

    def _label_on_image_grid(self, image_id: str, label_file: str) -> tuple[np.ndarray, np.ndarray]:
        """The label as an integer array on the cached image's grid (a trailing one-slice axis dropped for a
        radiograph); a label of another size or position is refused."""
        image = nib.load(self.get_image_uri(image_id))
        try:
            label = nib.load(label_file)
            data = np.asarray(label.dataobj)
        except Exception as err:
            raise HTTPException(status_code=400, detail=f"label for {image_id}: not a readable NIfTI ({err})") from None
        while data.ndim > len(image.shape) and data.shape[-1] == 1:
            data = data[..., 0]
        if data.shape != image.shape:
            raise HTTPException(
                status_code=400,
                detail=f"label for {image_id}: shape {list(np.asarray(label.dataobj).shape)} does not fit the image "
                f"{list(image.shape)}",
            )
        a, b = np.asarray(label.affine), np.asarray(image.affine)
        axes = [*range(len(image.shape)), 3]  # the image's axes and the origin (a radiograph has no third axis)
        if not np.allclose(a[:3, axes], b[:3, axes], atol=1e-3):
            raise HTTPException(status_code=400, detail=f"label for {image_id}: its affine is not the image's")
        if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
            raise HTTPException(status_code=400, detail=f"label for {image_id}: values are not integer labels")
        if data.size and data.min() < 0:
            raise HTTPException(status_code=400, detail=f"label for {image_id}: negative label values")
        return data.astype(np.uint8), b

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], label_id: str = ""
    ) -> str:
        """A final label goes to the server as a DICOM SEG over the series (and to the local cache); other tags
        (e.g. ``original``: the model's proposal) stay local."""
        image_uri = self.get_image_uri(image_id)
        converted = None
        if label_filename.endswith(".bin"):  # a raw buffer in the image's shape (MONAI Label clients may send it)
            converted = label_filename = binary_to_image(image_uri, label_filename)
        try:
            data, affine = self._label_on_image_grid(image_id, label_filename)
            with tempfile.TemporaryDirectory() as tmp:
                local = save_nifti(data, affine, os.path.join(tmp, f"{image_id}.nii.gz"))
                if label_tag == DefaultLabelTag.FINAL:
                    label_info = {**label_info, **self._store_seg(image_id, data, affine, label_info, tmp)}
                return LocalDatastore.save_label(self, image_id, local, label_tag, label_info)
        finally:
            if converted and os.path.exists(converted):
                os.unlink(converted)

    def _store_seg(self, image_id: str, data: np.ndarray, affine: np.ndarray, info: Mapping[str, Any], tmp: str):
        values = sorted(int(v) for v in np.unique(data) if v > 0)
        names = self._segment_names(values, info)
        if not names:
            raise HTTPException(status_code=400, detail=f"label for {image_id} is empty: nothing to store as a SEG")
        model = str(info.get("model") or "monai-vlseg")
        seg_path = write_dicom_seg(
            data, self._image_dir(image_id), os.path.join(tmp, "seg.dcm"), segment_label=names[0] if len(names) == 1
            else names, affine=affine, algorithm_name=model, algorithm_type="SEMIAUTOMATIC", series_number=310,
            series_description=f"MONAI Label {', '.join(names)} ({model})",
        )  # fmt: skip
        seg = read_dataset(seg_path)
        self._client.store_instances([seg])
        self._seg_refs[str(seg.SeriesInstanceUID)] = (image_id, True)
        logger.info("label of %s stored as SEG series %s (%s)", image_id, seg.SeriesInstanceUID, ", ".join(names))
        header = self._series().get(image_id, {})
        return {"SeriesInstanceUID": str(seg.SeriesInstanceUID), "StudyInstanceUID": header.get("study", ""),
                "Modality": header.get("modality", ""), "segments": names}  # fmt: skip

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """A final label not yet in the cache is read from its SEG on the server (``label_id``: the SEG series)."""
        if label_tag != DefaultLabelTag.FINAL:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        image_id = image_id or label_id
        cached = LocalDatastore.get_label_uri(self, image_id, label_tag)
        if cached and os.path.isfile(cached):
            return cached
        study_seg = self._labels_on_server().get(image_id)
        return "" if study_seg is None else self._cache_label(image_id, *study_seg)

    def _cache_label(self, image_id: str, study: str, seg_series: str) -> str:
        """The cached label of ``image_id``, read from SEG ``seg_series`` unless the cache holds that one already."""
        tag = DefaultLabelTag.FINAL
        cached = LocalDatastore.get_label_uri(self, image_id, tag)
        info = LocalDatastore.get_label_info(self, image_id, tag) if cached else {}
        if cached and os.path.isfile(cached) and (info or {}).get("SeriesInstanceUID") == seg_series:
            return cached
        self.get_image_uri(image_id)
        label_dir = os.path.join(self._datastore.label_path(tag), seg_series)
        if not os.path.isdir(label_dir) or not os.listdir(label_dir):
            dicom_web_download_series(study, seg_series, label_dir, self._client, self._fetch_by_frame)
        try:
            label = dicom_seg_to_label(dicom_files_in(label_dir)[0], self._image_dir(image_id))
        except DicomReadError as err:
            logger.warning("label %s of %s not used: %s", seg_series, image_id, err)
            return ""
        finally:
            shutil.rmtree(label_dir, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_nifti(label.array, label.affine, os.path.join(tmp, f"{image_id}.nii.gz"))
            LocalDatastore.save_label(self, image_id, path, tag, {"SeriesInstanceUID": seg_series})
        return LocalDatastore.get_label_uri(self, image_id, tag)

    def _download_labeled_data(self) -> None:
        """The cache holds exactly the server's labels: new ones are read, ones deleted there are dropped, one
        replaced there by a newer SEG is read again (one listing of the server for all of them)."""
        on_server = self._labels_on_server()
        for image_id in set(LocalDatastore.get_labeled_images(self)) - set(on_server):
            logger.info("label of %s is no longer on the server; dropped from the cache", image_id)
            LocalDatastore.remove_label(self, image_id, DefaultLabelTag.FINAL)
        for image_id, (study, seg_series) in on_server.items():
            self._cache_label(image_id, study, seg_series)
