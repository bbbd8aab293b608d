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
"""

from __future__ import annotations

import torch
from torch import nn

from voxseg.data.labels import IGNORE
from voxseg.losses.pointwise import per_sample, weight_tensor


class SoftDiceLoss(nn.Module):
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
        self, logits: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        probs = torch.softmax(logits.float(), dim=1)
        annotated = target != IGNORE
        onehot = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
        onehot.scatter_(1, target.long().clamp_min(0), annotated)
        first = 0 if self.include_background else 1
        probs = probs[:, first:] * annotated
        onehot = onehot[:, first:]
        axes = tuple(range(2, probs.ndim))
        intersect = (probs * onehot).sum(axes)
        pred_sum = probs.sum(axes)
        gt_sum = onehot.sum(axes, dtype=torch.float32)
        if self.batch_dice:
            if sample_weights is not None:
                mean = sample_weights.float().mean().clamp_min(1e-12)
                share = per_sample(sample_weights, 2) / mean
                intersect, pred_sum, gt_sum = intersect * share, pred_sum * share, gt_sum * share
            intersect, pred_sum, gt_sum = intersect.sum(0), pred_sum.sum(0), gt_sum.sum(0)
        dice = (2 * intersect + self.smooth) / (pred_sum + gt_sum + self.smooth).clamp_min(1e-8)
        if self.class_weights is None:
            loss = 1 - dice.mean(-1)
        else:
            weights = self.class_weights[first:]
            loss = 1 - (dice * weights).sum(-1) / weights.sum()
        if sample_weights is None:
            return {"loss": loss.mean()}
        # per-sample: mean_b(s_b * loss_b); batch Dice (a scalar): loss * mean(s)
        return {"loss": (loss * sample_weights.float()).mean()}
