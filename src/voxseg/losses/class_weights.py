"""Class weights from a setting: an explicit list, or derived from class voxel frequencies.

Frequency weights are w_c = (N / n_c)^p (p = 1 or 1/2), then capped so that no weight exceeds
``max_weight`` times the smallest one, then normalised to mean 1. Capping the *ratio* (not the
value after normalisation) keeps the cap meaningful for any number of classes and makes the order
of cap and normalisation irrelevant: both CE's weighted mean and the weighted Dice average divide
by the weight sum, so only ratios change the loss. A class with no voxels gets the capped maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from voxseg.errors import SettingsError


def resolve_class_weights(
    setting: Sequence[float] | str | None,
    class_voxel_counts: Sequence[int],
    max_weight: float = 10.0,
) -> list[float] | None:
    """Weights for classes 0..K-1 (K = len(class_voxel_counts)), or None when the setting is None.

    An explicit list is returned unchanged (after checks); a frequency setting is derived as
    described in the module docstring.
    """
    if setting is None:
        return None
    num_classes = len(class_voxel_counts)
    if not isinstance(setting, str):
        weights = [float(w) for w in setting]
        if len(weights) != num_classes:
            raise SettingsError(
                f"loss.class_weights has {len(weights)} values for {num_classes} classes",
                fix=f"give one weight per class, background first ({num_classes} values)",
            )
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) == 0:
            raise SettingsError(
                f"loss.class_weights={weights}: weights must be finite, >= 0, not all 0",
                fix="use e.g. [0.5, 1, 4]",
            )
        return weights
    powers = {"inverse_frequency": 1.0, "sqrt_inverse_frequency": 0.5}
    if setting not in powers:
        raise SettingsError(
            f"loss.class_weights={setting!r} is unknown",
            fix="use inverse_frequency, sqrt_inverse_frequency or a list of weights",
        )
    total = sum(class_voxel_counts)
    if total == 0:
        return [1.0] * num_classes
    raw = [(total / n) ** powers[setting] if n > 0 else math.inf for n in class_voxel_counts]
    cap = max_weight * min(raw)
    capped = [min(w, cap) for w in raw]
    mean = sum(capped) / num_classes
    return [w / mean for w in capped]
