"""Target spacing, axis transpose and median shape: nnU-Net's rules, kept as plain functions.

Why nnU-Net's rule and not a plain median: with thick-slice data (e.g. 0.7 x 0.7 x 5 mm) the median
slice thickness is often the *thickest* protocol, and resampling every case to it throws away the
through-plane detail of the finer scans. nnU-Net uses the 10th percentile of that axis instead, but
only when the axis is both much coarser (> 3x) and much shorter (< 1/3 of the voxels) than the
others, and never finer than the other axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from voxseg.plans import ANISOTROPY_RATIO


def target_spacing(spacings: ArrayLike, shapes: ArrayLike) -> tuple[float, ...]:
    """Median spacing per axis, with the 10th-percentile rule for one very coarse, short axis.

    `spacings` and `shapes` are per case, array order, shapes after crop-to-non-zero.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    shapes = np.asarray(shapes, dtype=np.float64)
    target = np.median(spacings, axis=0)
    if target.size < 2:
        return tuple(float(s) for s in target)
    median_shape = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(target.size) if a != coarse]
    finest_other = float(np.max(target[others]))
    coarser_spacing = target[coarse] > ANISOTROPY_RATIO * finest_other
    fewer_voxels = median_shape[coarse] * ANISOTROPY_RATIO < float(np.min(median_shape[others]))
    if coarser_spacing and fewer_voxels:
        # Never go below the in-plane spacing: that would upsample the coarse axis past isotropy.
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), finest_other + 1e-5)
    return tuple(float(s) for s in target)


def transpose_for(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """Put the coarsest axis first (2D configurations then slice along it); returns forward, backward."""
    spacing = list(spacing)
    coarse = int(np.argmax(spacing))
    forward = [coarse] + [a for a in range(len(spacing)) if a != coarse]
    backward = [int(i) for i in np.argsort(forward)]
    return forward, backward


def median_shape_at(spacings: ArrayLike, shapes: ArrayLike, target: Sequence[float]) -> tuple[int, ...]:
    """Median per-axis size of the cases once resampled to `target` (array order)."""
    spacings = np.asarray(spacings, dtype=np.float64)
    shapes = np.asarray(shapes, dtype=np.float64)
    resampled = np.round(shapes * spacings / np.asarray(target, dtype=np.float64)[None])
    return tuple(int(v) for v in np.median(resampled, axis=0))
