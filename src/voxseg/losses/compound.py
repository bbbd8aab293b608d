"""Dice + CE, nnU-Net's default segmentation loss, with our class and sample weights.

Class weights always apply to CE (``F.cross_entropy(weight=...)`` semantics) and to the Dice class
average only with ``weight_dice_classes``: Dice already balances classes by normalising each one by
its own size, so weighting it too is a deliberate extra.
"""

from __future__ import annotations

import torch
from torch import nn

from voxseg.losses.dice import SoftDiceLoss
from voxseg.losses.pointwise import CELoss


class DiceCELoss(nn.Module):
    """``forward(logits (B,K,*S), target (B,1,*S) int, sample_weights (B,) | None)`` ->
    ``{"loss": ce_weight * ce + dice_weight * dice, "ce": ..., "dice": ...}``."""

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
    ):
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.ce = CELoss(class_weights)
        self.dice = SoftDiceLoss(
            batch_dice=batch_dice,
            smooth=smooth,
            include_background=include_background,
            class_weights=class_weights if weight_dice_classes else None,
        )

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        ce = self.ce(logits, target, sample_weights)["loss"]
        dice = self.dice(logits, target, sample_weights)["loss"]
        return {"loss": self.ce_weight * ce + self.dice_weight * dice, "ce": ce, "dice": dice}
