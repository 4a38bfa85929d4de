# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Pixel uncertainty of a prediction and one score per image that says which outputs a reader should look at.

The map is the normalised entropy of the predicted distribution, in [0, 1]: for a sigmoid output with foreground
probability ``p``, ``H = -(p log p + (1 - p) log(1 - p)) / log 2``; for a softmax over ``C`` classes,
``H = -sum_c p_c log p_c / log C``. It is 0 where the network is sure and 1 where it cannot tell (p = 0.5).

The per-image score (:func:`uncertainty_score`) is the mean of that map over the final mask dilated by ``band``
pixels: the mask and the band around its edge, where a reader checks the outline. A confident mask with a crisp edge
scores low; a mask the network hesitated on (inside, or along its edge) scores high. An empty mask is scored over the
pixels the network leaned towards most (foreground probability at least half its maximum, dilated the same way): a
confident empty prediction scores near 0, a near-miss high. (Chosen over the mean entropy of the band and the unsure
pixels, on the C2Seg demo model's validation split: with a background probability of about 0.1 everywhere, that
score was the same for every image, Spearman +0.26 with Dice, against -0.50 for this one; docs/demo_accuracy.md.)

:class:`UncertaintyMapd` puts the map and the score into the item and flags it ``needs_review`` above
``review_threshold``; each bundle's ``inference.json`` sets it (``review_uncertainty``) to the threshold chosen on
its demo validation split (docs/demo_accuracy.md "Uncertainty"), :data:`REVIEW_THRESHOLD` being only the transform's
default. :class:`SaveHeatOverlayd` writes the heat overlay a reader opens.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from monai_vlseg.transforms.image import OUTPUT_NAME_KEY, SaveOverlayd
from monai_vlseg.transforms.report import flag_for_review

__all__ = [
    "REVIEW_THRESHOLD",
    "foreground_probability",
    "SaveHeatOverlayd",
    "UncertaintyMapd",
    "boundary_band",
    "normalised_entropy",
    "uncertainty_score",
]

#: the transform's default score above which an output is flagged ``needs_review`` (bundles set their own).
REVIEW_THRESHOLD = 0.35


def normalised_entropy(prob: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) probabilities -> (1, *spatial) entropy in [0, 1]: binary entropy of a one-channel (sigmoid)
    output, categorical entropy over the channels (softmax) otherwise, each divided by its maximum."""
    p = prob.float().clamp(0.0, 1.0)
    if p.shape[0] == 1:
        q = torch.stack((p[0], 1.0 - p[0]))
        classes = 2
    else:
        q, classes = p, p.shape[0]
    h = -(q * torch.log(q.clamp_min(1e-12))).sum(0, keepdim=True)
    return (h / math.log(classes)).clamp(0.0, 1.0)


def boundary_band(mask: torch.Tensor, band: int = 2) -> torch.Tensor:
    """(1, *spatial) bool mask -> (1, *spatial) bool: the pixels within ``band`` pixels (chessboard distance) of the
    mask's edge, inside and outside (a dilation minus an erosion, by max pooling; 2D and 3D)."""
    m = mask.float()[None]  # (1, 1, *spatial)
    pool = F.max_pool2d if m.dim() == 4 else F.max_pool3d
    k = 2 * int(band) + 1
    dilated = pool(m, k, stride=1, padding=band)
    eroded = -pool(-m, k, stride=1, padding=band)
    return (dilated > 0.5)[0] & ~(eroded > 0.5)[0]


def foreground_probability(prob: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) -> (1, *spatial): the sigmoid output itself, or one minus the background's softmax share."""
    return prob[:1] if prob.shape[0] == 1 else 1.0 - prob[:1]


def uncertainty_score(entropy: torch.Tensor, mask: torch.Tensor, band: int = 2, prob: torch.Tensor | None = None) -> float:
    """Mean of ``entropy`` over ``mask`` dilated by ``band`` pixels (the module docstring). An empty mask is scored
    over the pixels whose foreground probability (from ``prob``, (C, *spatial)) is at least half its maximum,
    dilated the same way; without ``prob``, an empty mask scores 0.0."""
    if not mask.any():
        if prob is None:
            return 0.0
        fg = foreground_probability(prob.float())
        mask = fg >= 0.5 * fg.max()
    region = mask | boundary_band(mask, band)
    return float(entropy[region].mean())


