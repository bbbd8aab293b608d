"""U-Net topology from a spacing and a patch: pooling per axis, kernel sizes, features, strides.

The rules are nnU-Net's (users compare plans side by side), written as a small loop:
- an axis is pooled (stride 2) at a stage when its feature map stays >= 4 voxels after pooling and
  its current spacing is within 2x of the finest pooled-able axis (so coarse axes wait until the
  fine ones have caught up);
- a lone pool-able axis is only pooled while it is at least 3x the minimum map size;
- kernels are 1 along axes still > 2x coarser than the finest, then 3 for good;
- features 32 * 2^stage, capped (320 in 3D, 512 in 2D);
- the patch must be divisible by the product of the strides on each axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_FEATURE_MAP = 4
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
# ResEnc encoder blocks per stage (nnU-Net's ResEnc M/L/XL); the decoder keeps one conv per stage.
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class Topology:
    strides: tuple[tuple[int, ...], ...]  # per stage, first stage all 1
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    divisor: tuple[int, ...]  # patch must be a multiple of this per axis
    patch_size: tuple[int, ...]  # input patch rounded up to the divisor

    @property
    def num_stages(self) -> int:
        return len(self.strides)


def pooling_topology(spacing: Sequence[float], patch_size: Sequence[int]) -> Topology:
    dims = len(spacing)
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(p) for p in patch_size]
    kernel = [1] * dims
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    while True:
        poolable = [a for a in range(dims) if cur_size[a] >= 2 * MIN_FEATURE_MAP]
        if not poolable:
            break
        finest = min(cur_spacing[a] for a in poolable)
        poolable = [a for a in poolable if cur_spacing[a] / finest < 2]
        if len(poolable) == 1 and cur_size[poolable[0]] < 3 * MIN_FEATURE_MAP:
            break
        overall_finest = min(cur_spacing)
        kernel = [3 if k == 3 or cur_spacing[a] / overall_finest < 2 else 1 for a, k in enumerate(kernel)]
        stride = tuple(2 if a in poolable else 1 for a in range(dims))
        for a in poolable:
            cur_spacing[a] *= 2
            cur_size[a] = math.ceil(cur_size[a] / 2)
        strides.append(stride)
        kernels.append(tuple(kernel))
    kernels.append((3,) * dims)  # the bottleneck always sees a 3-wide neighbourhood
    divisor = tuple(math.prod(s[a] for s in strides) for a in range(dims))
    padded = tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor))
    return Topology(tuple(strides), tuple(kernels), divisor, padded)


def network_dict(topology: Topology, architecture: str = "plain_unet") -> dict:
    """The plans.json "network" entry for `topology` (read by voxseg.model.build_network)."""
    dims = len(topology.patch_size)
    stages = topology.num_stages
    features = [min(BASE_FEATURES * 2**s, MAX_FEATURES[dims]) for s in range(stages)]
    if architecture == "resenc_unet":
        enc = [RESENC_BLOCKS[min(s, len(RESENC_BLOCKS) - 1)] for s in range(stages)]
        dec = [1] * (stages - 1)
    else:
        enc = [2] * stages
        dec = [2] * (stages - 1)
    return {
        "architecture": architecture,
        "dims": dims,
        "features": features,
        "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "strides": [list(s) for s in topology.strides],
        "n_conv_per_stage": enc,
        "n_conv_per_stage_decoder": dec,
    }


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Resolution of each decoder output relative to the input, full resolution first."""
    scales, cum = [], [1.0] * len(strides[0])
    for stride in strides[:-1]:
        cum = [c / s for c, s in zip(cum, stride)]
        scales.append(list(cum))
    return scales
