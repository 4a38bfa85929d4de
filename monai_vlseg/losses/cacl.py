"""Cluster-aware Contrastive Learning (CaCL) and the hard-label InfoNCE it replaces (C2Seg, stage 1).

C2Seg, "Towards Text-Mask Consistency in Medical Image Segmentation" (ICLR 2026). Clinical reports are templated,
so in-batch InfoNCE treats same-template pairs as negatives (false negatives). CaCL turns the text-text similarity
into soft targets:

- ``M_ij = cos(l_i, l_j)`` in the frozen language space;
- debiasing and truncation ``M'_ij = max(M_ij - mu_i, 0)`` with ``mu_i = mean_k M_ik``;
- ``Y^_ij = softmax_j(M'_ij / tau)``, mixed with the identity ``Y = rho Y^ + (1 - rho) I``;
- image-text logits ``s_ij = v_i . l_j / t`` and the bidirectional soft InfoNCE
  ``L = -1/B sum_i sum_j Y_ij log P^{v->l}_ij - 1/B sum_j sum_i Y_ji log P^{l->v}_ji`` (P: row / column softmax of s),

whose gradient is ``dL/ds_ij = 1/(B t) ((P^{v->l}_ij - Y_ij) + (P^{l->v}_ij - Y_ji))`` as stated in the paper: an
unpaired but similar text (``Y_ij > 0``) is pushed away less than under hard InfoNCE (``Y = I``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["CaCLLoss", "InfoNCELoss", "cacl_soft_targets", "soft_info_nce"]


def cacl_soft_targets(text: torch.Tensor, tau: float = 0.07, rho: float = 0.8) -> torch.Tensor:
    """CaCL soft targets Y (B, B) from text embeddings (B, D): cosine M, debiased M', softmax(M'/tau), identity mix."""
    t = F.normalize(text.detach().float(), dim=-1)
    m = t @ t.T  # M_ij = cos(l_i, l_j)
    m_prime = (m - m.mean(dim=1, keepdim=True)).clamp(min=0)  # M'_ij = max(M_ij - mu_i, 0)
    y_hat = torch.softmax(m_prime / tau, dim=1)  # Y^_ij
    eye = torch.eye(len(t), device=t.device, dtype=t.dtype)
    return rho * y_hat + (1.0 - rho) * eye  # Y_ij = rho Y^_ij + (1 - rho) 1[j = i]


def soft_info_nce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Bidirectional InfoNCE with soft targets: row-wise (image -> text) cross-entropy against ``targets`` plus
    column-wise (text -> image) cross-entropy against the rows of ``targets`` for each text, each averaged over B."""
    v2l = -(targets * torch.log_softmax(logits, dim=1)).sum(1).mean()
    l2v = -(targets * torch.log_softmax(logits.T, dim=1)).sum(1).mean()
    return v2l + l2v


class CaCLLoss(_Loss):
    """
    CaCL loss on image and text embeddings of one batch (see the module docstring).

    Args:
        tau: temperature of the soft targets (0.07).
        rho: weight of the text-similarity targets against the identity (0.8); ``rho=0`` is hard InfoNCE.
        logit_temperature: t in ``s_ij = v_i . l_j / t`` (0.07, CLIP's initial value).
        normalize: L2-normalise the embeddings before the dot product.

    ``forward(image_emb, text_emb, text_sim=None)``: image_emb (B, D), text_emb (B, D); ``text_sim`` are the
    features M is computed from (default ``text_emb``, which is what C2Seg uses: its text tower is frozen).
    """

    def __init__(
        self, tau: float = 0.07, rho: float = 0.8, logit_temperature: float = 0.07, normalize: bool = True
    ) -> None:
        super().__init__()
        if tau <= 0 or logit_temperature <= 0:
            raise ValueError(f"tau and logit_temperature must be positive, got {tau}, {logit_temperature}.")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho must be in [0, 1], got {rho}.")
        self.tau, self.rho, self.logit_temperature, self.normalize = tau, rho, logit_temperature, normalize

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Image-text logits ``s_ij / t`` (B, B)."""
        if self.normalize:
            image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
        return image_emb @ text_emb.T / self.logit_temperature

    def targets(self, text_sim: torch.Tensor) -> torch.Tensor:
        return cacl_soft_targets(text_sim, self.tau, self.rho)

    def forward(
        self, image_emb: torch.Tensor, text_emb: torch.Tensor, text_sim: torch.Tensor | None = None
    ) -> torch.Tensor:
        if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
            raise ValueError(
                f"expected image and text embeddings of the same shape (B, D), got {tuple(image_emb.shape)} and "
                f"{tuple(text_emb.shape)}."
            )
        logits = self.logits(image_emb, text_emb)
        targets = self.targets(text_emb if text_sim is None else text_sim).to(logits.dtype)
        return soft_info_nce(logits, targets)


class InfoNCELoss(CaCLLoss):
    """Hard-label bidirectional InfoNCE (the "HardCL" ablation row): CaCL with ``Y = I``."""

    def __init__(self, logit_temperature: float = 0.07, normalize: bool = True) -> None:
        super().__init__(tau=1.0, rho=0.0, logit_temperature=logit_temperature, normalize=normalize)

    def targets(self, text_sim: torch.Tensor) -> torch.Tensor:
        return torch.eye(len(text_sim), device=text_sim.device, dtype=text_sim.dtype)
