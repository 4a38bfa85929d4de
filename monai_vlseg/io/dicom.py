# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""DICOM ingest: grey radiographs and CT/MR/PT series as arrays in MONAI's layout, with their geometry.

Pixel rules (one place, used by :class:`DicomReader`, :func:`load_dicom_image`, :func:`load_dicom_series` and the
export-folder builder :mod:`monai_vlseg.io.ingest`):

- compressed transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless, RLE, JPEG baseline) are decoded by pydicom's
  plug-ins (pylibjpeg, pylibjpeg-openjpeg/-libjpeg/-rle, pyjpegls);
- the Modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence) is applied: CT comes out in HU;
- without VOI (the default) values stay modality values, 12-16 bit data keeps its full range (never truncated to
  8 bits) and MONOCHROME1 is inverted inside the modality range (``lo + hi - x``), so bright is always dense;
- with ``voi=True`` the first VOI LUT (or window centre/width) is applied and the result scaled to [0, 1] (MONOCHROME1
  becomes ``1 - x``); ``voi=(centre, width)`` applies that window instead (e.g. a CT lung window);
- a zero, missing or unparsable PixelSpacing gives a warning naming the file and falls back to ImagerPixelSpacing,
  else 1.0 mm;
- only grey images (MONOCHROME1/2) are read: colour, multi-frame X-ray (cine) and non-image objects raise a
  :class:`DicomReadError` that names the file and the reason.

Arrays follow MONAI's reader convention: spatial axes (x = column, y = row[, z = slice]), affine in RAS (as MONAI's
ITK/pydicom readers with ``affine_lps_to_ras=True``) or LPS. Series slices are sorted by ImagePositionPatient along the
slice normal and the slice spacing comes from the positions, never from SliceThickness.

A series whose slices are not on one regular grid (a missing slice, irregular spacing) is never stacked as if it were:
by default (``irregular_slices="resample"``) it is interpolated linearly along the normal onto a regular grid from
its first to its last slice, and the affine describes that grid; ``"error"`` refuses it. Two slices at one position
are one slice when their pixels are equal and an error when they differ.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from monai_vlseg.errors import InputError

__all__ = [
    "IRREGULAR_SLICES",
    "PROJECTION_MODALITIES",
    "VOLUME_MODALITIES",
    "DicomReadError",
    "DicomImage",
    "SeriesGeometry",
    "DicomReader",
    "is_dicom_file",
    "dicom_files_in",
    "read_dataset",
    "pixel_spacing",
    "dicom_pixels",
    "series_geometry",
    "load_dicom_image",
    "load_dicom_series",
    "save_nifti",
]

logger = logging.getLogger(__name__)

#: single-frame grey images read as one 2D radiograph each (DX-like).
PROJECTION_MODALITIES: tuple[str, ...] = ("CR", "DX", "MG", "XA", "RF", "SC", "OT", "IO", "PX", "RG")
#: modalities whose single-frame instances are stacked, per series, into one 3D volume.
VOLUME_MODALITIES: tuple[str, ...] = ("CT", "MR", "PT")
_GREY = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: what :func:`load_dicom_series` does with a series whose slices are not on a regular grid.
IRREGULAR_SLICES: tuple[str, ...] = ("resample", "error")


class DicomReadError(InputError):
    """A file that cannot be used as a DICOM image; ``path`` and ``reason`` are kept for reports, ``details`` lists
    (path, reason) of every file behind a series-level error."""

    def __init__(self, path: PathLike | None, reason: str = "", details: list[tuple[str, str]] | None = None) -> None:
        super().__init__(str(path) if path is not None else "<dataset>", reason)
        self.details = list(details) if details else [(self.path, reason)]


@dataclass
class SeriesGeometry:
    """Sorted slice order and the voxel grid of a series (headers only, no pixel data).

    When the slices are on a regular grid, slice k of the grid is ``paths[k]``. Otherwise (``regular`` False) the grid
    is the regular one from the first to the last slice that :func:`load_dicom_series` resamples onto, and
    ``offsets`` says where each source slice lies on it.
    """

    paths: list[str]  # in slice order (ascending position along the normal)
    datasets: list[Dataset]
    shape: tuple[int, ...]  # (columns, rows, slices) of the grid
    affine: np.ndarray  # 4x4, LPS, of the grid
    spacing: tuple[float, float, float]  # (x, y, z) in mm; z from the slice positions
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1))  # mm along the normal from the first slice
    regular: bool = True  # the slices are the grid's slices
    slice_spacing: float = 1.0  # mm: the median distance between neighbouring slices
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, path kept at its position)


