# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Synthetic endoscopy-like RGB demo set for text-SUPERVISED segmentation (TIFCMamba, issue 7).

Each RGB frame shows orange-pink mucosa (smooth texture, dark folds, vignetting, a dark lumen) with ONE polyp whose
colour (red / pink / pale), shape (round / oval / lobulated), size (small / medium / large) and location (a 3 x 3 grid:
upper / middle / lower x left / centre / right) are drawn at random and written in the description, e.g.
``"Colonoscopy frame showing a small red round polyp in the upper left of the image."``. Distractors are NOT
described and are left out of the mask: the dark lumen, specular bubbles and, in most frames, a yellow-brown debris
blob of polyp-like size. Masks (0/255) hold the polyp only and exist for evaluation; text-supervised training never
reads them.

**The descriptions describe the mask.** They are written from the scene parameters that also draw the mask (size
class, 3 x 3 cell), so they are exact where a person's description would be approximate: every item is marked
``text_source: synthetic`` (:data:`monai_vlseg.datalist.TEXT_SOURCES`), which text-supervised training counts as
mask-derived. The text alone places the polyp: a disc of the named size at the centre of the named cell, drawn
without looking at the image, scores mDice 0.68 on the default test split at 64 px
(``scripts/tifc_text_prior.py``).

Layout: ``{train,val,test}/{img,label}/polyp_<split>_<i>.png`` and ``datalist.json`` (MONAI decathlon form, paths
relative to the JSON) with items ``{"image", "label", "text", "text_source", "colour", "shape", "size",
"location"}`` and a ``meta`` with ``text_source`` / ``text_sources`` / ``text_origin`` and ``text_tokens`` (the
descriptions' lengths in tokens). "left" is
the image's left (a photograph, not a radiograph). Deterministic: the same arguments give byte-identical files.

Command line::

    python -m monai_vlseg.datasets.synthetic.polyp OUT_DIR [--n-train 320] [--n-val 40] [--n-test 40] [--size 128]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from monai_vlseg.datalist import summarise_text_sources, write_datalist
from monai_vlseg.datasets.public.common import record_text_tokens
from monai_vlseg.datasets.synthetic.encode import png_bytes
from monai_vlseg.files import atomic_write_bytes, ensure_generated

__all__ = [
    "COLOURS",
    "SHAPES",
    "SIZES",
    "PolypCase",
    "described_disc",
    "ensure_polyp_demo_datalist",
    "generate_polyp_demo",
    "main",
    "read_description",
    "synthesize_polyp_case",
]

#: polyp colours (RGB in [0, 1]) named in the descriptions.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.12, 0.12),
    "pink": (0.97, 0.62, 0.70),
    "pale": (0.93, 0.88, 0.74),
}
SHAPES: tuple[str, ...] = ("round", "oval", "lobulated")
#: polyp radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.075, "medium": 0.105, "large": 0.14}
_ROWS = {"upper": 0.25, "middle": 0.5, "lower": 0.75}
_COLS = {"left": 0.25, "centre": 0.5, "right": 0.75}
_TEMPLATES = (
    "Colonoscopy frame showing a {size} {colour} {shape} polyp in the {loc} of the image.",
    "A {colour}, {shape} polyp of {size} size is seen at the {loc}. No other lesion.",
    "{Size} {shape} polyp, {colour} in colour, located in the {loc}; surrounding mucosa unremarkable.",
    "Endoscopic view: {size} {colour} polyp with {a_shape} outline, {loc} of the frame.",
)
_SPLITS = ("train", "val", "test")
_KEYS = {"train": "training", "val": "validation", "test": "test"}


@dataclass
class PolypCase:
    """One frame: ``image`` (H, W, 3) uint8, ``mask`` (H, W) uint8 0/255 (the described polyp only)."""

    image: np.ndarray
    mask: np.ndarray
    text: str
    colour: str
    shape: str
    size: str
    location: str


def location_phrase(row: str, col: str) -> str:
    """Words for a 3 x 3 grid cell: "upper left", "left side", "upper part", "centre"."""
    if row == "middle" and col == "centre":
        return "centre"
    if row == "middle":
        return f"{col} side"
    if col == "centre":
        return f"{row} part"
    return f"{row} {col}"


def read_description(text: str) -> tuple[str, str, str]:
    """``(size, row, column)`` a demo description states (the inverse of its templates): ``size`` of :data:`SIZES`,
    ``row`` upper / middle / lower, ``column`` left / centre / right. ``ValueError`` when the text names no size."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    size = next((s for s in SIZES if s in words), None)
    if size is None:
        raise ValueError(f"no polyp size ({', '.join(SIZES)}) in {text!r}")
    row = next((r for r in ("upper", "lower") if r in words), "middle")
    col = next((c for c in ("left", "right") if c in words), "centre")
    return size, row, col


def described_disc(text: str, height: int, width: int) -> np.ndarray:
    """The mask a demo description implies without the image: a disc of the named size class (radius
    :data:`SIZES` x the side) at the centre of the named 3 x 3 cell, as an ``(height, width)`` boolean array. The
    generator places the polyp within 0.06 of that centre with a radius within 10 % of it, so this disc measures how
    much of the answer the text alone gives."""
    size, row, col = read_description(text)
    yy = (np.arange(height)[:, None] + 0.5) / height
    xx = (np.arange(width)[None, :] + 0.5) / width
    r = SIZES[size]
    return ((yy - _ROWS[row]) ** 2 + (xx - _COLS[col]) ** 2) <= r * r


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    n = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return n / (n.std() + 1e-8)


def _blob(
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    r: float,
    shape: str,
    rng: np.random.Generator,
):
    """Signed distance-like field (< 0 inside) of a round / oval / lobulated blob, in units of r."""
    dy, dx = yy - cy, xx - cx
    theta = rng.uniform(0, np.pi)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    if shape == "oval":
        rad = np.sqrt((u / 1.35) ** 2 + (v / 0.7) ** 2)
    else:
        rad = np.sqrt(u**2 + v**2)
    if shape == "lobulated":
        k, phase = int(rng.integers(3, 6)), rng.uniform(0, 2 * np.pi)
        rad = rad / (1.0 + 0.28 * np.sin(k * np.arctan2(v, u) + phase))
    return rad / r - 1.0


def synthesize_polyp_case(seed: int | Sequence[int], size: int = 128) -> PolypCase:
    """One deterministic frame from ``numpy.random.SeedSequence(seed)``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    # mucosa: base colour, texture, folds, vignette
    base = np.array([0.80, 0.46, 0.38]) + rng.uniform(-0.05, 0.05, 3)
    tex = 0.05 * _smooth_noise(rng, size, size / 16)
    folds = 0.5 + 0.5 * np.sin(
        2
        * np.pi
        * (
            rng.uniform(1.5, 3) * (yy + 0.3 * _smooth_noise(rng, size, size / 6) * 0.1)
            + rng.uniform(0, 1)
        )
    )
    shade = 1.0 + tex - 0.12 * folds**6
    vy, vx = rng.uniform(0.3, 0.7, 2)
    shade *= 1.0 - 0.35 * np.clip(np.hypot(yy - vy, xx - vx) - 0.25, 0, None)
    img = shade[..., None] * base[None, None]
    # dark lumen (distractor, never described)
    ly, lx = rng.uniform(0.15, 0.85, 2)
    lumen = np.exp(
        -(((yy - ly) ** 2 + (xx - lx) ** 2) / (2 * rng.uniform(0.05, 0.09) ** 2))
    )
    img *= (1.0 - 0.75 * lumen)[..., None]

    row, col = rng.choice(list(_ROWS)), rng.choice(list(_COLS))
    colour, shape, sz = (
        rng.choice(list(COLOURS)),
        rng.choice(SHAPES),
        rng.choice(list(SIZES)),
    )
    cy = _ROWS[row] + rng.uniform(-0.06, 0.06)
    cx = _COLS[col] + rng.uniform(-0.06, 0.06)
    r = SIZES[sz] * rng.uniform(0.9, 1.1)
    sd = _blob(yy, xx, cy, cx, r, shape, rng)
    inside = sd < 0
    # debris blob (distractor): yellow-brown, away from the polyp
    if rng.random() < 0.8:
        for _ in range(50):
            dy, dx = rng.uniform(0.12, 0.88, 2)
            if np.hypot(dy - cy, dx - cx) > r + 0.2:
                break
        dsd = _blob(yy, xx, dy, dx, rng.uniform(0.06, 0.11), rng.choice(SHAPES), rng)
        dalpha = np.clip(0.5 - dsd * 6, 0, 1) * (~inside)
        dcol = np.array([0.62, 0.52, 0.18]) + rng.uniform(-0.06, 0.06, 3)
        img = img * (1 - dalpha[..., None]) + dalpha[..., None] * dcol * (
            0.9 + 0.1 * tex[..., None]
        )
    # polyp: soft edge, dome shading, texture
    alpha = np.clip(0.5 - sd * 6, 0, 1)
    dome = (
        1.0
        + 0.18 * np.clip(-sd, 0, 1)
        - 0.15 * ((yy - cy) + (xx - cx)) / r * np.clip(-sd, 0, 1)
    )
    pcol = np.array(COLOURS[colour]) + rng.uniform(-0.04, 0.04, 3)
    polyp = (dome[..., None] + 0.5 * tex[..., None]) * pcol
    img = img * (1 - alpha[..., None]) + alpha[..., None] * polyp
    # specular bubbles anywhere (distractors) and highlights
    for _ in range(int(rng.integers(2, 6))):
        by, bx, br = (
            rng.uniform(0.05, 0.95),
            rng.uniform(0.05, 0.95),
            rng.uniform(0.012, 0.035),
        )
        ring = np.exp(
            -((np.hypot(yy - by, xx - bx) - br) ** 2) / (2 * (0.004 + br * 0.15) ** 2)
        )
        img = img + 0.5 * ring[..., None]
    img = img + 0.02 * rng.standard_normal(img.shape)
    image = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    mask = (inside * 255).astype(np.uint8)
    loc = location_phrase(row, col)
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    a_shape = ("an " if shape[0] in "aeiou" else "a ") + str(shape)
    text = template.format(
        size=sz,
        Size=sz.capitalize(),
        colour=colour,
        shape=shape,
        a_shape=a_shape,
        loc=loc,
    )
    return PolypCase(image, mask, text, str(colour), str(shape), str(sz), loc)


