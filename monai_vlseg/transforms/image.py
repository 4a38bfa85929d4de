"""Image and mask transforms for what hospitals and public data sets actually hold: grey images saved as RGB(A),
colour images that must be grey (or the reverse), masks stored as 0/1, 0/255 or JPEG-noisy 0/255, labels that do not
fit their image; masks written atomically under a name unique in the run, and an overlay PNG for a person to look at."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SaveImaged, Transform

from monai_vlseg.errors import InputError
from monai_vlseg.files import atomic_write_bytes

__all__ = [
    "OUTPUT_NAME_KEY", "BinarizeMask", "BinarizeMaskd", "CheckInputd", "CheckSameSized",
    "EnsureChannels", "EnsureChannelsd", "InputSpec", "PatientCoordinatesd", "SaveImageAtomicd", "SaveOverlayd",
    "output_stem", "unique_output_names",
]  # fmt: skip

#: item key of the name an input's outputs get (``<name>_seg.png``, ``<name>_overlay.png``, ...), unique in a run
#: (:func:`monai_vlseg.bundle.inference_datalist`); without it the input's file name without extension is used.
OUTPUT_NAME_KEY = "output_name"
_EXTENSIONS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".mha", ".nrrd")


def _source_name(img: Any) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


def _is_colour(img: Any) -> bool:
    """Whether a channel-first RGB(A) image holds colour, not grey saved as RGB (its channels differ by more than 2 %
    of its range on average)."""
    rgb = torch.as_tensor(img)[:3].float()
    if rgb.shape[0] < 3 or not rgb.numel():
        return False
    spread = float((rgb.amax(0) - rgb.amin(0)).abs().mean())
    return spread > 0.02 * max(float(rgb.max() - rgb.min()), 1e-6)


def output_stem(path: str | os.PathLike) -> str:
    """An input's name without its image extension (``.nii.gz`` counts as one); a DICOM series folder keeps its name."""
    name = os.path.basename(os.path.normpath(os.fspath(path)))
    low = name.lower()
    ext = next((e for e in _EXTENSIONS if low.endswith(e) and len(name) > len(e)), "")
    return name[: len(name) - len(ext)]


def unique_output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Output names for the inputs of one run, unique (also ignoring case): each input's :func:`output_stem`; inputs
    that share a stem get their extension appended (``image.png``, ``image.jpg`` -> ``image_png``, ``image_jpg``), and
    a number when they still collide (``a/x.png``, ``b/x.png`` -> ``x_png``, ``x_png_2``)."""
    stems = [output_stem(p) for p in paths]
    count = Counter(s.casefold() for s in stems)
    names = []
    for path, stem in zip(paths, stems):
        ext = os.path.basename(os.path.normpath(os.fspath(path)))[len(stem) :].lstrip(".").replace(".", "_")
        names.append(f"{stem}_{ext}" if count[stem.casefold()] > 1 and ext else stem)
    taken: set[str] = set()
    base = Counter(n.casefold() for n in names)
    out = []
    for name in names:
        unique, k = name, 1
        while unique.casefold() in taken or (unique != name and unique.casefold() in base):
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique.casefold())
        out.append(unique)
    return out


def _output_name(d: Mapping[Hashable, Any], img: Any, name_key: str | None) -> str:
    name = d.get(name_key) if name_key else None
    return str(name) if name else output_stem(_source_name(img))


class CheckSameSized(MapTransform):
    """Raise an :class:`~monai_vlseg.errors.InputError` naming both files and both shapes when the spatial sizes of
    ``keys`` differ (a label that does not fit its image): put it before any resize, which would hide it.

    Args:
        keys: the image key first, then the keys that must match it (e.g. ``["image", "label"]``).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if len(keys) < 2:
            return d
        ref = keys[0]
        ref_shape = tuple(d[ref].shape[1:])
        for key in keys[1:]:
            shape = tuple(d[key].shape[1:])
            if shape != ref_shape:
                raise InputError(
                    _source_name(d[key]),
                    f"{key} size {shape} differs from its {ref} {_source_name(d[ref])} size {ref_shape}; "
                    f"a {key} must have the size of its {ref}",
                )
        return d


