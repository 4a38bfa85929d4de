# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Synthetic QaTa-COV19-like demo data set: chest-radiograph-like images, text-described lesion masks.

:func:`generate_demo_dataset` writes the LViT layout (``{Train,Val,Test}_Folder/{img,labelcol}/*.png`` and
``{Train,Val,Test}_text.xlsx`` whose ``Image`` column holds the mask name ``mask_<name>.png`` as QaTa-COV19
does) and a ``datalist.json`` built by :func:`monai_vlseg.datasets.public.lvit.build_lvit_datalist`.

Each 8-bit greyscale image shows two dark lung fields, a brighter mediastinum / heart / spine, faint rib arcs,
clavicles and smooth noise, with 1-4 ground-glass-like lesions (soft-edged, textured, brighter blobs) in
distinct lung zones. The six zones are ``{upper, middle, lower} x {left, right}`` named from the PATIENT's
point of view with the radiological convention: the patient's LEFT lung is on the IMAGE RIGHT (and the heart
shadow bulges to the image right). Zones are the vertical thirds of each lung's bounding box.

The text is QaTa-COV19-style, e.g. ``"Bilateral pulmonary infection, two infected areas, upper left lung and
lower right lung."``. In about half the images one or two lesions are NOT named by the text and are left out
of the mask although they look exactly like the named ones, so the mask can only be predicted from image AND
text. Masks (0/255) hold exactly the named lesions and are never empty.

The reports are written from the lesions that also draw the mask, so they describe the mask exactly: every item is
marked ``text_source: synthetic`` (:data:`monai_vlseg.datalist.TEXT_SOURCES`), which text-supervised training
counts as mask-derived.

Datalist items carry the metadata ``"zones"`` (named, in text order), ``"distractor_zones"`` and
``"zone_boxes"`` (``{zone: [row0, col0, row1, col1]}``, half-open, in the ``(H, W)`` array of
``numpy.asarray(PIL.Image.open(png))``; MONAI's ``PILReader`` returns the transposed ``(W, H)`` array).

Command line::

    python -m monai_vlseg.datasets.synthetic.cxr OUT_DIR [--n-train 96] [--n-val 24] [--n-test 24] [--size 224] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monai_vlseg.datalist import summarise_text_sources, write_datalist
from monai_vlseg.datasets.public.common import record_text_tokens
from monai_vlseg.datasets.public.lvit import build_lvit_datalist
from monai_vlseg.datasets.synthetic.cxr_reports import negated_report, reworded_report
from monai_vlseg.datasets.synthetic.encode import png_bytes, xlsx_bytes
from monai_vlseg.files import atomic_write_bytes, ensure_generated, file_lock
from monai_vlseg.transforms.report import CHEST_ZONES, chest_zone_sentence

__all__ = [
    "ZONES",
    "DemoCase",
    "describe_zones",
    "ensure_demo_datalist",
    "generate_demo_dataset",
    "main",
    "synthesize_case",
]

#: the six lung zones, patient's view (patient's left lung = image right), in text order.
ZONES: tuple[str, ...] = CHEST_ZONES
#: QaTa-COV19-style sentence for the named zones, the demo's training text.
describe_zones = chest_zone_sentence
_SPLITS = (("Train", "train"), ("Val", "val"), ("Test", "test"))


@dataclass
class DemoCase:
    """One synthetic case: ``image``/``mask`` are ``(H, W)`` uint8 (mask 0/255, named lesions only),
    ``lesion_mask`` is a bool ``(H, W)`` map of ALL lesions (named and distractors), ``lung_mask`` the lung fields."""

    image: np.ndarray
    mask: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    text: str
    zones: list[str]
    distractor_zones: list[str]
    zone_boxes: dict[str, list[int]] = field(default_factory=dict)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@functools.lru_cache(maxsize=32)
def _gauss_transfer(shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Fourier transfer function of a (periodic) 2D Gaussian blur for ``numpy.fft.rfft2`` spectra."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    g = np.exp(-2.0 * np.pi**2 * ((sigma[0] * fy) ** 2 + (sigma[1] * fx) ** 2))
    g.setflags(write=False)
    return g


def _blur(a: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian blur of a 2D array through the FFT (numpy only; fine for noise fields)."""
    spec = np.fft.rfft2(a) * _gauss_transfer(a.shape, (float(sigma[0]), float(sigma[1])))
    return np.fft.irfft2(spec, s=a.shape).astype(np.float32)


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Smooth zero-mean unit-std noise, ``sigma`` in pixels."""
    n = _blur(rng.standard_normal((size, size), dtype=np.float32), (sigma, sigma))
    return n / (n.std() + 1e-6)


def _anatomy(rng: np.random.Generator, size: int) -> dict[str, Any]:
    """Random chest anatomy: density map (brighter = denser), lung maps and zone boxes."""
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(g, g, indexing="ij")
    cx = 0.5 + rng.normal(0.0, 0.012)
    ang = rng.normal(0.0, 0.03)
    sc = rng.uniform(0.92, 1.06)
    cy = 0.5 + rng.normal(0.0, 0.015)
    ca, sa = float(np.cos(ang)), float(np.sin(ang))
    x = cx + ((xx - cx) * ca - (yy - 0.5) * sa) / sc
    y = cy + ((xx - cx) * sa + (yy - 0.5) * ca) / sc

    top = rng.uniform(0.12, 0.17)
    bottom = rng.uniform(0.79, 0.86)
    off = rng.uniform(0.185, 0.215)
    hw = rng.uniform(0.155, 0.18)
    heart_size = rng.uniform(0.45, 0.65)

    lung = np.zeros_like(x)
    margins = np.full_like(x, -1.0)
    for s in (-1.0, 1.0):  # -1: image left = patient's right lung; +1: image right = patient's left lung
        bot = bottom - (0.025 if s < 0 else 0.0)  # right hemidiaphragm sits higher
        h = bot - top
        t = s * (x - (cx + s * off)) / hw  # +1 lateral edge, -1 medial edge
        v = (y - top) / h
        vc = np.clip(v / 0.42, 0.0, 1.0)
        width = np.sqrt(np.clip(1.0 - (1.0 - vc) ** 2, 0.0, 1.0)) * (0.92 + 0.08 * np.clip(v, 0, 1))
        rise = np.clip((v - 0.42) / 0.4, 0.0, 1.0)
        heart = (heart_size if s > 0 else 0.2) * np.sin(0.5 * np.pi * rise)
        heart = heart * (1.0 - 0.25 * np.clip((v - 0.85) / 0.15, 0, 1))  # cardiophrenic angle
        dome = 1.0 - 0.11 * np.clip(1.0 - (t - 0.1) ** 2, 0.0, 1.0)
        m = np.minimum.reduce(
            [(width - t) * hw, (0.9 * width - heart + t) * hw, (dome - v) * h, v * h + 0.02 * width]
        )
        margins = np.maximum(margins, m)
        lung = np.maximum(lung, _sigmoid(m / 0.008))

    # body outline (thorax + neck) and soft tissue
    body_m = 1.0 - np.sqrt(((x - cx) / 0.49) ** 2 + ((y - 0.62) / 0.62) ** 2)
    neck_m = (0.1 - np.abs(x - cx)) * 3
    body = _sigmoid(np.maximum(body_m, neck_m) / 0.02)
    thick = np.clip(1.0 - ((x - cx) / 0.5) ** 2, 0.0, 1.0)  # tissue path is longest at the midline
    dens = (0.4 + 0.12 * thick) * body + 0.08 * body * np.clip((y - 0.5) * 2, 0, 1)  # abdomen denser

    # lungs: air, slightly denser towards the bases (soft-tissue overlap)
    dens -= lung * (0.36 - 0.06 * np.clip((y - top) / (bottom - top), 0, 1))

    # heart / mediastinum extra density, spine with vertebrae, hila
    q = ((x - cx - 0.045) / 0.13) ** 2 + ((y - (top + 0.7 * (bottom - top))) / 0.12) ** 2
    dens += 0.06 * np.exp(-q * np.sqrt(q))
    ax = np.abs(x - cx)
    band = slice(max(0, int((cx - 0.12) * size)), min(size, int((cx + 0.12) * size) + 1))  # spine columns
    axb, yb = ax[:, band], y[:, band]
    spine = _sigmoid((0.036 - axb) / 0.006) * _sigmoid((yb - 0.04) / 0.02)
    vert = 0.8 + 0.2 * np.cos(np.pi * (yb - rng.uniform()) / 0.05) ** 4
    dens[:, band] += spine * (0.07 * vert + 0.03 * _sigmoid((0.008 - np.abs(axb - 0.03)) / 0.004))

    # posterior ribs: arcs running laterally and down from the spine; faint anterior ribs the other way
    d = np.maximum(ax - 0.03, 0.0)
    thorax = _sigmoid((y - top + 0.06) / 0.015) * _sigmoid((bottom + 0.02 - y) / 0.02)
    thorax *= _sigmoid((off + hw + 0.025 - ax) / 0.012)
    spacing = rng.uniform(0.06, 0.07)
    curve = rng.uniform(1.8, 2.4)
    post = np.cos(np.pi * (y - top + 0.25 * d - curve * d**2 + rng.uniform(0, spacing)) / spacing) ** 2
    ant = np.cos(np.pi * (y - top - 0.45 * d + 0.9 * d**2 + rng.uniform(0, spacing)) / (1.3 * spacing)) ** 2
    ribs = (0.045 * post**5 + 0.018 * ant**8) * (0.5 + 0.5 * lung)
    dens += ribs * thorax * _sigmoid((d - 0.01) / 0.01)

    # clavicles (computed on the top rows only)
    rows = slice(0, min(size, int((top + 0.14) * size)))
    xr, yr = x[rows], y[rows]
    for s in (-1.0, 1.0):
        x0, y0, x1, y1 = cx + s * 0.03, top + 0.01, cx + s * 0.34, top - 0.065
        tt = np.clip(((xr - x0) * (x1 - x0) + (yr - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        dist = np.hypot(xr - (x0 + tt * (x1 - x0)), yr - (y0 + tt * (y1 - y0) - 0.03 * np.sin(np.pi * tt)))
        dens[rows] += 0.1 * _sigmoid((0.013 - dist) / 0.004)

    # vascular markings: streaks radiating from the hila, tapering to the periphery; smooth parenchymal noise
    half = int(round(cx * size))
    vessels = np.zeros_like(x)
    for s, cols in ((-1.0, slice(0, half)), (1.0, slice(half, size))):
        xc, yc = x[:, cols], y[:, cols]
        hy, hx = top + 0.42 * (bottom - top), cx + s * 0.09
        rad = np.hypot(xc - hx, yc - hy)
        phi = np.arctan2(yc - hy, s * (xc - hx))  # mirrored so both sides branch laterally
        polar = _blur(rng.standard_normal((256, 48)).astype(np.float32), (1.2, 3.0))
        polar /= polar.std() + 1e-6
        ia = ((phi + np.pi) * (256 / (2 * np.pi))).astype(np.intp) % 256
        ir = np.minimum((np.sqrt(rad / 0.6) * 47).astype(np.intp), 47)
        streak = polar[ia, ir]
        hil = np.exp(-(((xc - cx - s * 0.095) / 0.05) ** 2) - ((yc - (top + 0.45 * (bottom - top))) / 0.08) ** 2)
        vessels[:, cols] = np.clip(streak - 0.6, 0, None) * np.exp(-rad / 0.18)
        dens[:, cols] += 0.07 * hil
    dens += lung * (0.018 * _noise(rng, size, 6.0) + 0.05 * vessels)

    # zone boxes: vertical thirds of each lung's bounding box (pixel rows / cols)
    hard = lung > 0.5
    boxes: dict[str, list[int]] = {}
    for side, sl in (("right", slice(0, half)), ("left", slice(half, size))):
        part = np.zeros_like(hard)
        part[:, sl] = hard[:, sl]
        rows = np.flatnonzero(part.any(1))
        cols = np.flatnonzero(part.any(0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        cuts = [r0 + round(k * (r1 - r0) / 3) for k in range(4)]
        for k, lvl in enumerate(("upper", "middle", "lower")):
            boxes[f"{lvl} {side}"] = [cuts[k], c0, cuts[k + 1], c1]
    return {"dens": dens, "lung": lung, "margin": margins, "body": body, "boxes": boxes, "y": yy, "x": xx}


def _lesion(
    rng: np.random.Generator, anat: dict[str, Any], box: list[int], size: int, warp: np.ndarray, scale: float = 1.0
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """One ground-glass lesion inside a zone box.

    Returns ``(crop slices, soft opacity field, hard mask)`` on a crop around the box, or None when the lesion
    is too small or the zone boundary would visibly cut it (the caller retries with a smaller ``scale``).
    """
    r0, c0, r1, c1 = box
    rad = rng.uniform(0.035, 0.08) * size * scale
    aspect = rng.uniform(0.75, 1.35)
    theta = rng.uniform(0, np.pi)
    ymar = min(0.9 * rad, (r1 - r0) / 2 - 1)
    ok = anat["margin"][r0:r1, c0:c1] * size > 0.25 * rad
    ok &= ((np.arange(r0, r1) >= r0 + ymar) & (np.arange(r0, r1) < r1 - ymar))[:, None]
    cand = np.flatnonzero(ok)
    if cand.size == 0:
        cand = np.flatnonzero(anat["lung"][r0:r1, c0:c1] > 0.5)
    if cand.size == 0:
        return None
    k = int(rng.choice(cand))
    py, px = r0 + k // (c1 - c0), c0 + k % (c1 - c0)
    pad = int(0.06 * size)
    a0, a1, b0, b1 = max(r0 - pad, 0), min(r1 + pad, size), max(c0 - pad, 0), min(c1 + pad, size)
    crop = (slice(a0, a1), slice(b0, b1))
    dy = np.arange(a0 - py, a1 - py, dtype=np.float32)[:, None]
    dx = np.arange(b0 - px, b1 - px, dtype=np.float32)[None, :]
    ct, st = float(np.cos(theta)), float(np.sin(theta))
    u = (dx * ct + dy * st) / aspect
    w = (dy * ct - dx * st) * aspect
    rr = np.hypot(u, w) / (rad * np.clip(1.0 + 0.35 * warp[crop], 0.4, None))
    soft = 1.0 - np.clip((rr - 0.55) / 0.7, 0.0, 1.0)
    soft = soft * soft * (3 - 2 * soft) * anat["lung"][crop]  # smoothstep: flat core, soft edge; lung only
    ar, ac = np.arange(a0, a1), np.arange(b0, b1)
    edge = float(np.clip(1.5 * size / 224, 0.4, 1.5))  # softness of the zone window, pixels
    zy = _sigmoid((np.minimum(ar - r0 + 0.5, r1 - 0.5 - ar) / edge).astype(np.float32))
    zx = _sigmoid((np.minimum(ac - c0 + 0.5, c1 - 0.5 - ac) / edge).astype(np.float32))
    inside = soft * zy[:, None] * zx[None, :]
    if inside.sum() < 0.97 * soft.sum():  # the zone boundary would cut the lesion: reject
        return None
    mask = (inside > 0.5) & (anat["lung"][crop] > 0.5)
    mask[: r0 - a0] = False
    mask[r1 - a0 :] = False
    mask[:, : c0 - b0] = False
    mask[:, c1 - b0 :] = False
    if mask.sum() < max(6, int(5e-4 * size * size)):  # 25 px at 224^2
        return None
    return crop, inside, mask


def synthesize_case(seed: int | Sequence[int], size: int = 224) -> DemoCase:
    """Synthesize one chest-radiograph-like case.

    Args:
        seed: seed (or seed sequence entropy) of ``numpy.random.default_rng``; equal seeds give equal cases.
        size: image side in pixels.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    anat = _anatomy(rng, size)
    if rng.uniform() < 0.5:  # with distractors: 1-3 named + 1-2 unnamed lesions, 4 at most
        n_named = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
        n_distr = int(rng.integers(1, min(2, 4 - n_named) + 1))
    else:
        n_named, n_distr = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1])), 0
    order = rng.permutation(len(ZONES))
    warp = _noise(rng, size, 0.025 * size)
    texture = np.clip(0.9 + 0.05 * _noise(rng, size, 1.0) + 0.15 * _noise(rng, size, 0.02 * size), 0.5, 1.3)

    dens = anat["dens"]
    mask = np.zeros((size, size), bool)
    all_lesions = np.zeros((size, size), bool)
    named: list[str] = []
    distractors: list[str] = []
    for zi in order:
        if len(named) == n_named and len(distractors) == n_distr:
            break
        zone = ZONES[zi]
        les = None
        for attempt in range(10):
            les = _lesion(rng, anat, anat["boxes"][zone], size, warp, scale=0.9**attempt)
            if les is not None:
                break
        if les is None:
            continue
        crop, soft, m = les
        dens[crop] += rng.uniform(0.13, 0.26) * soft * texture[crop]
        all_lesions[crop] |= m
        if len(named) < n_named:
            named.append(zone)
            mask[crop] |= m
        else:
            distractors.append(zone)
    if not named:  # pragma: no cover - every zone of a lung holds room for a lesion
        raise RuntimeError(f"could not place a lesion (seed={seed}).")

    # exposure: soft vignette, gamma / contrast jitter, quantum noise
    img = dens * (0.92 + 0.08 * anat["body"]) + 0.04
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    img = img * rng.uniform(0.9, 1.1) + rng.uniform(-0.04, 0.04)
    r2 = (anat["x"] - 0.5) ** 2 + (anat["y"] - 0.5) ** 2
    img *= 1.0 - 0.35 * np.clip(r2 - 0.12, 0, None)
    img += 0.012 * rng.standard_normal((size, size)).astype(np.float32)
    image = np.clip(np.round(img * 255.0 / 0.85), 0, 255).astype(np.uint8)

    text_order = [z for z in ZONES if z in named]
    return DemoCase(
        image=image,
        mask=(mask * 255).astype(np.uint8),
        lesion_mask=all_lesions,
        lung_mask=anat["lung"] > 0.5,
        text=describe_zones(text_order),
        zones=text_order,
        distractor_zones=[z for z in ZONES if z in distractors],
        zone_boxes={z: list(b) for z, b in anat["boxes"].items()},
    )


def generate_demo_dataset(
    root: str | os.PathLike,
    n_train: int = 96,
    n_val: int = 24,
    n_test: int = 24,
    size: int = 224,
    seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Write the synthetic QaTa-like demo set in the LViT layout and its ``datalist.json``.

    Deterministic: the same arguments give byte-identical files (PNG, xlsx and the relative-path JSON).

    Args:
        root: output folder.
        n_train: number of ``Train_Folder`` cases.
        n_val: number of ``Val_Folder`` cases.
        n_test: number of ``Test_Folder`` cases.
        size: image side in pixels.
        seed: base seed; case ``i`` of a split uses ``SeedSequence([seed, split_index, i])``.
        overwrite: replace an existing demo set in ``root`` (its split folders, xlsx files and datalist);
            otherwise a non-empty ``root`` raises ``FileExistsError``.

    Returns:
        absolute path of ``root/datalist.json``; items also carry ``zones``, ``distractor_zones`` and
        ``zone_boxes`` metadata; ``meta.text_tokens`` holds the text lengths in tokens, as written and as the chest
        bundles read them (``report_parser: "chest"``), over every split.
    """
    root = os.path.abspath(os.fspath(root))
    if os.path.isdir(root) and os.listdir(root):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace a demo set.")
        for s, _ in _SPLITS:
            shutil.rmtree(os.path.join(root, f"{s}_Folder"), ignore_errors=True)
        for f in [f"{s}_text.xlsx" for s, _ in _SPLITS] + ["datalist.json"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, f))
    meta: dict[str, dict[str, Any]] = {}
    test_cases: list[tuple[str, DemoCase]] = []
    for si, ((split, tag), n) in enumerate(zip(_SPLITS, (n_train, n_val, n_test))):
        img_dir = os.path.join(root, f"{split}_Folder", "img")
        lab_dir = os.path.join(root, f"{split}_Folder", "labelcol")
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(lab_dir, exist_ok=True)
        rows = []
        for i in range(n):
            case = synthesize_case([seed, si, i], size=size)
            name = f"cxr_{tag}_{i:04d}.png"
            with open(os.path.join(img_dir, name), "wb") as f:
                f.write(png_bytes(case.image))
            with open(os.path.join(lab_dir, "mask_" + name), "wb") as f:
                f.write(png_bytes(case.mask))
            rows.append(("mask_" + name, case.text))
            if tag == "test":
                test_cases.append((os.path.join(img_dir, name), case))
            meta[os.path.join(img_dir, name)] = {
                "zones": case.zones,
                "distractor_zones": case.distractor_zones,
                "zone_boxes": case.zone_boxes,
            }
        atomic_write_bytes(os.path.join(root, f"{split}_text.xlsx"), xlsx_bytes(rows))

    datalist = build_lvit_datalist(root, strict=True, text_source="synthetic")
    for key, items in datalist.items():
        if key in ("skipped", "meta"):
            continue
        for item in items:
            item.update(meta[item["image"]])
    datalist.update(_other_wording_splits(root, test_cases, seed))
    datalist["meta"] = {
        **datalist["meta"],
        "text_origin": "generated from the lesions that draw the mask (count, side, zone; reworded and negated copies)",
        **summarise_text_sources(datalist),
    }
    record_text_tokens(datalist, report_parsers=(None, "chest"))  # meta.text_tokens over every split
    datalist = {
        "name": "monai_vlseg synthetic QaTa-like demo",
        "description": "synthetic chest radiographs with text-described lesion masks; patient's left = image right",
        "generator": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed},
        **datalist,
    }
    return write_datalist(datalist, os.path.join(root, "datalist.json"), relative=True)


def _other_wording_splits(root: str, cases: Sequence[tuple[str, DemoCase]], seed: int) -> dict[str, list[dict]]:
    """The ``test_reworded`` and ``test_negated`` splits of the test images (:mod:`.cxr_reports`); the negated
    split's ``negated_label`` masks (``Test_Folder/labelneg/``) hold the lesions of the negated zones."""
    neg_dir = os.path.join(root, "Test_Folder", "labelneg")
    os.makedirs(neg_dir, exist_ok=True)
    reworded, negated = [], []
    for i, (image, case) in enumerate(cases):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, i]))
        name = os.path.basename(image)
        label = os.path.join(root, "Test_Folder", "labelcol", "mask_" + name)
        extra = {"zones": case.zones, "distractor_zones": case.distractor_zones}
        extra["text_source"] = "synthetic"
        reworded.append({"image": image, "label": label, "text": reworded_report(case.zones, rng), **extra})
        free = [z for z in ZONES if z not in case.zones]
        negate = case.distractor_zones or [free[int(rng.integers(len(free)))]]
        neg_label = os.path.join(neg_dir, "mask_" + name)
        with open(neg_label, "wb") as f:
            f.write(png_bytes((case.lesion_mask & (case.mask == 0)).astype(np.uint8) * 255))
        text = negated_report(case.text, negate, rng)
        negated.append({"image": image, "label": label, "negated_label": neg_label, "text": text,
                        "negated_zones": list(negate), **extra})  # fmt: skip
    return {"test_reworded": reworded, "test_negated": negated}


def ensure_demo_datalist(dataset_dir: str | os.PathLike, **kwargs: Any) -> str:
    """Return ``dataset_dir/datalist.json``, generating the demo set there first if that file is missing.

    Safe under concurrency (e.g. torchrun ranks): one process generates while the others wait on a lock file
    ``.<dataset_dir name>.lock`` next to ``dataset_dir``; the set is written into a temporary sibling folder and
    renamed into place, and ``datalist.json`` (the completion marker) appears last, so an interrupted run never
    leaves a half data set behind. An existing ``datalist.json`` is returned as is, whatever ``kwargs`` say.

    Args:
        dataset_dir: folder of the demo set (created; may exist and hold other files).
        kwargs: :func:`generate_demo_dataset` arguments (``n_train``, ``n_val``, ``n_test``, ``size``, ``seed``).
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    target = os.path.join(dataset_dir, "datalist.json")
    if os.path.isfile(target):  # a set from before the other-wording splits: write it again (deterministic)
        with open(target, encoding="utf-8") as f:
            outdated = "test_negated" not in json.load(f)
        if outdated:
            parent, name = os.path.split(dataset_dir)
            with file_lock(os.path.join(parent, f".{name}.lock")):
                if os.path.isfile(target):
                    with open(target, encoding="utf-8") as f:
                        if "test_negated" not in json.load(f):
                            os.remove(target)
    return ensure_generated(dataset_dir, functools.partial(generate_demo_dataset, **kwargs))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: ``python -m monai_vlseg.datasets.synthetic.cxr OUT_DIR``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.synthetic.cxr", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo set in OUT_DIR")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = generate_demo_dataset(a.out_dir, a.n_train, a.n_val, a.n_test, a.size, a.seed, overwrite=a.overwrite)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(path) as f:
        dl = json.load(f)
    counts = ", ".join(f"{k}: {len(dl[k])}" for k in ("training", "validation", "test"))
    print(f"wrote {path} ({counts}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
