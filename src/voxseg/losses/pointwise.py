"""Voxel-wise losses (CE, BCE, MSE) that mask the ignore label and accept per-sample weights.

Every loss here is a masked mean: sum over voxels of (sample weight x voxel loss) divided by the
sum of voxel weights (1 per annotated voxel, or the class weight of its target for CE). So with no
class weights the mean runs over annotated voxels only, IGNORE voxels contribute nothing (neither
value nor gradient), and a sample weight s_b multiplies sample b's share of the loss. A batch with
no annotated voxel gives 0, not NaN. Inputs are cast to float32 so the losses are the same under
autocast. Every loss returns a dict with at least ``"loss"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voxseg.data.labels import IGNORE


def per_sample(weights: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts over a tensor with ``ndim`` dimensions."""
    return weights.float().reshape(-1, *([1] * (ndim - 1)))


def weight_tensor(class_weights: list[float] | None) -> torch.Tensor | None:
    return None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)


def masked_mean(values: torch.Tensor, voxel_weights: torch.Tensor, sample_weights: torch.Tensor | None) -> torch.Tensor:
    """sum(s_b * values) / sum(voxel_weights); ``values`` already include the voxel weights."""
    if sample_weights is not None:
        values = values * per_sample(sample_weights, values.ndim)
    denominator = voxel_weights.sum()
    return torch.where(denominator > 0, values.sum() / denominator.clamp_min(1e-12), 0.0)


class CELoss(nn.Module):
    """Cross-entropy with ``torch.nn.functional.cross_entropy(weight=..., ignore_index=IGNORE)``
    semantics, including its class-weighted mean; ``target`` is (B, 1, *S) integer.

    With ``annotated`` ((B, K) bool, partial labels) it is the marginal CE of Shi et al. (2021): a
    voxel labelled background in a sample may be any class that sample does not annotate, so its
    probability is that of background plus those classes (a log-sum-exp over their logits).
    """

    class_weights: torch.Tensor | None  # a buffer, registered in __init__

    def __init__(self, class_weights: list[float] | None = None):
        super().__init__()
        self.register_buffer("class_weights", weight_tensor(class_weights), persistent=False)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        labels = target[:, 0].long()
        valid = labels != IGNORE
        if annotated is None:
            per_voxel = F.cross_entropy(logits.float(), labels, weight=self.class_weights, ignore_index=IGNORE, reduction="none")
        else:
            per_voxel = marginal_nll(logits.float(), labels, annotated)
            if self.class_weights is not None:
                per_voxel = per_voxel * self.class_weights[labels.clamp_min(0)]
            per_voxel = per_voxel * valid
        if self.class_weights is None:
            voxel_weights = valid.float()
        else:
            voxel_weights = self.class_weights[labels.clamp_min(0)] * valid
        return {"loss": masked_mean(per_voxel, voxel_weights, sample_weights)}


def marginal_nll(logits: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """-log p(label) per voxel, background merged with each sample's unannotated classes."""
    log_norm = torch.logsumexp(logits, dim=1)
    merged = ~annotated.clone()
    merged[:, 0] = True
    shape = (*merged.shape, *([1] * (logits.ndim - 2)))
    background = torch.logsumexp(logits.masked_fill(~merged.reshape(shape), -torch.inf), dim=1)
    own = logits.gather(1, labels.clamp_min(0)[:, None])[:, 0]
    return torch.where(labels == 0, background, own).neg() + log_norm


class BCELoss(nn.Module):
    """Binary cross-entropy on one logit channel; positives are ``target > 0``, IGNORE masked."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        annotated = target != IGNORE
        per_voxel = F.binary_cross_entropy_with_logits(logits.float(), (target > 0).float(), reduction="none")
        return {"loss": masked_mean(per_voxel * annotated, annotated.float(), sample_weights)}


class MSELoss(nn.Module):
    """Squared error of a one-channel output against the target value; IGNORE voxels masked."""

    def forward(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        annotated = target != IGNORE
        per_voxel = (prediction.float() - target.float()) ** 2
        return {"loss": masked_mean(per_voxel * annotated, annotated.float(), sample_weights)}
