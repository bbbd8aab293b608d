"""Sliding-window inference: tiles, Gaussian blending, mirror test-time augmentation.

Same semantics as nnU-Net (step 0.5 of the patch, evenly spaced tiles, Gaussian importance map with
sigma = patch / 8, logits averaged over all mirror combinations) but batched: each forward pass
takes `tile_batch` tiles *times* every mirror combination, so a 3D case with 8 flips runs 1/8 of
nnU-Net's forward calls at batch >= 8 instead of one tile per call. Logits and the weight sum are
accumulated where `plan_accumulation` says they fit: on the compute device, on the CPU, or in
"slabs" (one row of tiles along axis 0 accumulated on the device, then added to a CPU volume), which
keeps most of the device speed for volumes whose full logits would not fit on the device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from functools import lru_cache
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from voxseg.errors import SettingsError

PredictFn = Callable[[torch.Tensor], torch.Tensor]
Accumulation = Literal["device", "cpu", "slabs"]

# Room left on the device for the network's activations and the tile batch when deciding where to
# accumulate: the planner's memory model budgets those, here we only keep a safety fraction.
_DEVICE_FRACTION = 0.7


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Evenly spaced tile origins along one axis: ceil((size - patch) / (patch * step)) + 1 tiles."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    spacing = (size - patch) / (n - 1)
    return [round(i * spacing) for i in range(n)]


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1 / 8, *, device=None) -> torch.Tensor:
    """Gaussian weight map peaking at the patch centre (max 1), zeros lifted to the smallest nonzero.

    Tile borders see less context, so their predictions get less weight. The map is symmetric (centre
    at (P-1)/2) so it is unchanged by the mirror flips. The zero floor only matters for very small
    `sigma_scale`, where the tails underflow and a voxel covered only by tails would divide by 0.
    """
    weights = torch.ones((), dtype=torch.float32, device=device)
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float64, device=device) - (p - 1) / 2
        sigma = max(p * sigma_scale, 1e-6)
        g = torch.exp(-0.5 * (x / sigma) ** 2).to(torch.float32)
        weights = weights[..., None] * g
    weights = weights / weights.max()
    if (weights == 0).any():
        weights = torch.where(weights == 0, weights[weights > 0].min(), weights)
    return weights


@lru_cache(maxsize=8)
def _nnunet_map(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    delta = np.zeros(patch_size)
    delta[tuple(p // 2 for p in patch_size)] = 1
    g = ndimage.gaussian_filter(delta, [p * sigma_scale for p in patch_size], 0, mode="constant", cval=0)
    half = torch.from_numpy(g / (g.max() / 10)).to(torch.float16)  # nnU-Net keeps it x10, in half precision
    half[half == 0] = half[half != 0].min()
    return half.float()


def nnunet_importance(patch_size: Sequence[int], sigma_scale: float = 1 / 8, *, device=None) -> torch.Tensor:
    """nnU-Net's weight map, value for value: a delta at ``patch // 2`` blurred by `scipy.ndimage.gaussian_filter`
    (sigma = patch * sigma_scale), scaled to a maximum of 10, rounded to float16, zeros lifted to the minimum.

    It peaks one voxel past the centre along even axes, so it differs slightly from `gaussian_importance`;
    imported nnU-Net models use it (their recipe's ``"gaussian": "nnunet"``) to predict what nnU-Net predicts.
    """
    return _nnunet_map(tuple(int(p) for p in patch_size), float(sigma_scale)).to(device)


IMPORTANCE_MAPS = {"centred": gaussian_importance, "nnunet": nnunet_importance}


def mirror_combinations(mirror_axes: Sequence[int], ndim: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial mirror axes (the empty one first), as spatial axis indices."""
    axes = tuple(sorted(set(mirror_axes)))
    if any(a < 0 or a >= ndim for a in axes):
        raise SettingsError(
            f"mirror axes {tuple(mirror_axes)} do not fit a {ndim}D image",
            fix=f"use spatial axis indices 0..{ndim - 1}, e.g. {tuple(range(ndim))}",
        )
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def plan_accumulation(
    shape: Sequence[int],
    num_classes: int,
    device: torch.device | str,
    free_bytes: int | None,
    *,
    patch_size: Sequence[int] | None = None,
) -> Accumulation:
    """Where to accumulate logits, decided up front instead of by catching an out-of-memory error.

    Full accumulation needs (K + 1) float32 volumes (logits + weight sum). If they fit in
    `_DEVICE_FRACTION` of `free_bytes` (pass `torch.cuda.mem_get_info()[0]` after the model is
    loaded) it is "device". Otherwise, if one row of tiles along axis 0 fits ((K + 1) x patch[0] x
    the other axes), it is "slabs"; else "cpu". A CPU device is always "device".
    """
    if torch.device(device).type == "cpu" or free_bytes is None:
        return "device"
    voxels = math.prod(shape)
    if (num_classes + 1) * voxels * 4 <= _DEVICE_FRACTION * free_bytes:
        return "device"
    if patch_size is not None:
        slab = min(patch_size[0], shape[0]) * math.prod(shape[1:])
        if (num_classes + 1) * slab * 4 <= _DEVICE_FRACTION * free_bytes:
            return "slabs"
    return "cpu"


def _pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad (centred) every axis shorter than the patch; return the crop that undoes it."""
    spatial = image.shape[1:]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, before)]
    if not any(before) and not any(after):
        return image, tuple(slice(None) for _ in spatial)
    pad = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return F.pad(image, pad), crop


def count_tiles(shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5) -> int:
    """Tiles `sliding_window` runs over an image of spatial `shape` (after padding to the patch)."""
    return math.prod(len(tile_starts(max(s, p), p, step)) for s, p in zip(shape, patch_size))


def _batches(tiles: list[tuple[int, ...]], tile_batch: int, by_row: bool) -> Iterator[list[tuple[int, ...]]]:
    """Chunks of tiles; with `by_row` no chunk crosses a change of the axis-0 origin."""
    groups = itertools.groupby(tiles, key=lambda t: t[0]) if by_row else [(None, iter(tiles))]
    for _, group in groups:
        members = list(group)
        for i in range(0, len(members), tile_batch):
            yield members[i : i + tile_batch]


def sliding_window(
    predict_fn: PredictFn,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    tile_batch: int = 4,
    forward_batch: int | None = None,
    accumulate_device: torch.device | str | None = None,
    sigma_scale: float = 1 / 8,
    precision: torch.dtype | None = None,
    slabs: bool = False,
    on_tiles: Callable[[int], None] | None = None,
    gaussian: str = "centred",
    accumulate_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Predict logits (K, *S) float32 for `image` (C, *S) by Gaussian-blended tiles.

    `predict_fn(x (N, C, *P)) -> (N, K, *P)` runs on `image`'s device. Tiles are taken `tile_batch`
    at a time with their 2^len(mirror_axes) flipped copies; `forward_batch` (default: all of them)
    caps how many of those inputs one call receives. `mirror_axes` are spatial axis indices.
    `accumulate_device` (default: the image's device) holds the result; with `slabs=True` each row
    of tiles along axis 0 is accumulated on the compute device first and then added to the result on
    `accumulate_device` (default then: the CPU). Choose the mode with `plan_accumulation`. `precision` (e.g. torch.float16) runs
    `predict_fn` under autocast; accumulation is float32 unless `accumulate_dtype` says otherwise
    (imported nnU-Net models: float16, the precision nnU-Net sums its tiles in, which visibly rounds
    the logits where only the map's tails cover a voxel). `gaussian` picks the weight map
    (`IMPORTANCE_MAPS`: "centred", or "nnunet" for imported nnU-Net models).
    """
    ndim = len(patch_size)
    if image.ndim != ndim + 1:
        raise SettingsError(
            f"image has shape {tuple(image.shape)} but the patch size {tuple(patch_size)} is {ndim}D",
            fix="pass the image as (C, *spatial) matching the configuration's dimensionality",
        )
    if not 0 < step <= 1:
        raise SettingsError(f"step {step} is outside (0, 1]", fix="use a fraction of the patch such as 0.5")
    if tile_batch < 1:
        raise SettingsError(f"tile_batch {tile_batch} must be >= 1", fix="use 1 or more tiles per forward pass")
    if forward_batch is not None and forward_batch < 1:
        raise SettingsError(f"forward_batch {forward_batch} must be >= 1", fix="use 1 or more inputs per forward call, or None")
    device = image.device
    if accumulate_device is not None:
        acc_device = torch.device(accumulate_device)
    else:  # slabs exist to keep the full volume off the device
        acc_device = torch.device("cpu") if slabs else device
    flips = mirror_combinations(mirror_axes, ndim)

    padded, crop = _pad_to_patch(image, patch_size)
    shape = padded.shape[1:]
    tiles = list(itertools.product(*(tile_starts(s, p, step) for s, p in zip(shape, patch_size))))
    if gaussian not in IMPORTANCE_MAPS:
        raise SettingsError(f"unknown importance map {gaussian!r}", fix=f"use one of {', '.join(IMPORTANCE_MAPS)}")
    gauss = IMPORTANCE_MAPS[gaussian](patch_size, sigma_scale, device=device)

    logits = torch.zeros((num_classes, *shape), dtype=accumulate_dtype, device=acc_device)
    weight = torch.zeros(shape, dtype=accumulate_dtype, device=acc_device)
    autocast = torch.autocast(device.type, dtype=precision) if precision is not None else nullcontext()
    # In slab mode a row buffer on the compute device covers axis-0 range [row, row + patch[0]).
    row_shape = (min(patch_size[0], shape[0]), *shape[1:])

    with torch.inference_mode():
        gauss_acc = gauss.to(acc_device)
        row_logits = row_weight = None
        row_start = None
        for batch in _batches(tiles, tile_batch, by_row=slabs):
            if slabs and batch[0][0] != row_start:
                if row_start is not None:
                    _flush_row(logits, weight, row_logits, row_weight, row_start)
                row_start = batch[0][0]
                row_logits = torch.zeros((num_classes, *row_shape), dtype=accumulate_dtype, device=device)
                row_weight = torch.zeros(row_shape, dtype=accumulate_dtype, device=device)
            windows = [tuple(slice(o, o + p) for o, p in zip(t, patch_size)) for t in batch]
            x = torch.stack([padded[(slice(None), *w)] for w in windows])
            x = torch.cat([x.flip([a + 2 for a in f]) if f else x for f in flips])
            with autocast:
                y = torch.cat([predict_fn(part) for part in x.split(forward_batch or len(x))])
            y = y.float().reshape(len(flips), len(batch), num_classes, *patch_size)
            # cast: sum() is typed Tensor | int; flips always holds the identity, so the sum is a tensor
            y = cast(torch.Tensor, sum(y[i].flip([a + 2 for a in f]) if f else y[i] for i, f in enumerate(flips))) / len(flips)
            y = y * gauss
            if on_tiles is not None:
                on_tiles(len(batch))
            if slabs:
                assert row_logits is not None and row_weight is not None and row_start is not None  # set above in slab mode
                for t, w, tile_logits in zip(batch, windows, y):
                    local = (slice(t[0] - row_start, t[0] - row_start + patch_size[0]), *w[1:])
                    row_logits[(slice(None), *local)] += tile_logits
                    row_weight[local] += gauss
            else:
                y = y.to(acc_device)
                for w, tile_logits in zip(windows, y):
                    logits[(slice(None), *w)] += tile_logits
                    weight[w] += gauss_acc
        if slabs and row_start is not None:
            _flush_row(logits, weight, row_logits, row_weight, row_start)
        logits /= weight
    return logits[(slice(None), *crop)].contiguous()


def _flush_row(logits, weight, row_logits, row_weight, row_start: int) -> None:
    """Add a finished row buffer (on the compute device) into the result volume."""
    span = slice(row_start, row_start + row_weight.shape[0])
    logits[:, span] += row_logits.to(logits.device)
    weight[span] += row_weight.to(weight.device)
