#!/usr/bin/env python
# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""PACS round trip over DICOMweb: fetch a study, run a text-guided bundle on it, store the DICOM SEG back.

QIDO-RS lists the study's series, WADO-RS retrieves the image series into a temporary folder (radiographs as
files, CT/MR series as one sub-folder each), the bundle's ``inference.json`` runs through
``monai.bundle.ConfigWorkflow`` with ``input_dir``/``text``/``dicom_seg: true``/``output_dir`` overrides, and each
SEG written is stored with STOW-RS: the binary mask (series 300) and, beside it, the probability map as a FRACTIONAL
PROBABILITY SEG (series 301; bundles with ``uncertainty`` on, the default). The SEG SOPInstanceUIDs are printed, one
a line. Nothing is stored when the bundle flagged the output ``needs_review`` (a report it cannot ground, or an
uncertainty above ``review_uncertainty``) unless ``--store-flagged``; then both series say "NEEDS REVIEW".

The report text is ``--text``, else the TEXT items of the study's structured report(s) (modality SR), newest
complete report first.

Example::

    python scripts/pacs_infer.py --url http://127.0.0.1:8042/dicom-web --study 1.2.3.4 \\
        --bundle bundles/ua_vls --ckpt bundles/ua_vls/models/model.pt --text "Bilateral pulmonary infection."
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import pydicom
import requests

logger = logging.getLogger("pacs_infer")

# series that are never bundle inputs (derived objects, reports, presentation states, ...)
NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "DOC", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "FID", "AU", "ECG"}
SINGLE_FILE_MODALITIES = {"CR", "DX", "MG", "IO", "PX", "RF", "XA", "US", "OT", "SC", "XC", "ES", "GM", "SM"}


class PacsError(RuntimeError):
    """A failure talking to the PACS or a study that cannot be processed; the message names URL and UID."""


def _value(item: dict, tag: str) -> Any:
    """First value of a DICOM JSON attribute (QIDO response), or None."""
    vals = (item.get(tag) or {}).get("Value") or []
    return vals[0] if vals else None


def _client(url: str, timeout: float):
    """A DICOMweb client, once the server answers at all: dicomweb-client retries refused connections with
    exponential back-off (half a minute), so a dead URL is caught here first, at once."""
    from dicomweb_client.api import DICOMwebClient

    _call(url, "connect", requests.get, url, timeout=timeout)  # any HTTP answer, even an error status, will do
    return DICOMwebClient(url=url.rstrip("/"), timeout=timeout)


def _call(url: str, what: str, fn, *args, **kwargs):
    """Run a dicomweb-client call, turning transport errors into PacsError naming the URL."""
    try:
        return fn(*args, **kwargs)
    except requests.exceptions.ConnectionError as e:
        raise PacsError(f"DICOMweb server {url} is unreachable ({what}): {e.__class__.__name__}") from e
    except requests.exceptions.Timeout as e:
        raise PacsError(f"DICOMweb server {url} timed out ({what})") from e
    except requests.exceptions.HTTPError as e:
        code = e.response.status_code if e.response is not None else "?"
        if code == 404:
            return None
        raise PacsError(f"DICOMweb server {url} answered HTTP {code} ({what})") from e


def _qido_raw(query_url: str, timeout: float = 60.0) -> list[dict]:
    resp = requests.get(query_url, headers={"Accept": "application/dicom+json"}, timeout=timeout)
    resp.raise_for_status()
    return resp.json() if resp.content else []


def find_study(client, url: str, study: str | None, accession: str | None) -> str:
    """The StudyInstanceUID for ``--study`` (checked to exist) or ``--accession`` (must match one study)."""
    if study:
        found = _call(url, f"QIDO study {study}", client.search_for_studies,
                      search_filters={"StudyInstanceUID": study})  # fmt: skip
        if not found:
            raise PacsError(f"study {study} not found on {url}")
        return study
    found = _call(url, f"QIDO accession {accession}", client.search_for_studies,
                  search_filters={"AccessionNumber": accession}) or []  # fmt: skip
    if not found and not accession.replace("-", "").replace(".", "").replace("_", "").isalnum():
        # Orthanc's DICOMweb plug-in does not percent-decode query values (a space or '*' never matches once
        # encoded): ask again with literal wildcards in place of the other characters, then filter exactly
        pattern = "".join(c if c.isalnum() or c in "-._" else "?" for c in accession)
        query = f"{url.rstrip('/')}/studies?AccessionNumber={pattern}"
        found = _call(url, f"QIDO accession {accession}", _qido_raw, query)
        found = [s for s in found or [] if str(_value(s, "00080050") or "").strip() == accession.strip()]
    uids = sorted({_value(s, "0020000D") for s in found} - {None})
    if not uids:
        raise PacsError(f"no study with accession number {accession} on {url}")
    if len(uids) > 1:
        raise PacsError(f"accession number {accession} matches {len(uids)} studies on {url}: {', '.join(uids)}")
    return uids[0]


