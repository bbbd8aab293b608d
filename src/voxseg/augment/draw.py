"""Random parameter draws, always on a CPU `torch.Generator`.

Why CPU: the parameters are a few numbers per sample, so drawing them where the seed lives makes a
batch's parameters identical on CPU and CUDA and lets the pipeline decide which samples to touch
without a device synchronisation. Only voxel-sized randomness (the noise field) is drawn on the
batch's device, from a generator seeded by `device_seed`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bernoulli(g: torch.Generator, p: float, shape: tuple[int, ...]) -> Tensor:
    return torch.rand(shape, generator=g, dtype=torch.float64) < p


def uniform(g: torch.Generator, low: float, high: float, shape: tuple[int, ...]) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def split_uniform(g: torch.Generator, low: float, high: float, shape: tuple[int, ...]) -> Tensor:
    """nnU-Net's contrast-style draw: half the time from [low, 1], else from [max(low, 1), high].

    A plain uniform draw on (0.75, 1.25) would do the same, but on (0.7, 1.5) it would brighten
    far more often than it darkens; nnU-Net keeps the two directions equally likely.
    """
    below = uniform(g, low, min(1.0, high), shape)
    above = uniform(g, max(low, 1.0), high, shape)
    pick_below = bernoulli(g, 0.5, shape) & (low < 1.0)
    return torch.where(pick_below, below, above)


def device_seed(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=g))


def to_device(x: Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """Ship a small CPU parameter tensor without a stream synchronisation.

    A blocking host-to-GPU copy waits for every queued kernel, so dozens of tiny copies per batch
    would serialise the CPU with the GPU; pageable sources are staged at once, so this is safe.
    """
    return x.to(device=device, dtype=dtype, non_blocking=True)