class PatientCoordinatesd(MapTransform):
    """Append three channels to a volume: each voxel's patient position in mm (RAS, through the MetaTensor's affine,
    never the array index) relative to the centre of the body (the bounding box of the first channel's voxels above
    ``threshold``: after a HU window scaled to 0-1, everything but air), divided by ``scale_mm``. They tell a
    patch-wise network where in the patient a window lies (CoordConv in patient space), the same with or without a
    crop to the body. Put it after every resampling of the whole volume and before patch sampling;
    :class:`monai_vlseg.nets.report_segmamba.ReportSegMamba` reads the channels with ``coord_channels=3``.

    Args:
        channels: 3 (the channels), or 0 to pass the volume through (a config without coordinates).
    """

    def __init__(
        self, keys: KeysCollection = "image", channels: int = 3, scale_mm: float = 100.0, threshold: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        if channels not in (0, 3):
            raise ValueError(f"channels must be 3 (x, y, z) or 0 (none), got {channels}.")
        self.channels, self.scale_mm, self.threshold = int(channels), float(scale_mm), float(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not self.channels:
                continue
            if not isinstance(img, MetaTensor) or img.ndim != 4:
                raise InputError(_source_name(img), f"{key} must be a channel-first 3D MetaTensor with an affine")
            body = torch.nonzero(torch.as_tensor(img[0]) > self.threshold)
            if len(body) == 0:
                raise InputError(_source_name(img), f"{key} has no voxel above {self.threshold}: no body to centre on")
            centre = (body.amin(0) + body.amax(0)).to(torch.float64) / 2
            grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in img.shape[1:]], indexing="ij")
            index = torch.stack(grid, 0) - centre[:, None, None, None]
            mm = torch.einsum("ij,jxyz->ixyz", img.affine.to(torch.float64)[:3, :3], index)  # no translation
            coords = (mm / self.scale_mm).to(img.dtype)
            d[key] = torch.cat([img, MetaTensor(coords, meta=img.meta)], 0)
        return d


class SaveImageAtomicd(SaveImaged):
    """MONAI's :class:`~monai.transforms.SaveImaged`, with each file written to a temporary name in its folder and
    renamed into place (a crash or a reader never meets a half-written mask), named ``<d[name_key]>_<postfix><ext>``
    when the item has that name (:func:`monai_vlseg.bundle.inference_datalist` gives every input a unique one, so
    ``image.png`` and ``image.jpg`` make two masks). The path written goes into ``d["<key>_path"]``.

    Args:
        keys, output_dir, output_postfix, output_ext, ...: as :class:`~monai.transforms.SaveImaged`.
        name_key: item key of the output name; items without it are named after the input's file.
    """

    def __init__(self, keys: KeysCollection, *args: Any, name_key: str | None = OUTPUT_NAME_KEY, **kwargs: Any) -> None:
        super().__init__(keys, *args, **kwargs)
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            if meta_key is None and meta_key_postfix is not None:
                meta_key = f"{key}_{meta_key_postfix}"
            img = d[key]
            meta = img.meta if isinstance(img, MetaTensor) else (d.get(meta_key) if meta_key is not None else None)
            d[f"{key}_path"] = self._save(img, meta, _output_name(d, img, self.name_key))
        return d

    def _save(self, img: Any, meta: Mapping | None, name: str) -> str:
        saver = self.saver
        kwargs = saver.fname_formatter(meta, saver)
        # FolderLayout takes the subject for a file name and drops its extension: give it one to drop
        kwargs["subject"] = f"{name}.name"
        final = os.fspath(saver.folder_layout.filename(**kwargs))
        folder = os.path.dirname(os.path.abspath(final))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(tmp)  # the writer adds the extension, which picks its format
        try:
            saver(img, dict(meta) if meta is not None else None, filename=tmp)
            os.replace(tmp + saver.output_ext, final)
        finally:
            if os.path.exists(tmp + saver.output_ext):
                os.remove(tmp + saver.output_ext)
        if saver.savepath_in_metadict and isinstance(img, MetaTensor):
            img.meta["saved_to"] = final
        return final


