# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builder for Kvasir-SEG (https://datasets.simula.no/kvasir-seg/), with MedVLSM's captions.

Layout as downloaded (``kvasir-seg.zip`` unpacks to ``Kvasir-SEG/``)::

    root/                                  # or root/Kvasir-SEG/
        images/cju0qkwl35piu0993l0dewei2.jpg ...    (1000 RGB JPEGs)
        masks/cju0qkwl35piu0993l0dewei2.jpg  ...    (same names, JPEG masks: lossy, thresholded at 127)
        kavsir_bboxes.json                          ({"<id>": {"height", "width", "bbox": [{"label", "xmin", ...}]}})
        anns/train.json  anns/val.json  anns/test.json   # optional: MedVLSM's caption files

MedVLSM's caption files (github.com/naamiinepal/medvlsm, ``data/kvasir_polyp/anns/{train,val,test}.json``) are
lists of ``{"img_name", "mask_name", "prompts": {"p0": "", "p1": "...", "p2": [...], ...}}``; a prompt is a
string or a list of alternatives. They define the split (the one MedVLSM's benchmarks use). ``prompt`` picks the
key (default ``p6``: "one small pink circle polyp, located in right of the image", the most detailed caption with
location words; ``"auto"``: the highest-numbered non-empty one), ``prompt_index`` the alternative of a list.

**Which MedVLSM prompts come from the mask.** MedVLSM's prompt script computes the size, the number and the
location of the target from the ground-truth mask (``get_mask_description`` in its ``features_from_img.py``); the
polyp files' ``p2``/``p3`` name shape and colour, whose origin the files do not record, and in MedVLSM's other data
sets the same keys hold size and count. So only ``p1`` (the class name, "polyp") is marked ``template`` here; every
other prompt is marked ``mask_derived`` (``p0`` is empty and skipped). The default ``p6`` is mask-derived: fine as
the *input* of a mask-supervised text-guided model (and what UA-VLS uses), but text-supervised training
(``tifcmamba``) refuses it unless told otherwise.

Without caption files: a seeded split (``val_fraction``/``test_fraction``/``seed``) and texts from a CSV
(``texts_csv``) or the deterministic template :func:`monai_vlseg.datasets.prepare.describe_mask` ("One small polyp at
the top left of the colonoscopy image."), whose count is the number of boxes in ``kavsir_bboxes.json`` when the image
is listed there (``mask_derived``; a CSV's texts are what ``texts_source`` declares). JPEG masks are written as 0/255
PNGs beside the datalist (``<out stem>_masks/``).

Command line::

    python -m monai_vlseg.datasets.public.kvasir ROOT OUT.json [--captions DIR] [--prompt auto|p1..p9] [--texts-csv F]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

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

__all__ = [
    "MEDVLSM_MASK_FREE_PROMPTS",
    "build_kvasir_datalist",
    "main",
    "medvlsm_prompt_source",
    "pick_prompt",
    "read_medvlsm_captions",
    "resolve_prompt_key",
]

CAPTION_SPLITS = {"train": "training", "val": "validation", "test": "test"}
#: MedVLSM prompt used by default: p6 is "<count> <size> <colour> <shape> polyp, located in <where> of the image",
#: the most detailed single caption with location words (UA-VLS picks those); p7-p9 append generic definitions.
DEFAULT_PROMPT = "p6"
#: MedVLSM prompt keys whose text was not taken from the mask: ``p0`` (empty) and ``p1`` (the class name).
MEDVLSM_MASK_FREE_PROMPTS = ("p0", "p1")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def read_medvlsm_captions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read one MedVLSM caption file (a JSON list of ``{"img_name", "mask_name", "prompts"}``)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of caption records, got {type(data).__name__}.")
    return data


def _prompt_text(value: Any, index: int) -> str:
    if isinstance(value, list):
        value = value[index % len(value)] if value else ""
    return str(value or "").strip()


def resolve_prompt_key(prompts: Any, key: str = "auto", index: int = 0) -> str | None:
    """The key :func:`pick_prompt` reads in one ``prompts`` dict: ``key`` itself, or for ``"auto"`` the
    highest-numbered ``pN`` with a non-empty text (``None`` when there is none)."""
    if key != "auto":
        return key
    if not isinstance(prompts, dict):
        return None
    numbered = sorted(
        (int(m.group(1)), k)
        for k in prompts
        if (m := re.fullmatch(r"p(\d+)", str(k))) and _prompt_text(prompts[k], index)
    )
    return numbered[-1][1] if numbered else None


def pick_prompt(prompts: Any, key: str = "auto", index: int = 0) -> str:
    """The text of one MedVLSM ``prompts`` dict: key ``key`` (``"auto"``: highest-numbered non-empty ``pN``),
    alternative ``index`` (modulo the number of alternatives) when the value is a list. ``""`` when absent."""
    if not isinstance(prompts, dict):
        return ""
    resolved = resolve_prompt_key(prompts, key, index)
    return _prompt_text(prompts.get(resolved), index) if resolved else ""


def medvlsm_prompt_source(key: str | None) -> str:
    """The ``text_source`` of a MedVLSM prompt key: ``template`` for :data:`MEDVLSM_MASK_FREE_PROMPTS`, else
    ``mask_derived`` (see the module docstring)."""
    return "template" if key in MEDVLSM_MASK_FREE_PROMPTS else "mask_derived"


def _find(folder: str, name: str) -> str | None:
    """``folder/name``, else a file with ``name``'s stem and an image suffix."""
    p = os.path.join(folder, name)
    if os.path.isfile(p):
        return p
    stem = os.path.splitext(name)[0]
    for ext in _IMAGE_EXT:
        if os.path.isfile(os.path.join(folder, stem + ext)):
            return os.path.join(folder, stem + ext)
    return None


def medvlsm_splits(
    captions: str | os.PathLike,
    img_dir: str,
    msk_dir: str,
    root: str,
    skipped: list[dict[str, Any]],
    prompt: str = DEFAULT_PROMPT,
    prompt_index: int = 0,
    mask_out: Any = None,
) -> dict[str, list[dict[str, Any]]]:
    """Datalist splits from a folder of MedVLSM caption files (``train.json``, ``val.json``, ``test.json``).

    Args:
        captions: the ``anns`` folder.
        img_dir, msk_dir: where ``img_name`` / ``mask_name`` are looked up (exact name, else same stem).
        root: data set root (skip records are relative to it); skipped: list problems are appended to.
        prompt, prompt_index: which prompt (see :func:`pick_prompt`).
        mask_out: ``mask_out(split, mask_name)`` -> PNG path for a converted mask, or ``None`` to keep the mask.
    """
    captions = os.path.abspath(os.fspath(captions))
    files = {k: os.path.join(captions, f"{s}.json") for s, k in CAPTION_SPLITS.items()}
    if not any(os.path.isfile(f) for f in files.values()):
        raise FileNotFoundError(f"{captions}: none of train.json, val.json, test.json (MedVLSM caption files).")
    splits: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for key, cap_file in files.items():
        if not os.path.isfile(cap_file):
            skipped.append({"split": key, "file": os.path.relpath(cap_file, root), "reason": "caption file missing"})
            continue
        seen: set[str] = set()
        for i, rec in enumerate(read_medvlsm_captions(cap_file)):
            where = f"record {i} of {os.path.basename(cap_file)}"
            img_name = str(rec.get("img_name") or "") if isinstance(rec, dict) else ""
            if not img_name:
                skipped.append({"split": key, "file": "", "reason": f"no img_name ({where})"})
                continue
            mask_name = str(rec.get("mask_name") or img_name)
            image = _find(img_dir, img_name) or os.path.join(img_dir, img_name)
            if img_name in seen:
                skipped.append({"split": key, "file": os.path.relpath(image, root), "reason": f"duplicate ({where})"})
                continue
            seen.add(img_name)
            mask = _find(msk_dir, mask_name) or os.path.join(msk_dir, mask_name)
            text = pick_prompt(rec.get("prompts"), prompt, prompt_index)
            source = medvlsm_prompt_source(resolve_prompt_key(rec.get("prompts"), prompt, prompt_index))
            if not text:
                reason = f"empty prompt '{prompt}' ({where})"
                skipped.append({"split": key, "file": os.path.relpath(image, root), "reason": reason})
                continue
            out = None if mask_out is None else mask_out(key, mask_name)
            item = build_item(key, image, mask, root, skipped, text=text, mask_out=out, text_source=source)
            if item:
                splits[key].append(item)
    return splits


def build_kvasir_datalist(
    root: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    prompt: str = DEFAULT_PROMPT,
    prompt_index: int = 0,
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
    """Build a datalist with text from Kvasir-SEG (see the module docstring for the layout).

    Args:
        root: folder holding ``images/`` and ``masks/`` (or a ``Kvasir-SEG/`` folder that does).
        output_json: datalist to write; converted masks go to ``mask_dir`` (default ``<out stem>_masks/``).
        captions: folder with MedVLSM's ``train.json``/``val.json``/``test.json`` (default ``root/anns`` when
            present). They give the split and the texts.
        prompt, prompt_index: which MedVLSM prompt (see :func:`pick_prompt`).
        texts_csv: CSV with ``image`` and ``text`` columns; used without caption files (overrides the template).
        template: sentence template for :func:`~monai_vlseg.datasets.prepare.describe_mask`.
        val_fraction, test_fraction, seed: the seeded split used without caption files.
        relative: paths in the JSON relative to its folder; strict: raise on any problem.
        texts_source: the ``text_source`` of the ``texts_csv`` texts (:data:`monai_vlseg.datalist.TEXT_SOURCES`).

    Returns:
        ``{"training", "validation", "test", "skipped", "meta"}``; every item's ``text_source`` says where its text
        came from, ``meta.text_origin`` describes the texts used.
    """
    root = data_root(root, "Kvasir-SEG")
    base = root
    if not os.path.isdir(os.path.join(base, "images")) and os.path.isdir(os.path.join(root, "Kvasir-SEG", "images")):
        base = os.path.join(root, "Kvasir-SEG")
    img_dir, msk_dir = os.path.join(base, "images"), os.path.join(base, "masks")
    for d in (img_dir, msk_dir):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"{root}: no '{os.path.relpath(d, root)}' folder (Kvasir-SEG layout: images/, masks/).")
    out_masks = default_mask_dir(output_json, mask_dir)
    if captions is None and os.path.isdir(os.path.join(base, "anns")):
        captions = os.path.join(base, "anns")
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}

    def mask_out(split: str, mask_name: str) -> str | None:
        return None if out_masks is None else os.path.join(out_masks, split, os.path.splitext(mask_name)[0] + ".png")

    if captions is not None:
        splits = medvlsm_splits(captions, img_dir, msk_dir, root, skipped, prompt, prompt_index, mask_out)
        source = f"MedVLSM captions ({os.path.abspath(os.fspath(captions))}), prompt '{prompt}', alternative {prompt_index}"
        split_source = "MedVLSM caption files"
    else:
        boxes: dict[str, Any] = {}
        bbox_file = os.path.join(base, "kavsir_bboxes.json")
        if os.path.isfile(bbox_file):
            with open(bbox_file, encoding="utf-8") as f:
                boxes = json.load(f)
        texts = read_text_csv(texts_csv) if texts_csv else None
        names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(_IMAGE_EXT) and not f.startswith("."))
        stems = {os.path.splitext(n)[0] for n in names}
        for f in sorted(os.listdir(msk_dir)):
            if f.lower().endswith(_IMAGE_EXT) and os.path.splitext(f)[0] not in stems:
                skipped.append({"split": "", "file": f"{os.path.relpath(msk_dir, root)}/{f}", "reason": "mask without image"})
        for key, members in seeded_split(names, val_fraction, test_fraction, seed).items():
            for name in members:
                stem = os.path.splitext(name)[0]
                text = user_text(texts, name)
                n_boxes = len(boxes.get(stem, {}).get("bbox", []) or []) if stem in boxes else None

                def describe(m: Any, n_boxes: int | None = n_boxes) -> str:
                    kw = {"template": template} if template else {}
                    return describe_mask(m, target="polyp", modality="colonoscopy image", count=n_boxes, **kw)

                item = build_item(
                    key, os.path.join(img_dir, name), _find(msk_dir, name), root, skipped, text=text,
                    describe=describe, mask_out=mask_out(key, name), text_source=texts_source,
                )  # fmt: skip
                if item:
                    splits[key].append(item)
        source = (
            f"user CSV {texts_csv} (declared {texts_source})" if texts_csv
            else "template from the mask (count from kavsir_bboxes.json)"
        )  # fmt: skip
        split_source = f"seeded split (val {val_fraction}, test {test_fraction}, seed {seed})"
    meta = {"dataset": "Kvasir-SEG", "text_origin": source, "split": split_source, "root": root, "laterality": "image"}
    return finish_datalist(splits, skipped, meta, output_json, relative=relative, strict=strict, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.public.kvasir ROOT OUT.json``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.public.kvasir", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--captions", default=None, help="folder with MedVLSM's train/val/test.json (default ROOT/anns)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="MedVLSM prompt key (p0..p9) or 'auto' (highest-numbered non-empty)")
    p.add_argument("--prompt-index", type=int, default=0, help="which alternative when a prompt is a list")
    p.add_argument("--mask-dir", default=None, help="where converted PNG masks go (default <OUT stem>_masks)")
    a = p.parse_args(argv)
    return run_cli(
        build_kvasir_datalist, a, captions=a.captions, prompt=a.prompt, prompt_index=a.prompt_index,
        texts_csv=a.texts_csv, template=a.template, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
        seed=a.seed, mask_dir=a.mask_dir, texts_source=a.texts_source,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