def list_series(client, url: str, study: str) -> list[dict[str, Any]]:
    series = _call(url, f"QIDO series of study {study}", client.search_for_series, study_instance_uid=study) or []
    out = []
    for s in series:
        uid = _value(s, "0020000E")
        if uid:
            out.append({"uid": uid, "modality": str(_value(s, "00080060") or "").upper(),
                        "number": _value(s, "00200011")})  # fmt: skip
    if not out:
        raise PacsError(f"study {study} not found on {url} (no series)")
    return out


def retrieve(client, url: str, study: str, series_uid: str) -> list[pydicom.Dataset]:
    return _call(url, f"WADO series {series_uid} of study {study}", client.retrieve_series,
                 study_instance_uid=study, series_instance_uid=series_uid) or []  # fmt: skip


def study_report_text(client, url: str, study: str, series: list[dict[str, Any]]) -> str:
    """TEXT items of the study's SR instances (newest complete report first), de-identified with the SR's patient
    fields; '' when there is none."""
    from monai_vlseg.io.ingest import _sr_sort_key, sr_text
    from monai_vlseg.transforms.report import deidentify

    reports = []
    for s in series:
        if s["modality"] == "SR":
            reports += [ds for ds in retrieve(client, url, study, s["uid"]) if "ContentSequence" in ds]
    for ds in sorted(reports, key=_sr_sort_key, reverse=True):
        text = sr_text(ds)
        if text.strip():
            return deidentify(text, ds)[0]
    return ""


def download_images(client, url: str, study: str, series: list[dict[str, Any]], folder: str) -> list[str]:
    """Write the image series under ``folder``; returns the SOPInstanceUIDs written."""
    written = []
    for s in series:
        if s["modality"] in NON_IMAGE_MODALITIES:
            continue
        datasets = [ds for ds in retrieve(client, url, study, s["uid"]) if "PixelData" in ds]
        if not datasets:
            continue
        single = s["modality"] in SINGLE_FILE_MODALITIES or len(datasets) == 1
        target = folder if single else os.path.join(folder, s["uid"])
        os.makedirs(target, exist_ok=True)
        for ds in datasets:
            path = os.path.join(target, f"{ds.SOPInstanceUID}.dcm")
            ds.save_as(path, enforce_file_format=True)
            written.append(str(ds.SOPInstanceUID))
        logger.info("retrieved series %s (%s): %d instance(s)", s["uid"], s["modality"], len(datasets))
    if not written:
        mods = ", ".join(sorted({s["modality"] or "?" for s in series}))
        raise PacsError(f"study {study} on {url} has no image series (modalities: {mods})")
    return written


