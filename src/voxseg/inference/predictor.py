"""The predictor: one case's images in, its segmentation (and probabilities) on the input grid out.

Per case: preprocess exactly as in training -> sliding window (Gaussian, batched tiles and mirror
flips, mixed precision) for every network of every model group -> probabilities averaged (softmax,
or sigmoid per region) -> resampled back to the original spacing on the device -> decoded (argmax,
or regions painted in order) -> crop and transpose undone -> optional post-processing rule.
Folders of cases, with background reading and writing, are `voxseg.inference.cohort`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from voxseg.data.io import Geometry
from voxseg.device import autocast_dtype
from voxseg.errors import CheckpointError
from voxseg.inference.models import ModelGroup
from voxseg.inference.postprocess import apply_postprocessing
from voxseg.inference.restore import resample_logits_back, restore_shape
from voxseg.inference.sliding_window import count_tiles, plan_accumulation, sliding_window
from voxseg.model.outputs import OutputScheme
from voxseg.preprocessing.preprocess import preprocess_case

CPU_FORWARD_VOXELS = 2**16


@dataclass
class CasePrediction:
    segmentation: np.ndarray  # label map on the input grid
    probabilities: np.ndarray | None = None  # (C, *input grid) float32, when asked for
    heads: dict[str, np.ndarray] = field(default_factory=dict)


class Predictor:
    def __init__(
        self,
        groups: list[ModelGroup],
        device: torch.device,
        *,
        tta: bool = True,
        step: float = 0.5,
        tile_batch: int | None = None,
        postprocessing: dict | None = None,
    ):
        if not groups:
            raise CheckpointError("no models to predict with", fix="pass at least one trained run folder with -m")
        self.groups, self.device = groups, device
        self.tta, self.step = tta, step
        self.tile_batch = tile_batch or (4 if device.type == "cuda" else 1)
        self.postprocessing = postprocessing
        self.precision = autocast_dtype("auto", device)
        self.outputs: OutputScheme = groups[0].outputs
        self.on_tiles: Callable[[int], None] | None = None  # progress callback: tiles finished

    @property
    def n_channels(self) -> int:
        return len(self.groups[0].plan.channel_names)

    def preprocess(self, images: np.ndarray, geometry: Geometry) -> list[tuple[np.ndarray, dict]]:
        return [preprocess_case(images, geometry, g.plan, g.config_name)[::2] for g in self.groups]

    def _forward_batch(self, patch: Sequence[int]) -> int | None:
        """Inputs per network call: all tiles x flips on a GPU; on a CPU about 2^16 voxels.

        A CPU runs the network fastest on small batches (measured per input, 2 cores: 40x80x80
        1.03 s alone vs 1.29 s in a batch of 8; 32x64x64 0.49 vs 0.75 s; but 16x40x40 0.21 s
        alone vs 0.09 s in pairs), so the mirror copies of a tile go through one or a few at a time.
        """
        if self.device.type != "cpu":
            return None
        return max(1, CPU_FORWARD_VOXELS // math.prod(patch))

    def tile_count(self, prepared: list[tuple[np.ndarray, dict]], heads: bool = False) -> int:
        """Tiles the prediction of one preprocessed case runs (for progress: `on_tiles` counts them)."""
        total = 0
        for group, (image, _) in zip(self.groups, prepared):
            patch = group.config.patch_size
            spatial = image.shape[1:]
            planes = spatial[0] if group.config.dims == 2 and len(spatial) == 3 else 1
            per_net = planes * count_tiles(spatial[-len(patch):], patch, self.step)
            passes = 1 + (len(group.head_names) if heads and group is self.groups[0] else 0)
            total += per_net * len(group.networks) * passes
        return total

    def _window(self, group: ModelGroup, net: nn.Module, image: torch.Tensor, head: str, channels: int) -> torch.Tensor:
        patch = group.config.patch_size
        mirror = (tuple(range(len(patch))) if group.mirror_axes is None else group.mirror_axes) if self.tta else ()

        def fn(x: torch.Tensor) -> torch.Tensor:
            return net(x)[head][0]

        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        where = plan_accumulation(tuple(image.shape[1:]), channels, self.device, free, patch_size=patch)
        return sliding_window(
            fn, image, patch, channels, step=self.step, mirror_axes=mirror, tile_batch=self.tile_batch,
            forward_batch=self._forward_batch(patch),
            accumulate_device="cpu" if where == "cpu" else None, precision=self._precision(group), slabs=where == "slabs",
            on_tiles=self.on_tiles, gaussian=group.recipe.get("gaussian", "centred"),
            accumulate_dtype=torch.float16 if group.recipe.get("accumulate") == "float16" else torch.float32,
        )

    def _precision(self, group: ModelGroup) -> torch.dtype | None:
        """Imported nnU-Net models run under nnU-Net's fp16 autocast on CUDA (ours: bf16 where supported)."""
        if group.recipe.get("autocast") == "fp16" and self.device.type == "cuda":
            return torch.float16
        return self.precision

    def _group_output(self, group: ModelGroup, image: np.ndarray, head: str, channels: int, activation) -> torch.Tensor:
        """Mean over the group's networks of activation(logits) (of the logits when `activation` is None),
        at preprocessed resolution."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        total = None
        for net in group.networks:
            if group.config.dims == 2 and x.ndim == 4:  # 2D configuration on a 3D volume: slice by slice along axis 0
                out = torch.stack([self._window(group, net, x[:, z], head, channels) for z in range(x.shape[1])], dim=1)
            else:
                out = self._window(group, net, x, head, channels)
            # Stays where sliding_window accumulated it (the CPU when the device could not hold it).
            out = out if activation is None else activation(out)
            total = out if total is None else total + out
        return total / len(group.networks)

    def predict_probabilities(self, prepared: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
        """Probabilities (C, *original shape) on the device, averaged over every model."""
        probs = None
        fill = self.outputs.background_fill
        for group, (image, props) in zip(self.groups, prepared):
            if group.recipe.get("export") == "nnunet":  # nnU-Net: fold logits averaged and resampled, then softmax
                logits = self._group_output(group, image, "seg", self.outputs.channels, None)
                p = self.outputs.probabilities(resample_logits_back(logits, props, order=group.recipe.get("export_order", 1)))
            else:
                p = self._group_output(group, image, "seg", self.outputs.channels, self.outputs.probabilities)
            p = restore_shape(p, props, fill=fill)
            probs = p if probs is None else probs + p.to(probs.device)
        return probs / len(self.groups)

    def predict_heads(self, prepared: list[tuple[np.ndarray, dict]]) -> dict[str, np.ndarray]:
        """Extra heads of the first model group: argmax for class heads, >0.5 for single-channel heads."""
        group, (image, props) = self.groups[0], prepared[0]
        out = {}
        for name in group.head_names:
            channels = _head_channels(group.networks[0], name, image, group.config.patch_size, self.device)
            act = torch.sigmoid if channels == 1 else (lambda t: torch.softmax(t, 0))
            fill = [0.0] if channels == 1 else [1.0] + [0.0] * (channels - 1)
            p = restore_shape(self._group_output(group, image, name, channels, act), props, fill=fill)
            out[name] = (p[0] > 0.5).to(torch.uint8).cpu().numpy() if channels == 1 else p.argmax(0).to(torch.uint8).cpu().numpy()
        return out

    def segment(self, probs: torch.Tensor) -> np.ndarray:
        seg = self.outputs.segmentation(probs).cpu().numpy()
        seg = seg.astype(np.uint8 if seg.max(initial=0) < 256 else np.int16)
        return apply_postprocessing(seg, self.postprocessing) if self.postprocessing else seg

    def predict_prepared(self, prepared: list[tuple[np.ndarray, dict]], *, probabilities: bool = False,
                         heads: bool = False) -> CasePrediction:
        probs = self.predict_probabilities(prepared)
        return CasePrediction(
            self.segment(probs),
            probs.float().cpu().numpy() if probabilities else None,
            self.predict_heads(prepared) if heads else {},
        )

    def predict_case(self, images: np.ndarray, geometry: Geometry, *, probabilities: bool = False,
                     heads: bool = False) -> CasePrediction:
        """Segment one case: ``images`` (C, *S) float32 on the grid described by ``geometry``."""
        return self.predict_prepared(self.preprocess(images, geometry), probabilities=probabilities, heads=heads)


def _head_channels(net: nn.Module, name: str, image: np.ndarray, patch: Sequence[int], device: torch.device) -> int:
    with torch.inference_mode():
        x = torch.zeros((1, image.shape[0], *patch), device=device)
        return int(net(x)[name][0].shape[1])
