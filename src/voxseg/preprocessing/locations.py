"""Voxel coordinates per foreground output for oversampling (and annotated voxels for ignore data).

Keys are the foreground outputs as strings: classes "1".."K-1", or regions "1".."R" for
region-based plans (region r holds every voxel whose label is in it, so nested regions share
voxels). nnU-Net's rule: per key keep min(10,000, n) random voxels, but at least 1% of n, seeded per
case so re-running preprocessing gives identical stores.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

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


def output_groups(num_classes: int, regions: Sequence[Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """Foreground output key -> the label values it covers: {"1": (1,), ...} or one entry per region."""
    if regions:
        return {str(r + 1): tuple(int(v) for v in region) for r, region in enumerate(regions)}
    return {str(c): (c,) for c in range(1, num_classes)}


def class_locations(seg: np.ndarray, groups: Mapping[str, Sequence[int]], has_ignore: bool, seed: int) -> dict[str, np.ndarray]:
    """One entry per key of `groups` (outputs absent from the case get an empty (0, ndim) array)
    and "annotated" when the dataset has an ignore label."""
    rng = np.random.default_rng(seed)
    labels = seg[0]
    flat = labels.ravel()
    out = {key: _sample(np.flatnonzero(np.isin(flat, values)), rng, labels.shape) for key, values in groups.items()}
    if has_ignore:
        out["annotated"] = _sample(np.flatnonzero(flat != IGNORE), rng, labels.shape)
    return out