def run_bundle(bundle: str, input_dir: str, text: str, output_dir: str, overrides: Sequence[str] = (),
               ckpt: str | None = None) -> list[str]:  # fmt: skip
    """Run ``<bundle>/configs/inference.json`` (plus override files) with DICOM SEG output; the SEG paths."""
    from monai.bundle import ConfigWorkflow

    configs = os.path.join(bundle, "configs")
    kwargs: dict[str, Any] = {}
    if ckpt:
        kwargs["ckpt_path"] = os.path.abspath(ckpt)
    wf = ConfigWorkflow(
        workflow_type="infer", config_file=[os.path.join(configs, "inference.json"), *overrides],
        meta_file=os.path.join(configs, "metadata.json"), logging_file=os.path.join(configs, "logging.conf"),
        bundle_root=os.path.abspath(bundle), input_dir=input_dir, text=text, dicom_seg=True, output_dir=output_dir,
        **kwargs,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    segs = []
    for path in sorted(glob.glob(os.path.join(output_dir, "*.dcm"))):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID == pydicom.uid.SegmentationStorage:
            segs.append(path)
    return segs


def review_reasons(output_dir: str) -> str:
    """The ``report_warnings`` of the flagged rows of the bundle's ``report_review.csv`` (never the report text)."""
    path = os.path.join(output_dir, "report_review.csv")
    if not os.path.isfile(path):
        return "no report_review.csv"
    with open(path, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("needs_review") == "True"]
    return "; ".join(sorted({r.get("report_warnings") or "flagged" for r in rows})) or "flagged"


def store(client, url: str, study: str, paths: Sequence[str]) -> list[str]:
    datasets = [pydicom.dcmread(p) for p in paths]
    resp = _call(url, f"STOW to study {study}", client.store_instances, datasets=datasets)
    if resp is None:
        raise PacsError(f"DICOMweb server {url} has no STOW-RS endpoint (HTTP 404) for study {study}")
    failed = resp.get("FailedSOPSequence") if resp is not None else None
    if failed:
        uids = [str(item.get("ReferencedSOPInstanceUID", "?")) for item in failed]
        raise PacsError(f"DICOMweb server {url} refused SEG instance(s) {', '.join(uids)} of study {study}")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def pacs_infer(url: str, bundle: str, study: str | None = None, accession: str | None = None,
               text: str | None = None, overrides: Sequence[str] = (), ckpt: str | None = None,
               output_dir: str | None = None, timeout: float = 60.0, store_flagged: bool = False) -> list[str]:  # fmt: skip
    """The whole round trip; returns the stored SEG SOPInstanceUIDs. A SEG whose report the bundle flagged
    ``needs_review`` (text it cannot ground: another language, no finding, a side without a zone...) is not stored
    unless ``store_flagged``."""
    if bool(study) == bool(accession):
        raise ValueError("give exactly one of --study or --accession")
    if not os.path.isfile(os.path.join(bundle, "configs", "inference.json")):
        raise FileNotFoundError(f"{bundle} is not a bundle folder (no configs/inference.json)")
    for f in overrides:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config override file {f} not found")
    if ckpt and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"checkpoint {ckpt} not found")
    client = _client(url, timeout)
    study_uid = find_study(client, url, study, accession)
    series = list_series(client, url, study_uid)
    if not (text or "").strip():
        text = study_report_text(client, url, study_uid, series)
        if not text.strip():
            raise PacsError(f"no --text given and study {study_uid} on {url} has no SR report with TEXT items")
        chars = len(text)  # the SR can name the patient: its length is logged, never its words
        logger.info("using the study's SR: %d characters after de-identification", chars)
    with tempfile.TemporaryDirectory(prefix="pacs_infer_") as tmp:
        input_dir = os.path.join(tmp, "input")
        download_images(client, url, study_uid, series, input_dir)
        out = os.path.abspath(output_dir) if output_dir else os.path.join(tmp, "output")
        os.makedirs(out, exist_ok=True)
        segs = run_bundle(bundle, input_dir, text, out, overrides, ckpt)
        if not segs:
            raise PacsError(f"the bundle wrote no DICOM SEG for study {study_uid} (is dicom_seg supported?)")
        flagged = [p for p in segs if str(pydicom.dcmread(p, stop_before_pixels=True).get("SeriesDescription", ""))
                   .startswith("NEEDS REVIEW")]  # fmt: skip
        if flagged and not store_flagged:
            raise PacsError(
                f"not stored: the mask(s) of study {study_uid} need review ({review_reasons(out)}); fix the report "
                "text, or pass --store-flagged to store them marked 'NEEDS REVIEW'"
            )
        return store(client, url, study_uid, segs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--url", required=True, help="DICOMweb base URL, e.g. http://127.0.0.1:8042/dicom-web")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--study", help="StudyInstanceUID")
    who.add_argument("--accession", help="AccessionNumber (must match exactly one study)")
    p.add_argument("--bundle", default="bundles/ua_vls", help="bundle folder (with configs/inference.json)")
    p.add_argument("--config_overrides", nargs="*", default=[], help="JSON override file(s), e.g. configs/demo.json")
    p.add_argument("--ckpt", help="checkpoint (default: the bundle's models/model.pt)")
    p.add_argument("--text", help="report text (default: the study's DICOM SR TEXT items)")
    p.add_argument("--output_dir", help="keep the bundle's outputs (masks, overlays, SEG) here; default: temporary")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    p.add_argument("--store-flagged", action="store_true",
                   help="store SEGs whose report needs review too (their SeriesDescription says NEEDS REVIEW)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:  # stdout carries only the SEG UIDs: the bundle's logging.conf (bound while this runs) goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            uids = pacs_infer(args.url, args.bundle, args.study, args.accession, args.text, args.config_overrides,
                              args.ckpt, args.output_dir, args.timeout, args.store_flagged)  # fmt: skip
    except (PacsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # the bundle's: a bad input or a used output folder, told in one line (nothing stored)
        from monai_vlseg.errors import find_one_line_error

        brief = find_one_line_error(e)
        if brief is None:
            raise
        print(f"error: {brief}; nothing stored", file=sys.stderr)
        return 1
    for uid in uids:
        print(uid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
