"""Synthetic abdominal CT demo set for the 3D bundles: HU volumes as NIfTI and, for the same volumes, DICOM CT series.

Every case is a small axial CT volume in Hounsfield units (air -1000, fat, soft tissue, bone) with a liver-like organ
on the patient's right, zero to three hypo-/hyper-dense lesions inside it, and unlabelled distractors (spleen,
kidneys, aorta, spine) of similar density. Labels: 0 background, 1 liver (lesions excluded), 2 lesion.
Spacing varies per case (1.8-2.2 mm in plane, 2.0-3.0 mm slices), so a bundle's resampling is exercised.

Layout written by :func:`generate_demo_ct_dataset`::

    root/imagesTr/ct_train_000.nii.gz      HU, int16, RAS affine        (also imagesVal/, imagesTs/)
    root/labelsTr/ct_train_000.nii.gz      uint8 labels, same grid
    root/dicom/ct_train_000/IM0001 ...      the same volume as a CT series (one file per slice, no extension)
    root/datalist.json                      images = NIfTI files
    root/datalist_dicom.json                images = DICOM series folders, same labels

The DICOM slices carry real geometry (ImagePositionPatient / ImageOrientationPatient, PixelSpacing, SliceThickness,
SpacingBetweenSlices, RescaleSlope/Intercept, FrameOfReferenceUID, Study/Series/SOP UIDs) and are stored
superior-first (as scanners do), so a reader must sort them by position; loaded through
:class:`monai_vlseg.io.DicomReader` a series gives the same array and affine as its NIfTI file.

Command line: ``python -m monai_vlseg.datasets.synthetic.ct OUT_DIR [--n-train 16 ...]``.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from monai_vlseg.datalist import write_datalist
from monai_vlseg.files import ensure_generated
from monai_vlseg.io.dicom import save_nifti
from monai_vlseg.io.series import write_dicom_series

__all__ = [
    "CT_LABELS",
    "CTCase",
    "ensure_demo_ct_datalist",
    "generate_demo_ct_dataset",
    "synthesize_ct_case",
]

#: label values of the demo set.
CT_LABELS: dict[str, int] = {"background": 0, "liver": 1, "lesion": 2}
_SPLITS = (("training", "Tr", "train"), ("validation", "Val", "val"), ("test", "Ts", "test"))


@dataclass
class CTCase:
    """One synthetic CT volume.

    Attributes:
        image: (x, y, z) int16 HU; x = DICOM column (towards the patient's left), y = row (posterior), z = slice
            (superior).
        label: (x, y, z) uint8, :data:`CT_LABELS`.
        spacing: (dx, dy, dz) mm.
        origin_lps: LPS position (mm) of voxel (0, 0, 0).
        n_lesions: lesions drawn.
        instances: with ``organ_lesions``, (x, y, z) uint8: lesion ``k`` of ``findings`` is value ``k + 1``.
        findings: with ``organ_lesions``, one record per lesion: ``organ`` (liver, kidney, spleen), ``side`` (the
            patient's left / right, from the LPS position), ``place`` (the liver lobe, the kidney's side, ...),
            ``diameter_mm`` and ``centre_lps``.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    n_lesions: int
    instances: np.ndarray | None = None
    findings: list[dict[str, Any]] | None = None

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS affine (MONAI / NIfTI convention) of the voxel grid."""
        dx, dy, dz = self.spacing
        ox, oy, oz = self.origin_lps
        return np.array([[-dx, 0, 0, -ox], [0, -dy, 0, -oy], [0, 0, dz, oz], [0, 0, 0, 1]], dtype=np.float64)


def _ellipsoid(p: np.ndarray, centre: Sequence[float], radii: Sequence[float], rot: float = 0.0) -> np.ndarray:
    """Normalised radius (<= 1 inside) of an ellipsoid rotated by ``rot`` in the axial plane; p is (3, ...) mm."""
    c, s = np.cos(rot), np.sin(rot)
    x, y, z = (p[i] - centre[i] for i in range(3))
    xr, yr = c * x + s * y, -s * x + c * y
    return np.sqrt((xr / radii[0]) ** 2 + (yr / radii[1]) ** 2 + (z / radii[2]) ** 2)


def synthesize_ct_case(
    seed: int | Sequence[int], size: int = 96, fov_z_mm: float = 150.0, organ_lesions: bool = False
) -> CTCase:
    """Draw one synthetic abdominal CT volume (deterministic in ``seed``).

    Args:
        seed: seed or seed sequence of ``numpy.random.default_rng``.
        size: in-plane matrix (size x size).
        fov_z_mm: cranio-caudal extent; the slice count is ``round(fov_z_mm / dz)``.
        organ_lesions: also draw lesions of the same look in the kidneys and the spleen, make the liver lesions
            larger (16-26 mm) and clearly hypodense (55-75 HU below the organ, as metastases are in a portal venous
            phase), and return every lesion's organ, side and place (``instances``, ``findings``): the
            report-guided set, where a report names some of them. The default draws the segmentation demo set,
            unchanged.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    dxy = float(rng.uniform(1.8, 2.2))
    dz = float(rng.choice([2.0, 2.5, 3.0]))
    nz = round(fov_z_mm / dz)
    spacing = (round(dxy, 3), round(dxy, 3), dz)
    origin = (-(size - 1) * spacing[0] / 2 + rng.uniform(-5, 5), -(size - 1) * spacing[1] / 2 + rng.uniform(-5, 5),
              -(nz - 1) * dz / 2 + rng.uniform(-10, 10))  # fmt: skip
    ii, jj, kk = np.meshgrid(np.arange(size), np.arange(size), np.arange(nz), indexing="ij")
    p = np.stack([origin[0] + ii * spacing[0], origin[1] + jj * spacing[1], origin[2] + kk * dz]).astype(np.float32)
    x, y, z = p

    hu = np.full(p.shape[1:], -1000.0, np.float32)
    # body: elliptic cylinder whose width breathes along z; subcutaneous fat rim, soft tissue inside
    ax, ay = rng.uniform(78, 88), rng.uniform(58, 66)
    wave = 1 + 0.04 * np.sin(z / 40 + rng.uniform(0, 6))
    body = np.sqrt((x / (ax * wave)) ** 2 + (y / (ay * wave)) ** 2)
    hu[body <= 1] = rng.uniform(-110, -90)
    hu[body <= 1 - 8 / ay] = rng.uniform(30, 45)  # muscle / soft tissue
    # bowel gas pockets and fat islands (texture)
    for _ in range(int(rng.integers(3, 7))):
        c = (rng.uniform(-20, 40), rng.uniform(-40, 0), rng.uniform(z.min(), z.max()))
        r = rng.uniform(4, 10, size=3)
        hu[(_ellipsoid(p, c, r) <= 1) & (body < 0.85)] = rng.choice([-700.0, -90.0])
    # spine (cortical shell, marrow) and aorta anterior-left of it
    sx, sy = rng.uniform(-4, 4), ay * 0.62
    rs = np.hypot(x - sx, y - sy)
    hu[rs <= 13] = rng.uniform(450, 650)
    hu[rs <= 9] = rng.uniform(180, 260)
    hu[np.hypot(x - sx - 12, y - sy + 22) <= rng.uniform(8, 11)] = rng.uniform(130, 180)
    # distractors: spleen (patient's left = +x in LPS), kidneys (posterior, both sides); no label
    spleen = _ellipsoid(p, (rng.uniform(45, 55), 15, rng.uniform(10, 30)), (18, 28, 40), rng.uniform(-0.4, 0.4)) <= 1
    hu[spleen] = rng.uniform(45, 52)
    kidneys = {}
    for side in (-1, 1):
        kc = (side * rng.uniform(38, 45), rng.uniform(22, 30), rng.uniform(-40, -10))
        kidneys["right" if side < 0 else "left"] = (kc, _ellipsoid(p, kc, (14, 20, 35), side * 0.3) <= 1)
        hu[kidneys["right" if side < 0 else "left"][1]] = rng.uniform(28, 36)
    # liver: ellipsoid on the patient's right (-x), its surface modulated by a smooth random field
    lc = (rng.uniform(-45, -35), rng.uniform(-12, 0), rng.uniform(5, 25))
    lr = (rng.uniform(36, 44), rng.uniform(36, 44), rng.uniform(48, 60))
    field = gaussian_filter(rng.standard_normal(p.shape[1:]).astype(np.float32), sigma=6 / dxy)
    field /= np.abs(field).max() + 1e-6
    liver = (_ellipsoid(p, lc, lr, rng.uniform(-0.3, 0.3)) + 0.12 * field <= 1) & (body < 0.95)
    liver_hu = rng.uniform(58, 68)
    hu[liver] = liver_hu
    label = liver.astype(np.uint8)
    if organ_lesions:  # its own random stream: the default set's draws stay as they were
        org = np.random.default_rng([*np.atleast_1d(seed).tolist(), 7])
        instances, findings = _organ_lesions(org, p, hu, label, liver, lc, lr, liver_hu, spleen, kidneys)
    # lesions inside the liver: mostly hypodense (metastasis / cyst-like), sometimes hyperdense
    n_les = 0 if organ_lesions else int(rng.choice([0, 1, 1, 2, 2, 3]))
    inside = np.argwhere(_ellipsoid(p, lc, [0.65 * r for r in lr]) <= 1)
    drawn = 0
    for _ in range(n_les):
        if not len(inside):
            break
        c = p[(slice(None), *inside[rng.integers(len(inside))])]
        r = rng.uniform(5, 12) * rng.uniform(0.8, 1.2, size=3)
        les = (_ellipsoid(p, c, r, rng.uniform(0, np.pi)) <= 1) & liver
        if les.sum() < 8:
            continue
        hu[les] = liver_hu + (rng.uniform(-45, -25) if rng.random() < 0.8 else rng.uniform(35, 60))
        label[les] = CT_LABELS["lesion"]
        drawn += 1
    # scanner blur and noise
    hu = gaussian_filter(hu, sigma=(0.6, 0.6, 0.4)) + rng.normal(0, rng.uniform(8, 14), hu.shape).astype(np.float32)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    if organ_lesions:
        return CTCase(image, label, spacing, tuple(float(o) for o in origin), len(findings), instances, findings)
    return CTCase(image, label, spacing, tuple(float(o) for o in origin), drawn)


def _organ_lesions(
    rng: np.random.Generator, p: np.ndarray, hu: np.ndarray, label: np.ndarray, liver: np.ndarray, lc, lr,
    liver_hu: float, spleen: np.ndarray, kidneys: dict[str, tuple[Any, np.ndarray]],
) -> tuple[np.ndarray, list[dict[str, Any]]]:  # fmt: skip
    """Hypodense lesions (16-26 mm, 55-75 HU below the organ) in the liver (0-3; the lobe from the position: the
    left lobe is the medial part, towards the patient's left), each kidney (0-1) and the spleen (0-1); drawn into
    ``hu`` and ``label`` (2), and as instances with their records."""
    instances = np.zeros(hu.shape, np.uint8)
    findings: list[dict[str, Any]] = []
    boundary = lc[0] + 0.3 * lr[0]  # LPS x: larger is towards the patient's left
    organs = [("liver", liver, int(rng.choice([0, 1, 1, 2, 3])), 0.65)]
    organs += [("kidney", kidneys[s][1], int(rng.random() < 0.5), 0.55) for s in ("right", "left")]
    organs.append(("spleen", spleen, int(rng.random() < 0.4), 0.55))
    for organ, mask, n, core in organs:
        inside = np.argwhere(mask & (instances == 0))
        for _ in range(n):
            if not len(inside):
                break
            c = p[(slice(None), *inside[rng.integers(len(inside))])]
            r = rng.uniform(8, 13) * rng.uniform(0.85, 1.15, size=3)
            les = (_ellipsoid(p, c, r, rng.uniform(0, np.pi)) <= 1) & mask & (instances == 0)
            vox = np.argwhere(les)
            if len(vox) < 20:
                continue
            centre = p[:, les].mean(1)
            if organ == "liver":
                place = "left lobe" if centre[0] > boundary else "right lobe"
                base = liver_hu
            else:
                place = None
                base = float(hu[les].mean())
            hu[les] = base - rng.uniform(55, 75)
            label[les] = CT_LABELS["lesion"]
            instances[les] = len(findings) + 1
            findings.append({
                "organ": organ, "side": "left" if centre[0] > 0 else "right", "place": place,
                "diameter_mm": round(float(2 * np.mean(r)), 1), "centre_lps": [round(float(v), 1) for v in centre],
            })  # fmt: skip
            inside = np.argwhere(mask & (instances == 0) & (_ellipsoid(p, c, [2.5 * x for x in r]) > 1))
    return instances, findings


def generate_demo_ct_dataset(
    root: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 4,
    n_test: int = 4,
    size: int = 96,
    seed: int = 0,
    dicom: bool = True,
    overwrite: bool = False,
    fov_z_mm: float = 150.0,
) -> str:
    """Write the synthetic CT demo set (NIfTI + DICOM series) and its two datalists; deterministic in the arguments.

    Args:
        root: output folder.
        n_train, n_val, n_test: cases per split.
        size: in-plane matrix.
        seed: base seed; case ``i`` of split ``s`` uses ``default_rng([seed, s, i])``.
        dicom: also write every volume as a DICOM series and ``datalist_dicom.json``.
        overwrite: replace an existing demo set in ``root``; otherwise a non-empty ``root`` raises ``FileExistsError``.
        fov_z_mm: cranio-caudal extent of every volume.

    Returns:
        absolute path of ``root/datalist.json`` (NIfTI images).
    """
    root = os.path.abspath(os.fspath(root))
    owned = [f"{d}{t}" for _, t, _ in _SPLITS for d in ("images", "labels")] + ["dicom"]
    if os.path.isdir(root) and os.listdir(root):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace a demo set.")
        for d in owned:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
        for f in ("datalist.json", "datalist_dicom.json"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(root, f))
    nifti: dict[str, Any] = {}
    dcm: dict[str, Any] = {}
    for si, (key, tag, name) in enumerate(_SPLITS):
        nifti[key], dcm[key] = [], []
        for i in range(int((n_train, n_val, n_test)[si])):
            case = synthesize_ct_case([seed, si, i], size=size, fov_z_mm=fov_z_mm)
            stem = f"ct_{name}_{i:03d}"
            img = save_nifti(case.image, case.affine, os.path.join(root, f"images{tag}", stem + ".nii.gz"))
            lab = save_nifti(case.label, case.affine, os.path.join(root, f"labels{tag}", stem + ".nii.gz"))
            info = {"spacing": list(case.spacing), "n_lesions": case.n_lesions}
            nifti[key].append({"image": img, "label": lab, **info})
            if dicom:
                folder = os.path.join(root, "dicom", stem)
                write_dicom_series(case.image, case.spacing, case.origin_lps, folder, patient_id=stem.upper(),
                                   uid_seed=f"monai_vlseg-demo-ct/{seed}/{stem}")  # fmt: skip
                dcm[key].append({"image": folder, "label": lab, **info})
    header = {
        "name": "monai_vlseg synthetic abdominal CT demo",
        "description": "synthetic HU volumes; labels 1 liver, 2 lesion; spleen/kidneys/aorta unlabelled distractors",
        "labels": {str(v): k for k, v in CT_LABELS.items()},
        "generator": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed,
                      "fov_z_mm": fov_z_mm},
        "meta": {"laterality": "patient"},  # axial CT: the patient's left on the image's right
    }
    if dicom:
        write_datalist({**header, "image_format": "dicom", **dcm}, os.path.join(root, "datalist_dicom.json"))
    return write_datalist({**header, "image_format": "nifti", **nifti}, os.path.join(root, "datalist.json"))


