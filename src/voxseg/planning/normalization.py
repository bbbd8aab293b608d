"""Which intensity normalisation each channel gets: nnU-Net's mapping from channel names.

The name in ``channel_names`` picks the scheme, case-insensitively: ``CT`` (dataset-wide foreground
statistics: clip to the 0.5 / 99.5 percentiles, then (x - mean) / std), ``zscore``, ``noNorm``
(values kept), ``rescale_to_0_1`` (per-image min-max) and ``rgb_to_0_1`` (divide by 255). Any other
name (``T1``, ``FLAIR``, ``R``, ...) means z-score per image, as in nnU-Net; z-score runs inside the
non-zero mask (outside set to 0) when cropping to it removed more than 25% of the median image
(skull-stripped MR and the like). ``voxseg plan --normalization 0=noNorm`` overrides the mapping.
The chosen schemes are written to plans.json and printed by ``voxseg plan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from voxseg.errors import PlanError
from voxseg.plans import NORMALIZATION_SCHEMES, Normalization

# Crop-to-non-zero keeping less than this fraction of the median image -> masked z-score.
MASK_KEPT_FRACTION = 0.75

DESCRIPTIONS = {
    "ct": "CT: clip to dataset foreground 0.5/99.5 percentiles, then dataset mean/std",
    "zscore": "z-score per image",
    "nonorm": "none (values kept, cast to float32)",
    "rescale_to_0_1": "per-image min-max to [0, 1]",
    "rgb_to_0_1": "divide by 255 (8-bit images)",
}


def scheme_for_name(channel_name: str) -> str:
    """nnU-Net's rule: the channel name, lower-cased, if it names a scheme; else z-score."""
    name = channel_name.strip().lower()
    return name if name in NORMALIZATION_SCHEMES else "zscore"


def parse_overrides(text: str) -> dict[int, str]:
    """'0=noNorm,1=zscore' -> {0: 'nonorm', 1: 'zscore'}; PlanError naming the bad part."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        index, _, scheme = part.partition("=")
        if not index.strip().isdigit() or scheme.strip().lower() not in NORMALIZATION_SCHEMES:
            raise PlanError(
                f"--normalization entry {part!r} is not CHANNEL=SCHEME",
                fix="e.g. --normalization 0=noNorm,1=zscore (schemes: CT, zscore, noNorm, rescale_to_0_1, rgb_to_0_1)",
            )
        out[int(index)] = scheme.strip().lower()
    return out


def plan_normalization(
    channel_names: Sequence[str], stats: Sequence[dict], median_kept_fraction: float, overrides: Mapping[int, str] | None = None
) -> list[Normalization]:
    """One scheme per channel from its name (or an override), the fingerprint's foreground
    statistics and the crop ratio."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(range(len(channel_names))))
    if unknown:
        raise PlanError(
            f"--normalization names channel(s) {unknown} but the dataset has {len(channel_names)}",
            fix=f"use channel indices 0..{len(channel_names) - 1}",
        )
    out = []
    for c, (name, st) in enumerate(zip(channel_names, stats)):
        scheme = overrides.get(c, scheme_for_name(name))
        if scheme == "ct":
            out.append(Normalization("ct", mean=st["mean"], std=st["std"], lower=st["p00_5"], upper=st["p99_5"]))
        elif scheme == "zscore":
            out.append(Normalization("zscore", use_nonzero_mask=median_kept_fraction < MASK_KEPT_FRACTION))
        else:
            out.append(Normalization(scheme))
    return out


def describe(norm: Normalization) -> str:
    text = DESCRIPTIONS[norm.scheme]
    if norm.scheme == "zscore" and norm.use_nonzero_mask:
        text += ", inside the non-zero mask"
    return text
