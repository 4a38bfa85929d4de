# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builder for ISIC 2017 lesion segmentation (Task 1; https://challenge.isic-archive.com/data/).

Layout as downloaded (one folder per zip)::

    root/ISIC-2017_Training_Data/ISIC_0000000.jpg        (also *_superpixels.png and a metadata CSV: ignored)
    root/ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png      (0/255 PNG)
    root/ISIC-2017_Training_Part3_GroundTruth.csv        (image_id, melanoma, seborrheic_keratosis) — optional
    root/ISIC-2017_Validation_Data/  ISIC-2017_Validation_Part1_GroundTruth/  ISIC-2017_Validation_Part3_GroundTruth.csv
    root/ISIC-2017_Test_v2_Data/     ISIC-2017_Test_v2_Part1_GroundTruth/     ISIC-2017_Test_v2_Part3_GroundTruth.csv

The official split is used (2000 / 150 / 600 images). ISIC has no text: texts come from a CSV (``texts_csv``,
columns ``image``, ``text``) or a deterministic template filled from the Part 3 diagnosis labels (melanoma,
seborrheic keratosis, else nevus; left out when the CSV is absent) and the mask (size, position):
"A medium melanoma skin lesion at the center of the dermoscopy image." The template takes size and position from
the mask, so its sentences are marked ``text_source: mask_derived``; a CSV's texts are what ``texts_source``
declares. ISIC has no text written without the mask: text-supervised training (``tifcmamba``) needs a CSV of
descriptions written from the images (``--texts-csv F --texts-source caption``). Masks are used as they are.

Command line::

    python -m monai_vlseg.datasets.public.isic ROOT OUT.json [--texts-csv F] [--template T]
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from collections.abc import Sequence
from typing import Any

from monai_vlseg.datasets.public.common import (
    add_common_args,
    build_item,
    data_root,
    describe_mask,
    finish_datalist,
    read_text_csv,
    run_cli,
    user_text,
)

__all__ = ["ISIC_TEMPLATE", "build_isic2017_datalist", "main", "read_isic_diagnoses"]

#: ISIC split name in the folder names -> datalist key.
ISIC_SPLITS = {"Training": "training", "Validation": "validation", "Test": "test"}
ISIC_TEMPLATE = "A {size} {diagnosis} skin lesion at the {location} of the {modality}."
_MASK_SUFFIX = "_segmentation.png"


def read_isic_diagnoses(path: str | os.PathLike) -> dict[str, str]:
    """Part 3 ground truth CSV -> ``{image_id: "melanoma" | "seborrheic keratosis" | "nevus"}``."""
    out: dict[str, str] = {}
    with open(os.fspath(path), newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = {"image_id", "melanoma", "seborrheic_keratosis"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{path}: expected columns {sorted(need)}, found {reader.fieldnames}.")
        for row in reader:
            mel, sk = float(row["melanoma"] or 0), float(row["seborrheic_keratosis"] or 0)
            out[row["image_id"].strip()] = "melanoma" if mel >= 0.5 else "seborrheic keratosis" if sk >= 0.5 else "nevus"
    return out


def _one(pattern: str) -> str | None:
    hits = sorted(p for p in glob.glob(pattern) if os.path.isdir(p) or p.endswith(".csv"))
    return hits[-1] if hits else None  # Test_v2 over Test


def build_isic2017_datalist(
    root: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    texts_csv: str | os.PathLike | None = None,
    template: str | None = None,
    relative: bool = True,
    strict: bool = False,
    texts_source: str = "unknown",
) -> dict[str, Any]:
    """Build a datalist with text from ISIC 2017 Task 1 (see the module docstring).

    Args:
        root: folder holding the ``ISIC-2017_*`` folders.
        output_json: datalist to write.
        texts_csv: CSV with ``image`` and ``text`` columns (``ISIC_0000000`` or the file name).
        template: sentence template (default :data:`ISIC_TEMPLATE`; field ``diagnosis`` besides
            :func:`~monai_vlseg.datasets.prepare.describe_mask`'s).
        relative: paths in the JSON relative to its folder; strict: raise on any problem.
        texts_source: the ``text_source`` of the ``texts_csv`` texts (:data:`monai_vlseg.datalist.TEXT_SOURCES`).
    """
    root = data_root(root, "ISIC 2017")
    texts = read_text_csv(texts_csv) if texts_csv else None
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[dict[str, Any]]] = {}
    diag_used = False
    for name, key in ISIC_SPLITS.items():
        data = _one(os.path.join(root, f"ISIC-2017_{name}*_Data"))
        gt = _one(os.path.join(root, f"ISIC-2017_{name}*_Part1_GroundTruth"))
        if data is None:
            skipped.append({"split": key, "file": f"ISIC-2017_{name}_Data", "reason": "split folder missing"})
            continue
        if gt is None:
            raise FileNotFoundError(f"{root}: {os.path.basename(data)} has no ISIC-2017_{name}*_Part1_GroundTruth folder.")
        part3 = _one(os.path.join(root, f"ISIC-2017_{name}*_Part3_GroundTruth.csv"))
        diagnoses = read_isic_diagnoses(part3) if part3 else {}
        diag_used |= bool(diagnoses)
        splits[key] = []
        images = sorted(
            f for f in os.listdir(data)
            if f.lower().endswith((".jpg", ".jpeg", ".png")) and f.startswith("ISIC_") and "_superpixels" not in f
        )  # fmt: skip
        stems = {os.path.splitext(f)[0] for f in images}
        for f in sorted(os.listdir(gt)):
            if f.endswith(_MASK_SUFFIX) and f[: -len(_MASK_SUFFIX)] not in stems:
                skipped.append({"split": key, "file": os.path.relpath(os.path.join(gt, f), root), "reason": "mask without image"})
        for f in images:
            stem = os.path.splitext(f)[0]
            text = user_text(texts, f)
            extra = {"diagnosis": diagnoses.get(stem, "")}
            item = build_item(
                key, os.path.join(data, f), os.path.join(gt, stem + _MASK_SUFFIX), root, skipped, text=text,
                describe=lambda m, extra=extra: describe_mask(
                    m, target="skin lesion", modality="dermoscopy image", template=template or ISIC_TEMPLATE, extra=extra
                ), text_source=texts_source,
            )  # fmt: skip
            if item:
                splits[key].append(item)
    if not splits:
        raise FileNotFoundError(f"{root}: no ISIC-2017_*_Data folder found.")
    source = f"user CSV {texts_csv} (declared {texts_source})" if texts_csv else (
        "template from the mask" + (" and the Part 3 diagnosis" if diag_used else ""))  # fmt: skip
    meta = {"dataset": "ISIC 2017", "text_origin": source, "split": "official ISIC 2017 split", "root": root}
    meta["laterality"] = "image"  # dermoscopy photographs: "left" is the image's left
    return finish_datalist(splits, skipped, meta, output_json, relative=relative, strict=strict, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.public.isic ROOT OUT.json``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.public.isic", description=__doc__.split("\n\n")[0])
    add_common_args(p, split=False)
    a = p.parse_args(argv)
    return run_cli(build_isic2017_datalist, a, texts_csv=a.texts_csv, template=a.template, texts_source=a.texts_source)


if __name__ == "__main__":
    sys.exit(main())
