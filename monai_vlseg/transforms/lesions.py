# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Lesions of a binary mask: connected components, the patient side each lies on, and the mask cut to what a report
names (:class:`KeepReportedFindingsd`), and a 3D mask checked against what its report states
(:class:`CheckReportFindingsd`).

The side convention is a parameter: on a PA chest radiograph (and by the radiological convention for axial CT) the
patient's left is on the image's right, so ``left_on_image_right=True`` is the default. MONAI's PNG and DICOM
readers put the image's columns first (``(x, y)``), so the image's left-right axis is spatial axis 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import MetaKeys, SpaceKeys
from scipy import ndimage

from monai_vlseg.transforms.report import flag_for_review

__all__ = [
    "CheckReportFindingsd",
    "KeepReportedFindingsd",
    "component_sides",
    "mask_laterality",
    "mask_lesions",
    "patient_side_components",
]


def mask_lesions(mask: np.ndarray | torch.Tensor, min_area_fraction: float = 0.001) -> tuple[np.ndarray, int]:
    """Connected components (8/26-connectivity) of a binary mask, dropping those under ``min_area_fraction`` of the image.

    Returns the label array (0 = background, 1..n) and n.
    """
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask) > 0
    labels, n = ndimage.label(m, structure=np.ones((3,) * m.ndim, dtype=bool))
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= max(1.0, min_area_fraction * m.size)
        keep[0] = False
        remap = np.zeros(n + 1, dtype=labels.dtype)
        remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
        labels, n = remap[labels], int(keep.sum())
    return labels, n


def component_sides(labels: np.ndarray, num: int, lateral_axis: int = 0, left_on_image_right: bool = True) -> list[str]:
    """The patient side ("left" / "right") of each component 1..num: the side of the image midline (along
    ``lateral_axis``) that holds its centroid."""
    if num == 0:
        return []
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, index=np.arange(1, num + 1))
    mid = (labels.shape[lateral_axis] - 1) / 2.0
    return ["left" if (c[lateral_axis] > mid) == left_on_image_right else "right" for c in centres]


def mask_laterality(labels: np.ndarray, num: int, lateral_axis: int = 0, left_on_image_right: bool = True) -> str:
    """Patient side(s) of the components in ``labels`` ("none", "left", "right", "bilateral")."""
    sides = set(component_sides(labels, num, lateral_axis, left_on_image_right))
    if not sides:
        return "none"
    return "bilateral" if len(sides) == 2 else sides.pop()


def patient_side_components(
    mask: Any, affine: Any, space: str = SpaceKeys.RAS.value, min_volume_mm3: float = 100.0
) -> list[tuple[str, float]]:
    """``[(side, volume mm3)]`` of the connected components of a 3D mask (x, y, z) with its 4x4 ``affine`` (RAS, or
    LPS when ``space`` says so); side ``"left"`` / ``"right"`` of the patient from the centroid."""
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask) > 0
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    voxel = abs(float(np.linalg.det(aff[:3, :3])))
    labels, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel  # one pass, not one per component
    kept = [k + 1 for k in range(n) if sizes[k] >= min_volume_mm3]
    out = []
    for k, c in zip(kept, ndimage.center_of_mass(m, labels, kept)):
        x = float((aff @ np.append(np.asarray(c), 1.0))[0])
        left = x > 0 if str(space) == SpaceKeys.LPS.value else x < 0  # LPS: +x is the patient's left; RAS: right
        out.append(("left" if left else "right", float(sizes[k - 1])))
    return out


