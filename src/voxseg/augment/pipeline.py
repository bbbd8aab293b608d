"""`Augmenter`: the whole training augmentation of a batch, on the batch's device.

nnU-Net augments one sample at a time on CPU workers (about 1 s per sample); here the batch is
augmented at once where it already lives: one spatial resampling (mirroring folded in), then the
intensity transforms in nnU-Net's order. All random parameters come from one seeded CPU generator,
so a seed gives the same parameters on CPU and CUDA, and `last_params` shows what each sample got
(TorchIO-style history, used by tests to check realised probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from voxseg.augment import spatial
from voxseg.augment.config import AugmentationSettings
from voxseg.augment.intensity import apply_intensity, draw_intensity
from voxseg.data.labels import IGNORE
from voxseg.errors import SettingsError


class Augmenter:
    """Augment (B, C, *input_size()) images and their label maps into (B, C, *patch_size)."""

    def __init__(
        self,
        settings: AugmentationSettings,
        patch_size: Sequence[int],
        *,
        has_ignore: bool,
        seed: int,
        in_plane_only: bool = False,
    ):
        self.settings = settings
        self.patch_size = tuple(int(p) for p in patch_size)
        self.has_ignore = has_ignore
        dims = len(self.patch_size)
        if dims not in (2, 3):
            raise ValueError(f"patch_size must have 2 or 3 axes, got {self.patch_size}")
        axes = tuple(range(dims)) if settings.mirror_axes is None else settings.mirror_axes
        if any(not 0 <= a < dims for a in axes):
            raise SettingsError(
                f"augmentation.mirror_axes = {list(axes)} names an axis a {dims}D patch does not have",
                fix=f"use axes from {list(range(dims))} or null for all",
            )
        self.mirror_axes = axes
        self.in_plane_only = spatial.in_plane(settings, dims, in_plane_only)
        self.lowres_axes = tuple(range(1, dims)) if self.in_plane_only else tuple(range(dims))
        self.generator = torch.Generator().manual_seed(seed)
        self._input_size = spatial.input_size(self.patch_size, settings, in_plane_only=in_plane_only)
        self.last_params: dict[str, Tensor] = {}

    def input_size(self) -> tuple[int, ...]:
        """The enlarged patch the loader must deliver so no transform samples outside it."""
        return self._input_size

    def __call__(self, image: Tensor, labels: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """image (B, C, *in) float -> (B, C, *patch); each label (B, 1, *in) int -> (B, 1, *patch)."""
        batch, channels = image.shape[:2]
        spatial_params = spatial.draw_spatial(
            self.settings,
            self.patch_size,
            self.generator,
            batch,
            in_plane_only=self.in_plane_only,
            mirror_axes=self.mirror_axes,
        )
        intensity_params = draw_intensity(self.settings, self.generator, batch, channels, len(self.patch_size))
        image, labels = spatial.apply_spatial(
            image,
            labels,
            spatial_params,
            self.patch_size,
            has_ignore=self.has_ignore,
            label_interpolation=self.settings.label_interpolation,
        )
        apply_intensity(image, intensity_params, self.settings, lowres_axes=self.lowres_axes)
        if not self.has_ignore:
            # nnU-Net turns the loader's padding (-1) into background when there is no ignore label
            labels = [m.masked_fill(m == IGNORE, 0) for m in labels]
        self.last_params = {**spatial_params.record(), **intensity_params.record()}
        return image, labels

    def state_dict(self) -> dict[str, Any]:
        """Generator state, so a resumed run continues the same random stream."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def downsample_targets(seg: Tensor, scales: Sequence[Sequence[float]]) -> list[Tensor]:
    """Deep-supervision targets: seg (B, 1, *S) resized nearest-exact to round(S * scale) per scale.

    Nearest keeps IGNORE and class values intact; stays on seg's device.
    """
    targets = []
    for scale in scales:
        if all(s == 1 for s in scale):
            targets.append(seg)
            continue
        size = [round(n * s) for n, s in zip(seg.shape[2:], scale)]
        targets.append(F.interpolate(seg.float(), size=size, mode="nearest-exact").to(seg.dtype))
    return targets
