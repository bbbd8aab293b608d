"""What the network's segmentation outputs mean: softmax classes or sigmoid regions.

nnU-Net's LabelManager, reduced to the few operations every stage needs. A plan either predicts
classes 0..K-1 (one softmax channel each) or, for region-based datasets (labels given as lists, as in
BraTS), one sigmoid channel per region with no background channel; a voxel belongs to every region
that lists its label value, and a segmentation is painted region by region in
``regions_class_order`` (later regions overwrite earlier ones). Training targets, validation
metrics, prediction decoding, ensembling and post-processing all go through this one object, so
the two kinds of plan cannot be mixed up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from voxseg.data.labels import IGNORE
from voxseg.plans import Plan


@dataclass(frozen=True)
class OutputScheme:
    num_classes: int  # label values 0..K-1 in the label maps
    regions: tuple[tuple[int, ...], ...] = ()
    regions_class_order: tuple[int, ...] = ()

    @classmethod
    def from_plan(cls, plan: Plan) -> OutputScheme:
        if not plan.regions:
            return cls(plan.num_classes)
        return cls(plan.num_classes, tuple(tuple(r) for r in plan.regions), tuple(plan.regions_class_order or ()))

    @property
    def region_based(self) -> bool:
        return bool(self.regions)

    @property
    def channels(self) -> int:
        """Network output channels."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def foreground(self) -> list[int]:
        """Output channels that are foreground: every region, or classes 1..K-1."""
        return list(range(len(self.regions))) if self.regions else list(range(1, self.num_classes))

    @property
    def background_fill(self) -> list[float]:
        """Probability per channel where no prediction exists (outside the crop): background."""
        return [0.0] * len(self.regions) if self.regions else [1.0] + [0.0] * (self.num_classes - 1)

    def probabilities(self, logits: Tensor, dim: int = 0) -> Tensor:
        """Sigmoid per region or softmax over classes, in float32.

        Half-precision (C, *S) logits are converted 16 slices at a time: a float32 copy of a whole
        full-resolution volume beside the result would be the peak of a large case's prediction.
        """

        def act(t: Tensor) -> Tensor:
            return torch.sigmoid(t.float()) if self.regions else torch.softmax(t.float(), dim=dim)

        if logits.dtype == torch.float32 or dim != 0 or logits.ndim < 2:
            return act(logits)
        out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[1], 16):
            out[:, i : i + 16] = act(logits[:, i : i + 16])
        return out

    def segmentation(self, probabilities: Tensor, dim: int = 0) -> Tensor:
        """Label map (int16) from probabilities: argmax, or regions > 0.5 painted in order."""
        if not self.regions:
            return probabilities.argmax(dim).to(torch.int16)
        p = probabilities.movedim(dim, 0)
        seg = torch.zeros(p.shape[1:], dtype=torch.int16, device=p.device)
        for region, label in enumerate(self.regions_class_order):
            seg[p[region] > 0.5] = label
        return seg

    def region_masks(self, labels: Tensor) -> Tensor:
        """(B, 1, *S) label map -> (B, R, *S) bool: voxel in region r (IGNORE voxels are in none)."""
        return torch.cat([_isin(labels, r) for r in self.regions], dim=1)

    def foreground_masks(self, labels: Tensor) -> Tensor:
        """(B, 1, *S) reference label map -> (B, F, *S) bool per foreground output."""
        if self.regions:
            return self.region_masks(labels)
        return torch.cat([labels == c for c in range(1, self.num_classes)], dim=1)

    def predicted_masks(self, logits: Tensor) -> Tensor:
        """(B, C, *S) logits -> (B, F, *S) bool per foreground output (sigmoid > 0.5 or argmax)."""
        if self.regions:
            return logits > 0
        pred = logits.argmax(1, keepdim=True)
        return torch.cat([pred == c for c in range(1, self.num_classes)], dim=1)


def previous_stage_channels(labels: Tensor, num_classes: int) -> Tensor:
    """A cascade's extra inputs: the previous stage's (B, 1, *S) label map as (B, K-1, *S) float
    one-hot of labels 1..K-1 (background and IGNORE are all zero), as nnU-Net encodes them."""
    return torch.cat([(labels == k).to(torch.float32) for k in range(1, num_classes)], dim=1)


def _isin(labels: Tensor, values: Sequence[int]) -> Tensor:
    out = labels == values[0]
    for v in values[1:]:
        out |= labels == v
    return out & (labels != IGNORE)
