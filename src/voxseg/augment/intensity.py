"""Batched intensity augmentation: noise, blur, brightness, contrast, low resolution, gamma.

Each transform is drawn per sample (its probability) and, like nnU-Net, mostly per channel
(its own factor per channel; blur and low resolution also pick channels with p = 0.5). The chosen
(sample, channel) rows are gathered once, transformed together with per-row parameters, and
written back; untouched rows stay bit-identical and a transform nobody drew launches no kernel.
The masks live on the CPU (see `draw`), so choosing rows never waits for the device.

Semantics follow batchgeneratorsv2 as nnU-Net configures it: noise shares one field and sigma
across a sample's channels; blur is a separable Gaussian (kernel truncated at 6 sigma, reflect
padding) with sigma drawn per axis; contrast scales around the mean and clips to the old range;
low resolution downsamples nearest-exact by one zoom for all axes and upsamples (tri)linearly;
gamma works on the [min, max]-normalised row and restores mean and std; inverted gamma does the
same on the negated image. Images only: labels never pass through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from voxseg.augment import draw
from voxseg.augment.config import AugmentationSettings


@dataclass
class IntensityParams:
    """Per-row masks (B, C) and parameters of one batch (CPU tensors)."""

    noise: Tensor
    noise_std: Tensor  # (B, C), equal across a sample's channels
    blur: Tensor
    blur_sigma: Tensor  # (B, C, dims)
    brightness: Tensor
    brightness_factor: Tensor
    contrast: Tensor
    contrast_factor: Tensor
    lowres: Tensor
    lowres_zoom: Tensor
    gamma_inv: Tensor
    gamma_inv_value: Tensor
    gamma: Tensor
    gamma_value: Tensor
    noise_seed: int

    def record(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}


def draw_intensity(settings: AugmentationSettings, g: torch.Generator, batch: int, channels: int, dims: int) -> IntensityParams:
    s = settings
    rows = (batch, channels)

    def per_sample(p: float) -> Tensor:
        return draw.bernoulli(g, p, (batch, 1)).expand(rows)

    noise = per_sample(s.noise_p)
    noise_std = draw.uniform(g, *s.noise_std, (batch, 1)).expand(rows)
    blur = per_sample(s.blur_p) & draw.bernoulli(g, s.blur_p_per_channel, rows)
    blur_sigma = draw.uniform(g, *s.blur_sigma, (*rows, dims))
    brightness = per_sample(s.brightness_p)
    brightness_factor = draw.split_uniform(g, *s.brightness_range, rows)
    contrast = per_sample(s.contrast_p)
    contrast_factor = draw.split_uniform(g, *s.contrast_range, rows)
    lowres = per_sample(s.lowres_p) & draw.bernoulli(g, s.lowres_p_per_channel, rows)
    lowres_zoom = draw.uniform(g, *s.lowres_zoom, rows)
    gamma_inv = per_sample(s.gamma_inv_p)
    gamma_inv_value = draw.split_uniform(g, *s.gamma_range, rows)
    gamma = per_sample(s.gamma_p)
    gamma_value = draw.split_uniform(g, *s.gamma_range, rows)
    return IntensityParams(
        noise,
        noise_std,
        blur,
        blur_sigma,
        brightness,
        brightness_factor,
        contrast,
        contrast_factor,
        lowres,
        lowres_zoom,
        gamma_inv,
        gamma_inv_value,
        gamma,
        gamma_value,
        draw.device_seed(g),
    )


def apply_intensity(
    image: Tensor,
    p: IntensityParams,
    settings: AugmentationSettings,
    *,
    lowres_axes: tuple[int, ...],
) -> Tensor:
    """Modify `image` (B, C, *S) in place, in nnU-Net's order; returns it for chaining."""
    _add_noise(image, p.noise, p.noise_std, p.noise_seed)
    _rows(image, p.blur, gaussian_blur, p.blur_sigma)
    _rows(image, p.brightness, lambda x, f: x * _col(f, x), p.brightness_factor)
    _rows(image, p.contrast, lambda x, f: contrast(x, f, settings.contrast_preserve_range), p.contrast_factor)
    _rows(image, p.lowres, lambda x, z: simulate_lowres(x, z, lowres_axes), p.lowres_zoom)
    _rows(image, p.gamma_inv, lambda x, v: -gamma(-x, v, settings.gamma_retain_stats), p.gamma_inv_value)
    _rows(image, p.gamma, lambda x, v: gamma(x, v, settings.gamma_retain_stats), p.gamma_value)
    return image


def _rows(image: Tensor, mask: Tensor, fn: Callable[..., Tensor], *params: Tensor) -> None:
    """Apply `fn(rows (n, *S), *per_row_params)` to the (sample, channel) rows `mask` selects.

    Parameters stay on the CPU; `fn` moves what it needs, so blur/low-res tables never round-trip.
    """
    if not mask.any():
        return
    flat = image.view(-1, *image.shape[2:])
    if mask.all():
        flat.copy_(fn(flat, *(q.reshape(flat.shape[0], *q.shape[2:]) for q in params)))
        return
    b, c = torch.nonzero(mask, as_tuple=True)
    index = draw.to_device(b * image.shape[1] + c, image.device)
    flat[index] = fn(flat[index], *(q[b, c] for q in params))


