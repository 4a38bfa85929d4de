# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""MONAI decathlon-style datalists (``{"training": [...], "validation": [...], "test": [...]}``), the format every
data source of the package writes and every bundle reads.

Builders (:mod:`monai_vlseg.datasets.public`, :mod:`monai_vlseg.datasets.synthetic`, :mod:`monai_vlseg.io.ingest`) return
datalists whose file entries are absolute paths; :func:`write_datalist` stores them relative to the JSON file's
folder by default so the whole data set can be moved, and :func:`load_datalist` resolves them again through
:func:`monai.data.load_decathlon_datalist`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from monai_vlseg.errors import InputError
from monai_vlseg.files import atomic_write_bytes

__all__ = [
    "DATALIST_KEYS",
    "MASK_DERIVED_SOURCES",
    "LATERALITY_CONVENTIONS",
    "PATH_KEYS",
    "SPLIT_TO_KEY",
    "TEXT_SOURCES",
    "convert_paths",
    "count_text_sources",
    "datalist_laterality",
    "group_reports",
    "load_datalist",
    "read_datalist",
    "summarise_text_sources",
    "text_source_of",
    "write_datalist",
]

#: item keys whose values are file paths (made relative / resolved by the helpers below); ``negated_label`` masks
#: the findings a report negates (the chest demo's ``test_negated`` split).
PATH_KEYS: tuple[str, ...] = ("image", "label", "negated_label")
#: datalist keys of the three standard splits, in order.
DATALIST_KEYS: tuple[str, ...] = ("training", "validation", "test")
#: LViT split folder prefix -> datalist key.
SPLIT_TO_KEY: dict[str, str] = {"Train": "training", "Val": "validation", "Test": "test"}
#: values of a datalist's ``meta.laterality``: what "left" / "right" in its texts mean on its images. The preparers
#: and demo generators write it; evaluation scores the text-mask laterality agreement with it.
LATERALITY_CONVENTIONS: dict[str, str] = {
    "patient": "the patient's side, shown the radiological way (chest X-ray, axial CT): "
    "the patient's left is on the image's right",
    "image": "the image's own side (endoscopy, dermoscopy, histology photographs; texts made from the mask): "
    "'left' is the image's left",
}

#: Where an item's ``text`` came from: the item key ``text_source`` holds one of these words (every datalist writer of
#: the package sets it on every item with a text); ``meta.text_source`` holds the word all items share, or
#: ``"mixed"``, and ``meta.text_sources`` the count of each. The words say whether the text could have been written
#: without the ground-truth mask, which is what text-supervised training (the ``tifcmamba`` bundle) must know.
TEXT_SOURCES: dict[str, str] = {
    "caption": "written by a person about the image, without the mask (a data set's captions; a texts CSV declared so)",
    "report": "a clinical report or annotation text that came with the data (LViT's xlsx reports, a PACS report)",
    "template": "a fixed sentence from what is known without the mask: the class name ('polyp'), an image-level label",
    "mask_derived": "computed from the ground-truth mask or its annotation (count, size, location, coverage): "
    "it restates the answer",
    "synthetic": "written by a demo generator from the same ground truth that draws the mask: it describes the mask "
    "exactly",
    "unknown": "provenance not declared (a texts CSV given without --texts-source)",
}
#: text sources that carry the ground-truth mask: text-supervised training refuses them (and undeclared ones) unless
#: told otherwise, because a model trained on them learns the mask through the text.
MASK_DERIVED_SOURCES: frozenset[str] = frozenset({"mask_derived", "synthetic"})


def convert_paths(
    datalist: Mapping[str, Any],
    base_dir: str | os.PathLike,
    relative: bool = True,
    keys: Iterable[str] = PATH_KEYS,
) -> dict[str, Any]:
    """Return a deep copy of ``datalist`` with the path entries of every split item rewritten.

    Args:
        datalist: decathlon-style dict; every value that is a list of dicts is treated as a split.
        base_dir: folder the paths are made relative to (``relative=True``) or resolved against (``False``).
        relative: make paths relative to ``base_dir`` (``"/"``-separated) instead of absolute.
        keys: item keys holding a path or a list of paths.
    """
    base_dir = os.path.abspath(os.fspath(base_dir))
    keys = tuple(keys)

    def _conv(p: Any) -> Any:
        if not isinstance(p, (str, os.PathLike)):
            return p
        p = os.fspath(p)
        full = os.path.normpath(os.path.join(base_dir, p))
        if not relative:
            return full
        return os.path.relpath(full, base_dir).replace(os.sep, "/")

    out = copy.deepcopy(dict(datalist))
    for value in out.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if not isinstance(item, dict):
                continue
            for k in keys:
                if k not in item:
                    continue
                v = item[k]
                item[k] = [_conv(x) for x in v] if isinstance(v, (list, tuple)) else _conv(v)
    return out


