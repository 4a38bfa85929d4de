"""Radiology reports for the report-guided CT demo: what a report of a synthetic abdominal CT says about *some* of its
lesions (by organ, side and place, with count and size), and which lesions that makes the target mask.

A volume's lesions (:func:`monai_vlseg.datasets.synthetic.ct.synthesize_ct_case` with ``organ_lesions``) fall into
groups a radiologist reports together: the right / left hepatic lobe, the right / left kidney, the spleen. A report
names a subset of the groups; the lesions of the other groups (decoys of the same look) are not in its mask.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

__all__ = [
    "GROUP_PATTERNS",
    "ensure_report_ct_datalist",
    "finding_groups",
    "generate_report_ct_dataset",
    "named_subsets",
    "no_target_reports",
    "write_ct_report",
]

_SPLITS = (("training", "Tr", "train"), ("validation", "Val", "val"), ("test", "Ts", "test"))

_COUNT = {1: "A", 2: "Two", 3: "Three", 4: "Four"}
_HEADERS = ("CT ABDOMEN WITH CONTRAST.", "CT OF THE ABDOMEN, PORTAL VENOUS PHASE.", "ABDOMINAL CT.")
#: the groups in report order, and how the reports (:func:`write_ct_report`) name each one's place (regular expressions)
GROUP_PATTERNS = {
    "liver right lobe": r"right (hepatic lobe|lobe of the liver)",
    "liver left lobe": r"left (hepatic lobe|lobe of the liver)",
    "kidney right": r"right (kidney|renal)",
    "kidney left": r"left (kidney|renal)",
    "spleen": r"spleen|splenic",
}
_ORDER = tuple(GROUP_PATTERNS)


def _group(f: dict[str, Any]) -> str:
    if f["organ"] == "liver":
        return f"liver {f['place']}"
    return f"kidney {f['side']}" if f["organ"] == "kidney" else f["organ"]


def finding_groups(findings: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """``{group: [lesion indices]}`` in a fixed order (liver right lobe, liver left lobe, right kidney, left kidney,
    spleen)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        groups.setdefault(_group(f), []).append(i)
    return {g: groups[g] for g in _ORDER if g in groups}


def named_subsets(
    groups: Sequence[str], n: int, rng: np.random.Generator, singles_first: bool = False
) -> list[tuple[str, ...]]:
    """Up to ``n`` distinct non-empty subsets of ``groups`` for reports to name, those that leave a decoy group out
    first (in random order), then the whole set. ``singles_first``: the one-group subsets come first (in random
    order), so that every group of a volume is named alone by some report (the training reports: a report that names
    one group is the one a network that does not read cannot fit)."""
    partial = [c for k in range(1, len(groups)) for c in combinations(groups, k)]
    order = [partial[i] for i in rng.permutation(len(partial))] + ([tuple(groups)] if groups else [])
    if singles_first:
        order = sorted(order, key=lambda c: len(c) > 1)  # stable: the rest keep their random order
    return order[:n] if groups else [()]


def _sentence(group: str, sizes: list[float], rng: np.random.Generator) -> str:
    n, d = len(sizes), int(round(max(sizes)))
    organ, _, where = group.partition(" ")
    if organ == "liver":
        place = str(rng.choice([f"the {where.replace(' lobe', '')} hepatic lobe", f"the {where} of the liver"]))
    elif organ == "kidney":
        place = str(rng.choice([f"the {where} kidney", f"the {where} renal cortex"]))
    else:
        place = str(rng.choice(["the spleen", "the splenic parenchyma"]))
    if n == 1:
        return str(rng.choice([f"A {d} mm hypodense lesion in {place}.", f"Solitary hypodense lesion in {place}, "
                               f"measuring {d} mm."]))  # fmt: skip
    return str(rng.choice([f"{_COUNT.get(n, str(n))} hypodense lesions in {place}, the largest {d} mm.",
                           f"{_COUNT.get(n, str(n))} low-attenuation lesions in {place}, up to {d} mm."]))  # fmt: skip


def write_ct_report(
    findings: Sequence[dict[str, Any]], named: Sequence[str], rng: np.random.Generator, absent: Sequence[str] = ()
) -> tuple[str, list[int]]:
    """The report naming the groups ``named`` (see :func:`finding_groups`) and the indices of the lesions it names.

    ``absent``: groups the volume has no lesion in that the report names all the same (with sizes drawn here): a
    no-target phrase, whose lesions are not in the mask because they are not in the image. A report that names
    nothing says there is no focal lesion (its mask is empty)."""
    groups = finding_groups(findings)
    sentences, indices = [], []
    for g in _ORDER:
        if g in groups and g in named:
            sentences.append(_sentence(g, [findings[i]["diameter_mm"] for i in groups[g]], rng))
            indices += groups[g]
        elif g in absent and g not in groups:
            n = int(rng.integers(1, 3)) if g.startswith("liver") else 1  # as many as the generator draws there
            sentences.append(_sentence(g, list(rng.uniform(16, 26, size=n)), rng))
    if not sentences:
        sentences = ["No focal lesion in the liver, kidneys or spleen."]
    header = str(rng.choice(_HEADERS))
    return f"{header} FINDINGS: {' '.join(sentences)}", sorted(indices)