def _col(v: Tensor, like: Tensor) -> Tensor:
    """Per-row values (n,) as a column on `like`'s device, broadcasting over its spatial axes."""
    return draw.to_device(v, like.device, like.dtype).view(-1, *[1] * (like.ndim - 1))


def _add_noise(image: Tensor, mask: Tensor, std: Tensor, seed: int) -> None:
    samples = torch.nonzero(mask[:, 0]).flatten()
    if not len(samples):
        return
    g = torch.Generator(device=image.device).manual_seed(seed)
    field = torch.randn((len(samples), 1, *image.shape[2:]), generator=g, device=image.device, dtype=image.dtype)
    scale = draw.to_device(std[samples, 0], image.device, image.dtype).view(-1, 1, *[1] * (image.ndim - 2))
    if len(samples) == image.shape[0]:
        image.add_(field * scale)
    else:
        index = draw.to_device(samples, image.device)
        image[index] = image[index] + field * scale


def gaussian_blur(rows: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian per row with per-row, per-axis sigma (n, dims): one grouped conv per axis."""
    n, dims = rows.shape[0], rows.ndim - 1
    conv = F.conv3d if dims == 3 else F.conv2d
    out = rows.unsqueeze(0)
    for axis in range(dims):
        kernels = draw.to_device(_gaussian_kernels(sigma[:, axis], rows.dtype), rows.device)
        radius = kernels.shape[1] // 2
        shape = [n, 1] + [1] * dims
        shape[2 + axis] = kernels.shape[1]
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
        # reflect padding needs radius < size; tiny patches fall back to replicate
        mode = "reflect" if radius < rows.shape[1 + axis] else "replicate"
        out = conv(F.pad(out, pad, mode=mode), kernels.view(shape), groups=n)
    return out[0]


def _gaussian_kernels(sigma: Tensor, dtype: torch.dtype) -> Tensor:
    """(n, K) kernels, each truncated at its own 6 sigma (odd size) and zero-padded to the widest."""
    sigma = sigma.double().cpu()
    sizes = [_odd_size(float(s) * 6 + 0.5) for s in sigma]
    radius = max(sizes) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    inside = x.abs()[None, :] <= torch.tensor([s // 2 for s in sizes], dtype=torch.float64)[:, None]
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2) * inside
    return (k / k.sum(1, keepdim=True)).to(dtype)


def _odd_size(n: float) -> int:
    rounded = round(n)
    if rounded % 2 == 1:
        return rounded
    return rounded + 1 if n - rounded >= 0 else rounded - 1


def contrast(rows: Tensor, factor: Tensor, preserve_range: bool) -> Tensor:
    spatial = tuple(range(1, rows.ndim))
    mean = rows.mean(spatial, keepdim=True)
    out = (rows - mean) * _col(factor, rows) + mean
    if preserve_range:
        out = torch.maximum(torch.minimum(out, rows.amax(spatial, keepdim=True)), rows.amin(spatial, keepdim=True))
    return out


def gamma(rows: Tensor, value: Tensor, retain_stats: bool) -> Tensor:
    spatial = tuple(range(1, rows.ndim))
    low = rows.amin(spatial, keepdim=True)
    span = rows.amax(spatial, keepdim=True) - low
    out = ((rows - low) / span.clamp_min(1e-7)).pow(_col(value, rows)) * span + low
    if retain_stats:
        std, mean = torch.std_mean(rows, spatial, keepdim=True)
        new_std, new_mean = torch.std_mean(out, spatial, keepdim=True)
        out = (out - new_mean) * (std / new_std.clamp_min(1e-7)) + mean
    return out


def simulate_lowres(rows: Tensor, zoom: Tensor, axes: tuple[int, ...]) -> Tensor:
    """Nearest-exact downsampling to round(size * zoom), then linear upsampling back, per row.

    Both steps are separable, so the composite is applied axis by axis as two gathers and a lerp
    with per-row index tables; that batches rows with different zooms, which F.interpolate cannot.
    """
    out = rows
    for axis in axes:
        size = rows.shape[1 + axis]
        small = torch.round(zoom.double().cpu() * size).clamp_min(1)[:, None]  # (n, 1)
        j = torch.arange(size, dtype=torch.float64)[None, :]
        pos = ((j + 0.5) * small / size - 0.5).clamp_min(0)
        low = pos.floor()
        weight = pos - low
        high = torch.minimum(low + 1, small - 1)
        index_low, index_high = (torch.floor((i + 0.5) * size / small).clamp_max(size - 1).long() for i in (low, high))
        shape = [rows.shape[0]] + [1] * (rows.ndim - 1)
        shape[1 + axis] = size
        a = torch.gather(out, 1 + axis, draw.to_device(index_low, rows.device).view(shape).expand(out.shape))
        b = torch.gather(out, 1 + axis, draw.to_device(index_high, rows.device).view(shape).expand(out.shape))
        out = torch.lerp(a, b, draw.to_device(weight, rows.device, rows.dtype).view(shape))
    return out
