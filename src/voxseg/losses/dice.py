"""Soft Dice with nnU-Net's MemoryEfficientSoftDiceLoss semantics, plus class and sample weights.

Per class c: dc_c = (2 * sum(p * y) + smooth) / max(sum(p) + sum(y) + smooth, 1e-8) with p the
softmax probabilities and y the one-hot target, both zeroed on IGNORE voxels (masked, so logits
there change nothing). Sums run over the spatial axes of each sample, and also over the batch with
``batch_dice``. Background is left out unless ``include_background``. The loss is 1 - (mean over
classes of dc_c), or the ``class_weights``-weighted mean; nnU-Net reports -dc instead, which has
the same gradient.

Sample weights s (B,): per-sample Dice gives mean_b(s_b * loss_b). Batch Dice pools the sums with
sample b counted s_b / mean(s) times and multiplies the result by mean(s), so equal weights c
scale the loss by c in both modes, like CE, and a zero weight removes a sample entirely.

Partial labels (``annotated``, (B, K) bool: which classes each sample's label map annotates): the
marginal Dice of Shi et al. (2021) — the probabilities of a sample's unannotated classes are merged
into background, and only (sample, class) pairs the sample annotates enter the Dice average (with
batch Dice, a class pools only the samples that annotate it). With every class annotated this is
exactly the plain loss. `dice_from_terms` is shared with the region (sigmoid) loss.
"""

from __future__ import annotations

import torch
from torch import nn

from voxseg.data.labels import IGNORE
from voxseg.losses.pointwise import per_sample, weight_tensor


def dice_from_terms(
    intersect: torch.Tensor,
    pred_sum: torch.Tensor,
    gt_sum: torch.Tensor,
    *,
    batch_dice: bool,
    smooth: float,
    class_weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """1 - weighted mean Dice from per-(sample, class) sums (B, C); `counted` (B, C) bool selects
    the pairs that count (None: all)."""
    if counted is not None:
        keep = counted.float()
        intersect, pred_sum, gt_sum = intersect * keep, pred_sum * keep, gt_sum * keep
    if batch_dice:
        if sample_weights is not None:
            mean = sample_weights.float().mean().clamp_min(1e-12)
            share = per_sample(sample_weights, 2) / mean
            intersect, pred_sum, gt_sum = intersect * share, pred_sum * share, gt_sum * share
        intersect, pred_sum, gt_sum = intersect.sum(0), pred_sum.sum(0), gt_sum.sum(0)
        counted = None if counted is None else counted.any(0)
    dice = (2 * intersect + smooth) / (pred_sum + gt_sum + smooth).clamp_min(1e-8)
    weights = torch.ones_like(dice) if class_weights is None else class_weights.expand_as(dice)
    if counted is not None:
        weights = weights * counted.float()
    loss = 1 - (dice * weights).sum(-1) / weights.sum(-1).clamp_min(1e-12)
    if counted is not None:  # a sample (or batch) annotating no class adds nothing
        loss = loss * counted.any(-1).float()
    if sample_weights is None:
        return loss.mean()
    # per-sample: mean_b(s_b * loss_b); batch Dice (a scalar): loss * mean(s)
    return (loss * sample_weights.float()).mean()


def spatial_sums(probs: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axes = tuple(range(2, probs.ndim))
    return (probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes, dtype=torch.float32)


def merge_unannotated(probs: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Probabilities with each sample's unannotated classes added to background (and zeroed)."""
    extra = per_sample_channels(~annotated, probs.ndim)
    merged = probs * (~extra)
    merged[:, 0] += (probs * extra).sum(1)
    return merged


def per_sample_channels(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B, C) -> (B, C, 1, ..., 1) broadcasting over a tensor with ``ndim`` dimensions."""
    return mask.reshape(*mask.shape, *([1] * (ndim - 2)))


class SoftDiceLoss(nn.Module):
    class_weights: torch.Tensor | None  # a buffer, registered in __init__

    def __init__(
        self,
        *,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        include_background: bool = False,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.include_background = include_background
        self.register_buffer("class_weights", weight_tensor(class_weights), persistent=False)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        probs = torch.softmax(logits.float(), dim=1)
        if annotated is not None:
            probs = merge_unannotated(probs, annotated)
        valid = target != IGNORE
        onehot = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
        onehot.scatter_(1, target.long().clamp_min(0), valid)
        first = 0 if self.include_background else 1
        intersect, pred_sum, gt_sum = spatial_sums(probs[:, first:] * valid, onehot[:, first:])
        weights = None if self.class_weights is None else self.class_weights[first:]
        counted = None if annotated is None else annotated[:, first:]
        loss = dice_from_terms(
            intersect,
            pred_sum,
            gt_sum,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            class_weights=weights,
            sample_weights=sample_weights,
            counted=counted,
        )
        return {"loss": loss}