class EnsureChannels(Transform):
    """Bring a channel-first image to ``channels`` channels (a bundle's ``in_channels``).

    RGBA drops alpha; RGB -> grey (only when ``channels`` is 1) uses ITU-R BT.601 luma (exact when the three channels
    are equal, as in grey images saved as RGB); grey -> RGB repeats the channel. Anything else raises a ValueError
    naming the file. A colour image made grey is not silent: the first one logs a warning naming the file and
    ``in_channels 3`` (the text-guided bundles' ``configs/rgb.json``), the setting for colour data sets (Kvasir-SEG,
    CVC-ClinicDB, ISIC).
    """

    def __init__(self, channels: int = 1) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        self.channels = channels
        self._warned = False

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[0]
        if c == 4:  # RGBA
            img, c = img[:3], 3
        if c == self.channels:
            return img
        if c == 3 and self.channels == 1:
            if not self._warned and _is_colour(img):
                self._warned = True
                logging.getLogger("monai_vlseg").warning(
                    "%s: a colour image read as grey (in_channels 1: BT.601 luma); for colour data (Kvasir-SEG, "
                    "CVC-ClinicDB, ISIC) use in_channels 3 (add the bundle's configs/rgb.json)", _source_name(img),
                )  # fmt: skip
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, *([1] * (img.ndim - 1)))
            return (img.float() * w.to(img.device)).sum(0, keepdim=True)
        if c == 1 and self.channels == 3:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        raise ValueError(f"{_source_name(img)}: image has {c} channels, expected {self.channels} (or grey/RGB/RGBA).")


