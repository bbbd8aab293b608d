"""Dice + CE, nnU-Net's default segmentation loss, with our class and sample weights.

Class weights always apply to CE (``F.cross_entropy(weight=...)`` semantics) and to the Dice class
average only with ``weight_dice_classes``: Dice already balances classes by normalising each one by
its own size, so weighting it too is a deliberate extra.

Partial labels: given ``annotated`` ((B, K) bool, background always True) both parts become the
marginal losses of Shi et al., "Marginal loss and exclusion loss for partially supervised
multi-organ segmentation", Medical Image Analysis 70 (2021) 101979; ``exclusion_weight`` > 0 adds
their exclusion loss (`exclusion_loss`).
"""

from __future__ import annotations

import torch
from torch import nn

from voxseg.data.labels import IGNORE
from voxseg.losses.dice import SoftDiceLoss
from voxseg.losses.pointwise import CELoss


class DiceCELoss(nn.Module):
    """``forward(logits (B,K,*S), target (B,1,*S) int, sample_weights (B,) | None, annotated (B,K) | None)``
    -> ``{"loss": ce_weight * ce + dice_weight * dice [+ exclusion_weight * exclusion], "ce", "dice"[, "exclusion"]}``."""

    def __init__(
        self,
        *,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        include_background: bool = False,
        class_weights: list[float] | None = None,
        weight_dice_classes: bool = False,
        exclusion_weight: float = 0.0,
    ):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.exclusion_weight = exclusion_weight
        self.ce = CELoss(class_weights)
        self.dice = SoftDiceLoss(
            batch_dice=batch_dice,
            smooth=smooth,
            include_background=include_background,
            class_weights=class_weights if weight_dice_classes else None,
        )

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        ce = self.ce(logits, target, sample_weights, annotated)["loss"]
        dice = self.dice(logits, target, sample_weights, annotated)["loss"]
        out = {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce, "dice": dice}
        if annotated is not None and self.exclusion_weight > 0:
            out["exclusion"] = exclusion_loss(logits, target, annotated)
            out["loss"] = out["loss"] + self.exclusion_weight * out["exclusion"]
        return out


def exclusion_loss(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Shi et al.'s exclusion loss: a voxel labelled with an annotated foreground class is not any
    class the sample leaves unannotated.

    For each sample b and class c it does not annotate, with e the voxels labelled with one of b's
    annotated foreground classes: the overlap Dice 2 sum(p_c e) / (sum p_c + sum e + smooth) plus the
    mean of -log(1 - p_c) over e, both averaged over such (b, c) pairs. 0 when no pair exists.
    """
    labels = target[:, :1].long()
    exclusive = ((labels > 0) & (labels != IGNORE)).float()  # (B, 1, *S)
    unannotated = ~annotated
    unannotated[:, 0] = False
    if not unannotated.any():
        return logits.sum() * 0.0
    log_norm = torch.logsumexp(logits.float(), dim=1, keepdim=True)
    probs = torch.exp(logits.float() - log_norm)
    axes = tuple(range(2, logits.ndim))
    overlap = 2 * (probs * exclusive).sum(axes) / (probs.sum(axes) + exclusive.sum(axes) + smooth)
    # log(1 - p_c) = logsumexp over the other classes - log_norm
    k = logits.shape[1]
    others = torch.stack([torch.logsumexp(torch.cat([logits[:, :c], logits[:, c + 1 :]], 1).float(), 1) for c in range(k)], 1)
    nll = -(others - log_norm) * exclusive
    per_pair = nll.sum(axes) / exclusive.sum(axes).clamp_min(1.0)
    pairs = unannotated.float()
    return ((overlap + per_pair) * pairs).sum() / pairs.sum()
