"""Cascade inputs: the previous stage's segmentation as one-hot channels, corrupted like nnU-Net does.

The full-resolution stage of a cascade gets the low-resolution stage's segmentation as extra input
channels (one per foreground label). The map travels through the spatial augmentation with the
other label maps (nearest neighbour, so it stays a label map), then becomes one-hot here. During
training nnU-Net corrupts it so the network learns to fix low-resolution mistakes rather than copy
them: with probability 0.4 per sample a random binary morphology operation (dilation, erosion,
opening or closing, structuring element 1-8 voxels) per label, with probability 0.2 per sample the
removal of a random connected component that covers less than 15% of the patch per label.

Differences from nnU-Net, both for speed on the device: the structuring element is a cube (max
pooling) rather than a ball, and labels are changed in a random order where one label's growth
takes voxels from the others (so the channels stay exclusive). Connected components use cc3d on the
CPU, only for the (few) channels chosen.
"""

from __future__ import annotations

import cc3d
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from voxseg.model.outputs import previous_stage_channels

MORPHOLOGY_P = 0.4
REMOVE_COMPONENT_P = 0.2
STRUCTURE_SIZE = (1, 8)
MAX_COMPONENT_FRACTION = 0.15


def _pool(x: Tensor, size: int) -> Tensor:
    pool = F.max_pool3d if x.ndim == 5 else F.max_pool2d
    return pool(x, kernel_size=2 * size + 1, stride=1, padding=size)


def _dilate(x: Tensor, size: int) -> Tensor:
    return _pool(x, size)


def _erode(x: Tensor, size: int) -> Tensor:
    return 1 - _pool(1 - x, size)


_OPERATIONS = (
    _dilate,
    _erode,
    lambda x, s: _dilate(_erode(x, s), s),  # opening
    lambda x, s: _erode(_dilate(x, s), s),  # closing
)


def corrupt(onehot: Tensor, generator: torch.Generator) -> Tensor:
    """nnU-Net's cascade augmentation of (B, L, *S) one-hot channels (see the module docstring).

    All random choices come from the CPU `generator`, so a seed gives the same result on any device.
    """
    out = onehot.clone()
    batch, labels = out.shape[:2]
    for b in range(batch):
        if torch.rand((), generator=generator) < MORPHOLOGY_P:
            for c in torch.randperm(labels, generator=generator).tolist():
                op = _OPERATIONS[int(torch.randint(len(_OPERATIONS), (), generator=generator))]
                size = int(torch.randint(STRUCTURE_SIZE[0], STRUCTURE_SIZE[1] + 1, (), generator=generator))
                channel = op(out[b : b + 1, c : c + 1], size)[0, 0]
                gained = (channel > 0) & (out[b, c] == 0)
                out[b, :, gained] = 0
                out[b, c] = channel
        if torch.rand((), generator=generator) < REMOVE_COMPONENT_P:
            for c in range(labels):
                _remove_component(out[b, c], generator)
    return out


def _remove_component(channel: Tensor, generator: torch.Generator) -> None:
    mask = channel.detach().to("cpu", torch.bool).numpy()
    if not mask.any():
        return
    components = cc3d.connected_components(mask, connectivity=26 if mask.ndim == 3 else 8)
    sizes = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(sizes < MAX_COMPONENT_FRACTION * mask.size) + 1
    if small.size == 0:
        return
    pick = int(small[int(torch.randint(small.size, (), generator=generator))])
    channel[torch.from_numpy(components == pick).to(channel.device)] = 0


def cascade_inputs(image: Tensor, previous: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """Image channels followed by the previous stage's one-hot segmentation (corrupted when a
    training `generator` is given). `previous` is the (B, 1, *S) label map; IGNORE counts as background."""
    onehot = previous_stage_channels(previous, num_classes).to(image.dtype)
    if generator is not None:
        onehot = corrupt(onehot, generator)
    return torch.cat([image, onehot], dim=1)
