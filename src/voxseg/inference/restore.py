"""Undo preprocessing on the device: resample back, uncrop, transpose back.

Runs in torch on whatever device holds the probabilities, so a GPU prediction never round-trips
a full-resolution probability volume through the CPU before the argmax.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def restore_shape(probs: torch.Tensor, props: dict, *, fill: Sequence[float]) -> torch.Tensor:
    """(C, *preprocessed) -> (C, *original array shape) for the case described by `props`.

    Outside the crop box channel c is ``fill[c]`` (background probability 1 for classes, 0 for regions).
    """
    crop_shape = tuple(props["shape_after_crop"])
    if tuple(probs.shape[1:]) != crop_shape:
        mode = "trilinear" if probs.ndim == 4 else "bilinear"
        probs = F.interpolate(probs[None].float(), size=crop_shape, mode=mode, align_corners=False)[0]
    full = torch.empty((probs.shape[0], *props["shape_before_crop"]), dtype=probs.dtype, device=probs.device)
    full[:] = torch.as_tensor(list(fill), dtype=probs.dtype, device=probs.device).reshape(-1, *([1] * (full.ndim - 1)))
    box = tuple(slice(lo, hi) for lo, hi in props["bbox"])
    full[(slice(None), *box)] = probs
    backward = props["transpose_backward"]
    if list(backward) != sorted(backward):
        full = full.permute(0, *(a + 1 for a in backward))
    if props.get("added_axis"):  # a 2D image was processed as a one-slice volume
        full = full[:, 0]
    return full.contiguous()