class EnsureChannelsd(MapTransform):
    """Dictionary wrapper of :class:`EnsureChannels`."""

    def __init__(self, keys: KeysCollection, channels: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureChannels(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


def _norm_code(value: Any) -> str:
    """A DICOM code string compared without case, spaces or separators (``"Chest "`` = ``"CHEST"``,
    ``"ABDOMEN_PELVIS"`` = ``"ABDOMENPELVIS"``)."""
    return re.sub(r"[^A-Z0-9]", "", str(value).upper())


class InputSpec:
    """What a bundle was trained on, read from its ``metadata.json`` (``network_data_format.inputs.<key>``):

    - ``dicom_modality``: the DICOM Modality codes of its training images (e.g. ``["CR", "DX"]``);
    - ``body_part``: the BodyPartExamined values it covers (empty: any);
    - ``format``: ``"hounsfield"`` (CT in HU: air is about -1000) or ``"magnitude"`` (no strongly negative values);
    - ``num_channels``: 1 for a grey-scale model.

    Args:
        metadata: the bundle's ``metadata.json`` (path) or its parsed content.
        key: the input of ``network_data_format.inputs`` to read.
    """

    def __init__(self, metadata: str | os.PathLike | Mapping[str, Any], key: str = "image") -> None:
        if isinstance(metadata, (str, os.PathLike)):
            with open(metadata, encoding="utf-8") as f:
                metadata = json.load(f)
        spec = dict(metadata.get("network_data_format", {}).get("inputs", {}).get(key, {}))
        self.modalities: tuple[str, ...] = tuple(_norm_code(m) for m in spec.get("dicom_modality", ()))
        self.body_parts: tuple[str, ...] = tuple(_norm_code(b) for b in spec.get("body_part", ()))
        self.format: str = str(spec.get("format", "magnitude"))
        self.num_channels: int | None = spec.get("num_channels")
        self.description: str = str(spec.get("modality", "/".join(self.modalities) or "its training data"))

    def problems(self, img: Any) -> list[str]:
        """Why ``img`` (channel first, with the reader's meta) may not be what the model was trained on."""
        meta = getattr(img, "meta", None) or {}
        found: list[str] = []
        modality = meta.get("Modality")
        if modality and self.modalities and _norm_code(modality) not in self.modalities:
            found.append(f"DICOM Modality {modality}, the model was trained on {'/'.join(self.modalities)}")
        part = meta.get("BodyPartExamined")
        if part and self.body_parts and _norm_code(part) not in self.body_parts:
            found.append(f"BodyPartExamined {part}, the model was trained on {'/'.join(self.body_parts)}")
        x = torch.as_tensor(img).float()
        if x.numel():
            lo = float(x.min())
            if self.format == "hounsfield" and lo >= -100.0:
                found.append(f"lowest value {lo:g}: not a CT in Hounsfield units (air is about -1000 HU)")
            elif self.format != "hounsfield" and lo < -100.0:
                found.append(f"values down to {lo:g} look like CT Hounsfield units, the model reads {self.description}")
            if self.num_channels == 1 and x.shape[0] in (3, 4) and _is_colour(x):
                found.append(f"a colour image, the model reads grey-scale {self.description}")
        return found


class CheckInputd(MapTransform):
    """Flag inputs that do not look like what the bundle was trained on (issue 18.5): a DICOM Modality or
    BodyPartExamined outside :class:`InputSpec`, CT Hounsfield units given to a radiograph model (or no HU given to a
    CT model), a colour photograph given to a grey-scale model. Such an item gets ``needs_review = True`` and the
    reasons in ``input_warnings``; the warning names the file (never the report). Place it after
    ``EnsureChannelFirstd``; :class:`~monai_vlseg.transforms.report.PrepareReportd` keeps the flag.

    Args:
        keys: the image key.
        metadata: the bundle's ``metadata.json`` (path or content), see :class:`InputSpec`.
        on_mismatch: ``"flag"`` (warn and flag the output), ``"error"`` (raise an
            :class:`~monai_vlseg.errors.InputError` naming the file: inference skips it), ``"off"``.
        channels: the channels the network reads (the config's ``in_channels``), in place of the metadata's
            ``num_channels``: a bundle run with ``in_channels 3`` (``configs/rgb.json``) takes colour images.
    """

    def __init__(
        self, keys: KeysCollection = "image", metadata: str | os.PathLike | Mapping[str, Any] | None = None,
        on_mismatch: str = "flag", allow_missing_keys: bool = False, channels: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        if on_mismatch not in ("flag", "error", "off"):
            raise ValueError(f"on_mismatch must be 'flag', 'error' or 'off', got {on_mismatch!r}")
        self.on_mismatch = on_mismatch
        self.spec = InputSpec(metadata or {}, key=self.keys[0] if isinstance(self.keys[0], str) else "image")
        if channels is not None:
            self.spec.num_channels = int(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.on_mismatch == "off":
            return d
        for key in self.key_iterator(d):
            found = self.spec.problems(d[key])
            if not found:
                continue
            if self.on_mismatch == "error":  # an inference run skips it, naming the file and the reasons
                reason = "; ".join(found) + " (input_check 'flag' segments it anyway, flagged for review)"
                raise InputError(_source_name(d[key]), reason)
            message = f"{_source_name(d[key])}: " + "; ".join(found)
            logging.getLogger("monai_vlseg").warning("%s; the output is flagged needs_review", message)
            d["needs_review"] = True
            d["input_warnings"] = "; ".join(filter(None, [d.get("input_warnings", ""), *found]))
        return d


class BinarizeMask(Transform):
    """One-channel {0, 1} float mask from 0/1, 0/255 or lossy (JPEG) masks, grey or RGB.

    Channels are merged by maximum; the threshold is half of the stored range (0.5 for masks whose maximum is 1,
    127.5 for 8-bit masks), so JPEG noise around 0 and 255 is removed. An all-zero mask stays all zero.
    """

    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.amax(0, keepdim=True) if mask.shape[0] > 1 else mask
        hi = float(m.max()) if m.numel() else 0.0
        threshold = 0.5 if hi <= 1.0 else (127.5 if hi <= 255.0 else hi / 2.0)
        return (m > threshold).to(torch.float32)


class BinarizeMaskd(MapTransform):
    """Dictionary wrapper of :class:`BinarizeMask`."""

    def __init__(self, keys: KeysCollection = "label", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.binarize = BinarizeMask()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.binarize(d[key])
        return d


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<name>_overlay.png`` (atomically): the image (grey or RGB, scaled to 8 bits) with the
    predicted mask drawn in translucent red and its outline in yellow, in the image's own pixel grid. ``<name>`` is
    the item's ``name_key`` entry, else the image's file name without extension.

    Args:
        keys: (image key, mask key), both channel-first 2D arrays of the same spatial size.
        output_dir: folder of the PNGs (created).
        alpha: opacity of the mask fill.
        postfix: file name postfix.
        name_key: item key of the output name (see :class:`SaveImageAtomicd`).
    """

    def __init__(
        self, keys: KeysCollection = ("image", "pred"), output_dir: str = "./overlays", alpha: float = 0.35,
        postfix: str = "overlay", name_key: str | None = OUTPUT_NAME_KEY,
    ) -> None:  # fmt: skip
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError("SaveOverlayd needs two keys: the image and the mask.")
        self.output_dir, self.alpha, self.postfix, self.name_key = output_dir, alpha, postfix, name_key

    @staticmethod
    def _to_uint8(img: np.ndarray) -> np.ndarray:
        img = img.astype(np.float32)
        lo, hi = np.percentile(img, (0.5, 99.5))
        return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    @staticmethod
    def _array(x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)

    @classmethod
    def _rgb(cls, img: np.ndarray) -> np.ndarray:
        """(C, H, W) image -> (H, W, 3) float RGB in 0..255 (grey repeated; more than 3 channels: the first 3)."""
        return cls._to_uint8(img[:3] if img.shape[0] >= 3 else np.repeat(img[:1], 3, 0)).transpose(1, 2, 0).astype(
            np.float32
        )

    @staticmethod
    def _edge(mask: np.ndarray) -> np.ndarray:
        """The pixels of a 2D bool mask with a 4-neighbour outside it."""
        return mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))

    def _write(self, d: Mapping[Hashable, Any], image: Any, rgb: np.ndarray) -> str:
        """Write ``rgb`` (H, W, 3 in MONAI's (W, H) array order) as ``<name>_<postfix>.png``; returns the path."""
        from PIL import Image

        # MONAI's PIL reader stores arrays as (W, H); write them back in the file's own orientation.
        out = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 0, 2)
        path = os.path.join(self.output_dir, f"{_output_name(d, image, self.name_key)}_{self.postfix}.png")
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        return path

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img_key, mask_key = self.keys
        image, mask = d[img_key], d[mask_key]
        img, msk = self._array(image), self._array(mask)[0] > 0.5
        if img.shape[1:] != msk.shape:
            raise ValueError(f"{_source_name(image)}: image {img.shape[1:]} and mask {msk.shape} differ in size.")
        rgb = self._rgb(img)
        rgb[msk] = (1 - self.alpha) * rgb[msk] + self.alpha * np.array([255.0, 0.0, 0.0])
        rgb[self._edge(msk)] = (255.0, 220.0, 0.0)
        path = self._write(d, image, rgb)
        if isinstance(image, MetaTensor):
            d.setdefault("overlay_path", path)
        return d
