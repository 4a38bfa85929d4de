# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builder for CVC-ClinicDB (612 colonoscopy frames, 31 sequences; Bernal et al. 2015).

Layouts accepted (the original TIFF release and the Kaggle copy with PNG and TIF folders)::

    root/Original/1.tif ... 612.tif         root/Ground Truth/1.tif ... 612.tif
    root/PNG/Original/1.png ...             root/PNG/Ground Truth/1.png ...     (preferred when both exist)
    root/TIF/Original/1.tif ...             root/TIF/Ground Truth/1.tif ...
    root/CVC-ClinicDB/...                   (any of the above one level down)

The mask folder may also be spelt ``GroundTruth`` or ``Ground_Truth``; images and masks pair by file stem.
With MedVLSM's caption files for CVC-ClinicDB (``data/clinicdb_polyp/anns/{train,val,test}.json`` in
github.com/naamiinepal/medvlsm, ``img_name`` "288.png" — the PNG copy; ``--captions DIR``) their split and prompts
are used, as for Kvasir-SEG (:func:`monai_vlseg.datasets.public.kvasir.medvlsm_splits`, default prompt ``p6``). Otherwise
CVC-ClinicDB has no official split and no text: the split is seeded (``val_fraction``/``test_fraction``/
``seed``; note that frames of one sequence are near-duplicates, so a frame-level split — the one the papers
use — is optimistic) and the texts come from a CSV (``texts_csv``, columns ``image``, ``text``) or the
deterministic template :func:`monai_vlseg.datasets.prepare.describe_mask` ("One medium polyp at the center of the
colonoscopy image."). Template sentences are marked ``text_source: mask_derived`` (as are MedVLSM's prompts but
``p1``, see :mod:`monai_vlseg.datasets.public.kvasir`), a CSV's texts what ``texts_source`` declares: CVC-ClinicDB
has no text that was written without the mask, so text-supervised training (``tifcmamba``) needs a CSV of
descriptions written from the images (``--texts-csv F --texts-source caption``). Masks (TIFF, sometimes RGB) are
written as 0/255 PNGs beside the datalist (``<out stem>_masks/``).

Command line::

    python -m monai_vlseg.datasets.public.cvc ROOT OUT.json [--captions DIR [--prompt p6]] [--texts-csv F] [--val-fraction 0.1 --seed 0]
