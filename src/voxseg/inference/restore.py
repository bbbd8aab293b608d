"""Undo preprocessing on the device: resample back, uncrop, transpose back.

Runs in torch on whatever device holds the probabilities, so a GPU prediction never round-trips
a full-resolution probability volume through the CPU before the argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from voxseg.preprocessing.resample import coarse_axis_for, resample_channels


def restore_shape(probs: torch.Tensor, props: dict, *, fill: Sequence[float]) -> torch.Tensor:
    """(C, *preprocessed) -> (C, *original array shape) for the case described by `props`.

    Outside the crop box channel c is ``fill[c]`` (background probability 1 for classes, 0 for regions).
    """
    crop_shape = tuple(props["shape_after_crop"])
    if tuple(probs.shape[1:]) != crop_shape:
        mode = "trilinear" if probs.ndim == 4 else "bilinear"
        probs = F.interpolate(probs[None].float(), size=crop_shape, mode=mode, align_corners=False)[0]
    if crop_shape == tuple(props["shape_before_crop"]):  # nothing was cropped: no full-size copy
        full = probs
    else:
        full = torch.empty((probs.shape[0], *props["shape_before_crop"]), dtype=probs.dtype, device=probs.device)
        full[:] = torch.as_tensor(list(fill), dtype=probs.dtype, device=probs.device).reshape(-1, *([1] * (full.ndim - 1)))
        full[(slice(None), *(slice(lo, hi) for lo, hi in props["bbox"]))] = probs
    backward = props["transpose_backward"]
    if list(backward) != sorted(backward):
        full = full.permute(0, *(a + 1 for a in backward))
    if props.get("added_axis"):  # a 2D image was processed as a one-slice volume
        full = full[:, 0]
    return full.contiguous()


def resample_logits_back(logits: torch.Tensor, props: dict, *, order: int = 1) -> torch.Tensor:
    """(K, *preprocessed) logits -> (K, *shape after crop) as nnU-Net's export resamples them.

    On the CPU with voxseg's separable resampler (`order` 0, 1 or 3; nearest along a lone coarse
    axis), where nnU-Net decides that axis from the preprocessed spacing first and the original
    spacing second (the reverse of preprocessing). The result keeps the logits' dtype, as nnU-Net's
    does (float16 for its half-precision logits). Used for imported nnU-Net models, whose
    probabilities are the softmax/sigmoid of these resampled logits.
    """
    crop_shape = tuple(props["shape_after_crop"])
    if tuple(logits.shape[1:]) == crop_shape:
        return logits
    axis = coarse_axis_for(props["spacing"], props["original_spacing"])
    # float16 logits stay float16, as nnU-Net keeps them; resample_channels works one channel at a time.
    arr = (logits if logits.dtype in (torch.float16, torch.float32) else logits.float()).cpu().numpy()
    out = resample_channels(arr, crop_shape, order=order, nearest_axis=axis, dtype=arr.dtype.type)
    return torch.from_numpy(out).to(logits.device, logits.dtype)
