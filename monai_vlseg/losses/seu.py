"""Spectral-Entropic Uncertainty (SEU) loss of UA-VLS (Das et al., eqs. 26-29)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["SEULoss"]


class SEULoss(_Loss):
    """``L = L_Dice + lambda_F * R_Spectral + lambda_E * R_Entropy`` (eq. 26) on logits.

    - ``L_Dice = 1 - (2 sum(Y G) + eps) / (sum Y + sum G + eps)``, summed over channels and space per image (27);
    - ``R_Spectral``: squared difference of the 2D Fourier magnitudes ``|F(Y)|`` and ``|F(G)|`` (28). Eq. 28 as
      printed is a squared L2 norm of the unnormalised spectra (``spectral_reduction="sum"``); the official code, and
      the default here, take the mean over channels and frequencies of the orthonormal spectra (``"mean"``), which
      is exactly eq. 28 divided by ``C * (H*W)**2`` per image (``|F_ortho| = |F| / sqrt(HW)``, then a mean over
      ``C*H*W`` values). So ``lambda_spectral=0.3`` here equals eq. 28 with ``lambda_F = 0.3 / (C * (H*W)**2)``
      (1.2e-10 at 224x224, one channel): the weight the paper's 0.3 was tuned with in the official code, and one
      whose scale does not grow with the image size. Eq. 28 literally with ``lambda_F = 0.3`` would weigh the
      spectral term ~1e9 times more than the Dice term at 224x224;
    - ``R_Entropy = -1/(BHW) sum_{b,c,h,w} Y log(Y + delta)`` (29). With ``sigmoid=True`` a one-channel map is read
      as the two classes {1 - p, p}, so the term is the binary entropy (eq. 29 over the implicit background).

    Args:
        sigmoid: apply a sigmoid to the logits (binary / multi-label).
        softmax: apply a softmax over channels (multi-class; the target may then be a label map).
        to_onehot_y: one-hot the (B, 1, H, W) label map to the prediction's channels (softmax only).
        include_background: keep channel 0 in the Dice and spectral terms (softmax only).
        lambda_spectral: lambda_F (0.3, for ``spectral_reduction="mean"``).
        spectral_reduction: ``"mean"`` (official code: mean over the orthonormal spectrum) or ``"sum"`` (eq. 28 as
            printed: squared L2 norm over channels and frequencies of the unnormalised spectrum); see above for the
            weight that makes them equal.
        lambda_entropy: lambda_E (0.1).
        smooth: eps of eq. 27; delta of eq. 29 is 1e-8.
        reduction: "mean", "sum" or "none" over the batch (Dice term per image; regularisers are batch means).
    """

    def __init__(
        self,
        sigmoid: bool = True,
        softmax: bool = False,
        to_onehot_y: bool = False,
        include_background: bool = True,
        lambda_spectral: float = 0.3,
        lambda_entropy: float = 0.1,
        smooth: float = 1e-5,
        reduction: LossReduction | str = LossReduction.MEAN,
        spectral_reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if sigmoid == softmax:
            raise ValueError("exactly one of sigmoid and softmax must be True.")
        if spectral_reduction not in ("mean", "sum"):
            raise ValueError(f"spectral_reduction must be 'mean' (official code) or 'sum' (eq. 28), got {spectral_reduction!r}.")
        self.spectral_reduction = spectral_reduction
        self.sigmoid, self.softmax, self.to_onehot_y = sigmoid, softmax, to_onehot_y
        self.include_background = include_background
        self.lambda_spectral, self.lambda_entropy, self.smooth = lambda_spectral, lambda_entropy, smooth

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input: logits (B, C, H, W); target: (B, C, H, W) in [0, 1], or (B, 1, H, W) labels with to_onehot_y."""
        prob = torch.sigmoid(input.float()) if self.sigmoid else torch.softmax(input.float(), 1)
        if self.to_onehot_y:
            if self.sigmoid:
                raise ValueError("to_onehot_y needs softmax=True.")
            target = one_hot(target.long(), num_classes=input.shape[1])
        target = target.to(prob.dtype)
        if target.shape != prob.shape:
            raise ValueError(f"prediction {tuple(prob.shape)} and target {tuple(target.shape)} differ in shape.")

        eps = 1e-8
        if self.sigmoid:  # (29) with the implicit background channel 1 - p
            entropy = -(prob * torch.log(prob + eps) + (1 - prob) * torch.log(1 - prob + eps)).sum(1)
        else:
            entropy = -(prob * torch.log(prob + eps)).sum(1)

        if self.softmax and not self.include_background:
            prob, target = prob[:, 1:], target[:, 1:]
        dims = tuple(range(1, prob.ndim))
        inter = (prob * target).sum(dims)
        dice = 1 - (2 * inter + self.smooth) / (prob.sum(dims) + target.sum(dims) + self.smooth)  # (27)

        space = tuple(range(2, prob.ndim))
        if self.spectral_reduction == "mean":  # official code: eq. 28 / (C * (HW)^2)
            mag_p = torch.fft.fftn(prob, dim=space, norm="ortho").abs()
            mag_t = torch.fft.fftn(target, dim=space, norm="ortho").abs()
            spectral = F.mse_loss(mag_p, mag_t, reduction="none").mean(dims)  # (28)
        else:  # eq. 28 as printed: || |F(Y)| - |F(G)| ||_2^2 of the unnormalised spectra, per image
            mag_p = torch.fft.fftn(prob, dim=space).abs()
            mag_t = torch.fft.fftn(target, dim=space).abs()
            spectral = ((mag_p - mag_t) ** 2).sum(dims)  # (28)

        loss = dice + self.lambda_spectral * spectral + self.lambda_entropy * entropy.flatten(1).mean(1)  # (26)
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss
