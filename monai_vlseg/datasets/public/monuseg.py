# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builder for MoNuSeg (nuclei in H&E tissue; https://monuseg.grand-challenge.org/), XML rasterised.

Layout as downloaded::

    root/MoNuSeg 2018 Training Data/Tissue Images/TCGA-18-5592-01Z-00-DX1.tif     (1000x1000 RGB)
    root/MoNuSeg 2018 Training Data/Annotations/TCGA-18-5592-01Z-00-DX1.xml       (Aperio ImageScope XML)
    root/MoNuSegTestData/TCGA-2Z-A9J9-01A-01-TS1.tif  + .xml                      (the official test set)

Any folder layout works: every ``*.xml`` under ``root`` is paired with the image of the same stem (``.tif``,
``.tiff``, ``.png``) in its folder, a sibling ``Tissue Images`` folder, or anywhere under ``root``. Files under a
folder whose name contains "test" form the test split (the official one); the rest is split into training and
validation with a seeded ``val_fraction`` (and ``test_fraction`` when there is no test folder).

Each ``Annotation/Regions/Region/Vertices/Vertex`` polygon (``X``, ``Y`` attributes, pixels) is filled with
PIL's ``ImageDraw.polygon`` into one binary mask (semantic nuclei mask, as the text-guided papers use it), written
as a 0/255 PNG beside the datalist (``<out stem>_masks/``). MoNuSeg has no text: a CSV (``texts_csv``) or the
deterministic template :data:`MONUSEG_TEMPLATE` with the number of annotated nuclei and the area they cover ("312
cell nuclei covering 27% of the H&E-stained tissue image."), taken from the annotations that are the mask: marked
``text_source: mask_derived`` (a CSV's texts: what ``texts_source`` declares). LViT's copy of MoNuSeg, with its own
texts in ``*_text.xlsx``, is read by :mod:`monai_vlseg.datasets.public.lvit` instead.

Command line::

    python -m monai_vlseg.datasets.public.monuseg ROOT OUT.json [--texts-csv F] [--val-fraction 0.1 --seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_vlseg.datasets.public.common import (
    add_common_args,
    build_item,
    data_root,
    default_mask_dir,
    describe_mask,
    finish_datalist,
    read_text_csv,
    run_cli,
    seeded_split,
    user_text,
)

__all__ = ["MONUSEG_TEMPLATE", "build_monuseg_datalist", "main", "rasterise_polygons", "read_aperio_polygons"]

MONUSEG_TEMPLATE = "{count} {target} covering {coverage} of the {modality}."
_IMG_EXT = (".tif", ".tiff", ".png")


def read_aperio_polygons(path: str | os.PathLike) -> list[np.ndarray]:
    """Polygons of an Aperio ImageScope XML file: one ``(N, 2)`` float array of (x, y) per ``Region``.

    Regions with fewer than 3 vertices are dropped. Raises ``ValueError`` naming the file when it is not XML or
    holds no ``Region``.
    """
    path = os.fspath(path)
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e}).") from e
    regions = tree.getroot().findall(".//Region")
    if not regions:
        raise ValueError(f"{path}: no Region elements (not an Aperio annotation file?).")
    polys = []
    for reg in regions:
        pts = [(float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in reg.iter("Vertex")]
        arr = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        arr = arr[np.isfinite(arr).all(axis=1)]
        if len(arr) >= 3:
            polys.append(arr)
    return polys


def rasterise_polygons(polygons: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Fill ``polygons`` ((x, y) pixel coordinates) into a boolean mask of ``size`` = (width, height)."""
    from PIL import Image, ImageDraw

    im = Image.new("L", size, 0)
    draw = ImageDraw.Draw(im)
    for p in polygons:
        draw.polygon([(float(x), float(y)) for x, y in p], fill=255, outline=255)
    return np.asarray(im) > 0


def _find_image(xml: str, index: dict[str, str]) -> str | None:
    stem, folder = os.path.splitext(os.path.basename(xml))[0], os.path.dirname(xml)
    for d in (folder, os.path.join(os.path.dirname(folder), "Tissue Images"), os.path.join(os.path.dirname(folder), "Tissue images")):
        for ext in _IMG_EXT:
            if os.path.isfile(os.path.join(d, stem + ext)):
                return os.path.join(d, stem + ext)
    return index.get(stem)


def build_monuseg_datalist(
    root: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    texts_csv: str | os.PathLike | None = None,
    template: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    mask_dir: str | os.PathLike | None = None,
    relative: bool = True,
    strict: bool = False,
    texts_source: str = "unknown",
) -> dict[str, Any]:
    """Build a datalist with text from MoNuSeg's images and XML annotations (see the module docstring).

    Args:
        root: folder holding the MoNuSeg folders.
        output_json: datalist to write; rasterised masks go to ``mask_dir`` (default ``<out stem>_masks/``).
        texts_csv: CSV with ``image`` and ``text`` columns (TCGA file name or stem).
        template: sentence template (default :data:`MONUSEG_TEMPLATE`; field ``coverage`` besides
            :func:`~monai_vlseg.datasets.prepare.describe_mask`'s).
        val_fraction: validation fraction of the non-test images (seeded).
        test_fraction: test fraction, used only when no folder named "*test*" holds annotations.
        relative: paths in the JSON relative to its folder; strict: raise on any problem.
        texts_source: the ``text_source`` of the ``texts_csv`` texts (:data:`monai_vlseg.datalist.TEXT_SOURCES`).
    """
    root = data_root(root, "MoNuSeg")
    out_masks = default_mask_dir(output_json, mask_dir)
    if out_masks is None:
        raise ValueError("MoNuSeg masks are rasterised from XML: give `output_json` or `mask_dir`.")
    xmls, index = [], {}
    for d, _, files in os.walk(root):
        if out_masks and os.path.abspath(d).startswith(out_masks):
            continue
        for f in sorted(files):
            if f.lower().endswith(".xml"):
                xmls.append(os.path.join(d, f))
            elif f.lower().endswith(_IMG_EXT):
                index.setdefault(os.path.splitext(f)[0], os.path.join(d, f))
    if not xmls:
        raise FileNotFoundError(f"{root}: no *.xml annotation files found (MoNuSeg layout).")
    is_test = {x: "test" in os.path.relpath(os.path.dirname(x), root).lower() for x in xmls}
    has_test = any(is_test.values())
    by_stem = {os.path.splitext(os.path.basename(x))[0]: x for x in xmls if not is_test[x]}
    assign = seeded_split(list(by_stem), val_fraction, 0.0 if has_test else test_fraction, seed)
    if has_test:
        assign["test"] = sorted(os.path.splitext(os.path.basename(x))[0] for x in xmls if is_test[x])
    xml_of = {**by_stem, **{os.path.splitext(os.path.basename(x))[0]: x for x in xmls if is_test[x]}}
    texts = read_text_csv(texts_csv) if texts_csv else None
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[dict[str, Any]]] = {}
    for key in ("training", "validation", "test"):
        splits[key] = []
        for stem in assign.get(key, []):
            xml = xml_of[stem]
            image = _find_image(xml, index)
            if image is None:
                skipped.append({"split": key, "file": os.path.relpath(xml, root), "reason": "no image with this name"})
                continue
            try:
                polys = read_aperio_polygons(xml)
                from PIL import Image

                with Image.open(image) as im:
                    size = im.size
                mask = rasterise_polygons(polys, size)
            except (ValueError, OSError) as e:
                skipped.append({"split": key, "file": os.path.relpath(xml, root), "reason": str(e)})
                continue
            text = user_text(texts, image)
            coverage = f"{100.0 * mask.mean():.0f}%"
            item = build_item(
                key, image, xml, root, skipped, text=text, mask_array=mask,
                describe=lambda m, n=len(polys), c=coverage: describe_mask(
                    m, target="cell nucleus", plural="cell nuclei", modality="H&E-stained tissue image",
                    template=template or MONUSEG_TEMPLATE, extra={"coverage": c}, count=n,
                ),
                mask_out=os.path.join(out_masks, stem + ".png"), text_source=texts_source,
            )  # fmt: skip
            if item:
                splits[key].append(item)
    meta = {
        "dataset": "MoNuSeg",
        "text_origin": (
            f"user CSV {texts_csv} (declared {texts_source})" if texts_csv
            else "template from the XML annotations (count, coverage)"
        ),  # fmt: skip
        "split": ("official test folder; " if has_test else "")
        + f"seeded split (val {val_fraction}{'' if has_test else f', test {test_fraction}'}, seed {seed})",
        "root": root,
        "masks": "Aperio XML polygons filled with PIL ImageDraw (binary, 0/255 PNG)",
        "laterality": "image",
    }
    return finish_datalist(splits, skipped, meta, output_json, relative=relative, strict=strict, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.public.monuseg ROOT OUT.json``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.public.monuseg", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--mask-dir", default=None, help="where rasterised PNG masks go (default <OUT stem>_masks)")
    a = p.parse_args(argv)
    return run_cli(
        build_monuseg_datalist, a, texts_csv=a.texts_csv, template=a.template, val_fraction=a.val_fraction,
        test_fraction=a.test_fraction, seed=a.seed, mask_dir=a.mask_dir, texts_source=a.texts_source,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