class UncertaintyMapd(MapTransform):
    """Entropy map and per-image uncertainty score of a prediction (see the module docstring).

    Place it where the mask is final (thresholded or arg-maxed, cut to the report) and still on the network's grid,
    as evaluation scores it (a threshold chosen there then holds whatever the input's resolution), with the
    probabilities kept beforehand under ``prob_key`` (MONAI's ``CopyItemsd`` right after ``Activationsd``); ``Invertd``
    then takes the mask and both maps back to the input's geometry::

        {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},   # after Activationsd
        ...
        {"_target_": "monai_vlseg.transforms.UncertaintyMapd", "keys": "pred"},
        {"_target_": "Invertd", "keys": ["pred", "prob", "uncertainty", "image"], ...}

    Writes ``d[uncertainty_key]`` (1, *spatial) and ``d[score_key]`` (float); above ``review_threshold`` the item is
    flagged ``needs_review`` and the reason joins ``report_warnings``.

    Args:
        keys: the final mask key (binary with one channel, class labels, or one-hot with the background first;
            foreground = non-zero, or any class after the background).
        prob_key: item key of the probabilities (C, *spatial).
        uncertainty_key, score_key: where the map and the score go.
        band: see :func:`uncertainty_score`.
        review_threshold: score above which the item is flagged; ``None`` never flags.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        prob_key: str = "prob",
        uncertainty_key: str = "uncertainty",
        score_key: str = "uncertainty_score",
        band: int = 2,
        review_threshold: float | None = REVIEW_THRESHOLD,
    ) -> None:
        super().__init__(keys)
        self.prob_key, self.uncertainty_key, self.score_key = prob_key, uncertainty_key, score_key
        self.band, self.review_threshold = int(band), review_threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            prob = d[self.prob_key]
            p = prob.as_tensor() if isinstance(prob, MetaTensor) else torch.as_tensor(prob)
            entropy = normalised_entropy(p)
            pred = d[key]
            pred = (pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)).to(entropy.device)
            mask = pred[1:].sum(0, keepdim=True) if pred.shape[0] > 1 else pred  # one-hot: the non-background classes
            if mask.shape[1:] != entropy.shape[1:]:
                raise ValueError(f"{key} {tuple(mask.shape[1:])} and {self.prob_key} {tuple(prob.shape[1:])} differ.")
            score = uncertainty_score(entropy, mask > 0, self.band, p)
            if isinstance(prob, MetaTensor):  # the probabilities' geometry and file name, for the savers
                entropy = MetaTensor(entropy, meta=dict(prob.meta))
            d[self.uncertainty_key], d[self.score_key] = entropy, score
            if self.review_threshold is not None and score > self.review_threshold:
                flag_for_review(d, f"uncertainty {score:.3f} above {self.review_threshold:g}")
        return d


class SaveHeatOverlayd(SaveOverlayd):
    """Write ``<output_dir>/<name>_uncertainty_overlay.png``: the image in grey with a map in [0, 1] (the
    uncertainty) laid over it as a heat colour (dark red -> yellow -> white at 1, its opacity growing with the square
    of the value, so a uniformly hesitant background stays faint and the most uncertain pixels stand out) and the
    mask's outline in cyan, in the image's own pixel grid.

    Args:
        keys: (image key, map key, mask key), channel-first 2D arrays of one spatial size (the mask may be absent).
        output_dir, name_key: as :class:`SaveOverlayd`.
        alpha: opacity of the heat at 1 (``alpha * value ** 2`` below).
        postfix: file name postfix.
    """

    _ANCHORS = np.array([[0.0, 0.0, 0.0], [0.75, 0.05, 0.0], [1.0, 0.8, 0.0], [1.0, 1.0, 1.0]]) * 255.0

    def __init__(
        self, keys: KeysCollection = ("image", "uncertainty", "pred"), output_dir: str = "./", alpha: float = 0.8,
        postfix: str = "uncertainty_overlay", name_key: str | None = OUTPUT_NAME_KEY,
    ) -> None:  # fmt: skip
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        if len(self.keys) not in (2, 3):
            raise ValueError("SaveHeatOverlayd needs the image, the map and (optionally) the mask keys.")
        self.output_dir, self.alpha, self.postfix, self.name_key = output_dir, alpha, postfix, name_key

    @classmethod
    def heat(cls, v: np.ndarray) -> np.ndarray:
        """[0, 1] values -> (..., 3) colours along the anchors (black, dark red, yellow, white)."""
        x = np.clip(v, 0.0, 1.0) * (len(cls._ANCHORS) - 1)
        i = np.minimum(x.astype(int), len(cls._ANCHORS) - 2)
        f = (x - i)[..., None]
        return (1 - f) * cls._ANCHORS[i] + f * cls._ANCHORS[i + 1]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img_key, map_key = self.keys[:2]
        image, value = self._array(d[img_key]), self._array(d[map_key])[0]
        if image.shape[1:] != value.shape:
            raise ValueError(f"{img_key} {image.shape[1:]} and {map_key} {value.shape} differ in size.")
        a = (self.alpha * np.clip(value, 0.0, 1.0) ** 2)[..., None]  # the most uncertain pixels stand out
        rgb = (1 - a) * self._rgb(image) + a * self.heat(value)
        if len(self.keys) == 3 and self.keys[2] in d:
            rgb[self._edge(self._array(d[self.keys[2]])[-1] > 0.5)] = (0.0, 230.0, 255.0)
        d[f"{self.postfix}_path"] = self._write(d, d[img_key], rgb)
        return d
