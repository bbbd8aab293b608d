"""Per-channel intensity normalisation, chosen at planning time and stored in plans.json.

CT channels (name "CT", any case) use dataset-wide statistics of the foreground: clip to the
0.5 / 99.5 percentiles, then (x - mean) / std, so Hounsfield units keep their meaning across cases.
Every other channel is z-scored per image; inside the non-zero mask (outside set to 0) when
cropping removed > 25% of the image (skull-stripped MR and the like), as nnU-Net does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from voxseg.planning.plan import Normalization

EPS = 1e-8


def normalize_channels(image: np.ndarray, schemes: Sequence[Normalization], mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise a float32 (C, *S) image in place; `mask` is needed when a scheme uses the non-zero mask."""
    for c, scheme in enumerate(schemes):
        ch = image[c]
        if scheme.scheme == "ct":
            np.clip(ch, scheme.lower, scheme.upper, out=ch)
            ch -= scheme.mean
            ch /= max(scheme.std, EPS)
        elif scheme.use_nonzero_mask:
            if mask is None:
                raise ValueError("a non-zero mask is required for masked z-score normalisation")
            values = ch[mask]
            mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
            ch -= mean
            ch /= max(std, EPS)
            ch[~mask] = 0
        else:
            mean, std = float(ch.mean()), float(ch.std())
            ch -= mean
            ch /= max(std, EPS)
    return image


def plan_normalization(channel_names: Sequence[str], stats: Sequence[dict], median_kept_fraction: float) -> list[Normalization]:
    """One scheme per channel from the fingerprint's foreground statistics and crop ratio."""
    out = []
    for name, st in zip(channel_names, stats):
        if name.lower() == "ct":
            out.append(Normalization("ct", mean=st["mean"], std=st["std"], lower=st["p00_5"], upper=st["p99_5"]))
        else:
            out.append(Normalization("zscore", use_nonzero_mask=median_kept_fraction < 0.75))
    return out