@dataclass
class DicomImage:
    """A decoded image or volume: ``array`` in MONAI layout (x, y[, z]) and its 4x4 ``affine``."""

    array: np.ndarray
    affine: np.ndarray
    paths: list[str]  # source files, in slice order
    datasets: list[Dataset]  # their headers (pixel data not kept)
    spacing: tuple[float, ...]
    space: str = SpaceKeys.RAS.value
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: of a resampled series: each source slice's distance (mm) from the volume origin along the slice axis; else None
    source_positions: np.ndarray | None = None

    @property
    def header(self) -> Dataset:
        """The first source header."""
        return self.datasets[0]


def _name(path: PathLike | None, ds: Dataset | None = None) -> str:
    if path is not None:
        return str(path)
    fn = getattr(ds, "filename", None)
    return str(fn) if isinstance(fn, (str, os.PathLike)) else "<dataset>"


def _note(notes: list[str] | None, message: str) -> None:
    logger.warning(message)
    if notes is not None:
        notes.append(message)


def is_dicom_file(path: PathLike) -> bool:
    """True for a regular file with the DICOM Part 10 marker (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files_in(folder: PathLike) -> list[str]:
    """The DICOM Part 10 files directly inside ``folder`` (any names, DICOMDIR excluded), sorted by name."""
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.upper() != "DICOMDIR" and os.path.isfile(path) and is_dicom_file(path):
            out.append(path)
    return out


def _looks_dicom(path: PathLike) -> bool:
    path = os.fspath(path)
    if os.path.isdir(path):
        return bool(dicom_files_in(path))
    return path.lower().endswith((".dcm", ".dicom")) or is_dicom_file(path)


def read_dataset(path: PathLike, stop_before_pixels: bool = False) -> Dataset:
    """``pydicom.dcmread`` with errors turned into a :class:`DicomReadError` naming the file."""
    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        raise DicomReadError(path, _why_not_dicom(path)) from None
    except Exception as err:  # a corrupt file can make the parser raise almost anything
        raise DicomReadError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None


def _why_not_dicom(path: PathLike) -> str:
    """The reason a file without the 'DICM' marker is refused: DICOM data lacking the Part 10 header (a file written
    without its 128-byte preamble), or not DICOM at all."""
    try:
        with open(path, "rb") as f:  # a raw DICOM stream starts with a group 0002 (file meta) or 0008 tag
            dicom_like = f.read(2) in (b"\x02\x00", b"\x08\x00")
        if dicom_like:
            ds = pydicom.dcmread(os.fspath(path), force=True, stop_before_pixels=True, defer_size="1 KB")
            meta = getattr(ds, "file_meta", None)
            dicom_like = "SOPClassUID" in ds or (meta is not None and "TransferSyntaxUID" in meta)
    except Exception:  # a parser forced through arbitrary bytes raises almost anything
        dicom_like = False
    if dicom_like:
        return "DICOM data without the Part 10 header (no 128-byte preamble, no 'DICM'); re-save it as DICOM Part 10"
    return "not a DICOM file (no 'DICM' marker at byte 128)"


def _brief(err: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def _floats(value: Any, n: int) -> list[float] | None:
    """``n`` finite floats from a DS/FD value (single or multi-valued), else None."""
    if value is None or value == "":
        return None
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        vals = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n and all(np.isfinite(vals)) else None


def _valid_spacing(value: Any) -> tuple[float, float] | None:
    vals = _floats(value, 2)
    return (vals[0], vals[1]) if vals is not None and all(v > 0 for v in vals) else None


def pixel_spacing(ds: Dataset, path: PathLike | None = None, notes: list[str] | None = None) -> tuple[float, float]:
    """(row spacing, column spacing) in mm.

    PixelSpacing when it is valid; otherwise (zero, missing or unparsable) a warning naming the file is logged (and
    appended to ``notes``) and ImagerPixelSpacing is used, else 1.0 mm.
    """
    raw = ds.get("PixelSpacing")
    ps = _valid_spacing(raw)
    if ps is not None:
        return ps
    problem = "missing" if raw in (None, "") else f"invalid ({str(raw)!r})"
    ips = _valid_spacing(ds.get("ImagerPixelSpacing"))
    fallback, source = (ips, "ImagerPixelSpacing") if ips is not None else ((1.0, 1.0), "1.0 mm")
    _note(notes, f"{_name(path, ds)}: PixelSpacing {problem}; using {source} {list(fallback)}")
    return fallback


def _check_grey(ds: Dataset, path: PathLike | None, need_pixels: bool = True) -> None:
    """Raise unless ``ds`` is a grey image (and, with ``need_pixels``, carries pixel data)."""
    if need_pixels and not any(k in ds for k in _PIXEL_KEYWORDS):
        raise DicomReadError(_name(path, ds), "no pixel data (PixelData is absent)")
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    if pi not in _GREY:
        what = "not an image (no PhotometricInterpretation)" if not pi else f"PhotometricInterpretation {pi}"
        raise DicomReadError(_name(path, ds), f"{what}: only grey images (MONOCHROME1/2) are read")


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Range of the modality values (after the Modality LUT) that the stored bits can represent."""
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(ds.get("RescaleSlope") or 1.0)
    intercept = float(ds.get("RescaleIntercept") or 0.0)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def _compact(arr: np.ndarray) -> np.ndarray:
    """Integral values in the smallest of (u)int16/int32 that holds them, anything else float32."""
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            return arr.astype(np.float32)
        arr = rounded
    if arr.dtype.kind not in "uif" or arr.size == 0:
        return arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    for dtype in (np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dtype, copy=False)
    return arr.astype(np.float32)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing, scaled to [0, 1]."""
    function = function.upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR":  # the -0.5 / -1 offsets of the standard's LINEAR function
        center, width = center - 0.5, max(width - 1.0, 1e-6)
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def _apply_voi(arr: np.ndarray, ds: Dataset, voi: Any, path: PathLike | None, notes: list[str] | None) -> np.ndarray:
    from pydicom.pixels import apply_voi

    if isinstance(voi, (tuple, list)):
        if len(voi) != 2 or float(voi[1]) <= 0:
            raise ValueError(f"voi must be True/False or (center, width) with width > 0, got {voi!r}.")
        return _window(arr.astype(np.float64), float(voi[0]), float(voi[1]), "LINEAR_EXACT")
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi(arr, ds).astype(np.float64) / float(2**bits - 1)
    centre, width = _floats(_first(ds.get("WindowCenter")), 1), _floats(_first(ds.get("WindowWidth")), 1)
    if centre is not None and width is not None and width[0] > 0:
        return _window(arr.astype(np.float64), centre[0], width[0], str(ds.get("VOILUTFunction") or "LINEAR"))
    _note(notes, f"{_name(path, ds)}: no VOI LUT or window in the file; intensities min-max scaled to [0, 1]")
    x = arr.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / max(hi - lo, 1e-12)


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def dicom_pixels(
    ds: Dataset,
    path: PathLike | None = None,
    voi: bool | Sequence[float] = False,
    invert_monochrome1: bool = True,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Pixel values of a grey image in DICOM order: (rows, columns), or (frames, rows, columns).

    Args:
        ds: the dataset, with its pixel data.
        path: its file, for messages.
        voi: False: modality values (Rescale applied; CT in HU; integral values kept in 16 bits).
            True: the file's first VOI LUT or window, scaled to [0, 1]. (centre, width): that window, to [0, 1].
        invert_monochrome1: invert MONOCHROME1 so that high values are dense/bright, as in MONOCHROME2.
        notes: list collecting warnings.

    Raises:
        DicomReadError: no pixel data, colour data, or data that cannot be decoded.
    """
    from pydicom.pixels import apply_modality_lut

    _check_grey(ds, path)
    try:
        arr = ds.pixel_array
    except Exception as err:  # decoders raise many types; report them all the same way
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", str(ts))
        raise DicomReadError(_name(path, ds), f"pixel data cannot be decoded ({ts_name}: {err})") from None
    arr = apply_modality_lut(arr, ds)
    mono1 = invert_monochrome1 and str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    if voi is not False and voi is not None:
        out = _apply_voi(arr, ds, voi, path, notes)
        return (1.0 - out if mono1 else out).astype(np.float32)
    if mono1:
        lo, hi = _modality_range(ds)
        arr = (lo + hi) - arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
    return _compact(arr)


