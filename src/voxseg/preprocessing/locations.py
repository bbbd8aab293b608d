"""Voxel coordinates per class for foreground oversampling (and annotated voxels for ignore data).

nnU-Net's rule: per class keep min(10,000, n) random voxels, but at least 1% of n, seeded per case so
re-running preprocessing gives identical stores.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from voxseg.data.labels import IGNORE

MAX_SAMPLES = 10_000
MIN_FRACTION = 0.01


def case_seed(case_id: str) -> int:
    return zlib.crc32(case_id.encode())


def _sample(flat_mask_idx: np.ndarray, rng: np.random.Generator, shape) -> np.ndarray:
    n = flat_mask_idx.size
    k = max(min(MAX_SAMPLES, n), math.ceil(n * MIN_FRACTION))
    chosen = np.sort(rng.choice(flat_mask_idx, size=k, replace=False)) if k < n else flat_mask_idx
    return np.stack(np.unravel_index(chosen, shape), axis=1).astype(np.int32)


def class_locations(seg: np.ndarray, num_classes: int, has_ignore: bool, seed: int) -> dict[str, np.ndarray]:
    """Keys "1".."K-1" (classes absent from the case get an empty (0, ndim) array) and "annotated"."""
    rng = np.random.default_rng(seed)
    labels = seg[0]
    flat = labels.ravel()
    out = {str(c): _sample(np.flatnonzero(flat == c), rng, labels.shape) for c in range(1, num_classes)}
    if has_ignore:
        out["annotated"] = _sample(np.flatnonzero(flat != IGNORE), rng, labels.shape)
    return out
