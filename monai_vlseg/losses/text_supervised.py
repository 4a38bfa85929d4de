# Copyright (c) monai_vlseg contributors
# Licensed under the Apache License, Version 2.0
"""Losses of text-supervised segmentation (TIFCMamba, Pan et al., MICCAI 2025): no pixel labels anywhere.

- :class:`CLIPContrastiveLoss` — the symmetric InfoNCE of CLIP (Radford et al. 2021) on a (B, B) image-to-text logit
  matrix; trains the small offline CLIP on image-text pairs before the segmentation stage.
- :class:`TextSupervisedLoss` — the objective of Phi_I and Phi_T given :class:`monai_vlseg.nets.tifcmamba.TIFCMamba`'s
  training output: CLIP contrastive alignment of the masked image I-hat with the masked text T-hat, the region-level
  image-text mutual alignment, and the priors that keep the masks from being trivial (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPContrastiveLoss", "TextSupervisedLoss", "info_nce"]


def info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Mean cross-entropy of ``cos(query_i, keys_j) / t`` with the positive ``keys_i`` (keys may have extra rows,
    all negatives). query (B, E), keys (K >= B, E)."""
    logits = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).t() / temperature
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


class CLIPContrastiveLoss(nn.Module):
    """Symmetric CLIP loss on (B, B) logits (row i: image i against every text); the target is ignored (no labels)."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
            raise ValueError(
                f"expected square (B, B) image-text logits, got {tuple(logits.shape)}"
            )
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (
            F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)
        )


class TextSupervisedLoss(nn.Module):
    """Text-supervised objective of TIFCMamba (no pixel labels; ``target`` must be None or is ignored).

    ``L = l_con * L_con + l_mut * L_mut + l_map * L_map + l_area * mean(M_I) + l_bin * mean(M_I (1 - M_I)) + l_kw * L_kw
    + l_tsp * mean(M_T)`` with

    - ``L_con``: contrastive alignment of CLIP(I-hat) and CLIP(T-hat) (the poster's final step), symmetric InfoNCE
      over the batch; in the text-to-image direction the complement images (I under 1 - M_I) of the whole batch are
      extra negatives, so the described object must be inside M_I and not outside it;
    - ``L_mut``: image-text mutual alignment at the region level: the CLIP patch features of the full image pooled
      inside M_I must match the description embedding e^T (against other images' regions and all background
      regions), and e^T must pick its own region; the pooled region is diluted by every background patch M_I
      covers, which rewards tight masks;
    - ``L_map``: region-level mutual alignment in the other direction: the spatial distribution of M_I (pooled to
      the CLIP patch grid, normalised to sum 1) is pulled by cross-entropy towards ``softmax(region_sim / t_map)``,
      CLIP's own map of where the description is;
    - area and binarisation priors on M_I (the target is a part of the image; masks near 0/1);
    - ``L_kw``: Phi_T keeps the description tokens that the keyword selector chose (a text-only weak target) and
      ``mean(M_T)`` keeps T-hat sparse.

    Args:
        temperature: InfoNCE temperature.
        map_temperature: temperature of CLIP's region-text map in ``L_map``.
        lambda_contrast, lambda_mutual, lambda_map, lambda_area, lambda_binary, lambda_keyword, lambda_text_sparsity: weights.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        lambda_contrast: float = 1.0,
        lambda_mutual: float = 1.0,
        lambda_map: float = 1.0,
        map_temperature: float = 0.05,
        lambda_area: float = 0.5,
        lambda_binary: float = 0.1,
        lambda_keyword: float = 0.5,
        lambda_text_sparsity: float = 0.05,
    ) -> None:
        super().__init__()
        self.t, self.t_map = temperature, map_temperature
        self.w = {
            "contrast": lambda_contrast,
            "mutual": lambda_mutual,
            "map": lambda_map,
            "area": lambda_area,
            "binary": lambda_binary,
            "keyword": lambda_keyword,
            "text_sparsity": lambda_text_sparsity,
        }
        self.last: dict[str, float] = {}

    def terms(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms."""
        fg_i, bg_i, fg_t, e_t = (
            out["fg_image"],
            out["bg_image"],
            out["fg_text"],
            out["text"],
        )
        con = 0.5 * (
            info_nce(fg_i, fg_t, self.t)
            + info_nce(fg_t, torch.cat([fg_i, bg_i]), self.t)
        )
        mut = 0.5 * (
            info_nce(out["fg_region"], e_t, self.t)
            + info_nce(e_t, torch.cat([out["fg_region"], out["bg_region"]]), self.t)
        )
        m_i, m_t = out["mask_image"], out["mask_text"]
        sim = out["region_sim"]
        g = round(sim.shape[1] ** 0.5)
        m_p = F.adaptive_avg_pool2d(m_i, g).flatten(1)
        p_mask = m_p / m_p.sum(1, keepdim=True).clamp(min=1e-6)
        q_clip = torch.softmax(sim / self.t_map, dim=1)
        l_map = -(q_clip * torch.log(p_mask + 1e-6)).sum(1).mean()
        tm = out["token_mask"]
        n_tok = tm.sum().clamp(min=1.0)
        kw = (
            F.binary_cross_entropy(
                m_t.clamp(1e-6, 1 - 1e-6), out["keyword_tokens"], reduction="none"
            )
            * tm
        ).sum()
        return {
            "contrast": con,
            "mutual": mut,
            "map": l_map,
            "area": m_i.mean(),
            "binary": (m_i * (1 - m_i)).mean(),
            "keyword": kw / n_tok,
            "text_sparsity": (m_t * tm).sum() / n_tok,
        }

    def forward(
        self, out: Mapping[str, torch.Tensor], target: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not isinstance(out, Mapping):
            raise TypeError(
                "TextSupervisedLoss needs the dict that TIFCMamba returns in text-supervised training "
                f"(network_def#text_supervised=true, network in train mode), got {type(out).__name__}"
            )
        terms = self.terms(out)
        self.last = {k: float(v.detach()) for k, v in terms.items()}
        return sum(self.w[k] * v for k, v in terms.items())
