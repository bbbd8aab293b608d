"""`Batch`: what the loader hands the trainer (a view of one shared-memory slot)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Batch:
    image: Tensor  # (B, C, *in_size) float32
    seg: Tensor  # (B, 1, *in_size) int16; IGNORE outside the annotated area / outside the image
    extra: dict[str, Tensor]  # same shape as seg, one per extra label map
    case_ids: list[str]
    forced: Tensor  # (B,) bool
    weights: Tensor  # (B,) float32 importance weights; 1 when correct_bias is off
    augmented: bool = False  # True: the loader already augmented it to the final patch size
    # (B, outputs) bool: which outputs (classes incl. background, or regions) each sample's case
    # annotates; None when every case of the dataset is fully annotated.
    annotated: Tensor | None = None
