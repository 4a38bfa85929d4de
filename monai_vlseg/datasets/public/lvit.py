# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builder for the LViT data layout (QaTa-COV19, MosMedData+).

Expected layout (as distributed with LViT, https://github.com/HUANGLIZI/LViT)::

    root/
        Train_text.xlsx  Val_text.xlsx  Test_text.xlsx      # columns "Image", "Description"
        Train_Folder/img/*.png      Train_Folder/labelcol/*.png
        Val_Folder/img/*.png        Val_Folder/labelcol/*.png
        Test_Folder/img/*.png       Test_Folder/labelcol/*.png

Variants that are accepted as well:

- the ``{Split}_text.xlsx`` file inside its ``{Split}_Folder``;
- QaTa-COV19 names the MASK in the ``Image`` column (``mask_covid_1.png``; image ``img/covid_1.png``),
  MosMedData+ uses one name for image and mask; both are detected per row;
- the Covid19 copy keeps one ``Train_Val_text.xlsx`` for Train and Val: each row belongs to whichever of
  ``Train_Folder`` / ``Val_Folder`` holds its files.

Texts are LViT's, written by its annotators for each image (number, side and zone of the infected areas): items are
marked ``text_source: report`` (:data:`monai_vlseg.datalist.TEXT_SOURCES`). LViT does not say whether the annotators
had the masks in view; a data set whose texts were written from its masks is prepared with
``text_source="mask_derived"`` (``--text-source``). Masks are 0/255 PNGs. Problems are never dropped silently: rows
whose image or mask is missing or whose description is empty, and files on disk without a row, are logged (one
warning line per file) and listed under the ``"skipped"`` key of the returned datalist; ``strict=True`` raises
instead.

Command line::

    python -m monai_vlseg.datasets.public.lvit ROOT OUT.json [--splits Train Val Test] [--absolute] [--strict]
    python -m monai_vlseg.datasets.prepare qata|mosmed ROOT OUT.json [same options]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from monai_vlseg.datalist import LATERALITY_CONVENTIONS, SPLIT_TO_KEY, TEXT_SOURCES
from monai_vlseg.datasets.public.common import add_common_args, data_root, finish_datalist, run_cli

__all__ = ["build_lvit_datalist", "read_lvit_text_xlsx", "IMAGE_SUFFIXES", "main"]

#: suffixes of files considered images/masks when looking for files without an xlsx row.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MASK_PREFIX = "mask_"
_SHARED_XLSX = "Train_Val_text.xlsx"


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN
        return True
    s = str(value).strip()
    return s == "" or s.lower() in ("nan", "none", "null")


def read_lvit_text_xlsx(path: str | os.PathLike) -> list[tuple[int, Any, Any]]:
    """Read an LViT ``*_text.xlsx`` file.

    Args:
        path: xlsx file with a header row holding ``Image`` and ``Description`` (case-insensitive; other
            columns are ignored).

    Returns:
        ``(excel_row_number, image_value, description_value)`` for every non-blank data row; values are raw
        cell values (may be ``None``).
    """
    import openpyxl

    wb = openpyxl.load_workbook(os.fspath(path), read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        rows: list[tuple[int, Any, Any]] = []
        col_img = col_txt = None
        for r, values in enumerate(ws.iter_rows(values_only=True), start=1):
            if col_img is None:
                names = [str(v).strip().lower() if v is not None else "" for v in values]
                if "image" in names and "description" in names:
                    col_img, col_txt = names.index("image"), names.index("description")
                continue
            img = values[col_img] if col_img < len(values) else None
            txt = values[col_txt] if col_txt < len(values) else None
            if _is_empty(img) and _is_empty(txt):
                continue
            rows.append((r, img, txt))
        if col_img is None:
            raise ValueError(f"{path}: no header row with 'Image' and 'Description' columns.")
        return rows
    finally:
        wb.close()


def _list_files(folder: str) -> set[str]:
    if not os.path.isdir(folder):
        return set()
    return {f for f in os.listdir(folder) if not f.startswith(".") and os.path.isfile(os.path.join(folder, f))}


def _find_xlsx(root: str, split: str) -> str | None:
    for cand in (os.path.join(root, f"{split}_text.xlsx"), os.path.join(root, f"{split}_Folder", f"{split}_text.xlsx")):
        if os.path.isfile(cand):
            return cand
    if split in ("Train", "Val"):
        for cand in (
            os.path.join(root, _SHARED_XLSX),
            os.path.join(root, "Train_Folder", _SHARED_XLSX),
            os.path.join(root, "Val_Folder", _SHARED_XLSX),
        ):
            if os.path.isfile(cand):
                return cand
    return None


def _candidates(name: str) -> tuple[list[str], list[str]]:
    """Image and mask file name candidates for one ``Image`` cell value (QaTa: mask name; MosMed: shared name)."""
    names = [name] if os.path.splitext(name)[1] else [name, name + ".png"]
    images: list[str] = []
    masks: list[str] = []
    for n in names:
        if n.lower().startswith(_MASK_PREFIX):
            images += [n[len(_MASK_PREFIX) :], n]
            masks += [n]
        else:
            images += [n]
            masks += [n, _MASK_PREFIX + n]
    return images, masks


def build_lvit_datalist(
    root: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    splits: Sequence[str] = ("Train", "Val", "Test"),
    relative: bool = True,
    strict: bool = False,
    image_dir: str = "img",
    label_dir: str = "labelcol",
    text_source: str = "report",
    laterality: str = "patient",
) -> dict[str, list[dict[str, Any]]]:
    """Build a MONAI decathlon-style datalist from an LViT-layout data set (QaTa-COV19, MosMedData+).

    Args:
        root: data set root holding ``{Train,Val,Test}_Folder`` and the ``*_text.xlsx`` files.
        output_json: if given, the datalist is also written there (see ``relative``).
        splits: LViT split names to include; ``Train``, ``Val``, ``Test`` map to the datalist keys
            ``training``, ``validation``, ``test``.
        relative: paths in the written JSON are relative to its folder (default, the data set can be moved;
            :func:`monai.data.load_decathlon_datalist` / :func:`~monai_vlseg.datalist.load_datalist`
            resolve them) or absolute. The returned dict always holds absolute paths.
        strict: raise ``ValueError`` listing every problem instead of skipping and reporting.
        image_dir: image sub-folder of each split folder.
        label_dir: mask sub-folder of each split folder.
        text_source: the ``text_source`` of every item (:data:`monai_vlseg.datalist.TEXT_SOURCES`; default
            ``report``: the xlsx descriptions came with the data set).
        laterality: the side convention of the texts, ``meta.laterality`` (see
            :data:`~monai_vlseg.datalist.LATERALITY_CONVENTIONS`): ``"patient"`` for QaTa-COV19 (chest X-ray) and
            MosMedData+ (axial CT); ``"image"`` for LViT's MoNuSeg copy (histology).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "skipped": [...], "meta": {...}}`` (only the
        requested split keys). Items are ``{"image": abs path, "label": abs path, "text": description,
        "text_source"}`` in xlsx row order. ``"skipped"`` lists ``{"split", "file", "reason"}`` records (``file``
        relative to ``root``; row problems also carry ``"xlsx"`` and ``"row"``), each of which is also logged as a
        warning.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds none of the requested split folders.
        ValueError: ``strict=True`` and a problem was found; an unknown split name.
    """
    root = data_root(root, "LViT data")
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"text source must be one of {sorted(TEXT_SOURCES)}, got {text_source!r}.")
    for s in splits:
        if s not in SPLIT_TO_KEY:
            raise ValueError(f"unknown split {s!r}; expected some of {tuple(SPLIT_TO_KEY)}.")

    skipped: list[dict[str, Any]] = []
    out: dict[str, list[dict[str, Any]]] = {SPLIT_TO_KEY[s]: [] for s in splits}

    def _rel(p: str) -> str:
        return os.path.relpath(p, root).replace(os.sep, "/")

    # files on disk per split folder (also for Train/Val when only the other is requested: shared xlsx rows)
    folders = {s: os.path.join(root, f"{s}_Folder") for s in SPLIT_TO_KEY}
    files = {
        s: (_list_files(os.path.join(folders[s], image_dir)), _list_files(os.path.join(folders[s], label_dir)))
        for s in SPLIT_TO_KEY
    }
    used: dict[str, tuple[set[str], set[str]]] = {s: (set(), set()) for s in SPLIT_TO_KEY}

    present = [s for s in splits if os.path.isdir(folders[s])]
    if not present:
        raise FileNotFoundError(f"{root}: none of {[f'{s}_Folder' for s in splits]} exists.")
    for s in splits:
        if s not in present:
            skipped.append({"split": s, "file": f"{s}_Folder", "reason": "split folder missing"})

    # xlsx file -> splits it serves (a shared Train_Val_text.xlsx serves Train and Val)
    sources: dict[str, list[str]] = {}
    no_xlsx: list[str] = []
    for s in present:
        x = _find_xlsx(root, s)
        if x is None:
            no_xlsx.append(s)
        else:
            sources.setdefault(x, []).append(s)

    for xlsx, served in sources.items():
        shared = os.path.basename(xlsx) == _SHARED_XLSX
        owners = [s for s in ("Train", "Val") if os.path.isdir(folders[s])] if shared else served
        xrel = _rel(xlsx)
        seen: set[tuple[str, str]] = set()
        for row, img_val, txt_val in read_lvit_text_xlsx(xlsx):
            name = "" if _is_empty(img_val) else str(img_val).strip()
            rec: dict[str, Any] = {"xlsx": xrel, "row": row}
            if not name:
                skipped.append({"split": served[0], "file": "", "reason": "empty 'Image' cell", **rec})
                continue
            img_c, mask_c = _candidates(name)
            # the split whose folder holds the row's files (both, else either); per-split xlsx: its own split
            best, best_score, found = owners[0], -1, (None, None)
            for s in owners:
                im = next((c for c in img_c if c in files[s][0]), None)
                mk = next((c for c in mask_c if c in files[s][1]), None)
                score = (im is not None) + (mk is not None)
                if score > best_score:
                    best, best_score, found = s, score, (im, mk)
            split = best if best_score > 0 else served[0]
            if split not in served:  # a shared-xlsx row whose files are in a split that was not requested
                continue
            im, mk = found
            img_rel = f"{split}_Folder/{image_dir}/{im or img_c[0]}"
            mask_rel = f"{split}_Folder/{label_dir}/{mk or mask_c[0]}"
            reasons = []
            if im is None:
                reasons.append(f"image file missing ({img_rel})")
            if mk is None:
                reasons.append(f"mask file missing ({mask_rel})")
            if _is_empty(txt_val):
                reasons.append("empty description")
            key = (split, mk or name)
            if key in seen:
                reasons.append("duplicate row")
            seen.add(key)
            if im is not None:
                used[split][0].add(im)
            if mk is not None:
                used[split][1].add(mk)
            if reasons:
                file = mask_rel if mk else img_rel
                skipped.append({"split": split, "file": file, "reason": "; ".join(reasons), **rec})
                continue
            out[SPLIT_TO_KEY[split]].append(
                {
                    "image": os.path.join(folders[split], image_dir, im),
                    "label": os.path.join(folders[split], label_dir, mk),
                    "text": str(txt_val).strip(),
                    "text_source": text_source,
                }
            )

    # files on disk that no row references
    for s in present:
        x = _find_xlsx(root, s)
        why = f"no row in {_rel(x)}" if x else f"no row: no {s}_text.xlsx (nor {_SHARED_XLSX}) found"
        for sub, idx in ((image_dir, 0), (label_dir, 1)):
            for f in sorted(files[s][idx] - used[s][idx]):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    skipped.append({"split": s, "file": f"{s}_Folder/{sub}/{f}", "reason": why})

    meta = {"dataset": "lvit", "text_origin": "LViT xlsx", "laterality": laterality}
    return finish_datalist(
        out, skipped, meta, output_json, relative=relative, strict=strict, root=root, report_parsers=(None, "chest")
    )

def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: ``python -m monai_vlseg.datasets.public.lvit ROOT OUT.json``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.public.lvit", description=__doc__.split("\n\n")[0])
    add_common_args(p, texts=False, split=False)
    p.add_argument("--splits", nargs="+", default=["Train", "Val", "Test"], choices=list(SPLIT_TO_KEY))
    p.add_argument("--image-dir", default="img")
    p.add_argument("--label-dir", default="labelcol")
    p.add_argument(
        "--text-source", default="report", choices=sorted(TEXT_SOURCES),
        help="what the xlsx descriptions are (each item's text_source; default report: they came with the data set)",
    )  # fmt: skip
    p.add_argument(
        "--laterality", choices=list(LATERALITY_CONVENTIONS), default="patient",
        help="side convention of the texts (meta.laterality): patient for QaTa-COV19 / MosMedData+ (default), "
        "image for LViT's MoNuSeg copy",
    )  # fmt: skip
    a = p.parse_args(argv)
    return run_cli(
        build_lvit_datalist, a, splits=a.splits, image_dir=a.image_dir, label_dir=a.label_dir, text_source=a.text_source,
        laterality=a.laterality,
    )

if __name__ == "__main__":
    sys.exit(main())
