"""Sliding-window inference: exact reconstruction, batched TTA, batching and accumulation modes."""

from __future__ import annotations

import itertools

import pytest
import torch

from voxseg.errors import SettingsError
from voxseg.inference.sliding_window import (
    gaussian_importance,
    mirror_combinations,
    plan_accumulation,
    sliding_window,
    tile_starts,
)


def identity_model(num_classes: int):
    """Returns its first input channel in every output channel, so blending must reproduce it."""

    def predict(x):
        return x[:, :1].expand(-1, num_classes, *x.shape[2:]) * torch.arange(1, num_classes + 1).view(1, -1, *[1] * (x.ndim - 2))

    return predict


def conv_model(dims: int, in_ch: int, num_classes: int, seed: int = 0):
    """A small random convolution: not mirror symmetric, so every flip gives a different answer."""
    torch.manual_seed(seed)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(in_ch, num_classes, 3, padding=1)
    conv.eval()
    return conv


@pytest.mark.parametrize(
    "shape,patch",
    [
        ((20, 23), (8, 8)),  # larger, not divisible
        ((5, 30), (8, 8)),  # smaller than the patch on one axis
        ((3, 4), (8, 8)),  # smaller on every axis
        ((13, 17, 11), (8, 8, 8)),
        ((6, 19, 9), (8, 6, 10)),
    ],
)
def test_identity_model_reproduces_input(shape, patch):
    torch.manual_seed(1)
    image = torch.randn(2, *shape)
    out = sliding_window(identity_model(3), image, patch, 3, tile_batch=3)
    assert out.shape == (3, *shape) and out.dtype == torch.float32
    for k in range(3):
        torch.testing.assert_close(out[k], image[0] * (k + 1), rtol=1e-5, atol=1e-5)


def test_tile_starts_follow_the_step_rule():
    assert tile_starts(8, 8, 0.5) == [0]
    assert tile_starts(5, 8, 0.5) == [0]
    # ceil((20 - 8) / 4) + 1 = 4 tiles spread evenly from 0 to 12
    assert tile_starts(20, 8, 0.5) == [0, 4, 8, 12]
    starts = tile_starts(23, 8, 0.5)
    assert len(starts) == 5 and starts[0] == 0 and starts[-1] == 15
    assert tile_starts(23, 8, 1.0) == [0, 8, 15]  # ceil(15 / 8) + 1 = 3


def test_gaussian_is_symmetric_peaks_at_one_and_has_no_zeros():
    g = gaussian_importance((9, 12))
    assert g.max().item() == pytest.approx(1.0)
    torch.testing.assert_close(g, g.flip(0).flip(1))
    assert g[4, 0] < g[4, 5]
    tiny = gaussian_importance((64,), sigma_scale=1 / 200)
    assert (tiny > 0).all()


@pytest.mark.parametrize("dims,shape,patch,axes", [(2, (21, 18), (8, 8), (0, 1)), (3, (10, 13, 9), (6, 8, 6), (0, 1, 2))])
def test_batched_tta_equals_sequential_tta(dims, shape, patch, axes):
    torch.manual_seed(2)
    model = conv_model(dims, 2, 3)
    image = torch.randn(2, *shape)

    def sequential_tta(x):
        # One forward per flip, each undone and averaged: the plain reference implementation.
        outs = []
        for r in range(len(axes) + 1):
            for combo in itertools.combinations(axes, r):
                d = [a + 2 for a in combo]
                outs.append(model(x.flip(d)).flip(d) if d else model(x))
        return torch.stack(outs).mean(0)

    with torch.no_grad():
        reference = sliding_window(sequential_tta, image, patch, 3, tile_batch=1)
    batched = sliding_window(model, image, patch, 3, mirror_axes=axes, tile_batch=4)
    plain = sliding_window(model, image, patch, 3)
    torch.testing.assert_close(batched, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, reference, atol=1e-3)


def test_forward_batch_is_tiles_times_flips():
    sizes = []

    def model(x):
        sizes.append(x.shape[0])
        return x[:, :2]

    sliding_window(model, torch.zeros(2, 16, 16, 16), (8, 8, 8), 2, mirror_axes=(0, 1, 2), tile_batch=4)
    # 3 x 3 x 3 = 27 tiles in chunks of 4 (the last holds 3), each with 8 flipped copies.
    assert sizes == [32] * 6 + [24]


def test_forward_batch_caps_each_call_without_changing_the_result():
    model = conv_model(3, 1, 2, seed=5)
    image = torch.randn(1, 14, 17, 12)
    sizes = []

    def counted(x):
        sizes.append(x.shape[0])
        return model(x)

    whole = sliding_window(model, image, (8, 8, 8), 2, tile_batch=3, mirror_axes=(0, 1, 2))
    capped = sliding_window(counted, image, (8, 8, 8), 2, tile_batch=3, mirror_axes=(0, 1, 2), forward_batch=5)
    torch.testing.assert_close(capped, whole, rtol=1e-5, atol=1e-6)
    # 3 x 4 x 2 = 24 tiles: 8 chunks of 3 tiles x 8 flips = 24 inputs, called as 5+5+5+5+4.
    assert sizes == [5, 5, 5, 5, 4] * 8


def test_tile_batch_does_not_change_the_result():
    model = conv_model(3, 1, 2, seed=3)
    image = torch.randn(1, 14, 17, 12)
    a = sliding_window(model, image, (8, 8, 8), 2, tile_batch=1, mirror_axes=(2,))
    b = sliding_window(model, image, (8, 8, 8), 2, tile_batch=8, mirror_axes=(2,))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_slabs_and_cpu_accumulation_match_device_accumulation():
    model = conv_model(3, 1, 3, seed=4)
    image = torch.randn(1, 19, 12, 10)
    full = sliding_window(model, image, (8, 8, 8), 3, tile_batch=3)
    slab = sliding_window(model, image, (8, 8, 8), 3, tile_batch=3, slabs=True)
    cpu = sliding_window(model, image, (8, 8, 8), 3, tile_batch=2, accumulate_device="cpu")
    assert slab.device.type == "cpu"
    torch.testing.assert_close(slab, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cpu, full, rtol=1e-5, atol=1e-6)


def test_precision_runs_under_autocast():
    model = conv_model(2, 1, 2, seed=5)
    image = torch.randn(1, 16, 16)
    out = sliding_window(model, image, (8, 8), 2, precision=torch.bfloat16)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sliding_window(model, image, (8, 8), 2), rtol=0.05, atol=0.05)


def test_plan_accumulation_chooses_by_memory():
    shape, k = (100, 200, 200), 4
    full = (k + 1) * 100 * 200 * 200 * 4
    assert plan_accumulation(shape, k, "cpu", 1) == "device"
    assert plan_accumulation(shape, k, "cuda", 2 * full) == "device"
    assert plan_accumulation(shape, k, "cuda", full // 2, patch_size=(32, 64, 64)) == "slabs"
    assert plan_accumulation(shape, k, "cuda", full // 2) == "cpu"
    assert plan_accumulation(shape, k, "cuda", full // 100, patch_size=(32, 64, 64)) == "cpu"


def test_bad_arguments_raise_settings_errors():
    with pytest.raises(SettingsError):
        mirror_combinations((0, 3), 3)
    with pytest.raises(SettingsError):
        sliding_window(identity_model(1), torch.zeros(1, 8, 8), (8, 8, 8), 1)
    with pytest.raises(SettingsError):
        sliding_window(identity_model(1), torch.zeros(1, 8, 8), (8, 8), 1, step=0)