def generate_polyp_demo(
    root: str | os.PathLike,
    n_train: int = 320,
    n_val: int = 40,
    n_test: int = 40,
    size: int = 128,
    seed: int = 0,
) -> str:
    """Write the demo set under ``root`` (which must be empty or absent) and return ``root/datalist.json``."""
    root = os.path.abspath(os.fspath(root))
    if os.path.isdir(root) and os.listdir(root):
        raise FileExistsError(
            f"{root} is not empty: choose an empty folder for the polyp demo set."
        )
    datalist: dict[str, Any] = {
        "name": "monai_vlseg synthetic polyp demo (text-supervised)",
        "description": "RGB endoscopy-like frames; text names colour, shape, size and location of one polyp; "
        "lumen, bubbles and debris are undescribed distractors; masks for evaluation only",
        "generator": {
            "n_train": n_train,
            "n_val": n_val,
            "n_test": n_test,
            "size": size,
            "seed": seed,
        },
        "meta": {"laterality": "image"},  # the texts' "left" is the image's left (an endoscopy frame)
    }
    for si, (split, n) in enumerate(zip(_SPLITS, (n_train, n_val, n_test))):
        items = []
        for i in range(n):
            case = synthesize_polyp_case([seed, si, i], size=size)
            name = f"polyp_{split}_{i:04d}.png"
            img_path = atomic_write_bytes(
                os.path.join(root, split, "img", name), png_bytes(case.image)
            )
            lab_path = atomic_write_bytes(
                os.path.join(root, split, "label", name), png_bytes(case.mask)
            )
            items.append(
                {
                    "image": img_path,
                    "label": lab_path,
                    "text": case.text,
                    "text_source": "synthetic",
                    "colour": case.colour,
                    "shape": case.shape,
                    "size": case.size,
                    "location": case.location,
                }
            )
        datalist[_KEYS[split]] = items
    datalist["meta"] = {
        **datalist["meta"],
        "text_origin": "generated from the scene parameters that draw the mask (colour, shape, size class, 3 x 3 cell)",
        **summarise_text_sources(datalist),
    }
    record_text_tokens(datalist)  # meta.text_tokens: the descriptions' lengths in tokens
    return write_datalist(datalist, os.path.join(root, "datalist.json"), relative=True)


def ensure_polyp_demo_datalist(dataset_dir: str | os.PathLike, **kwargs: Any) -> str:
    """``dataset_dir/datalist.json``, generating the set first when it is missing (safe under torchrun: one
    process generates under a file lock into a temporary sibling that is renamed into place; see
    :func:`monai_vlseg.files.ensure_generated`). ``kwargs`` are :func:`generate_polyp_demo` arguments."""
    return ensure_generated(
        dataset_dir, functools.partial(generate_polyp_demo, **kwargs)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m monai_vlseg.datasets.synthetic.polyp OUT_DIR``."""
    p = argparse.ArgumentParser(
        prog="python -m monai_vlseg.datasets.synthetic.polyp",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=320)
    p.add_argument("--n-val", type=int, default=40)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(generate_polyp_demo(a.out_dir, a.n_train, a.n_val, a.n_test, a.size, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
