# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Writing a volume as a DICOM CT series (one file per slice) with real geometry, for test and demo data.

:mod:`monai_vlseg.io.dicom` reads such a series back to the same array and affine as the volume's NIfTI file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["write_dicom_series", "write_report_sr"]

#: UID root of the generated objects (a syntactically valid 2.25 UUID-derived root; only used for synthetic data).
_UID_ROOT = "2.25."
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _uid(*parts: Any) -> str:
    """Deterministic UID under :data:`_UID_ROOT` from ``parts``."""
    import hashlib

    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return _UID_ROOT + str(int.from_bytes(digest[:16], "big"))


def write_dicom_series(
    image_hu: np.ndarray,
    spacing: Sequence[float],
    origin_lps: Sequence[float],
    folder: str | os.PathLike,
    patient_id: str = "DEMO",
    series_description: str = "synthetic abdomen CT",
    uid_seed: str | None = None,
    superior_first: bool = True,
    accession_number: str = "",
    rotate_180: bool = False,
    plane: str = "axial",
) -> list[str]:
    """Write an (x, y, z) HU volume as a DICOM CT series, one file per slice (``IM0001`` ..., no extension).

    Pixel data is stored unsigned 12-bit with RescaleSlope 1 / RescaleIntercept -1024, uncompressed (Explicit VR
    Little Endian); rows = y (posterior), columns = x (patient's left), slice k at LPS
    ``origin + k * dz * (0, 0, 1)``, ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``.

    Args:
        image_hu: (x, y, z) integer HU values in [-1024, 3071].
        spacing: (dx, dy, dz) mm.
        origin_lps: LPS position of voxel (0, 0, 0).
        folder: created if missing.
        patient_id: PatientID / PatientName.
        series_description: SeriesDescription.
        uid_seed: makes the Study/Series/Frame-of-Reference/SOP UIDs deterministic (default: the folder name).
        superior_first: number the instances from the top slice down (what CT scanners do).
        accession_number: AccessionNumber of the study (what a report CSV is keyed by).
        rotate_180: store every slice rotated by 180 degrees in plane — columns towards the patient's right, rows
            towards anterior (ImageOrientationPatient ``[-1, 0, 0, 0, -1, 0]``, the first pixel at the other corner) —
            the same patient-space volume in another stored orientation (tests that sides come from the geometry).
        plane: ``"axial"``, or ``"coronal"``: one slice per y (posterior), rows from superior to inferior, columns
            towards the patient's left (ImageOrientationPatient ``[1, 0, 0, 0, 0, -1]``, PixelSpacing (dz, dx)) — a
            reformat as scanners export it; ``superior_first`` and ``rotate_180`` apply to axial series only.

    Returns:
        the written file paths, in instance order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    arr = np.asarray(image_hu)
    if arr.ndim != 3:
        raise ValueError(f"write_dicom_series: expected an (x, y, z) volume, got shape {arr.shape}.")
    if arr.min() < -1024 or arr.max() > 3071:
        raise ValueError(f"write_dicom_series: HU values {arr.min()}..{arr.max()} outside [-1024, 3071].")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    seed = uid_seed or os.path.basename(os.path.abspath(folder))
    study, series, frame = _uid(seed, "study"), _uid(seed, "series"), _uid(seed, "frame")
    dx, dy, dz = (float(s) for s in spacing)
    if plane not in ("axial", "coronal"):
        raise ValueError(f"write_dicom_series: plane must be 'axial' or 'coronal', got {plane!r}.")
    stored = (arr.astype(np.int32) + 1024).astype(np.uint16)
    iop = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    corner = [float(origin_lps[0]), float(origin_lps[1])]
    z0 = float(origin_lps[2])
    if plane == "coronal":  # (x, y, z) -> (x, z from superior down, y): slices along y, first row the top one
        stored = np.ascontiguousarray(stored[:, :, ::-1].transpose(0, 2, 1))
        iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        z0, dy, dz = z0 + (arr.shape[2] - 1) * dz, dz, dy  # row step dz (now "dy"), slice step dy (now "dz")
        superior_first = False
    nz = stored.shape[2]
    if rotate_180 and plane == "axial":  # pixel (0, 0) at the far corner, columns and rows running the other way
        stored = stored[::-1, ::-1]
        iop = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        corner = [corner[0] + (arr.shape[0] - 1) * dx, corner[1] + (arr.shape[1] - 1) * dy]
    order = range(nz - 1, -1, -1) if superior_first else range(nz)
    paths = []
    for n, k in enumerate(order, start=1):
        sop = _uid(seed, "sop", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = os.path.join(folder, f"IM{n:04d}")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = _CT_IMAGE_STORAGE, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = patient_id, patient_id, "O", ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20200101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession_number, "1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesDescription = "CT", "monai_vlseg synthetic", series_description
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, n, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if plane == "axial" else ["DERIVED", "SECONDARY", "REFORMATTED"]
        ds.PatientPosition, ds.KVP = "FFS", 120
        ds.ImageOrientationPatient = iop
        pos = [corner[0], corner[1], z0 + k * dz] if plane == "axial" else [corner[0], corner[1] + k * dz, z0]
        ds.ImagePositionPatient = [round(v, 4) for v in pos]
        ds.SliceLocation = round(pos[2] if plane == "axial" else pos[1], 4)
        ds.PixelSpacing = [round(dy, 4), round(dx, 4)]  # row spacing, column spacing
        ds.SliceThickness = round(dz, 4)
        ds.SpacingBetweenSlices = round(dz, 4)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, columns)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_report_sr(
    path: str | os.PathLike, text: str, study_of: str | os.PathLike, uid_seed: str | None = None
) -> str:
    """Write ``text`` as a Basic Text SR (one FINDINGS TEXT item, COMPLETE, VERIFIED) in the study of the DICOM file
    ``study_of``: the radiology report beside a series, as :func:`monai_vlseg.io.ingest.sr_text` and the PACS tools
    read it. Returns the path."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    ref = dcmread(study_of, stop_before_pixels=True)
    seed = uid_seed or os.fspath(path)
    sop_class = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, _uid(seed, "sr")
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for k in ("PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):  # fmt: skip
        setattr(ds, k, ref.get(k, ""))
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = _uid(seed, "sr series"), "SR", 900, 1
    ds.Manufacturer, ds.ContentDate, ds.ContentTime = "monai_vlseg synthetic", ref.get("StudyDate", ""), "130000"
    ds.CompletionFlag, ds.VerificationFlag, ds.ValueType = "COMPLETE", "UNVERIFIED", "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    title, item, code = Dataset(), Dataset(), Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [title]
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121071", "DCM", "Findings"
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = [code]
    ds.ContentSequence = [item]
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    ds.save_as(os.fspath(path), enforce_file_format=True)
    return os.fspath(path)