class KeepReportedFindingsd(MapTransform):
    """Cut a binary prediction to what the report names: on each patient side keep as many components as the report
    names zones there, those whose height fits the named levels best, and nothing on a side it does not name.

    Which components: on a side with ``k`` named zones and ``m > k`` components, the ``k`` whose vertical rank among
    the ``m`` (top to bottom, scaled to 0..1) is closest to the named levels (upper 0, middle 0.5, lower 1), ties
    broken by the height in the image (upper, middle, lower thirds) and then by size. With one component per zone,
    the rank is the level, whatever the size of the lungs in the image.

    A component whose height is nearest a level the report calls clear on its side (``report_negated``, e.g. "no
    opacity in the left base") and that is not a named level there is removed as well, and the item is flagged
    ``needs_review`` (the reason goes to ``report_warnings``): the network saw something where the report says
    there is nothing. Heights are the centre's row over the image height; the levels' rows are 0.3 / 0.5 / 0.7.

    The zones come from :class:`~monai_vlseg.transforms.report.PrepareReportd` (``report_zones``, e.g.
    ``"upper left; lower right"``); an item without them (no parser, or nothing read) is left as it is, so the step
    never invents a constraint. Place it after the prediction is binarised, before it is inverted or saved.

    Args:
        keys: binary prediction key(s), channel-first (channel 0 is the mask; with more channels the last one).
        zones_key: item key of the report's zones.
        negated_key: item key of the zones the report calls clear.
        lateral_axis, left_on_image_right: the image's left-right axis and side convention (see the module); the
            other spatial axis of a 2D image runs from its top to its bottom.
        min_area_fraction: smaller components are noise and removed as well.
    """

    _LEVEL = {"upper": 0.0, "middle": 0.5, "lower": 1.0}

    def __init__(
        self,
        keys: KeysCollection = "pred",
        zones_key: str = "report_zones",
        negated_key: str = "report_negated",
        lateral_axis: int = 0,
        left_on_image_right: bool = True,
        min_area_fraction: float = 0.001,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.zones_key, self.negated_key, self.lateral_axis = zones_key, negated_key, lateral_axis
        self.left_on_image_right, self.min_area_fraction = left_on_image_right, min_area_fraction

    def _choose(self, ids: list[int], levels: list[str], heights: np.ndarray, sizes: np.ndarray) -> list[int]:
        """The components of ``ids`` (one side) that fit the named ``levels`` best (see the class docstring)."""
        if len(ids) <= len(levels):
            return ids
        order = sorted(ids, key=lambda c: heights[c])
        rank = {c: i / (len(order) - 1) for i, c in enumerate(order)}

        def cost(chosen: tuple[int, ...]) -> tuple[float, float, float]:
            pairs = list(zip(sorted(chosen, key=lambda c: heights[c]), sorted(levels, key=self._LEVEL.get)))
            return (
                round(sum(abs(rank[c] - self._LEVEL[lv]) for c, lv in pairs), 6),
                sum(abs(heights[c] - (0.3 + 0.4 * self._LEVEL[lv])) for c, lv in pairs),
                -float(sum(sizes[c] for c in chosen)),
            )

        return list(min(itertools.combinations(ids, len(levels)), key=cost))

    def _in_clear_zone(self, height: float, levels: list[str], clear: list[str]) -> bool:
        """Whether a component at ``height`` sits in a level the report calls clear and names no finding in."""
        nearest = min(self._LEVEL, key=lambda lv: abs(height - (0.3 + 0.4 * self._LEVEL[lv])))
        return nearest in clear and nearest not in levels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        zones = [z.split() for z in str(d.get(self.zones_key) or "").split(";") if len(z.split()) == 2]
        if not zones:
            return d
        negated = [z.split() for z in str(d.get(self.negated_key) or "").split(";") if len(z.split()) == 2]
        removed: list[str] = []
        for key in self.key_iterator(d):
            pred = d[key]
            channel = pred[-1]
            labels, n = mask_lesions(channel, self.min_area_fraction)
            sides = component_sides(labels, n, self.lateral_axis, self.left_on_image_right)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            heights = np.zeros(n + 1)
            if n and labels.ndim == 2:
                vertical = 1 - self.lateral_axis
                centres = ndimage.center_of_mass(np.ones_like(labels), labels, index=np.arange(1, n + 1))
                heights[1:] = [c[vertical] / max(labels.shape[vertical] - 1, 1) for c in centres]
            keep = np.zeros(n + 1, dtype=bool)
            for side in ("left", "right"):
                levels = [lv for lv, s in zones if s == side]
                clear = [lv for lv, s in negated if s == side]
                ids = [i + 1 for i, s in enumerate(sides) if s == side]
                if clear and labels.ndim == 2:
                    found = [c for c in ids if self._in_clear_zone(heights[c], levels, clear)]
                    removed += [side] * len(found)
                    ids = [c for c in ids if c not in found]
                keep[self._choose(ids, levels, heights, sizes) if levels else []] = True
            kept = torch.as_tensor(keep[labels], device=channel.device)
            out = pred.clone()
            out[-1] = channel * kept.to(channel.dtype)
            d[key] = out
        if removed:
            where = " and ".join(sorted(set(removed)))
            note = f"the mask held {len(removed)} lesion(s) in a zone the report calls clear ({where} side): removed"
            flag_for_review(d, note)
        return d


class CheckReportFindingsd(MapTransform):
    """Flag a 3D prediction ``needs_review`` when its lesions disagree with what the report states: another number
    of lesions, a lesion on a side of the patient the report names none on, or no lesion on a side it names one on.

    The report is read with :func:`~monai_vlseg.transforms.report.parse_ct_findings`; a count or side it does not
    state (``"multiple lesions"``, the left hepatic lobe) is not checked, so the step never invents a constraint.
    The lesions are the mask's connected components of at least ``min_volume_mm3``, each on the patient's side of its
    centroid, read through the affine (:func:`patient_side_components`: the same
    reading :class:`~monai_vlseg.metrics.FindingsAgreementMetric` scores). The mask is left as it is: a mask the
    report did not ask for goes on, marked, to a reader, not silently to the PACS (nor silently cut). The reasons
    join ``report_warnings``. Place it after the prediction is binarised, before it is inverted or saved.

    Args:
        keys: binary prediction key(s), channel-first MetaTensors with their affine (channel 0 is the mask; with more
            channels the last one).
        text_key: item key of the report text.
        min_volume_mm3: smaller components are not counted as lesions.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        text_key: str = "text",
        min_volume_mm3: float = 100.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.text_key, self.min_volume_mm3 = text_key, float(min_volume_mm3)

    def disagreements(self, mask: Any, affine: Any, space: str, text: str) -> list[str]:
        """Why a mask (x, y, z) with its ``affine`` disagrees with the report ``text`` (empty when it agrees)."""
        from monai_vlseg.transforms.report import parse_ct_findings

        stated = parse_ct_findings(text)
        found = patient_side_components(mask, affine, space, self.min_volume_mm3)
        reasons = []
        if stated.count is not None and len(found) != stated.count:
            reasons.append(f"the mask holds {len(found)} lesion(s), the report names {stated.count}")
        if stated.sides is not None:
            extra = sorted({s for s, _ in found} - stated.sides)
            missing = sorted(stated.sides - {s for s, _ in found})
            reasons += [f"a lesion on the patient's {s}, where the report names none" for s in extra]
            reasons += [f"no lesion on the patient's {s}, where the report names one" for s in missing]
        return reasons

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        text = str(d.get(self.text_key) or "")
        for key in self.key_iterator(d):
            pred = d[key]
            affine = getattr(pred, "affine", None)
            if affine is None:
                raise ValueError(f"CheckReportFindingsd needs '{key}' as a MetaTensor: the side comes from its affine.")
            space = (getattr(pred, "meta", {}) or {}).get(MetaKeys.SPACE, SpaceKeys.RAS.value)
            reasons = self.disagreements(pred[-1], affine, space, text)
            if reasons:
                flag_for_review(d, "; ".join(reasons))
        return d
