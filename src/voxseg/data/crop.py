"""Crop to the non-zero region of the image (nnU-Net's first preprocessing step) and undo it.

The bounding box is computed from the raw non-zero mask; hole filling is skipped there because a
hole cannot change a bounding box. The filled mask is only built when a channel's normalisation
needs it (z-score inside the mask), and only on the cropped region.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Box = list[list[int]]  # per axis [start, stop)


def nonzero_bbox(image: np.ndarray) -> Box:
    """Box of voxels where any channel is non-zero; the whole image when all are zero."""
    mask = np.any(image != 0, axis=0) if image.shape[0] > 1 else image[0] != 0
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append([int(hit[0]), int(hit[-1]) + 1] if hit.size else [0, mask.shape[axis]])
    return box


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crop the spatial axes (all but the first) of a (C, *S) array."""
    return array[(slice(None),) + tuple(slice(a, b) for a, b in box)]


def uncrop(array: np.ndarray, box: Box, full_shape: Sequence[int], fill: float | Sequence[float] = 0) -> np.ndarray:
    """Put a cropped (C, *S) array back into a (C, *full_shape) array; `fill` per channel or scalar."""
    out = np.empty((array.shape[0], *full_shape), dtype=array.dtype)
    out[...] = np.reshape(np.asarray(fill, dtype=array.dtype), (-1,) + (1,) * len(full_shape))
    out[(slice(None),) + tuple(slice(a, b) for a, b in box)] = array
    return out


def filled_nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Non-zero mask over all channels with interior holes filled (used for masked z-score)."""
    mask = np.any(image != 0, axis=0)
    return ndimage.binary_fill_holes(mask)
