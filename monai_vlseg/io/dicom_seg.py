# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""DICOM SEG output (highdicom): a binary mask of one radiograph or one CT/MR series, written so that it lines up with
its source images, and a MONAI transform that does it at the end of a bundle's inference postprocessing.

The SEG copies patient and study from the source (highdicom's behaviour) and adds nothing else about the patient;
it carries the segment label (the bundle's output ``channel_def``), the algorithm name and version.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, PathLike
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset

from monai_vlseg import __version__
from monai_vlseg.files import atomic_write_bytes
from monai_vlseg.transforms.image import OUTPUT_NAME_KEY, output_stem

from .dicom import (
    _LPS_TO_RAS,
    DicomImage,
    DicomReadError,
    _floats,
    _image_geometry,
    _looks_dicom,
    _valid_spacing,
    dicom_files_in,
    pixel_spacing,
    read_dataset,
    series_geometry,
)

__all__ = ["DicomSeg", "write_dicom_seg", "read_dicom_seg", "dicom_seg_to_label", "SaveDicomSegd"]

logger = logging.getLogger(__name__)

#: (category, type) codes (value, scheme, meaning) for a few segment labels; anything else is a lesion.
_PROPERTY_CODES: dict[str, tuple[tuple[str, str, str], tuple[str, str, str]]] = {
    "lung": (("91723000", "SCT", "Anatomical Structure"), ("39607008", "SCT", "Lung")),
    "lungs": (("91723000", "SCT", "Anatomical Structure"), ("39607008", "SCT", "Lung")),
    "lesion": (("49755003", "SCT", "Morphologically Abnormal Structure"), ("52988006", "SCT", "Lesion")),
}


@dataclass
class DicomSeg:
    """A DICOM SEG read back: ``array`` (frames, rows, columns, segments) of 0/1 (of probabilities in [0, 1] for
    a FRACTIONAL SEG) in the order of
    ``source_sop_instance_uids`` (one frame per referenced source image)."""

    array: np.ndarray
    source_sop_instance_uids: list[str]
    segment_labels: list[str]
    frame_of_reference_uid: str | None
    dataset: Dataset


def _headers(sources: Sequence[PathLike | Dataset] | PathLike | Dataset) -> list[tuple[str, Dataset]]:
    """(path, header) pairs of the source images; folders are expanded into their DICOM files."""
    out: list[tuple[str, Dataset]] = []
    for src in ensure_tuple(sources):
        if isinstance(src, Dataset):
            out.append((str(getattr(src, "filename", None) or "<dataset>"), src))
        elif os.path.isdir(src):
            out += [(p, read_dataset(p, stop_before_pixels=True)) for p in dicom_files_in(src)]
        else:
            out.append((os.fspath(src), read_dataset(src, stop_before_pixels=True)))
    if not out:
        raise ValueError(f"no DICOM source images in {sources!r}")
    return out


def _code(value: Any, default: tuple[str, str, str]) -> Any:
    from pydicom.sr.coding import Code

    if value is None:
        value = default
    return value if isinstance(value, Code) else Code(*value)


def _content_label(label: str) -> str:
    cs = re.sub(r"[^A-Z0-9_ ]", "_", label.upper()).strip()[:16]
    return cs or "SEGMENTATION"


def _to_numpy(mask: Any) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        return mask.detach().cpu().numpy()
    return np.asarray(mask)


def _binary(mask: np.ndarray, threshold: float) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if mask.dtype.kind in "ui":
        return mask > 0
    return mask > threshold


def _fraction(mask: np.ndarray, name: str) -> np.ndarray:
    """Probabilities as float32, refused outside [0, 1] (a fractional SEG stores them as they are)."""
    values = np.asarray(mask, dtype=np.float32)
    if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"{name}: a fractional SEG needs probabilities in [0, 1], got [{values.min()}, {values.max()}]")
    return values


def _values(arr: np.ndarray, name: str, fractional: bool, label_map: bool, threshold: float) -> np.ndarray:
    """What a SEG stores of ``arr``: probabilities (fractional), label values as float32 (a label map: resampled by
    nearest voxel like probabilities) or a binary mask."""
    if fractional:
        return _fraction(arr, name)
    return arr.astype(np.float32) if label_map else _binary(arr, threshold)


def _monai_to_frames(
    mask: np.ndarray,
    affine: np.ndarray,
    src_shape: tuple[int, ...],
    src_affine: np.ndarray,
    name: str,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """A MONAI-layout mask (x, y[, z]) onto the source grid, as DICOM frames (slices, rows, columns): bool for a
    binary mask, the values themselves (nearest voxel) for a float one (a fractional SEG's probabilities).

    ``offsets``: of a series whose slices are not on the regular grid ``src_affine`` / ``src_shape`` describes, each
    slice's distance (mm) from the grid's origin along its third axis; frame k is then the mask at slice k's own
    position (nearest voxel), never at a grid position.
    """
    from monai.data.utils import to_affine_nd
    from monai.transforms import SpatialResample

    nd = len(src_shape)
    if mask.ndim == nd + 1:
        if mask.shape[0] != 1:
            raise ValueError(f"{name}: mask has {mask.shape[0]} channels; a SEG of one segment needs one")
        mask = mask[0]
    if mask.ndim == 2 and nd == 3 and src_shape[2] == 1:
        mask = mask[..., None]
    if mask.ndim != nd:
        raise ValueError(f"{name}: mask of shape {mask.shape} does not fit the {nd}D source grid {src_shape}")
    if offsets is not None:  # nearest mask voxel of each pixel of each source slice, at the slice's own plane
        from scipy.ndimage import map_coordinates

        to_mask = np.linalg.inv(np.asarray(affine, dtype=np.float64))
        src = np.asarray(src_affine, dtype=np.float64)
        i, j = np.meshgrid(np.arange(src_shape[0]), np.arange(src_shape[1]), indexing="ij")
        plane = np.einsum("ab,bxy->axy", (to_mask @ src)[:3, [0, 1, 3]], np.stack([i, j, np.ones_like(i)]))
        normal = to_mask[:3, :3] @ (src[:3, 2] / np.linalg.norm(src[:3, 2]))  # mask voxels per mm along the normal
        binary = mask.dtype == bool
        data = np.ascontiguousarray(mask, dtype=np.uint8 if binary else np.float32)
        frames = [map_coordinates(data, plane + (normal * float(off))[:, None, None], order=0, mode="grid-constant")
                  for off in offsets]  # fmt: skip
        frames = np.stack(frames, 0).transpose(0, 2, 1)
        return frames > 0 if binary else frames
    same_grid = mask.shape == tuple(src_shape) and np.allclose(
        to_affine_nd(nd, affine), to_affine_nd(nd, src_affine), atol=1e-3, rtol=1e-4
    )
    if not same_grid:
        logger.info("%s: resampling the mask %s onto the source grid %s", name, mask.shape, src_shape)
        img = MetaTensor(torch.as_tensor(mask[None], dtype=torch.float32), affine=torch.as_tensor(affine))
        out = SpatialResample(mode="nearest", padding_mode="zeros")(
            img, dst_affine=torch.as_tensor(src_affine), spatial_size=src_shape
        )
        mask = out[0].cpu().numpy() > 0.5 if mask.dtype == bool else out[0].cpu().numpy()
    if nd == 2:
        return mask.T[None]
    return mask.transpose(2, 1, 0)


def write_dicom_seg(
    mask: Any,
    sources: Sequence[PathLike | Dataset] | PathLike | Dataset,
    output_path: PathLike,
    segment_label: str | Sequence[str] = "lesion",
    affine: Any = None,
    layout: str = "auto",
    threshold: float = 0.5,
    algorithm_name: str = "monai-vlseg",
    algorithm_version: str = __version__,
    segmented_property_category: Any = None,
    segmented_property_type: Any = None,
    series_number: int = 300,
    series_description: str | None = None,
    omit_empty_frames: bool = False,
    fractional: bool = False,
    algorithm_type: str = "AUTOMATIC",
) -> str:
    """Write a BINARY (or, with ``fractional``, a FRACTIONAL PROBABILITY) DICOM SEG of ``mask`` over ``sources`` and
    return its path.

    Args:
        mask: one binary mask (bool, 0/1 or probabilities cut at ``threshold``); numpy, torch or MetaTensor. With
            ``fractional``, probabilities in [0, 1], stored as they are (8 bits, MaximumFractionalValue 255). With
            several ``segment_label``, a label map: integer value ``k`` is segment ``k`` (0 background).
        sources: the source image(s): one radiograph / slice, or the slices of one series (paths, a folder or
            datasets; pixel data is not needed).
        output_path: the ``.dcm`` to write (atomically; folders are created).
        segment_label: SegmentLabel, e.g. the bundle's output ``channel_def``; a sequence for a label map of several
            segments (segment ``k`` is ``segment_label[k - 1]``).
        affine: the mask's 4x4 affine for ``layout="monai"`` when ``mask`` is not a MetaTensor.
        layout: ``"monai"``: MONAI layout (optional channel, x, y[, z]) with an affine (RAS unless the MetaTensor says
            LPS); the mask is resampled (nearest) onto the source grid when its grid differs, and over a series whose
            slices are not on a regular grid (a missing slice, irregular spacing) each frame is the mask at its own
            slice's position. Source slices at one position are referenced once (a warning names the others).
            ``"dicom"``: frames as the source pixels, (rows, columns) or (slices, rows, columns) with frame ``i`` over
            ``sources[i]`` in the given order. ``"auto"``: ``"monai"`` for a MetaTensor or when ``affine`` is given.
        threshold: probability cut for float masks.
        algorithm_name, algorithm_version: the algorithm identification (e.g. bundle name and version).
        segmented_property_category, segmented_property_type: ``pydicom.sr.coding.Code`` or (value, scheme, meaning);
            default from the label ("lung" -> Anatomical Structure / Lung, else Morphologically Abnormal Structure /
            Lesion).
        series_number, series_description: of the new SEG series.
        omit_empty_frames: leave out frames without foreground (default keeps one frame per source image).
        fractional: a FRACTIONAL SEG of type PROBABILITY (the probability map a reader can window) instead of BINARY.
        algorithm_type: SegmentAlgorithmType: ``"AUTOMATIC"`` (a model's mask), ``"SEMIAUTOMATIC"`` (a model's mask a
            reader corrected, e.g. a label saved from MONAI Label) or ``"MANUAL"`` (no algorithm identification).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    output_path = os.path.abspath(os.fspath(output_path))
    headers = _headers(sources)
    if layout == "auto":
        layout = "monai" if isinstance(mask, MetaTensor) or affine is not None else "dicom"
    if layout not in ("monai", "dicom"):
        raise ValueError(f"layout must be 'auto', 'monai' or 'dicom', got {layout!r}.")
    space = str(mask.meta.get(MetaKeys.SPACE, SpaceKeys.RAS)) if isinstance(mask, MetaTensor) else SpaceKeys.RAS.value
    if affine is None and isinstance(mask, MetaTensor):
        affine = mask.affine
    arr = _to_numpy(mask)
    labels = [segment_label] if isinstance(segment_label, str) else [str(x) for x in segment_label]
    label_map = len(labels) > 1
    if not labels or (label_map and fractional):
        raise ValueError(f"{output_path}: one segment label for a fractional SEG, at least one otherwise; got {labels}")
    if label_map:
        values = np.unique(arr)
        if values.size and (arr.dtype.kind not in "uib" and not np.array_equal(values, np.round(values))
                            or values.min() < 0 or values.max() > len(labels)):  # fmt: skip
            raise ValueError(
                f"{output_path}: a label map of {len(labels)} segments needs integer values 0..{len(labels)}, "
                f"got {values[:10].tolist()}"
            )
    first_path, first = headers[0]
    has_for = "FrameOfReferenceUID" in first
    offsets = None  # of source slices off the regular grid
    if len(headers) > 1:
        geom = series_geometry(headers)
        if geom.skipped:
            path, reason = geom.skipped[0]
            raise DicomReadError(path, f"source slice cannot be placed in the series: {reason}")
        if layout == "monai":
            headers = list(zip(geom.paths, geom.datasets, strict=True))
            for dup, kept in geom.duplicates:
                logger.warning("%s: at the position of %s; the SEG references only the latter", dup, kept)
        src_shape, src_affine, dz = geom.shape, geom.affine, geom.spacing[2]
        offsets = None if geom.regular else geom.offsets
    else:
        src_affine, spacing = _image_geometry(first, pixel_spacing(first, first_path))
        src_shape, dz = (int(first.Columns), int(first.Rows)), spacing[2]
    if layout == "monai":
        if affine is None:
            raise ValueError("layout='monai' needs the mask's affine (a MetaTensor or `affine`).")
        aff = np.asarray(_to_numpy(affine), dtype=np.float64)
        target = src_affine if str(space) == SpaceKeys.LPS.value else _LPS_TO_RAS @ src_affine
        values = _values(arr, output_path, fractional, label_map, threshold)
        frames = _monai_to_frames(values, aff, src_shape, target, output_path, offsets)
    else:
        frames = _values(arr, output_path, fractional, label_map, threshold)
        frames = frames[None] if frames.ndim == 2 else frames
        want = (len(headers), int(first.Rows), int(first.Columns))
        if frames.shape != want:
            raise ValueError(
                f"{output_path}: mask frames {frames.shape} do not match the sources (images, rows, columns) {want}"
            )
    frames = frames.astype(np.float32) if fractional else np.rint(frames).astype(np.uint8)

    # what highdicom copies as geometry: drop an invalid PixelSpacing (e.g. RG1's "0.000"), and give series slices a
    # SliceThickness (highdicom's reader requires it in the Pixel Measures)
    src_datasets = []
    for _, ds in headers:
        ds = copy.copy(ds)
        no_thickness = not has_for and not ds.get("SliceThickness")
        if "PixelSpacing" in ds and (_valid_spacing(ds.PixelSpacing) is None or no_thickness):
            del ds.PixelSpacing
        src_datasets.append(ds)
    kwargs: dict[str, Any] = {}
    if has_for:
        thick = _floats(first.get("SliceThickness"), 1)
        kwargs["pixel_measures"] = hd.PixelMeasuresSequence(
            pixel_spacing=list(pixel_spacing(first, first_path)),
            slice_thickness=thick[0] if thick is not None and thick[0] > 0 else float(dz),
            spacing_between_slices=float(dz) if len(headers) > 1 and offsets is None else None,
        )
    kind = hd.seg.SegmentAlgorithmTypeValues(str(algorithm_type).upper())
    algorithm = None
    if kind != hd.seg.SegmentAlgorithmTypeValues.MANUAL:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=str(algorithm_name)[:64], version=str(algorithm_version)[:64],
            family=codes.cid7162.ArtificialIntelligence,
        )  # fmt: skip
    descriptions = []
    for number, label in enumerate(labels, start=1):
        default_cat, default_type = _PROPERTY_CODES.get(label.strip().lower(), _PROPERTY_CODES["lesion"])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label[:64],
                segmented_property_category=_code(segmented_property_category, default_cat),
                segmented_property_type=_code(segmented_property_type, default_type),
                algorithm_type=kind,
                algorithm_identification=algorithm,
            )
        )
    segment_label = ", ".join(labels)
    seg = hd.seg.Segmentation(
        source_images=src_datasets,
        pixel_array=frames if len(src_datasets) > 1 else frames[0],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        **({"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY} if fractional else {}),
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai-vlseg",
        manufacturer_model_name=str(algorithm_name)[:64],
        software_versions=str(algorithm_version)[:64],
        device_serial_number="0",
        content_label=_content_label(segment_label),
        content_description=f"{segment_label} by {algorithm_name}"[:64],
        series_description=(series_description or f"SEG {segment_label} ({algorithm_name})")[:64],
        omit_empty_frames=omit_empty_frames,
        **kwargs,
    )
    if not has_for:  # General Image: Patient Orientation is required (may be empty) without a frame of reference
        seg.PatientOrientation = first.get("PatientOrientation", "")
    buffer = io.BytesIO()
    seg.save_as(buffer)
    atomic_write_bytes(output_path, buffer.getvalue())
    logger.info("wrote DICOM SEG %s (%d frame(s) over %s)", output_path, int(seg.NumberOfFrames), first_path)
    return output_path


def read_dicom_seg(path: PathLike) -> DicomSeg:
    """Read a DICOM SEG with highdicom: one frame per referenced source image, in the SEG's referenced order."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(os.fspath(path))
    except Exception as err:
        raise DicomReadError(path, f"not a readable DICOM SEG ({type(err).__name__}: {err})") from None
    uids = [str(u[2]) for u in seg.get_source_image_uids()]
    numbers = list(seg.segment_numbers)
    array = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=numbers, ignore_spatial_locations=True
    )
    labels = [seg.get_segment_description(n).segment_label for n in numbers]
    return DicomSeg(np.asarray(array), uids, labels, seg.get("FrameOfReferenceUID"), seg)


def dicom_seg_to_label(seg: PathLike | DicomSeg, sources: Sequence[PathLike | Dataset] | PathLike) -> DicomImage:
    """A SEG as a label map on the grid :func:`~monai_vlseg.io.load_dicom_image` / :func:`~monai_vlseg.io.load_dicom_series`
    give its source images (MONAI layout (x, y[, z]), RAS affine): value ``k`` where segment ``k`` is set (the
    highest wins where segments overlap), 0 elsewhere; a FRACTIONAL SEG is cut at 0.5. On a series resampled onto a
    regular grid (a missing slice), each grid slice takes the nearest source slice's frame.

    Raises:
        DicomReadError: the SEG references an image that is not among ``sources``.
    """
    found = seg if isinstance(seg, DicomSeg) else read_dicom_seg(seg)
    name = str(getattr(found.dataset, "filename", "") or "<SEG>")
    headers = _headers(sources)
    frames = (found.array >= 0.5) if found.array.dtype.kind == "f" else found.array > 0
    labels = np.zeros(frames.shape[:3], dtype=np.uint8)
    for k in range(frames.shape[3]):
        labels[frames[..., k]] = k + 1
    if len(headers) == 1:
        ds = headers[0][1]
        if found.source_sop_instance_uids != [str(ds.SOPInstanceUID)]:
            raise DicomReadError(name, f"the SEG does not reference {headers[0][0]} (and only it)")
        affine, spacing = _image_geometry(ds, pixel_spacing(ds, headers[0][0]))
        return DicomImage(np.ascontiguousarray(labels[0].T), _LPS_TO_RAS @ affine, [headers[0][0]], [ds], spacing[:2])
    geom = series_geometry(headers)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(geom.datasets)}
    missing = [u for u in found.source_sop_instance_uids if u not in index]
    if missing:
        raise DicomReadError(name, f"the SEG references {len(missing)} image(s) not in the source series, e.g. {missing[0]}")
    stack = np.zeros((len(geom.datasets), *labels.shape[1:]), dtype=np.uint8)
    for frame, uid in zip(labels, found.source_sop_instance_uids, strict=True):
        stack[index[uid]] = np.maximum(stack[index[uid]], frame)
    if not geom.regular:  # grid slice j at j * dz: the nearest source slice
        grid = np.arange(geom.shape[2]) * geom.spacing[2]
        stack = stack[np.abs(grid[:, None] - geom.offsets[None, :]).argmin(1)]
    array = np.ascontiguousarray(stack.transpose(2, 1, 0))
    return DicomImage(array, _LPS_TO_RAS @ geom.affine, geom.paths, geom.datasets, geom.spacing)