def no_target_reports(groups: Sequence[str], n: int, rng: np.random.Generator) -> list[tuple[tuple, tuple]]:
    """Up to ``n`` ``(named, absent)`` pairs for reports that name at least one group the volume has no lesion in
    (``absent``, 1-2 groups), with a random subset of its own groups (``named``, possibly none), or that name
    nothing at all (the "no focal lesion" report of a volume that has lesions, when ``groups`` is not empty)."""
    missing = [g for g in _ORDER if g not in groups]
    out: list[tuple[tuple, tuple]] = [((), ())] if groups else []
    for _ in range(4 * n):
        if len(out) > 2 * n or not missing:  # candidates, of which n are kept
            break
        k = int(rng.integers(1, min(2, len(missing)) + 1))
        absent = tuple(sorted((str(g) for g in rng.choice(missing, size=k, replace=False)), key=_ORDER.index))
        named = tuple(g for g in groups if rng.random() < 0.5)
        if (named, absent) not in out:
            out.append((named, absent))
    return [out[i] for i in rng.permutation(len(out))][:n]


def generate_report_ct_dataset(
    root: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 16,
    n_test: int = 24,
    size: int = 96,
    seed: int = 0,
    variants: int = 6,
    no_target: int = 0,
    dicom: bool = True,
    fov_z_mm: float = 150.0,
) -> str:
    """Write the report-guided CT demo set into ``root`` and return ``root/datalist.json``.

    Every volume (:func:`~monai_vlseg.datasets.synthetic.ct.synthesize_ct_case` with ``organ_lesions``) gets
    ``variants`` reports in the training split (each naming other groups of its lesions: one item per report, its
    ``label`` the lesions that report names), plus ``no_target`` training reports that name a group the volume has
    no lesion in, or nothing (:func:`no_target_reports`: their mask holds only the named lesions that exist, the
    no-target expressions of generalised referring segmentation), and one report in the validation and test splits
    (naming only groups the volume has). Items: ``image`` (NIfTI, HU),
    ``label`` (uint8 0/1), ``text``, ``named_count`` and ``named_sides`` (what
    :class:`monai_vlseg.metrics.FindingsAgreementMetric` scores against) and ``decoys`` (how many lesions the report
    leaves out). Every lesion of a volume: ``lesions<Tr|Val|Ts>/<stem>.nii.gz`` (instance ``k`` = lesion ``k - 1``)
    and ``findings.json`` (``{stem: [records: organ, side, place, diameter_mm, centre_lps]}``). With
    ``dicom``, each volume is also a DICOM CT series (AccessionNumber ``<stem>``) with its first report as a Basic Text
    SR in the same study (``dicom/<stem>/``, ``dicom/<stem>_report.dcm``), in ``datalist_dicom.json`` and in
    ``reports.csv`` (AccessionNumber, report) — an export folder :mod:`monai_vlseg.io.ingest` reads. The test
    volumes are also stored rotated by 180 degrees in plane (``dicom_rotated/``, ``datalist_dicom_rotated.json``) and as
    coronal series (``dicom_coronal/``, ``datalist_dicom_coronal.json``): the same patients, other stored
    orientations, the same expected masks.
    """
    from monai_vlseg.datalist import write_datalist
    from monai_vlseg.io.dicom import save_nifti
    from monai_vlseg.io.series import write_dicom_series, write_report_sr
    from monai_vlseg.metrics.findings import named_sides

    from .ct import synthesize_ct_case

    root = os.path.abspath(os.fspath(root))
    nifti: dict[str, list] = {}
    dcm: dict[str, list] = {}
    rot: dict[str, list] = {"test": []}
    cor: dict[str, list] = {"test": []}
    reports: list[tuple[str, str]] = []
    findings: dict[str, list] = {}
    for si, (key, tag, name) in enumerate(_SPLITS):
        nifti[key], dcm[key] = [], []
        for i in range(int((n_train, n_val, n_test)[si])):
            case = synthesize_ct_case([seed, 10 + si, i], size=size, fov_z_mm=fov_z_mm, organ_lesions=True)
            rng = np.random.default_rng([seed, 20 + si, i])
            stem = f"ctr_{name}_{i:03d}"
            img = save_nifti(case.image, case.affine, os.path.join(root, f"images{tag}", stem + ".nii.gz"))
            save_nifti(case.instances, case.affine, os.path.join(root, f"lesions{tag}", stem + ".nii.gz"))
            findings[stem] = case.findings
            groups = list(finding_groups(case.findings))
            train = key == "training"
            subsets = [(n, ()) for n in named_subsets(groups, variants if train else 1, rng, singles_first=train)]
            if train:
                subsets += no_target_reports(groups, no_target, rng)
            for v, (named, absent) in enumerate(subsets):
                text, idx = write_ct_report(case.findings, named, rng, absent)
                mask = np.isin(case.instances, np.asarray(idx, dtype=np.uint8) + 1).astype(np.uint8)
                lab = save_nifti(mask, case.affine, os.path.join(root, f"labels{tag}", f"{stem}_r{v}.nii.gz"))
                named_findings = [case.findings[k] for k in idx]
                item = {"image": img, "label": lab, "text": text, "text_source": "report", "named_count": len(idx),
                        "named_sides": named_sides(named_findings), "decoys": len(case.findings) - len(idx),
                        "absent_named": len(absent)}  # fmt: skip
                nifti[key].append(item)
                if dicom and v == 0:
                    folder = os.path.join(root, "dicom", stem)
                    paths = write_dicom_series(case.image, case.spacing, case.origin_lps, folder,
                                               patient_id=stem.upper(), uid_seed=f"monai_vlseg-report-ct/{seed}/{stem}",
                                               accession_number=stem)  # fmt: skip
                    write_report_sr(os.path.join(root, "dicom", f"{stem}_report.dcm"), text, paths[0])
                    reports.append((stem, text))
                    dcm[key].append({**item, "image": folder})
                    if key == "test":  # the same series stored rotated by 180 degrees: the same mask is expected
                        rotated = os.path.join(root, "dicom_rotated", stem)
                        write_dicom_series(case.image, case.spacing, case.origin_lps, rotated,
                                           patient_id=stem.upper(), uid_seed=f"monai_vlseg-report-ct/{seed}/{stem}/r",
                                           accession_number=stem, rotate_180=True)  # fmt: skip
                        rot[key].append({**item, "image": rotated})
                        coronal = os.path.join(root, "dicom_coronal", stem)  # a coronal reformat of the same volume
                        write_dicom_series(case.image, case.spacing, case.origin_lps, coronal,
                                           patient_id=stem.upper(), uid_seed=f"monai_vlseg-report-ct/{seed}/{stem}/c",
                                           accession_number=stem, plane="coronal")  # fmt: skip
                        cor[key].append({**item, "image": coronal})
    header = {
        "name": "monai_vlseg synthetic report-guided abdominal CT demo",
        "description": "synthetic HU volumes with hypodense lesions in the liver lobes, kidneys and spleen; each report "
        "names some of them (label: the named lesions, 1); the others are decoys",
        "labels": {"0": "background", "1": "named lesion"},
        "generator": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "size": size, "seed": seed,
                      "variants": variants, "no_target": no_target, "fov_z_mm": fov_z_mm},  # fmt: skip
        "meta": {"laterality": "patient"},  # reports name the patient's side; the affine says where it is
    }
    with open(os.path.join(root, "findings.json"), "w", encoding="utf-8") as f:
        json.dump(findings, f, indent=1)
    if dicom:
        with open(os.path.join(root, "reports.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["AccessionNumber", "report"])
            w.writerows(reports)
        write_datalist({**header, "image_format": "dicom", **dcm}, os.path.join(root, "datalist_dicom.json"))
        write_datalist({**header, "image_format": "dicom_rotated", **rot},
                       os.path.join(root, "datalist_dicom_rotated.json"))  # fmt: skip
        write_datalist({**header, "image_format": "dicom_coronal", **cor},
                       os.path.join(root, "datalist_dicom_coronal.json"))  # fmt: skip
    return write_datalist({**header, "image_format": "nifti", **nifti}, os.path.join(root, "datalist.json"))


def ensure_report_ct_datalist(dataset_dir: str | os.PathLike, image_format: str = "nifti", **kwargs: Any) -> str:
    """The report-guided CT demo datalist in ``dataset_dir`` (NIfTI, ``"dicom"`` series, ``"dicom_rotated"``: the
    test series stored rotated by 180 degrees in plane, or ``"dicom_coronal"``: the test volumes as coronal series),
    generated on first use
    (atomically, one process at a time: :func:`monai_vlseg.files.ensure_generated`)."""
    from monai_vlseg.files import ensure_generated

    formats = ("nifti", "dicom", "dicom_rotated", "dicom_coronal")
    if image_format not in formats:
        raise ValueError(f"image_format must be one of {formats}, got '{image_format}'.")
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    ensure_generated(dataset_dir, functools.partial(generate_report_ct_dataset, **kwargs))
    return os.path.join(dataset_dir, "datalist.json" if image_format == "nifti" else f"datalist_{image_format}.json")
