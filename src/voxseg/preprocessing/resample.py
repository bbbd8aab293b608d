"""Resampling images (cubic B-spline) and label maps (linear on per-class masks), separably.

Why separable matrix products instead of ``scipy.ndimage.zoom``: a tensor-product B-spline is
separable, so interpolating one axis after the other gives the same values as the 3D spline
(same prefilter, same edge mode) for 3 x 1D work instead of 4^3 taps per voxel. The cubic 1D
operator is an exact (out, in) matrix obtained by pushing the identity through
``scipy.ndimage.zoom`` (the operator is linear), applied with one BLAS matmul per axis (13x faster
than zoom on a 120x240x240 volume, same values to 2e-6); linear and nearest use index gathers. Coordinates follow
skimage ``resize`` (what nnU-Net uses): pixel centres aligned, edges clamped.

Anisotropic data (coarsest axis > 3x the finest, original or target) is handled like nnU-Net: the
coarse axis uses nearest neighbour, in-plane axes use the cubic / linear operator.
Cubic overshoot is clipped as skimage ``resize`` (``clip=True``) clips it, which nnU-Net calls per
channel, or per 2D slice along the coarse axis: to that channel's (that slice's) input range.
Without it a volume differs from nnU-Net's preprocessing by up to ~1 (z-score units) near sharp
edges and an imported model's predictions drift (measured: organ Dice 0.964 vs nnU-Net's on a
310^3 case, 0.998 with the clipping).
Labels: every class mask is resampled linearly and each voxel takes the class with the highest
value (nnU-Net's one-hot + order 1), one class at a time so memory stays at two maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage

from voxseg.plans import is_anisotropic


@lru_cache(maxsize=256)
def cubic_operator(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix: cubic B-spline resampling of one axis (exact, via zoom of eye)."""
    op = ndimage.zoom(np.eye(n_in, dtype=np.float64), (n_out / n_in, 1.0), order=3, mode="nearest", grid_mode=True)
    if op.shape[0] != n_out:  # zoom rounds the output size; guard against float rounding
        raise AssertionError(f"zoom produced {op.shape[0]} rows, expected {n_out}")
    return op.astype(np.float32)


def _source_coords(n_in: int, n_out: int) -> np.ndarray:
    """Input coordinate of each output voxel centre (skimage/torch align_corners=False convention)."""
    return np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)


def _apply_axis(array: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    n_in = array.shape[axis]
    if order == 0:
        src = np.clip(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.intp), 0, n_in - 1)
        return np.take(array, src, axis=axis)
    if order == 1:  # two taps: gathers beat a dense matrix product
        x = _source_coords(n_in, n_out)
        lo = np.floor(x).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (x - lo).astype(np.float32).reshape((-1,) + (1,) * (array.ndim - axis - 1))
        a = np.take(array, lo, axis=axis)
        a *= 1 - w
        a += np.take(array, hi, axis=axis) * w
        return a
    moved = np.moveaxis(array, axis, -1)
    out = moved @ cubic_operator(n_in, n_out).T
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def coarse_axis_for(old_spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """Axis resampled with nearest neighbour (nnU-Net's 'separate z'), or None when isotropic enough.

    The first anisotropic spacing of (old, new) decides; when two axes share its coarsest spacing
    there is no single coarse axis and every axis is interpolated (nnU-Net's rule, e.g. 3, 3, 0.5).
    """
    for spacing in (old_spacing, new_spacing):
        if is_anisotropic(spacing):
            coarse = np.flatnonzero(max(spacing) / np.asarray(spacing, dtype=float) == 1)
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def resample_channels(
    array: np.ndarray,
    new_shape: Sequence[int],
    *,
    order: int = 3,
    nearest_axis: int | None = None,
    dtype: type[np.floating] = np.float32,
) -> np.ndarray:
    """Resample every channel of a (C, *S) array to (C, *new_shape) of `dtype`; `order` 0, 1 or 3.

    One channel at a time, computed in float32 and stored as `dtype` (float16 logits stay float16),
    so the temporaries stay at a few single-channel volumes: full-resolution logits of a 300^3
    case are ~1 GB in float32.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(array.shape[1:]) == new_shape:
        return np.asarray(array, dtype=dtype)
    out = np.empty((array.shape[0], *new_shape), dtype)
    for c in range(array.shape[0]):
        out[c] = _resample_volume(np.asarray(array[c], dtype=np.float32), new_shape, order, nearest_axis)
    return out


def _resample_volume(volume: np.ndarray, new_shape: tuple[int, ...], order: int, nearest_axis: int | None) -> np.ndarray:
    if order == 3:  # the input range, per slice along the coarse axis (module docstring)
        other = tuple(a for a in range(volume.ndim) if a != nearest_axis)
        low, high = volume.min(axis=other, keepdims=True), volume.max(axis=other, keepdims=True)
    for axis, n_out in enumerate(new_shape):
        if volume.shape[axis] != n_out:
            volume = _apply_axis(volume, axis, n_out, 0 if axis == nearest_axis else order)
    if order == 3:
        if nearest_axis is not None and low.shape[nearest_axis] != new_shape[nearest_axis]:
            low, high = (_apply_axis(b, nearest_axis, new_shape[nearest_axis], 0) for b in (low, high))
        np.clip(volume, low, high, out=volume)
    return volume


def resample_labels(seg: np.ndarray, new_shape: Sequence[int], *, nearest_axis: int | None = None) -> np.ndarray:
    """Resample an integer (1, *S) label map: linear per class mask, arg-max over classes.

    The most frequent value (usually background) is never resampled: linear interpolation keeps
    the masks summing to one, so its value is one minus the running sum of the others.
    """
    new_shape = tuple(int(s) for s in new_shape)
    if tuple(seg.shape[1:]) == new_shape:
        return seg.copy()
    values, counts = np.unique(seg, return_counts=True)
    majority = values[int(np.argmax(counts))]
    best_val = np.zeros(new_shape, np.float32)
    total = np.zeros(new_shape, np.float32)
    out = np.full((1, *new_shape), majority, seg.dtype)
    for v in values:
        if v == majority:
            continue
        resampled = resample_channels((seg == v).astype(np.float32), new_shape, order=1, nearest_axis=nearest_axis)[0]
        total += resampled
        better = resampled > best_val
        best_val[better] = resampled[better]
        out[0][better] = v
    out[0][1.0 - total > best_val] = majority  # ties go to the rarer class, as nnU-Net's ">= 0.5"
    return out
