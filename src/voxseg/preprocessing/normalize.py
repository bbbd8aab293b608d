"""Apply the per-channel intensity normalisation planned in plans.json (see planning.normalization).

Each scheme does what nnU-Net's class of the same name does, on a float32 (C, *S) image in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxseg.errors import DatasetError
from voxseg.plans import Normalization

EPS = 1e-8


def _zscore(ch: np.ndarray, mask: np.ndarray | None) -> None:
    if mask is None:
        mean, std = float(ch.mean()), float(ch.std())
    else:
        values = ch[mask]
        mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
    ch -= mean
    ch /= max(std, EPS)
    if mask is not None:
        ch[~mask] = 0


def normalize_channels(image: np.ndarray, schemes: Sequence[Normalization], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise a float32 (C, *S) image in place; `mask` is needed when a scheme uses the non-zero mask.

    ``rgb_to_0_1`` refuses values outside [0, 255] (DatasetError without a path: the caller knows
    the file) instead of silently producing values outside [0, 1].
    """
    for c, scheme in enumerate(schemes):
        ch = image[c]
        if scheme.scheme == "ct":
            np.clip(ch, scheme.lower, scheme.upper, out=ch)
            ch -= scheme.mean
            ch /= max(scheme.std, EPS)
        elif scheme.scheme == "zscore":
            if scheme.use_nonzero_mask and mask is None:
                raise ValueError("a non-zero mask is required for masked z-score normalisation")
            _zscore(ch, mask if scheme.use_nonzero_mask else None)
        elif scheme.scheme == "rescale_to_0_1" and ch.size:
            ch -= ch.min()
            ch /= max(float(ch.max()), EPS)
        elif scheme.scheme == "rgb_to_0_1":
            lo, hi = (float(ch.min()), float(ch.max())) if ch.size else (0.0, 0.0)
            if lo < 0 or hi > 255:
                raise DatasetError(
                    f"channel {c} holds values in [{lo:g}, {hi:g}], but rgb_to_0_1 expects 8-bit values 0..255",
                    fix="name the channel zscore or rescale_to_0_1 in channel_names, or convert the images to 8 bit",
                )
            ch /= 255.0
        # "nonorm": values kept; the image is already float32
    return image
