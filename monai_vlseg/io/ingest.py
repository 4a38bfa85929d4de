# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""DICOM export folder -> MONAI datalist.

A research-PACS export (a plain tree with any file names, or a DICOMDIR) is scanned and grouped by study and series:

- every single-frame grey CR/DX (and DX-like MG/XA/RF/SC/OT/IO/PX) image becomes one 2D item;
- every CT/MR/PT series becomes one 3D item (slices sorted along the normal, spacing from the positions; a series
  with a missing slice or irregular spacing is resampled onto a regular grid at its true positions, a wider gap or
  two different images at one position is reported and skipped, see :func:`monai_vlseg.io.load_dicom_series`);

each written as NIfTI (``<out>/images/<modality>_<uid hash>.nii.gz``: keeps 16-bit/HU values and the spacing, which
a PNG would not; MONAI's ``LoadImaged`` reads it) with the pixel rules of :mod:`monai_vlseg.io.dicom`. The report text
comes from a CSV keyed by AccessionNumber or StudyInstanceUID, else from the study's DICOM SR (TEXT content items,
e.g. FINDINGS / IMPRESSION). Items keep ``dicom_sources`` (absolute paths of the source instances, in slice order)
for :class:`monai_vlseg.io.SaveDicomSegd`. Files that are corrupt, not DICOM or not a supported image are reported
(path and reason: logged, returned and written to ``dicom_export_report.json``) and skipped; one bad file never
stops the batch and every output is written atomically.

CLI::

    python -m monai_vlseg.io.ingest EXPORT_DIR OUT_DIR [--reports reports.csv --key AccessionNumber
        --text-column report] [--voi] [--split test]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from monai_vlseg.datalist import write_datalist
from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.transforms.report import deidentify
from monai_vlseg.io.dicom import (
    PROJECTION_MODALITIES,
    VOLUME_MODALITIES,
    DicomReadError,
    _check_grey,
    load_dicom_image,
    load_dicom_series,
    read_dataset,
    save_nifti,
)

__all__ = ["DicomExportResult", "build_dicom_datalist", "read_reports_csv", "scan_dicom_folder", "sr_text", "main"]

logger = logging.getLogger(__name__)

#: Basic Text, Enhanced, Comprehensive, Comprehensive 3D and Extensible SR storage.
SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
    "1.2.840.10008.5.1.4.1.1.88.35",
}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_KEYS = ("AccessionNumber", "StudyInstanceUID")


@dataclass
class _Record:
    path: str
    study: str
    series: str
    sop: str
    modality: str
    accession: str
    instance_number: int


@dataclass
class DicomScan:
    """What :func:`scan_dicom_folder` found: radiographs, series, report texts per study and the skipped files."""

    images: list[_Record] = field(default_factory=list)
    series: dict[tuple[str, str], list[_Record]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)  # StudyInstanceUID -> SR text
    errors: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    warnings: list[str] = field(default_factory=list)


@dataclass
class DicomExportResult:
    """The datalist written by :func:`build_dicom_datalist` and what went wrong on the way."""

    datalist_path: str
    report_path: str
    split: str
    items: list[dict[str, Any]]
    errors: list[dict[str, str]]
    warnings: list[str]

    @property
    def datalist(self) -> dict[str, list[dict[str, Any]]]:
        return {self.split: self.items}


def _skip(errors: list[dict[str, str]], path: str, reason: str) -> None:
    logger.warning("skipped %s: %s", path, reason)
    errors.append({"path": path, "reason": reason})


def sr_text(ds: Dataset, concepts: Sequence[str] | None = None) -> str:
    """The TEXT content items of a structured report, in document order, joined by spaces.

    Args:
        ds: a Basic/Enhanced/Comprehensive SR dataset.
        concepts: keep only TEXT items whose concept name (CodeMeaning) is one of these, case-insensitive
            (e.g. ``("Findings", "Impression")``); all TEXT items by default.
    """
    wanted = {c.strip().lower() for c in concepts} if concepts else None
    parts: list[str] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if str(item.get("ValueType", "")).upper() == "TEXT":
                names = item.get("ConceptNameCodeSequence") or []
                name = str(names[0].get("CodeMeaning", "")).strip().lower() if names else ""
                text = str(item.get("TextValue", "")).strip()
                if text and (wanted is None or name in wanted):
                    parts.append(text)
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return " ".join(parts)