def write_datalist(
    datalist: Mapping[str, Any], path: str | os.PathLike, relative: bool = True, keys: Iterable[str] = PATH_KEYS
) -> str:
    """Write a decathlon-style datalist to JSON (atomically) and return the absolute JSON path.

    Args:
        datalist: ``{"training": [...], "validation": [...], "test": [...], ...}``; items hold absolute paths
            (or paths relative to the current working directory).
        path: output ``.json`` file; parent folders are created.
        relative: store ``keys`` paths relative to the JSON file's folder (default) so the data set can be moved;
            ``False`` stores absolute paths.
        keys: item keys holding file paths.
    """
    path = os.path.abspath(os.fspath(path))
    out = convert_paths(datalist, os.path.dirname(path), relative=relative, keys=keys)
    text = json.dumps(out, indent=2, ensure_ascii=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """The datalist JSON as a dict. A missing, unreadable or malformed file raises an
    :class:`~monai_vlseg.errors.InputError` naming it and, for bad JSON, where the parser stopped."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(path, "datalist file not found") from None
    except IsADirectoryError:
        raise InputError(path, "a folder, not a datalist JSON file") from None
    except OSError as e:
        raise InputError(path, f"datalist cannot be read ({e.strerror})") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(path, "datalist is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"datalist is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise InputError(path, f"a datalist is a JSON object of splits, not a JSON {type(data).__name__}")
    return data


def datalist_laterality(datalist: str | os.PathLike | Mapping[str, Any]) -> str | None:
    """The side convention of a datalist's texts, ``meta.laterality`` (a key of :data:`LATERALITY_CONVENTIONS`), or
    None when it states none.

    Args:
        datalist: the datalist JSON file, or its content.

    Raises:
        InputError: an unreadable file, or a ``meta.laterality`` that is not one of :data:`LATERALITY_CONVENTIONS`,
            naming the file.
    """
    path = None if isinstance(datalist, Mapping) else os.fspath(datalist)
    data = datalist if isinstance(datalist, Mapping) else read_datalist(os.fspath(datalist))
    meta = data.get("meta")
    value = meta.get("laterality") if isinstance(meta, Mapping) else None
    if value is None:
        return None
    if value not in LATERALITY_CONVENTIONS:
        choices = " or ".join(repr(k) for k in LATERALITY_CONVENTIONS)
        raise InputError(path, f"meta.laterality is {value!r}; expected {choices}")
    return str(value)


def _check_split(path: str, data: Mapping[str, Any], split: str) -> None:
    """Raise an InputError naming ``path`` unless ``data[split]`` is a list of items with an ``image`` (or, for
    ``test``, of image paths, as MONAI allows)."""
    if split not in data:
        have = ", ".join(repr(k) for k, v in data.items() if isinstance(v, list)) or "none"
        raise InputError(path, f"datalist has no '{split}' section (its sections: {have})")
    items = data[split]
    if not isinstance(items, list):
        raise InputError(path, f"datalist section '{split}' is a JSON {type(items).__name__}, not a list of items")
    for i, item in enumerate(items):
        if isinstance(item, str) and split == "test":
            continue
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise InputError(path, f"item {i} of datalist section '{split}' is a JSON {kind}, not an object")
        if "image" not in item:
            raise InputError(path, f"item {i} of datalist section '{split}' has no 'image'")


def load_datalist(
    path: str | os.PathLike,
    split: str = "training",
    base_dir: str | os.PathLike | None = None,
    is_segmentation: bool = True,
) -> list[dict[str, Any]]:
    """Load one split of a datalist JSON with :func:`monai.data.load_decathlon_datalist`.

    Args:
        path: datalist ``.json`` file.
        split: datalist key (``"training"``, ``"validation"``, ``"test"``); the LViT folder names
            ``"Train"``, ``"Val"``, ``"Test"`` are accepted too.
        base_dir: folder relative paths are resolved against; defaults to the JSON file's folder.
        is_segmentation: also resolve the ``"label"`` entries (MONAI semantics).

    Returns:
        list of item dicts with absolute paths in the :data:`PATH_KEYS` entries (MONAI resolves only image/label).

    Raises:
        InputError: a missing or malformed file, a missing split, or an item without an image, naming the file.
    """
    from monai.data import load_decathlon_datalist

    split = SPLIT_TO_KEY.get(split, split)
    path = os.path.abspath(os.fspath(path))
    data = read_datalist(path)
    _check_split(path, data, split)
    if not data[split]:
        return []
    if base_dir is None:
        base_dir = os.path.dirname(path)
    items = load_decathlon_datalist(path, is_segmentation=is_segmentation, data_list_key=split, base_dir=base_dir)
    for item, raw in zip(items, data[split]):  # MONAI joins *any* string that names an existing path: "" -> base_dir
        if isinstance(raw, Mapping):
            item.update({k: v for k, v in raw.items() if k not in PATH_KEYS})
    extra = [k for k in PATH_KEYS if k not in ("image", "label")]
    return convert_paths({"items": items}, base_dir, relative=False, keys=extra)["items"]


def group_reports(
    items: Iterable[Mapping[str, Any]], keys: tuple[str, ...] = ("label", "text"), image_key: str = "image"
) -> list[dict[str, Any]]:
    """One item per image, its reports gathered: ``keys`` become lists (in datalist order); other fields are kept
    where all of the image's items agree (a per-report field such as a finding count is dropped). For training on
    images that carry several reports, each naming other findings (:class:`monai_vlseg.transforms.RandPickReportsd`
    then draws some of them per step, so that one batch holds the same image with different reports and masks).

    Raises:
        ValueError: an item lacks one of ``keys``.
    """
    groups: dict[Any, dict[str, Any]] = {}
    for i, item in enumerate(items):
        missing = [k for k in (image_key, *keys) if k not in item]
        if missing:
            raise ValueError(f"datalist item {i} ({item.get(image_key)!r}) has no {missing}")
        img = item[image_key]
        key = tuple(img) if isinstance(img, list) else img
        if key not in groups:
            groups[key] = {**item, **{k: [] for k in keys}}
        group = groups[key]
        for k in keys:
            group[k].append(item[k])
        for k in [k for k in group if k not in keys and k != image_key and item.get(k, ...) != group[k]]:
            del group[k]
    return list(groups.values())


def text_source_of(item: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str | None:
    """The :data:`TEXT_SOURCES` word of one item: its own ``text_source``, else the datalist's ``meta.text_source``
    when that is a vocabulary word (a hand-written datalist may mark all its items once there), else ``None``
    (unmarked: a datalist written before the marks, or by hand)."""
    own = item.get("text_source")
    if own is not None:
        return str(own)
    shared = (meta or {}).get("text_source")
    return str(shared) if shared in TEXT_SOURCES else None


def count_text_sources(
    datalist: Mapping[str, Any], splits: Iterable[str] | None = None
) -> dict[str, int]:
    """How many items with a text each source has in ``splits`` (default: every list-of-items section), by
    :func:`text_source_of`; unmarked items count under ``"unmarked"``."""
    meta = datalist.get("meta") if isinstance(datalist.get("meta"), Mapping) else None
    keys = list(splits) if splits is not None else [k for k, v in datalist.items() if isinstance(v, list)]
    counts: dict[str, int] = {}
    for key in keys:
        for item in datalist.get(key) or []:
            if not isinstance(item, Mapping) or not str(item.get("text") or "").strip():
                continue
            source = text_source_of(item, meta) or "unmarked"
            counts[source] = counts.get(source, 0) + 1
    return dict(sorted(counts.items()))


def summarise_text_sources(datalist: Mapping[str, Any]) -> dict[str, Any]:
    """``{"text_source": the word every item shares or "mixed" (or "none" without texts), "text_sources": counts}``
    for a datalist's ``meta``."""
    counts = count_text_sources(datalist)
    shared = next(iter(counts)) if len(counts) == 1 else ("mixed" if counts else "none")
    return {"text_source": shared, "text_sources": counts}
