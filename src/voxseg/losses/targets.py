"""Head targets derived from the label map on whatever device the batch is on.

Deriving them in the loss (instead of storing them) keeps the store unchanged, follows every
augmentation for free, and lets each deep-supervision level derive its own target from its own
downsampled label map. Boundaries use max/min pooling, so they cost two pooling passes on the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from voxseg.data.labels import IGNORE
from voxseg.errors import SettingsError


def foreground(labels: torch.Tensor) -> torch.Tensor:
    """1 where label > 0, 0 on background, IGNORE kept."""
    return torch.where(labels == IGNORE, IGNORE, (labels > 0).to(labels.dtype))


def boundary(labels: torch.Tensor) -> torch.Tensor:
    """1 on voxels whose 3x3(x3) neighbourhood holds another class, else 0; IGNORE kept.

    Ignored neighbours are no class: they are pushed out of the max (as -1) and the min (as a
    value above every class) so the edge of an annotated area is no boundary, nor is the image edge.
    """
    pool = F.max_pool3d if labels.ndim == 5 else F.max_pool2d
    values = labels.float()
    ignored = labels == IGNORE
    highest = pool(values, 3, 1, 1)
    lowest = -pool(torch.where(ignored, -float(torch.iinfo(torch.int16).max), -values), 3, 1, 1)
    edge = (highest != lowest).to(labels.dtype)
    return torch.where(ignored, IGNORE, edge)


def derive_target(spec: str, labels: torch.Tensor, extra: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The target for a head's ``target`` setting from ``labels`` (B,1,*S) and the extra maps."""
    if spec == "labels":
        return labels
    if spec == "foreground":
        return foreground(labels)
    if spec == "boundary":
        return boundary(labels)
    name = spec.removeprefix("extra:")
    if spec.startswith("extra:") and name in extra:
        return extra[name]
    raise SettingsError(
        f"head target {spec!r} is not available (extra label maps: {sorted(extra) or 'none'})",
        fix="use labels, foreground, boundary, or extra:NAME for a labelsTr_NAME/ folder",
    )