def ensure_demo_ct_datalist(dataset_dir: str | os.PathLike, image_format: str = "nifti", **kwargs: Any) -> str:
    """The demo CT datalist in ``dataset_dir`` (``datalist.json`` for NIfTI, ``datalist_dicom.json`` for DICOM
    series), generating the set first when ``datalist.json`` is missing.

    Concurrency and atomicity as :func:`monai_vlseg.datasets.synthetic.cxr.ensure_demo_datalist`: one process generates under the
    package's lock file ``.<name>.lock`` beside ``dataset_dir`` into a temporary sibling that is renamed into place;
    ``datalist.json`` (written last) marks a complete set.

    Args:
        dataset_dir: folder of the demo set.
        image_format: "nifti" or "dicom".
        kwargs: :func:`generate_demo_ct_dataset` arguments.
    """
    if image_format not in ("nifti", "dicom"):
        raise ValueError(f"image_format must be 'nifti' or 'dicom', got '{image_format}'.")
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    ensure_generated(dataset_dir, functools.partial(generate_demo_ct_dataset, **{"dicom": True, **kwargs}))
    wanted = os.path.join(dataset_dir, "datalist.json" if image_format == "nifti" else "datalist_dicom.json")
    if not os.path.isfile(wanted):
        raise FileNotFoundError(f"{wanted} is missing: the demo set in {dataset_dir} was written without DICOM series "
                                "(regenerate it with dicom=True).")  # fmt: skip
    return wanted


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: ``python -m monai_vlseg.datasets.synthetic.ct OUT_DIR``."""
    p = argparse.ArgumentParser(prog="python -m monai_vlseg.datasets.synthetic.ct", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dicom", action="store_true", help="write NIfTI only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo set in OUT_DIR")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = generate_demo_ct_dataset(a.out_dir, a.n_train, a.n_val, a.n_test, a.size, a.seed,
                                        dicom=not a.no_dicom, overwrite=a.overwrite)  # fmt: skip
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(path) as f:
        dl = json.load(f)
    counts = ", ".join(f"{k}: {len(dl[k])}" for k, _, _ in _SPLITS)
    print(f"wrote {path} ({counts}{'' if a.no_dicom else ', + datalist_dicom.json'}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
