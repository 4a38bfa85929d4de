# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Clinical I/O: reading DICOM (radiographs, CT/MR series), ingesting PACS export folders into datalists
(:mod:`~monai_vlseg.io.ingest`, a CLI too), DICOM SEG output and a DICOM CT series writer.

highdicom is imported only when a SEG is written or read; the ingest names are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from .dicom import (
    IRREGULAR_SLICES,
    PROJECTION_MODALITIES,
    VOLUME_MODALITIES,
    DicomImage,
    DicomReader,
    DicomReadError,
    SeriesGeometry,
    dicom_files_in,
    dicom_pixels,
    is_dicom_file,
    load_dicom_image,
    load_dicom_series,
    pixel_spacing,
    read_dataset,
    save_nifti,
    series_geometry,
)
from .dicom_seg import DicomSeg, SaveDicomSegd, dicom_seg_to_label, read_dicom_seg, write_dicom_seg
from .series import write_dicom_series, write_report_sr

_EXPORT_NAMES = ("DicomExportResult", "build_dicom_datalist", "read_reports_csv", "scan_dicom_folder", "sr_text")

__all__ = [
    "IRREGULAR_SLICES",
    "PROJECTION_MODALITIES",
    "VOLUME_MODALITIES",
    "DicomImage",
    "DicomReadError",
    "DicomReader",
    "DicomSeg",
    "SaveDicomSegd",
    "SeriesGeometry",
    "dicom_files_in",
    "dicom_pixels",
    "dicom_seg_to_label",
    "is_dicom_file",
    "load_dicom_image",
    "load_dicom_series",
    "pixel_spacing",
    "read_dataset",
    "read_dicom_seg",
    "save_nifti",
    "series_geometry",
    "write_dicom_seg",
    "write_dicom_series",
    "write_report_sr",
    *_EXPORT_NAMES,
]


def __getattr__(name: str) -> Any:
    # lazy, so that `python -m monai_vlseg.io.ingest` does not import its own module twice
    if name in _EXPORT_NAMES:
        from monai_vlseg.io import ingest

        return getattr(ingest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