"""

from __future__ import annotations

import argparse
import os
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

__all__ = ["build_cvc_datalist", "find_cvc_folders", "main"]

_EXT = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
_MASK_DIRS = ("Ground Truth", "GroundTruth", "Ground_Truth", "ground truth", "groundtruth")


def find_cvc_folders(root: str) -> tuple[str, str]:
    """``(image folder, mask folder)`` of a CVC-ClinicDB copy under ``root`` (PNG preferred over TIF)."""
    for base in (root, os.path.join(root, "CVC-ClinicDB")):
        for sub in ("PNG", "", "TIF", "png", "tif"):
            d = os.path.join(base, sub) if sub else base
            if not os.path.isdir(os.path.join(d, "Original")):
                continue
            for m in _MASK_DIRS:
                if os.path.isdir(os.path.join(d, m)):
                    return os.path.join(d, "Original"), os.path.join(d, m)
    raise FileNotFoundError(
        f"{root}: no CVC-ClinicDB folders found (expected Original/ and 'Ground Truth'/, or PNG/... or TIF/...)."
    )


def build_cvc_datalist(
    root: str | os.PathLike,
    output_json: str | os.PathLike | None = None,
    captions: str | os.PathLike | None = None,
    prompt: str = "p6",
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
    """Build a datalist with text from CVC-ClinicDB (see the module docstring).

    Args:
        root: data set root (see the accepted layouts).
        output_json: datalist to write; PNG masks go to ``mask_dir`` (default ``<out stem>_masks/``).
        captions: folder with MedVLSM's ``train/val/test.json`` for CVC-ClinicDB: their split and prompts.
        prompt, prompt_index: which MedVLSM prompt (:func:`monai_vlseg.datasets.public.kvasir.pick_prompt`).
        texts_csv: CSV with ``image`` and ``text`` columns (file name or stem); images it lacks are skipped.
        template: sentence template for :func:`~monai_vlseg.datasets.prepare.describe_mask`.
        val_fraction, test_fraction, seed: the seeded split.
        relative: paths in the JSON relative to its folder; strict: raise on any problem.
        texts_source: the ``text_source`` of the ``texts_csv`` texts (:data:`monai_vlseg.datalist.TEXT_SOURCES`).
    """
    root = data_root(root, "CVC-ClinicDB")
    img_dir, msk_dir = find_cvc_folders(root)
    out_masks = default_mask_dir(output_json, mask_dir)
    texts = read_text_csv(texts_csv) if texts_csv else None
    images = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(img_dir)) if f.lower().endswith(_EXT)}
    masks = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(msk_dir)) if f.lower().endswith(_EXT)}
    skipped: list[dict[str, Any]] = []
    splits: dict[str, list[dict[str, Any]]]
    for stem in sorted(set(masks) - set(images)):
        skipped.append({"split": "", "file": os.path.relpath(os.path.join(msk_dir, masks[stem]), root), "reason": "mask without image"})

    def order(s: str) -> tuple[int, str]:  # numeric file names sort as numbers
        return (int(s), "") if s.isdigit() else (1 << 30, s)

    if captions is not None:
        from monai_vlseg.datasets.public.kvasir import medvlsm_splits

        splits = medvlsm_splits(
            captions, img_dir, msk_dir, root, skipped, prompt, prompt_index,
            None if out_masks is None else (lambda split, m: os.path.join(out_masks, os.path.splitext(m)[0] + ".png")),
        )  # fmt: skip
        meta = {
            "dataset": "CVC-ClinicDB",
            "text_origin": f"MedVLSM captions ({os.path.abspath(os.fspath(captions))}), prompt '{prompt}', alternative {prompt_index}",
            "split": "MedVLSM caption files",
            "root": root,
            "images": os.path.relpath(img_dir, root),
            "laterality": "image",
        }
        return finish_datalist(splits, skipped, meta, output_json, relative=relative, strict=strict, root=root)
    kw = {"template": template} if template else {}
    splits = {}
    for key, members in seeded_split(list(images), val_fraction, test_fraction, seed).items():
        splits[key] = []
        for stem in sorted(members, key=order):
            text = user_text(texts, images[stem])
            item = build_item(
                key, os.path.join(img_dir, images[stem]),
                os.path.join(msk_dir, masks[stem]) if stem in masks else None, root, skipped, text=text,
                describe=lambda m: describe_mask(m, target="polyp", modality="colonoscopy image", **kw),
                mask_out=None if out_masks is None else os.path.join(out_masks, stem + ".png"),
                text_source=texts_source,
            )  # fmt: skip
            if item:
                splits[key].append(item)
    meta = {
        "dataset": "CVC-ClinicDB",
        "text_origin": f"user CSV {texts_csv} (declared {texts_source})" if texts_csv else "template from the mask",
        "split": f"seeded split (val {val_fraction}, test {test_fraction}, seed {seed})",
        "root": root,
        "images": os.path.relpath(img_dir, root),
        "laterality": "image",
    }
    return finish_datalist(splits, skipped, meta, output_json, relative=relative, strict=strict, root=root)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.public.cvc ROOT OUT.json``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.public.cvc", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--mask-dir", default=None, help="where converted PNG masks go (default <OUT stem>_masks)")
    p.add_argument("--captions", default=None, help="folder with MedVLSM's clinicdb_polyp train/val/test.json")
    p.add_argument("--prompt", default="p6", help="MedVLSM prompt key (p0..p9) or 'auto'")
    p.add_argument("--prompt-index", type=int, default=0, help="which alternative when a prompt is a list")
    a = p.parse_args(argv)
    return run_cli(
        build_cvc_datalist, a, captions=a.captions, prompt=a.prompt, prompt_index=a.prompt_index, texts_csv=a.texts_csv, template=a.template, val_fraction=a.val_fraction,
        test_fraction=a.test_fraction, seed=a.seed, mask_dir=a.mask_dir, texts_source=a.texts_source,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