def read_reports_csv(path: str, key_column: str, text_column: str) -> dict[str, str]:
    """``{key: report text}`` from a CSV (``,``, ``;`` or tab separated, UTF-8 with or without BOM).

    Raises:
        ValueError: a column is missing (the message names the file and the columns it has).
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(8192)
        f.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(f, dialect=dialect)
        columns = [c.strip() for c in reader.fieldnames or []]
        for col in (key_column, text_column):
            if col not in columns:
                raise ValueError(f"{path}: no column '{col}' (columns: {', '.join(columns) or 'none'})")
        texts: dict[str, str] = {}
        for row in reader:
            row = {(k or "").strip(): v for k, v in row.items()}
            key, text = str(row.get(key_column) or "").strip(), str(row.get(text_column) or "").strip()
            if not key or not text:
                continue
            if key in texts and texts[key] != text:
                logger.warning("%s: several reports for %s '%s'; the first is used", path, key_column, key)
                continue
            texts[key] = text
    return texts


def _files(export_dir: str, errors: list[dict[str, str]]) -> list[str]:
    """Instance files of a DICOMDIR (when ``export_dir`` is one or holds one), else every file in the tree."""
    dicomdir = None
    if os.path.isfile(export_dir) and os.path.basename(export_dir).upper() == "DICOMDIR":
        dicomdir, export_dir = export_dir, os.path.dirname(export_dir)
    elif os.path.isfile(os.path.join(export_dir, "DICOMDIR")):
        dicomdir = os.path.join(export_dir, "DICOMDIR")
    if dicomdir is not None:
        from pydicom.fileset import FileSet

        try:
            paths = []
            for inst in FileSet(read_dataset(dicomdir)):
                if os.path.isfile(inst.path):
                    paths.append(os.path.abspath(inst.path))
                else:
                    _skip(errors, inst.path, "listed in the DICOMDIR but missing")
            return sorted(paths)
        except (DicomReadError, ValueError, KeyError, AttributeError, NotImplementedError) as err:
            _skip(errors, dicomdir, f"DICOMDIR unreadable ({err}); scanning the folder instead")
    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"'{export_dir}' is not a folder (nor a DICOMDIR).")
    out = []
    for root, dirs, names in os.walk(export_dir):
        dirs.sort()
        out += [os.path.abspath(os.path.join(root, n)) for n in sorted(names) if n.upper() != "DICOMDIR"]
    return out


def _sr_sort_key(ds: Dataset) -> tuple:
    return (
        str(ds.get("CompletionFlag", "")).upper() == "COMPLETE",
        str(ds.get("ContentDate", "")),
        str(ds.get("ContentTime", "")),
        int(ds.get("InstanceNumber") or 0),
    )


def scan_dicom_folder(
    export_dir: str,
    projection_modalities: Sequence[str] = PROJECTION_MODALITIES,
    volume_modalities: Sequence[str] = VOLUME_MODALITIES,
    sr_concepts: Sequence[str] | None = None,
) -> DicomScan:
    """Read the headers of every file in ``export_dir`` and sort them into radiographs, series and reports.

    Non-DICOM, unreadable, colour, multi-frame and non-image instances (other than SR reports) are listed in
    ``errors`` with the reason; a study's report text is the latest (completed first) SR's TEXT items.
    """
    scan = DicomScan()
    best_sr: dict[str, tuple] = {}
    series: dict[tuple[str, str], list[_Record]] = defaultdict(list)
    seen: dict[str, str] = {}  # SOPInstanceUID -> first file
    for path in _files(os.fspath(export_dir), scan.errors):
        try:
            ds = read_dataset(path, stop_before_pixels=True)
            sop_class = str(ds.get("SOPClassUID", "") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", ""))
            if sop_class == _DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
                continue
            modality = str(ds.get("Modality", "")).strip().upper()
            study = str(ds.get("StudyInstanceUID", "")).strip()
            if sop_class in SR_SOP_CLASSES or modality == "SR":
                text = sr_text(ds, sr_concepts)
                if not text:
                    msg = f"{path}: structured report without TEXT content; not used"
                    logger.warning(msg)
                    scan.warnings.append(msg)
                elif study and (study not in best_sr or _sr_sort_key(ds) >= best_sr[study][0]):
                    best_sr[study] = (_sr_sort_key(ds), text)
                continue
            rec = _Record(
                path, study, str(ds.get("SeriesInstanceUID", "")).strip(), str(ds.get("SOPInstanceUID", "")).strip(),
                modality, str(ds.get("AccessionNumber", "") or "").strip(), int(ds.get("InstanceNumber") or 0),
            )  # fmt: skip
            if not (rec.study and rec.series and rec.sop):
                raise DicomReadError(path, "missing Study/Series/SOP Instance UID")
            if rec.sop in seen:
                raise DicomReadError(path, f"same SOPInstanceUID as {seen[rec.sop]} (a copy); not used twice")
            if modality not in projection_modalities and modality not in volume_modalities:
                what = "not an image" if "Rows" not in ds else "unsupported modality"
                sop_name = getattr(ds.get("SOPClassUID"), "name", sop_class)
                raise DicomReadError(path, f"{what} (Modality {modality or 'missing'}, SOP class {sop_name})")
            _check_grey(ds, path, need_pixels=False)
            frames = int(ds.get("NumberOfFrames") or 1)
            if frames > 1:
                kind = "enhanced/multi-frame" if modality in volume_modalities else "cine"
                raise DicomReadError(path, f"{kind} image with {frames} frames: only single-frame images are read")
        except DicomReadError as err:
            _skip(scan.errors, path, err.reason)
            continue
        except Exception as err:  # malformed header values (e.g. a non-numeric InstanceNumber)
            _skip(scan.errors, path, f"unusable header ({type(err).__name__}: {err})")
            continue
        seen[rec.sop] = path
        if modality in volume_modalities:
            series[(rec.study, rec.series)].append(rec)
        else:
            scan.images.append(rec)
    scan.series = dict(series)
    scan.reports = {study: v[1] for study, v in best_sr.items()}
    scan.images.sort(key=lambda r: (r.study, r.series, r.instance_number, r.path))
    return scan


def _uid_name(modality: str, uid: str) -> str:
    return f"{modality.lower() or 'img'}_{hashlib.sha1(uid.encode()).hexdigest()[:16]}.nii.gz"


def build_dicom_datalist(
    export_dir: str,
    output_dir: str,
    reports: str | None = None,
    key: str = "AccessionNumber",
    key_column: str | None = None,
    text_column: str = "report",
    split: str = "test",
    voi: bool | Sequence[float] = False,
    sr_concepts: Sequence[str] | None = None,
    datalist_name: str = "datalist.json",
) -> DicomExportResult:
    """Convert a DICOM export folder into NIfTI images and a MONAI decathlon datalist with report texts.

    Args:
        export_dir: the export (a folder tree with any file names, or holding / being a DICOMDIR).
        output_dir: receives ``images/``, the datalist and ``dicom_export_report.json``.
        reports: CSV of report texts (optional).
        key: DICOM attribute that joins the CSV: ``"AccessionNumber"`` or ``"StudyInstanceUID"``.
        key_column: the CSV column holding ``key`` values (default: named like ``key``).
        text_column: the CSV column holding the report text.
        split: datalist section of the items (``"test"`` for inference).
        voi: pixel rule, see :func:`monai_vlseg.io.dicom.dicom_pixels` (default: modality values, e.g. HU).
        sr_concepts: keep only SR TEXT items with these concept names (e.g. ``("Findings", "Impression")``).
        datalist_name: file name of the datalist in ``output_dir``.

    Items: ``image`` (NIfTI), ``text`` (when a report was found; de-identified with
    :func:`monai_vlseg.transforms.report.deidentify` and the study's patient fields) and its ``text_source``
    (``report``), ``dicom_sources``, ``modality``,
    ``study_instance_uid``, ``series_instance_uid`` (and ``sop_instance_uid`` for radiographs).
    """
    if key not in _KEYS:
        raise ValueError(f"key must be one of {_KEYS}, got {key!r}.")
    output_dir = os.path.abspath(output_dir)
    csv_texts = read_reports_csv(reports, key_column or key, text_column) if reports else {}
    scan = scan_dicom_folder(export_dir, sr_concepts=sr_concepts)
    errors, warnings = list(scan.errors), list(scan.warnings)
    image_dir = os.path.join(output_dir, "images")
    items: list[dict[str, Any]] = []

    def text_for(rec: _Record) -> str | None:
        value = rec.accession if key == "AccessionNumber" else rec.study
        return csv_texts.get(value) or scan.reports.get(rec.study)

    def add(rec: _Record, image: Any, uid: str, extra: dict[str, str]) -> None:
        path = save_nifti(image.array, image.affine, os.path.join(image_dir, _uid_name(rec.modality, uid)))
        item: dict[str, Any] = {"image": path}
        text = text_for(rec)
        if text:  # the study's patient fields and any names, IDs, dates go before the datalist stores the text
            item["text"], _ = deidentify(text, read_dataset(rec.path, stop_before_pixels=True))
            item["text_source"] = "report"  # a report of the study (CSV or SR): monai_vlseg.datalist.TEXT_SOURCES
        else:
            msg = f"{rec.path}: no report text ({key} not in the CSV and no SR in the study)"
            logger.warning(msg)
            warnings.append(msg)
        item.update(dicom_sources=list(image.paths), modality=rec.modality, study_instance_uid=rec.study,
                    series_instance_uid=rec.series, **extra)  # fmt: skip
        items.append(item)
        warnings.extend(image.warnings)

    for rec in scan.images:
        try:
            image = load_dicom_image(rec.path, voi=voi)
        except DicomReadError as err:
            _skip(errors, err.path, err.reason)
            continue
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:  # malformed header values
            _skip(errors, rec.path, f"unusable image ({type(err).__name__}: {err})")
            continue
        add(rec, image, rec.sop, {"sop_instance_uid": rec.sop})
    for (_study, series_uid), recs in sorted(scan.series.items()):
        try:
            volume = load_dicom_series([r.path for r in recs], voi=voi)
        except DicomReadError as err:
            errors.extend({"path": path, "reason": reason} for path, reason in err.details)
            continue
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:  # malformed header values
            _skip(errors, recs[0].path, f"unusable series of {len(recs)} file(s) ({type(err).__name__}: {err})")
            continue
        errors.extend({"path": path, "reason": reason} for path, reason in volume.skipped)  # logged when found
        first = next(r for r in recs if r.path == volume.paths[0])
        add(first, volume, series_uid, {})

    # DICOM images (radiographs, CT / MR slices): reports name the patient's side
    meta = {"source": "DICOM export", "laterality": "patient"}
    datalist_path = write_datalist({split: items, "meta": meta}, os.path.join(output_dir, datalist_name))
    report = {"export_dir": os.path.abspath(export_dir), "datalist": datalist_path, "items": len(items),
              "errors": errors, "warnings": warnings}  # fmt: skip
    report_path = atomic_write_bytes(
        os.path.join(output_dir, "dicom_export_report.json"), (json.dumps(report, indent=2) + "\n").encode("utf-8")
    )
    logger.info("%d item(s) -> %s; %d file(s) skipped, %d warning(s)", len(items), datalist_path, len(errors),
                len(warnings))  # fmt: skip
    return DicomExportResult(datalist_path, report_path, split, items, errors, warnings)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns 0 when at least one item was written."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_vlseg.io.ingest",
        description="Scan a DICOM export folder (or DICOMDIR) and write NIfTI images plus a MONAI datalist.",
    )
    parser.add_argument("export_dir", help="DICOM export folder, or a DICOMDIR")
    parser.add_argument("out_dir", help="output folder (images/, datalist, dicom_export_report.json)")
    parser.add_argument("--reports", help="CSV of report texts")
    parser.add_argument("--key", default="AccessionNumber", choices=_KEYS, help="DICOM attribute joining the CSV")
    parser.add_argument("--key-column", help="CSV column of the key (default: named like --key)")
    parser.add_argument("--text-column", default="report", help="CSV column of the report text")
    parser.add_argument("--split", default="test", help="datalist section of the items")
    parser.add_argument("--voi", action="store_true", help="apply the files' VOI LUT/window (output in [0, 1])")
    parser.add_argument("--sr-concepts", nargs="*", help="SR concept names to keep, e.g. Findings Impression")
    parser.add_argument("--datalist-name", default="datalist.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        res = build_dicom_datalist(
            args.export_dir, args.out_dir, reports=args.reports, key=args.key, key_column=args.key_column,
            text_column=args.text_column, split=args.split, voi=args.voi, sr_concepts=args.sr_concepts,
            datalist_name=args.datalist_name,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with_text = sum(1 for it in res.items if it.get("text"))
    print(f"{len(res.items)} item(s) ({with_text} with text) -> {res.datalist_path}")
    if res.errors:
        print(f"{len(res.errors)} file(s) skipped (see {res.report_path}):", file=sys.stderr)
        for e in res.errors[:20]:
            print(f"  {e['path']}: {e['reason']}", file=sys.stderr)
    return 0 if res.items else 1


if __name__ == "__main__":
    sys.exit(main())