def _label_from_metadata(metadata: Mapping[str, Any] | None, key: str) -> str | None:
    """The first non-background ``channel_def`` of output ``key`` (else the first output) in bundle metadata."""
    outputs = ((metadata or {}).get("network_data_format") or {}).get("outputs") or {}
    out = outputs.get(key) or next(iter(outputs.values()), None) or {}
    for _, name in sorted((out.get("channel_def") or {}).items(), key=lambda kv: str(kv[0])):
        if str(name).strip().lower() not in ("background", "_background_", ""):
            return str(name)
    return None


class SaveDicomSegd(MapTransform):
    """Write a DICOM SEG for each item whose image came from DICOM (other items pass through untouched).

    Put it at the end of a bundle's inference postprocessing, after the prediction has been binarised and inverted
    to the input's geometry. The source images are ``data[source_key]`` (the ``dicom_sources`` that
    :mod:`monai_vlseg.io.ingest` writes into datalist items), else the prediction's
    ``filename_or_obj`` when that is a DICOM file or a folder of DICOM slices. The SEG goes to
    ``<output_dir>/<image name>_<postfix>.dcm``; its path is stored under ``<key>_dicom_seg``.

    Args:
        keys: the mask key(s), channel-first MetaTensors with one channel.
        output_dir: folder of the SEG files.
        source_key: item key holding the source DICOM paths.
        label: segment label; default from ``metadata`` (the output's first non-background ``channel_def``).
        metadata: bundle metadata (``"@_meta_"`` in a config) for the label, algorithm name and version.
        algorithm_name, algorithm_version: override the metadata's ``name`` / ``version``.
        output_postfix: file name postfix.
        threshold: cut for probability masks.
        series_number: of the SEG series.
        review_key: item key of the ``needs_review`` flag (:class:`monai_vlseg.transforms.report.PrepareReportd`):
            a flagged item's SEG says "NEEDS REVIEW" in its SeriesDescription and ``<key>_needs_review`` is set.
        fractional: write the key's probabilities as a FRACTIONAL PROBABILITY SEG (the probability map,
            ``"keys": "prob"``) instead of a BINARY one.
        name_key: item key of the output name, used for ``<image name>`` when present (unique in a run, see
            :class:`monai_vlseg.transforms.SaveImageAtomicd`).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: PathLike = "./",
        source_key: str = "dicom_sources",
        label: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        algorithm_name: str | None = None,
        algorithm_version: str | None = None,
        output_postfix: str = "seg",
        threshold: float = 0.5,
        series_number: int = 300,
        review_key: str = "needs_review",
        allow_missing_keys: bool = False,
        name_key: str | None = OUTPUT_NAME_KEY,
        fractional: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        meta = dict(metadata or {})
        self.review_key, self.name_key = review_key, name_key
        self.output_dir = os.fspath(output_dir)
        self.source_key = source_key
        self.labels = {k: label or _label_from_metadata(meta, str(k)) or "segment" for k in self.keys}
        self.algorithm_name = algorithm_name or str(meta.get("name") or "monai-vlseg")
        self.algorithm_version = algorithm_version or str(meta.get("version") or __version__)
        self.output_postfix = output_postfix
        self.threshold = threshold
        self.series_number = series_number
        self.fractional = bool(fractional)

    def _sources(self, d: Mapping[Hashable, Any], mask: Any) -> list[str] | None:
        src = d.get(self.source_key)
        if src:
            return [os.fspath(s) for s in ensure_tuple(src)]
        name = (getattr(mask, "meta", None) or {}).get("filename_or_obj")
        if isinstance(name, (str, os.PathLike)) and os.path.exists(name) and _looks_dicom(name):
            return [os.fspath(name)]
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            sources = self._sources(d, mask)
            if not sources:
                logger.debug("%s: input is not DICOM; no DICOM SEG written", key)
                continue
            name = (getattr(mask, "meta", None) or {}).get("filename_or_obj") or sources[0]
            stem = str(d.get(self.name_key) or "") if self.name_key else ""
            stem = stem or output_stem(str(name))
            out = os.path.join(self.output_dir, f"{stem}_{self.output_postfix}.dcm")
            flagged = bool(d.get(self.review_key, False))
            kind = "probability of" if self.fractional else "SEG"
            description = f"{'NEEDS REVIEW: ' if flagged else ''}{kind} {self.labels[key]} ({self.algorithm_name})"
            d[f"{key}_dicom_seg"] = write_dicom_seg(
                mask, sources, out, self.labels[key], threshold=self.threshold,
                algorithm_name=self.algorithm_name, algorithm_version=self.algorithm_version,
                series_number=self.series_number, series_description=description, fractional=self.fractional,
            )  # fmt: skip
            d[f"{key}_needs_review"] = flagged
        return d
