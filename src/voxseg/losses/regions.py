"""Region-based loss: sigmoid BCE + soft Dice per region, nnU-Net's DC_and_BCE_loss.

Each output channel is one region (a set of label values, no background channel); its target is
built here from the label map, so augmentation and deep supervision keep working on plain label
maps. IGNORE voxels are masked in every region. BCE is the mean over regions and annotated voxels
(nnU-Net's masked variant divides the sum over regions by the voxel count only, which scales it by
the number of regions when an ignore label exists; we keep one definition). Dice includes every
region (there is no background to leave out), batch Dice as planned.

Partial labels (``annotated``, (B, R) bool): a region a sample does not annotate is masked out of
both terms for that sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from voxseg.data.labels import IGNORE
from voxseg.losses.dice import dice_from_terms, per_sample_channels, spatial_sums
from voxseg.losses.pointwise import masked_mean, weight_tensor
from voxseg.model.outputs import OutputScheme


class RegionDiceBCELoss(nn.Module):
    """``forward(logits (B,R,*S), target (B,1,*S) label map, sample_weights, annotated)`` ->
    ``{"loss": bce_weight * bce + dice_weight * dice, "bce", "dice"}``.

    ``region_weights`` (one per region) weight the BCE mean, and the Dice average with
    ``weight_dice_regions``.
    """

    region_weights: torch.Tensor | None  # a buffer, registered in __init__

    def __init__(
        self,
        regions: Sequence[Sequence[int]],
        *,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        region_weights: list[float] | None = None,
        weight_dice_regions: bool = False,
    ):
        super().__init__()
        self.scheme = OutputScheme(0, tuple(tuple(r) for r in regions), tuple(range(1, len(regions) + 1)))
        self.bce_weight, self.dice_weight = bce_weight, dice_weight
        self.batch_dice, self.smooth = batch_dice, smooth
        self.weight_dice_regions = weight_dice_regions
        self.register_buffer("region_weights", weight_tensor(region_weights), persistent=False)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits = logits.float()
        regions = self.scheme.region_masks(target).float()
        valid = (target != IGNORE).expand_as(logits)
        if annotated is not None:
            valid = valid & per_sample_channels(annotated, logits.ndim)
        voxel_weights = valid.float()
        if self.region_weights is not None:
            voxel_weights = voxel_weights * self.region_weights.reshape(1, -1, *([1] * (logits.ndim - 2)))
        bce = F.binary_cross_entropy_with_logits(logits, regions, reduction="none") * voxel_weights
        bce = masked_mean(bce, voxel_weights, sample_weights)
        probs = torch.sigmoid(logits) * valid
        intersect, pred_sum, gt_sum = spatial_sums(probs, regions.bool() & valid)
        dice = dice_from_terms(
            intersect,
            pred_sum,
            gt_sum,
            batch_dice=self.batch_dice,
            smooth=self.smooth,
            class_weights=self.region_weights if self.weight_dice_regions else None,
            sample_weights=sample_weights,
            counted=annotated,
        )
        return {"loss": self.bce_weight * bce + self.dice_weight * dice, "bce": bce, "dice": dice}


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, scheme: OutputScheme) -> list[float]:
    """Mean voxel loss per sample (CE, or BCE over regions; ignore excluded): the signal adaptive
    case sampling follows."""
    with torch.no_grad():
        valid = target != IGNORE
        if scheme.region_based:
            per_voxel = F.binary_cross_entropy_with_logits(
                logits.float(), scheme.region_masks(target).float(), reduction="none"
            ).mean(1)
        else:
            per_voxel = F.cross_entropy(logits.float(), target[:, 0].long().clamp_min(0), reduction="none")
        valid = valid[:, 0].float()
        per = (per_voxel * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
    return per.tolist()