def _orientation(ds: Dataset) -> np.ndarray | None:
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    if iop is None:
        return None
    rc = np.asarray(iop, dtype=np.float64).reshape(2, 3)
    norms = np.linalg.norm(rc, axis=1)
    if np.any(norms < 1e-6):
        return None
    return rc / norms[:, None]


def _position(ds: Dataset) -> np.ndarray | None:
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    return None if ipp is None else np.asarray(ipp, dtype=np.float64)


def _affine(row_dir: np.ndarray, col_dir: np.ndarray, spacing_xyz: Sequence[float], origin: np.ndarray,
            slice_dir: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """4x4 LPS affine of voxel (i = column, j = row, k = slice)."""
    normal = np.cross(row_dir, col_dir) if slice_dir is None else slice_dir
    aff = np.eye(4)
    aff[:3, 0] = row_dir * spacing_xyz[0]  # along a row: the column index grows
    aff[:3, 1] = col_dir * spacing_xyz[1]
    aff[:3, 2] = normal * spacing_xyz[2]
    aff[:3, 3] = origin
    return aff


def _image_geometry(ds: Dataset, spacing_rc: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """LPS affine and (x, y, z) spacing of one image; projection images get the identity orientation at 0."""
    rc = _orientation(ds)
    row_dir, col_dir = (rc[0], rc[1]) if rc is not None else (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    origin = _position(ds)
    thickness = _floats(ds.get("SliceThickness"), 1)
    spacing = (spacing_rc[1], spacing_rc[0], thickness[0] if thickness is not None and thickness[0] > 0 else 1.0)
    return _affine(row_dir, col_dir, spacing, origin if origin is not None else np.zeros(3)), spacing


def series_geometry(
    headers: Sequence[tuple[str, Dataset]], notes: list[str] | None = None, position_tol: float = 1e-3
) -> SeriesGeometry:
    """Sort the slices of one series and derive its voxel grid (from headers; no pixel data is read).

    Slices whose size, orientation or pixel spacing differ from the majority, or that lack ImagePositionPatient /
    ImageOrientationPatient, are skipped (and listed); slices at an already taken position are listed in
    ``duplicates``. The slice spacing is the median distance between neighbouring positions along the slice normal.
    When a distance differs from it (a gap, irregular spacing), ``regular`` is False, a warning names the slices, and
    the grid spans the first to the last slice with ``round(span / median) + 1`` slices.

    Args:
        headers: (path, dataset) pairs of one series; datasets may lack pixel data.
        notes: list collecting warnings (they are logged too).
        position_tol: mm; positions closer than this along the normal are duplicates.

    Raises:
        DicomReadError: no usable slice.
    """
    notes = [] if notes is None else notes
    skipped: list[tuple[str, str]] = []
    usable = []
    for path, ds in headers:
        rc, pos = _orientation(ds), _position(ds)
        if rc is None or pos is None:
            reason = "missing or invalid ImagePositionPatient/ImageOrientationPatient: cannot place the slice"
            skipped.append((path, reason))
            continue
        key = (int(ds.Rows), int(ds.Columns), tuple(np.round(rc.ravel(), 4)))
        usable.append((path, ds, rc, pos, key))
    if not usable:
        first = headers[0][0] if headers else None
        raise DicomReadError(first, "series has no slice with position and orientation", skipped)
    majority, _ = Counter(u[4] for u in usable).most_common(1)[0]
    kept = []
    for u in usable:
        if u[4] != majority:
            skipped.append((u[0], f"size/orientation {u[4][:2]} {list(u[4][2])} differs from the series "
                                  f"({majority[:2]} {list(majority[2])})"))  # fmt: skip
        else:
            kept.append(u)
    rc = kept[0][2]
    normal = np.cross(rc[0], rc[1])
    kept.sort(key=lambda u: (float(u[3] @ normal), int(u[1].get("InstanceNumber") or 0), u[0]))
    unique, duplicates = [kept[0]], []
    for u in kept[1:]:
        if abs(float((u[3] - unique[-1][3]) @ normal)) < position_tol:
            duplicates.append((u[0], unique[-1][0]))
        else:
            unique.append(u)
    first_path, first_ds = unique[0][0], unique[0][1]
    sr, sc = pixel_spacing(first_ds, first_path, notes)
    spacings = {_valid_spacing(u[1].get("PixelSpacing")) for u in unique}
    if len(spacings) > 1:
        _note(notes, f"{first_path}: PixelSpacing differs between slices {sorted(map(str, spacings))}; using the first")
    positions = np.array([u[3] for u in unique])
    offsets = (positions - positions[0]) @ normal
    n_grid, regular = len(unique), True
    if len(unique) > 1:
        dist = np.diff(offsets)
        step = float(np.median(dist))
        off_grid = np.abs(dist - step) > 0.01 * step + position_tol
        for g in np.nonzero(dist > 1.5 * step)[0]:
            _note(notes, f"{unique[g + 1][0]}: gap of {dist[g]:.3f} mm before this slice (slice spacing {step:.3f} mm)")
        if off_grid.any() and not (dist > 1.5 * step).any():
            _note(notes, f"{first_path}: irregular slice spacing ({dist.min():.3f}-{dist.max():.3f} mm; median "
                         f"{step:.3f} mm)")  # fmt: skip
        regular = not off_grid.any()
        if regular:
            dz = step
        else:  # the regular grid from the first to the last slice nearest to the median spacing
            n_grid = max(int(round(float(offsets[-1]) / step)), 1) + 1
            dz = float(offsets[-1]) / (n_grid - 1)
        inplane = positions - np.outer(positions @ normal, normal)
        if np.max(np.linalg.norm(inplane - inplane[0], axis=1)) > 0.01 * max(sr, sc) * len(unique) + 1e-2:
            _note(notes, f"{first_path}: slices are not stacked along the normal (gantry tilt?); "
                         "the affine uses the slice normal")  # fmt: skip
    else:
        thickness = _floats(first_ds.get("SliceThickness"), 1)
        dz = step = thickness[0] if thickness is not None and thickness[0] > 0 else 1.0
        _note(notes, f"{first_path}: single-slice series; slice spacing {dz} mm from "
                     f"{'SliceThickness' if thickness else 'the 1.0 mm default'}")  # fmt: skip
    for path, reason in skipped:
        logger.warning("%s: skipped (%s)", path, reason)
    spacing = (sc, sr, dz)
    affine = _affine(rc[0], rc[1], spacing, positions[0], normal)
    shape = (int(first_ds.Columns), int(first_ds.Rows), n_grid)
    return SeriesGeometry(
        [u[0] for u in unique], [u[1] for u in unique], shape, affine, spacing, list(notes), skipped,
        offsets=offsets, regular=regular, slice_spacing=step, duplicates=duplicates,
    )  # fmt: skip


def _resample_slices(slices: Sequence[np.ndarray], offsets: np.ndarray, n: int, dz: float) -> np.ndarray:
    """(n, rows, cols) float32: slice j at ``j * dz`` interpolated linearly between the two source slices around it
    (``offsets``: ascending, from 0 to ``(n - 1) * dz``); a grid slice on a source slice is that slice."""
    grid = np.minimum(np.arange(n) * dz, offsets[-1])
    below = np.clip(np.searchsorted(offsets, grid, side="right") - 1, 0, len(offsets) - 2)
    weight = np.clip((grid - offsets[below]) / np.diff(offsets)[below], 0.0, 1.0)
    weight[np.isclose(weight, 0.0, atol=1e-6)], weight[np.isclose(weight, 1.0, atol=1e-6)] = 0.0, 1.0
    out = np.empty((n, *slices[0].shape), dtype=np.float32)
    for j, (k, w) in enumerate(zip(below, weight, strict=True)):
        a, b = slices[k].astype(np.float32), slices[k + 1].astype(np.float32)
        out[j] = a if w == 0.0 else b if w == 1.0 else (1.0 - w) * a + w * b
    return out


def _strip_pixels(ds: Dataset) -> Dataset:
    for k in _PIXEL_KEYWORDS:
        if k in ds:
            del ds[k]
    return ds


def load_dicom_image(
    path: PathLike,
    voi: bool | Sequence[float] = False,
    invert_monochrome1: bool = True,
    affine_lps_to_ras: bool = True,
    dataset: Dataset | None = None,
) -> DicomImage:
    """One single-frame grey DICOM image (a radiograph, or one CT/MR slice) as a 2D (x, y) array.

    Args:
        path: the file.
        voi, invert_monochrome1: see :func:`dicom_pixels`.
        affine_lps_to_ras: RAS affine (MONAI's default) instead of DICOM's LPS.
        dataset: the already read dataset of ``path`` (saves a read).

    Raises:
        DicomReadError: not DICOM, no/undecodable pixel data, colour or multi-frame.
    """
    path = os.fspath(path)
    ds = read_dataset(path) if dataset is None else dataset
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomReadError(path, f"multi-frame image ({frames} frames): only single-frame images are read")
    notes: list[str] = []
    arr = dicom_pixels(ds, path, voi=voi, invert_monochrome1=invert_monochrome1, notes=notes)
    affine, spacing = _image_geometry(ds, pixel_spacing(ds, path, notes))
    space = SpaceKeys.LPS.value
    if affine_lps_to_ras:
        affine, space = _LPS_TO_RAS @ affine, SpaceKeys.RAS.value
    return DicomImage(np.ascontiguousarray(arr.T), affine, [path], [_strip_pixels(ds)], spacing[:2], space, notes)


def _read_slice(path: str, voi: Any, invert_monochrome1: bool, notes: list[str]) -> np.ndarray:
    ds = read_dataset(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomReadError(path, f"multi-frame image ({frames} frames) inside a single-frame series")
    return dicom_pixels(ds, path, voi=voi, invert_monochrome1=invert_monochrome1, notes=notes)


def _check_grid(geom: SeriesGeometry, irregular_slices: str, max_slice_gap: float) -> None:
    """Raise when ``irregular_slices`` refuses the series' spacing, or a gap is wider than ``max_slice_gap``."""
    if geom.regular:
        return
    folder = os.path.dirname(geom.paths[0])
    dist = np.diff(geom.offsets)
    g = int(np.argmax(np.abs(dist - geom.slice_spacing)))
    what = (f"{'gap' if dist[g] > geom.slice_spacing else 'distance'} of {dist[g]:.3f} mm between "
            f"{os.path.basename(geom.paths[g])} and {os.path.basename(geom.paths[g + 1])} (slice spacing "
            f"{geom.slice_spacing:.3f} mm)")  # fmt: skip
    if irregular_slices == "error":
        raise DicomReadError(folder, f"slices are not on a regular grid: {what}; irregular_slices='error' refuses "
                                     "the series ('resample' interpolates it onto a regular grid)")  # fmt: skip
    g = int(np.argmax(dist))
    if dist[g] > max_slice_gap * geom.slice_spacing * 1.01 + 1e-3:
        raise DicomReadError(folder, f"gap of {dist[g]:.3f} mm between {os.path.basename(geom.paths[g])} and "
                                     f"{os.path.basename(geom.paths[g + 1])} is wider than max_slice_gap "
                                     f"{max_slice_gap:g} x the slice spacing {geom.slice_spacing:.3f} mm: slices "
                                     "missing there are not invented")  # fmt: skip


def load_dicom_series(
    paths: Sequence[PathLike] | PathLike,
    voi: bool | Sequence[float] = False,
    invert_monochrome1: bool = True,
    affine_lps_to_ras: bool = True,
    irregular_slices: str = "resample",
    max_slice_gap: float = 2.0,
) -> DicomImage:
    """The slices of one CT/MR/PT series as a 3D (x, y, z) volume.

    Args:
        paths: the slice files (any order, any names), or a folder holding them.
        voi, invert_monochrome1: see :func:`dicom_pixels` (Rescale is applied per slice).
        affine_lps_to_ras: RAS affine (MONAI's default) instead of DICOM's LPS.
        irregular_slices: what to do when the slices are not on one regular grid (a missing slice, irregular
            spacing). ``"resample"``: interpolate linearly along the slice normal onto the regular grid from the first
            to the last slice (spacing near the median slice distance; a grid slice on a source slice is that slice;
            nothing is extrapolated); ``source_positions`` then says where the source slices lie.
            ``"error"``: raise.
        max_slice_gap: with ``"resample"``, the widest distance between neighbouring slices, in units of the median
            slice distance, that is interpolated across (2: one missing slice); a wider gap raises.

    Unreadable, non-image or inconsistent slices are skipped and listed in ``skipped`` (never stopping the series);
    gaps, irregular spacing, resampling and dropped duplicate slices (equal pixels at one position) are listed in
    ``warnings``.

    Raises:
        DicomReadError: no usable slice, slices of more than one series, different pixels at one position, or
            slices off a regular grid that ``irregular_slices`` / ``max_slice_gap`` refuse.
    """
    if irregular_slices not in IRREGULAR_SLICES:
        raise ValueError(f"irregular_slices must be one of {IRREGULAR_SLICES}, got {irregular_slices!r}.")
    if not max_slice_gap >= 1.0:
        raise ValueError(f"max_slice_gap must be >= 1 (slice spacings), got {max_slice_gap!r}.")
    if isinstance(paths, (str, os.PathLike)):
        paths = dicom_files_in(paths) if os.path.isdir(paths) else [paths]
    headers, skipped = [], []
    for p in map(os.fspath, paths):
        try:
            ds = read_dataset(p, stop_before_pixels=True)
            _check_grey(ds, p, need_pixels=False)  # missing pixel data shows when decoding
            headers.append((p, ds))
        except DicomReadError as err:
            skipped.append((err.path, err.reason))
    if not headers:
        first = os.fspath(paths[0]) if paths else None
        raise DicomReadError(first, f"no readable DICOM slice ({skipped[0][1] if skipped else 'no files'})", skipped)
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise DicomReadError(headers[0][0], f"files of {len(series)} series given; load one series at a time")
    notes: list[str] = []
    try:
        geom = series_geometry(headers, notes)
    except DicomReadError as err:
        raise DicomReadError(err.path, err.reason, skipped + err.details) from None
    skipped += geom.skipped
    slices: dict[str, np.ndarray] = {}
    for p in geom.paths:
        try:
            slices[p] = _read_slice(p, voi, invert_monochrome1, notes)
        except DicomReadError as err:
            skipped.append((err.path, err.reason))
            logger.warning("%s: skipped (%s)", err.path, err.reason)
    for dup, kept in geom.duplicates:  # one position twice: the same image (dropped) or a conflict (error)
        try:
            pixels = _read_slice(dup, voi, invert_monochrome1, notes) if kept in slices else None
        except DicomReadError as err:
            pixels = None
            skipped.append((err.path, err.reason))
        if pixels is not None and not np.array_equal(pixels, slices[kept]):
            reason = (f"{os.path.basename(dup)} and {os.path.basename(kept)} are at the same slice position with "
                      "different pixel data (two acquisitions mixed in one series?); load them as separate series")
            raise DicomReadError(os.path.dirname(dup), reason, skipped + [(dup, reason), (kept, reason)])
        if pixels is not None:
            _note(notes, f"{dup}: same position and pixel data as {kept}; dropped as a duplicate")
        elif kept not in slices:
            skipped.append((dup, f"duplicate slice position of the undecodable {kept}"))
    if not slices:
        raise DicomReadError(geom.paths[0], f"no slice of the series could be decoded ({skipped[-1][1]})", skipped)
    if len(slices) != len(geom.paths):  # re-derive the grid without the undecodable slices
        kept_headers = [(p, h) for p, h in zip(geom.paths, geom.datasets, strict=True) if p in slices]
        more: list[str] = []
        geom = series_geometry(kept_headers, more)
        notes += [m for m in more if m not in notes]
    try:
        _check_grid(geom, irregular_slices, max_slice_gap)
    except DicomReadError as err:
        raise DicomReadError(err.path, err.reason, skipped + err.details) from None
    stack = [slices[p] for p in geom.paths]
    source_positions = None
    if geom.regular:
        vol = np.stack(stack, 0)  # numpy promotes mixed slice dtypes (per-slice Rescale)
    else:
        n, dz = geom.shape[2], geom.spacing[2]
        vol = _resample_slices(stack, geom.offsets, n, dz)
        source_positions = geom.offsets.copy()
        _note(notes, f"{os.path.dirname(geom.paths[0])}: {len(stack)} slices not on a regular grid; resampled "
                     f"(linear along the slice normal) onto {n} slices at {dz:.3f} mm")  # fmt: skip
    vol = _compact(vol) if voi is False else vol.astype(np.float32)
    affine, space = geom.affine, SpaceKeys.LPS.value
    if affine_lps_to_ras:
        affine, space = _LPS_TO_RAS @ affine, SpaceKeys.RAS.value
    array = np.ascontiguousarray(vol.transpose(2, 1, 0))  # (z, rows, cols) -> (x, y, z)
    return DicomImage(array, affine, geom.paths, geom.datasets, geom.spacing, space, notes, skipped, source_positions)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: PathLike) -> str:
    """Write ``array`` (MONAI layout, RAS ``affine``) as NIfTI (gzipped for ``.nii.gz``), atomically."""
    import gzip

    import nibabel as nib

    from monai_vlseg.files import atomic_write_bytes

    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    if os.fspath(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=1, mtime=0)
    return atomic_write_bytes(path, data)


class _Delegated:
    """What another MONAI reader returned, for :meth:`DicomReader.get_data` to hand back to it."""

    def __init__(self, reader: ImageReader, obj: Any, name: str) -> None:
        self.reader, self.obj, self.name = reader, obj, name


class _Failed:
    """An input that cannot be read, for :meth:`DicomReader.get_data` to raise. When ``read`` raises, MONAI's
    ``LoadImage`` tries every other registered reader (ITK reads an RGB or multi-frame DICOM as a 3D image) and at
    last reports them all, the reason buried under their tracebacks; raised from ``get_data`` it reaches the user."""

    def __init__(self, error: InputError) -> None:
        self.error = error


class DicomReader(ImageReader):
    """MONAI image reader for DICOM radiographs and series with the pixel rules of this module.

    Give it to ``LoadImage(d)`` as ``reader="monai_vlseg.io.DicomReader"`` (or an instance). A DICOM file gives a 2D
    image (x, y); a folder of slices gives a 3D volume (x, y, z) of one series; several inputs are stacked as channels,
    as MONAI's readers do. Anything that is not DICOM (PNG, NIfTI, ...) is passed to the reader that MONAI's
    ``LoadImage`` would pick by suffix, so one config loads both. An input it cannot read raises an
    :class:`~monai_vlseg.errors.InputError` (a :class:`DicomReadError` for DICOM) naming the file and the reason,
    rather than being handed on to MONAI's other readers (ITK's series reader would stack a series with a missing
    slice on a regular grid).

    Args:
        voi: False (modality values, e.g. HU), True (the file's VOI LUT/window to [0, 1]) or (centre, width).
        invert_monochrome1: invert MONOCHROME1 images.
        affine_lps_to_ras: RAS affine (MONAI's convention) instead of DICOM's LPS.
        fallback: read non-DICOM inputs with MONAI's default readers (else they raise).
        irregular_slices, max_slice_gap: a series whose slices are not on a regular grid is resampled onto one
            (``"resample"``, the default) or refused (``"error"``); see :func:`load_dicom_series`. The meta data of a
            resampled series holds ``source_slice_positions``: the source slices' distances (mm) from the origin along
            the volume's third axis, as text ("0.000 2.000 6.000 ...", so that batches of different series collate).
    """

    def __init__(
        self,
        voi: bool | Sequence[float] = False,
        invert_monochrome1: bool = True,
        affine_lps_to_ras: bool = True,
        fallback: bool = True,
        irregular_slices: str = "resample",
        max_slice_gap: float = 2.0,
    ) -> None:
        super().__init__()
        if irregular_slices not in IRREGULAR_SLICES:
            raise ValueError(f"irregular_slices must be one of {IRREGULAR_SLICES}, got {irregular_slices!r}.")
        self.voi = voi
        self.invert_monochrome1 = invert_monochrome1
        self.affine_lps_to_ras = affine_lps_to_ras
        self.fallback = fallback
        self.irregular_slices = irregular_slices
        self.max_slice_gap = max_slice_gap
        self._fallback_readers: dict[str, ImageReader] = {}

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for DICOM files/folders (and, with ``fallback``, anything another MONAI reader accepts)."""
        names = ensure_tuple(filename)
        return all(_looks_dicom(n) for n in names) or (self.fallback and bool(self._other_readers(names)))

    def _other_readers(self, names: tuple) -> list[ImageReader]:
        from monai.data.image_reader import ITKReader, NibabelReader, NrrdReader, NumpyReader, PILReader

        found = []
        for cls in (NibabelReader, PILReader, NumpyReader, NrrdReader, ITKReader):  # LoadImage's order, DICOM aside
            try:
                reader = self._fallback_readers.get(cls.__name__) or cls()
            except Exception:  # optional package missing
                continue
            if reader.verify_suffix(names):
                self._fallback_readers[cls.__name__] = reader
                found.append(reader)
        return found

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        names = ensure_tuple(data)
        dicom = [_looks_dicom(n) for n in names]
        if all(dicom):
            try:
                return [self._load(os.fspath(n)) for n in names]
            except InputError as err:
                return _Failed(err)
        if any(dicom):
            return _Failed(InputError(names[0], f"cannot stack DICOM and non-DICOM inputs: {list(map(str, names))}"))
        readers = self._other_readers(names) if self.fallback else []
        if not readers:
            return _Failed(DicomReadError(names[0], "not a DICOM file or folder of DICOM files, nor an image file"))
        errors = []
        for reader in readers:
            try:
                return _Delegated(reader, reader.read(data, **kwargs), os.fspath(names[0]))
            except Exception as err:  # readers raise many types; try the next, as LoadImage would
                errors.append(err)
        return _Failed(InputError(names[0], f"cannot be read as an image ({_brief(errors[0])})"))

    def _load(self, path: str) -> DicomImage:
        kw = dict(voi=self.voi, invert_monochrome1=self.invert_monochrome1, affine_lps_to_ras=self.affine_lps_to_ras)
        if os.path.isdir(path):
            files = dicom_files_in(path)
            if len(files) != 1:  # a series; a folder with one file (e.g. a DICOMweb-retrieved radiograph) is 2D
                return load_dicom_series(  # a refused series: read() keeps the error for get_data (see _Failed)
                    files, irregular_slices=self.irregular_slices, max_slice_gap=self.max_slice_gap, **kw
                )
            path = files[0]
        return load_dicom_image(path, **kw)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        if isinstance(img, _Failed):
            raise img.error
        if isinstance(img, _Delegated):
            try:
                return img.reader.get_data(img.obj)
            except Exception as err:  # pixels are decoded here (a truncated PNG fails now, not in read)
                raise InputError(img.name, f"cannot be read as an image ({_brief(err)})") from err
        images: list[DicomImage] = list(img)
        first = images[0]
        if any(im.array.shape != first.array.shape for im in images):
            raise ValueError(f"DicomReader: inputs differ in shape: {[im.array.shape for im in images]}")
        hdr = first.header
        meta: dict[str, Any] = {
            MetaKeys.AFFINE: first.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: first.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(first.array.shape),
            MetaKeys.SPACE: first.space,
            "filename_or_obj": first.paths[0] if len(first.paths) == 1 else os.path.dirname(first.paths[0]),
        }
        for kw in ("Modality", "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID", "PhotometricInterpretation"):
            if kw in hdr:
                meta[kw] = str(hdr.get(kw))
        if len(first.paths) == 1 and "SOPInstanceUID" in hdr:
            meta["SOPInstanceUID"] = str(hdr.SOPInstanceUID)
        if first.source_positions is not None:
            meta["source_slice_positions"] = " ".join(f"{v:.3f}" for v in first.source_positions)
        if len(images) > 1:
            dtype = np.result_type(*[im.array.dtype for im in images])
            array = np.stack([im.array.astype(dtype, copy=False) for im in images], 0)
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        else:
            array = first.array
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        return array, meta
