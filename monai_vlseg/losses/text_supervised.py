# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Losses of text-supervised segmentation (TIFCMamba, Pan et al., MICCAI 2025): no pixel labels anywhere.

- :class:`CLIPContrastiveLoss` — the symmetric InfoNCE of CLIP (Radford et al. 2021) on a (B, B) image-to-text logit
  matrix; trains the small offline CLIP on image-text pairs before the segmentation stage.
- :class:`TextSupervisedLoss` — the objective of Phi_I and Phi_T given :class:`monai_vlseg.nets.tifcmamba.TIFCMamba`'s
  training output (:class:`monai_vlseg.nets.tifcmamba.TIFCOutput`): CLIP contrastive alignment of the masked image
  I-hat with the masked text T-hat, the region-level image-text mutual alignment, and the priors that keep the masks
  from being trivial (see the class docstring).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_vlseg.losses.cacl import soft_info_nce
from monai_vlseg.nets.tifcmamba import TIFCOutput

__all__ = ["CLIPContrastiveLoss", "TextSupervisedLoss", "colour_affinity_loss", "info_nce", "rgb_to_lab"]

# sRGB (D65) -> XYZ, rows X, Y, Z
_RGB2XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)


def info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """One direction of InfoNCE with extra negatives: mean cross-entropy of ``cos(query_i, keys_j) / t`` with the
    positive ``keys_i``; keys may have extra rows, all negatives. query (B, E), keys (K >= B, E). (Square, both
    directions, soft targets: :func:`monai_vlseg.losses.cacl.soft_info_nce`.)"""
    logits = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65) of an sRGB image (B, 3, H, W) in [0, 1]; a grey image (B, 1, H, W) gives L* only."""
    x = image.clamp(0, 1)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    if x.shape[1] == 1:
        xyz = lin
    else:
        xyz = torch.einsum("ij,bjhw->bihw", lin.new_tensor(_RGB2XYZ), lin) / lin.new_tensor(_WHITE)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
    if x.shape[1] == 1:
        return 116 * f - 16
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def colour_affinity_loss(
    mask: torch.Tensor, image: torch.Tensor, dilation: int = 2, theta: float = 2.0, threshold: float = 0.3
) -> torch.Tensor:
    """Pairwise colour-affinity term of BoxInst (Tian et al., CVPR 2021, eq. 3-4), with no box: every pixel pair
    (i, j) of a dilated 3 x 3 neighbourhood whose L*a*b* colour similarity ``exp(-||c_i - c_j|| / theta)`` is at
    least ``threshold`` should get the same label, ``-log(m_i m_j + (1 - m_i)(1 - m_j))``, averaged over those pairs.
    mask (B, 1, H, W) in [0, 1], image (B, C, H, W) in [0, 1] (C = 3 RGB or 1 grey)."""
    lab = rgb_to_lab(image.detach().float())
    d, h, w = dilation, mask.shape[-2], mask.shape[-1]
    total, count = mask.new_zeros(()), mask.new_zeros(())
    for dy, dx in ((0, d), (d, 0), (d, d), (d, -d)):  # each unordered neighbour pair once
        ys, yt = slice(0, h - dy), slice(dy, h)
        xs, xt = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
        sim = torch.exp(-(lab[..., ys, xs] - lab[..., yt, xt]).norm(dim=1, keepdim=True) / theta)
        m_a, m_b = mask[..., ys, xs], mask[..., yt, xt]
        same = (m_a * m_b + (1 - m_a) * (1 - m_b)).clamp(min=1e-6)
        edge = (sim >= threshold).to(mask.dtype)
        total, count = total - (torch.log(same) * edge).sum(), count + edge.sum()
    return total / count.clamp(min=1.0)


class CLIPContrastiveLoss(nn.Module):
    """Symmetric CLIP loss on (B, B) logits (row i: image i against every text), or the mean over (N, B, B) (N texts
    per image, e.g. description and keyword); the target is ignored (no labels)."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        if logits.ndim not in (2, 3) or logits.shape[-2] != logits.shape[-1]:
            raise ValueError(
                f"expected square (B, B) or (N, B, B) image-text logits, got {tuple(logits.shape)}"
            )
        eye = torch.eye(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        return torch.stack([0.5 * soft_info_nce(x, eye) for x in logits.reshape(-1, *logits.shape[-2:])]).mean()


class TextSupervisedLoss(nn.Module):
    """Text-supervised objective of TIFCMamba (no pixel labels; ``target`` must be None or is ignored).

    ``L = l_con * L_con + l_mut * L_mut + l_map * L_map + l_area * L_area + l_bin * mean(M_I (1 - M_I))
    + l_pair * L_pair + l_kw * L_kw + l_tsp * mean(M_T)`` with

    - ``L_con``: contrastive alignment of CLIP(I-hat) and CLIP(T-hat) (the poster's final step), symmetric InfoNCE
      over the batch; in the text-to-image direction the complement images (I under 1 - M_I) of the whole batch are
      extra negatives, so the described object must be inside M_I and not outside it;
    - ``L_mut``: image-text mutual alignment at the region level: the CLIP patch features of the full image pooled
      inside M_I must match the description embedding e^T (against other images' regions and all background
      regions), and e^T must pick its own region; the pooled region is diluted by every background patch M_I
      covers, which rewards tight masks;
    - ``L_map``: region-level alignment in the other direction, from CLIP's own patch-text map ``region_sim``:
      ``map_mode="seeds"`` (default, :meth:`_seed_loss`) takes its most confident patches as foreground and
      background seeds; ``"distribution"`` pulls the spatial distribution of M_I (pooled to the CLIP patch grid,
      normalised to sum 1) by cross-entropy towards ``softmax(region_sim / t_map)``;
    - ``L_area``: a size prior (multiple-instance form of the size constraints of Kervadec et al., Medical Image
      Analysis 2019): the described object is in every image and covers ``area_range`` (min, max) of it, so the
      ``min`` fraction of pixels where M_I is highest must be foreground (``-log`` of them) and a log-scale hinge
      keeps ``mean(M_I)`` at most ``max``; plus a binarisation prior on M_I;
    - ``L_pair``: :func:`colour_affinity_loss` (BoxInst's pairwise term): neighbouring pixels of similar colour get
      the same label, so masks follow the object's edges;
    - ``L_kw``: Phi_T keeps the description tokens that the keyword selector chose (a text-only weak target) and
      ``mean(M_T)`` keeps T-hat sparse.

    Args:
        temperature: InfoNCE temperature.
        map_temperature: temperature of CLIP's region-text map in ``L_map`` (``map_mode="distribution"``).
        map_mode: ``"seeds"`` or ``"distribution"`` (see ``L_map``).
        seed_fg: number of foreground seed patches per image; seed_bg: quantile of ``region_sim`` below which a
            patch is a background seed.
        area_range: (min, max) fraction of the image the described object covers.
        lambda_contrast, lambda_mutual, lambda_map, lambda_area, lambda_binary, lambda_pairwise, lambda_keyword,
        lambda_text_sparsity: weights.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        lambda_contrast: float = 1.0,
        lambda_mutual: float = 0.1,
        lambda_map: float = 1.0,
        map_temperature: float = 0.05,
        map_mode: str = "seeds",
        seed_fg: int = 1,
        seed_bg: float = 0.5,
        lambda_area: float = 1.0,
        area_range: Sequence[float] = (0.01, 0.3),
        lambda_binary: float = 1.0,
        lambda_pairwise: float = 10.0,
        lambda_keyword: float = 0.5,
        lambda_text_sparsity: float = 0.05,
    ) -> None:
        super().__init__()
        if len(area_range) != 2 or not 0 < area_range[0] < area_range[1] <= 1:
            raise ValueError(f"area_range must be (min, max) with 0 < min < max <= 1, got {area_range!r}")
        if map_mode not in ("distribution", "seeds"):
            raise ValueError(f"map_mode must be 'distribution' or 'seeds', got {map_mode!r}")
        self.t, self.t_map, self.map_mode, self.seed_fg, self.seed_bg = (
            temperature, map_temperature, map_mode, seed_fg, seed_bg)
        self.area_min, self.log_area_max = area_range[0], math.log(area_range[1])
        self.w = {
            "contrast": lambda_contrast,
            "mutual": lambda_mutual,
            "map": lambda_map,
            "area": lambda_area,
            "binary": lambda_binary,
            "pairwise": lambda_pairwise,
            "keyword": lambda_keyword,
            "text_sparsity": lambda_text_sparsity,
        }
        self.last: dict[str, float] = {}

    def _seed_loss(self, m_i: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
        """Seeds from CLIP's region-text map: the ``seed_fg`` most similar patches hold the object (multiple-instance:
        ``-log mean(M_I)`` over their pixels), patches below the ``seed_bg`` quantile are background (``-log(1 - M_I)``
        per pixel); the rest is left to the other terms (partial cross-entropy of Tang et al., ECCV 2018)."""
        b, g = sim.shape[0], round(sim.shape[1] ** 0.5)
        fg = torch.zeros_like(sim).scatter_(1, sim.topk(self.seed_fg, dim=1).indices, 1.0)
        bg = (sim <= torch.quantile(sim.float(), self.seed_bg, dim=1, keepdim=True)).to(sim.dtype)
        fg_px, bg_px = (F.interpolate(x.view(b, 1, g, g), size=m_i.shape[-2:], mode="nearest") for x in (fg, bg))
        l_fg = -torch.log(((m_i * fg_px).sum((1, 2, 3)) / fg_px.sum((1, 2, 3))).clamp(min=1e-6))
        l_bg = -(torch.log((1 - m_i).clamp(min=1e-6)) * bg_px).sum((1, 2, 3)) / bg_px.sum((1, 2, 3)).clamp(min=1)
        return (l_fg + l_bg).mean()

    def terms(self, out: TIFCOutput) -> dict[str, torch.Tensor]:
        """The unweighted terms."""
        fg_i, bg_i, fg_t, e_t = out.fg_image, out.bg_image, out.fg_text, out.text
        con = 0.5 * (info_nce(fg_i, fg_t, self.t) + info_nce(fg_t, torch.cat([fg_i, bg_i]), self.t))
        mut = 0.5 * (
            info_nce(out.fg_region, e_t, self.t) + info_nce(e_t, torch.cat([out.fg_region, out.bg_region]), self.t)
        )
        m_i, m_t, sim = out.mask_image, out.mask_text, out.region_sim
        if self.map_mode == "seeds":
            l_map = self._seed_loss(m_i, sim)
        else:
            g = round(sim.shape[1] ** 0.5)
            m_p = F.adaptive_avg_pool2d(m_i, g).flatten(1)
            p_mask = m_p / m_p.sum(1, keepdim=True).clamp(min=1e-6)
            q_clip = torch.softmax(sim / self.t_map, dim=1)
            l_map = -(q_clip * torch.log(p_mask + 1e-6)).sum(1).mean()
        log_a = torch.log(m_i.mean((1, 2, 3)).clamp(min=1e-6))
        k = max(1, math.ceil(self.area_min * m_i[0].numel()))
        area_lo = -torch.log(m_i.flatten(1).topk(k, dim=1).values.clamp(min=1e-6)).mean()
        tm = out.token_mask
        n_tok = tm.sum().clamp(min=1.0)
        kw = (F.binary_cross_entropy(m_t.clamp(1e-6, 1 - 1e-6), out.keyword_tokens, reduction="none") * tm).sum()
        return {
            "contrast": con,
            "mutual": mut,
            "map": l_map,
            "area": area_lo + F.relu(log_a - self.log_area_max).mean(),
            "binary": (m_i * (1 - m_i)).mean(),
            "pairwise": colour_affinity_loss(m_i, out.image),
            "keyword": kw / n_tok,
            "text_sparsity": (m_t * tm).sum() / n_tok,
        }

    def forward(self, out: TIFCOutput, target: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(out, TIFCOutput):
            raise TypeError(
                "TextSupervisedLoss needs the TIFCOutput that TIFCMamba returns in text-supervised training "
                f"(network_def#text_supervised=true, network in train mode), got {type(out).__name__}"
            )
        terms = self.terms(out)
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        return sum(self.w[k] * v for k, v in terms.items())
