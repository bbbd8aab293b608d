"""Batched augmentation: geometry, label guarantees, realised probabilities, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from voxseg.augment.config import AugmentationSettings
from voxseg.augment.intensity import contrast, gamma, gaussian_blur, simulate_lowres
from voxseg.augment.pipeline import Augmenter, downsample_targets
from voxseg.augment.spatial import (
    SpatialParams,
    apply_spatial,
    input_size,
    sampling_grid,
)
from voxseg.data.labels import IGNORE
from voxseg.errors import SettingsError

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # test inputs are random but fixed; the Augmenter has its own seed


NONE = AugmentationSettings.from_preset("none")
INTENSITY_OFF = dict(noise_p=0.0, blur_p=0.0, brightness_p=0.0, contrast_p=0.0, lowres_p=0.0, gamma_inv_p=0.0, gamma_p=0.0)
# worst_case: these tests check that every transform reads only real input, never padding.
SPATIAL_ALWAYS = replace(
    NONE, rotation_p=1.0, scale_p=1.0, mirror_p=0.5, rotation_deg=40.0, scale_range=(0.75, 1.3), input_margin="worst_case"
)


def _centre_crop(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    return x[(slice(None), slice(None), *[slice((s - p) // 2, (s - p) // 2 + p) for s, p in zip(x.shape[2:], patch)])]


def _ellipsoid(size: tuple[int, ...], radii: tuple[float, ...]) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) - (s - 1) / 2 for s in size], indexing="ij")
    return sum((a / r) ** 2 for a, r in zip(axes, radii)) <= 1


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.parametrize("patch", [(12, 16, 14), (20, 18)])
def test_none_preset_is_exact_centre_crop(patch):
    aug = Augmenter(NONE, patch, has_ignore=True, seed=0)
    size = aug.input_size()
    assert size == patch  # nothing moves, so the loader needs no margin
    big = tuple(p + 6 for p in patch)  # a larger input is still centre-cropped exactly
    image = torch.randn(3, 2, *big)
    seg = torch.randint(-1, 4, (3, 1, *big), dtype=torch.int16)
    out, (out_seg,) = aug(image, [seg])
    assert torch.equal(out, _centre_crop(image, patch))
    assert torch.equal(out_seg, _centre_crop(seg, patch))
    assert out_seg.dtype == torch.int16
    out.add_(1)  # the result never aliases the caller's input
    assert torch.equal(image[:, :, 3:-3, 3:-3] if len(patch) == 2 else image[:, :, 3:-3, 3:-3, 3:-3], _centre_crop(image, patch))


def test_untransformed_samples_in_a_moved_batch_are_exact_crops_or_flips():
    settings = replace(NONE, rotation_p=0.5, mirror_p=0.5)
    aug = Augmenter(settings, (10, 12, 12), has_ignore=False, seed=3)
    size = aug.input_size()
    assert all((s - p) % 2 == 0 and s > p for s, p in zip(size, (10, 12, 12)))
    image = torch.randn(16, 1, *size)
    out, _ = aug(image, [])
    params = aug.last_params
    crop = _centre_crop(image, (10, 12, 12))
    still = torch.nonzero(~params["rotate"]).flatten()
    assert 0 < len(still) < 16
    for b in still.tolist():
        flips = [2 + a for a in range(3) if params["mirror"][b, a]]
        expected = crop[b : b + 1].flip(flips) if flips else crop[b : b + 1]
        assert torch.equal(out[b : b + 1], expected)


@pytest.mark.parametrize("patch", [(30, 34, 32), (44, 40)])
def test_image_and_labels_stay_aligned(patch):
    aug = Augmenter(SPATIAL_ALWAYS, patch, has_ignore=False, seed=1)
    size = aug.input_size()
    radii = tuple(p * f for p, f in zip(patch, (0.4, 0.33, 0.37)))
    shape = _ellipsoid(size, radii)
    seg = shape[None, None].repeat(4, 1, *[1] * len(patch)).to(torch.int16)
    out, (out_seg,) = aug(seg.float(), [seg])
    assert bool(aug.last_params["rotate"].all()) and bool(aug.last_params["mirror"].any())
    for b in range(4):
        assert _dice(out[b, 0] > 0.5, out_seg[b, 0] == 1) > 0.98
    # the transform really moved things: at least one sample differs from the plain crop
    assert not torch.equal(out_seg, _centre_crop(seg, patch))


def test_mirroring_flips_exactly():
    aug = Augmenter(replace(NONE, mirror_p=1.0, mirror_axes=(1,)), (6, 8, 10), has_ignore=False, seed=0)
    image = torch.randn(2, 1, 6, 8, 10)
    out, _ = aug(image, [])
    assert torch.equal(out, image.flip(3))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_labels_only_take_input_values_and_extra_maps_follow(mode):
    settings = replace(SPATIAL_ALWAYS, label_interpolation=mode, elastic_p=1.0, **{k: 1.0 for k in INTENSITY_OFF})
    aug = Augmenter(settings, (12, 14, 12), has_ignore=True, seed=5)
    size = aug.input_size()
    blocks = torch.randint(0, 3, (2, 1, *[s // 4 + 1 for s in size]))
    seg = torch.nn.functional.interpolate(blocks.float(), scale_factor=4)[..., : size[0], : size[1], : size[2]]
    seg = torch.where(seg == 2, torch.tensor(5.0), seg).to(torch.int16)  # values {0, 1, 5}: no 2, 3, 4
    seg[:, :, :3] = IGNORE
    extra = (seg * 10).to(torch.int8)
    _, (out_seg, out_extra) = aug(torch.randn(2, 1, *size), [seg, extra])
    assert set(out_seg.unique().tolist()) <= {IGNORE, 0, 1, 5}
    assert out_extra.dtype == torch.int8
    kept = out_seg != IGNORE
    assert torch.equal(out_extra[kept], (out_seg[kept] * 10).to(torch.int8))


def test_ignore_region_stays_ignore():
    aug = Augmenter(SPATIAL_ALWAYS, (24, 26, 24), has_ignore=True, seed=7)
    size = aug.input_size()
    ignore = _ellipsoid(size, (8.0, 10.0, 9.0))
    seg = torch.where(ignore, IGNORE, 1)[None, None].repeat(3, 1, 1, 1, 1).to(torch.int16)
    out, (out_seg,) = aug(ignore[None, None].float().repeat(3, 1, 1, 1, 1), [seg])
    for b in range(3):
        assert _dice(out[b, 0] > 0.5, out_seg[b, 0] == IGNORE) > 0.96
        assert bool((out_seg[b, 0][out[b, 0] > 0.99] == IGNORE).all())
        assert bool((out_seg[b, 0][out[b, 0] < 0.01] == 1).all())


@pytest.mark.parametrize("has_ignore, outside", [(True, IGNORE), (False, 0)])
def test_outside_the_input_becomes_ignore_or_background(has_ignore, outside):
    # scale 1.6 reaches past a margin-free input, so the corners have no source voxels
    params = SpatialParams(
        rotate=torch.ones(1, dtype=torch.bool),
        angles=torch.full((1, 3), math.radians(30), dtype=torch.float64),
        scale=torch.ones(1, dtype=torch.bool),
        scales=torch.full((1, 3), 1.6, dtype=torch.float64),
        elastic=torch.zeros(1, dtype=torch.bool),
        displacement=None,
        mirror=torch.zeros(1, 3, dtype=torch.bool),
    )
    seg = torch.ones(1, 1, 10, 10, 10, dtype=torch.int16)
    image = torch.ones(1, 1, 10, 10, 10)
    out, (out_seg,) = apply_spatial(image, [seg], params, (10, 10, 10), has_ignore=has_ignore)
    assert out_seg[0, 0, 5, 5, 5] == 1
    assert out_seg[0, 0, 0, 0, 0] == outside and out[0, 0, 0, 0, 0] == 0
    assert set(out_seg.unique().tolist()) == {outside, 1}


def test_loader_padding_becomes_background_without_ignore_label():
    aug = Augmenter(NONE, (6, 6, 6), has_ignore=False, seed=0)
    seg = torch.full((1, 1, 6, 6, 6), IGNORE, dtype=torch.int16)
    _, (out_seg,) = aug(torch.zeros(1, 1, 6, 6, 6), [seg])
    assert bool((out_seg == 0).all())


def test_input_size_covers_the_worst_case_and_is_tight():
    settings = AugmentationSettings(rotation_p=1.0, scale_p=1.0, input_margin="worst_case")
    patch = (16, 24, 20)
    size = input_size(patch, settings)
    g = torch.Generator().manual_seed(0)
    # worst corners: extreme angles and the largest scale
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=torch.float64)] * 3)
    angles = torch.cat(
        [signs * math.radians(30), (torch.rand(200, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(30)]
    )
    n = len(angles)
    params = SpatialParams(
        torch.ones(n, dtype=torch.bool),
        angles,
        torch.ones(n, dtype=torch.bool),
        torch.full((n, 3), 1.4, dtype=torch.float64),
        torch.zeros(n, dtype=torch.bool),
        None,
        torch.zeros(n, 3, dtype=torch.bool),
    )
    grid = sampling_grid(params.matrix, None, size, patch, torch.device("cpu"), torch.float64)
    pixel = (grid + 1) * torch.tensor(size[::-1], dtype=torch.float64) / 2 - 0.5  # xyz voxel coordinates
    reach = pixel.flatten(0, -2)
    top = torch.tensor(size[::-1], dtype=torch.float64) - 1
    assert bool((reach >= -0.06).all()) and bool((reach <= top + 0.06).all())
    # tight: the extremes come within two voxels of every input border
    assert bool((reach.amin(0) < 2).all()) and bool((reach.amax(0) > top - 2).all())


def test_in_plane_only_keeps_axis_zero():
    settings = AugmentationSettings(rotation_p=1.0, scale_p=1.0, elastic_p=1.0)
    size = input_size((8, 32, 32), settings, in_plane_only=True)
    assert size[0] == 8 and size[1] > 32
    aug = Augmenter(settings, (8, 32, 32), has_ignore=False, seed=0, in_plane_only=True)
    aug(torch.randn(2, 1, *aug.input_size()), [])
    assert bool((aug.last_params["angles_deg"][:, 1:] == 0).all()) and bool((aug.last_params["scales"][:, 0] == 1).all())
    assert aug.last_params["angles_deg"].abs().max() > 30  # nnU-Net's +-180 in-plane range


def test_probabilities_are_realised():
    settings = AugmentationSettings(elastic_p=0.3)
    aug = Augmenter(settings, (6, 6, 6), has_ignore=False, seed=11)
    image = torch.rand(250, 1, *aug.input_size())
    records = []
    for _ in range(8):
        aug(image, [])
        records.append(aug.last_params)
    n = 250 * 8
    expected = {
        "rotate": 0.2,
        "scale": 0.2,
        "elastic": 0.3,
        "mirror": 0.5,
        "noise": 0.1,
        "blur": 0.1,
        "brightness": 0.15,
        "contrast": 0.15,
        "lowres": 0.125,
        "gamma_inv": 0.1,
        "gamma": 0.3,
    }
    for key, p in expected.items():
        hits = torch.cat([r[key].flatten() for r in records]).double()
        tolerance = 4 * math.sqrt(p * (1 - p) / len(hits))
        assert abs(float(hits.mean()) - p) < tolerance, key
    scales = torch.cat([r["scales"][r["scale"]] for r in records])
    assert bool((scales[:, 0] == scales[:, 1]).all()) and float(scales.min()) >= 0.7 and float(scales.max()) <= 1.4
    assert n == sum(len(r["rotate"]) for r in records)


def test_same_seed_same_output_and_resume():
    settings = AugmentationSettings(rotation_p=0.5, scale_p=0.5, noise_p=0.5, blur_p=0.5, lowres_p=0.5)
    make = lambda seed: Augmenter(settings, (10, 10, 10), has_ignore=True, seed=seed)  # noqa: E731
    a, b, c = make(4), make(4), make(5)
    size = a.input_size()
    image = torch.randn(4, 2, *size)
    seg = torch.randint(-1, 3, (4, 1, *size), dtype=torch.int16)
    out_a, seg_a = a(image, [seg])
    out_b, seg_b = b(image, [seg])
    assert torch.equal(out_a, out_b) and torch.equal(seg_a[0], seg_b[0])
    assert not torch.equal(out_a, c(image, [seg])[0])
    state = a.state_dict()
    after = a(image, [seg])[0]
    b.load_state_dict(state)
    assert torch.equal(after, b(image, [seg])[0])


@pytest.mark.parametrize("patch", [(8, 8, 8), (12, 10)])
def test_intensity_transforms_touch_only_the_chosen_rows(patch):
    settings = replace(
        NONE, brightness_p=0.5, contrast_p=0.5, gamma_p=0.5, gamma_inv_p=0.5, blur_p=0.5, lowres_p=0.5, noise_p=0.5
    )
    aug = Augmenter(settings, patch, has_ignore=False, seed=2)
    image = torch.rand(12, 2, *patch)
    out, _ = aug(image, [])
    p = aug.last_params
    touched = p["noise"] | p["blur"] | p["brightness"] | p["contrast"] | p["lowres"] | p["gamma"] | p["gamma_inv"]
    for b in range(12):
        for c in range(2):
            assert torch.equal(out[b, c], image[b, c]) == (not bool(touched[b, c])), (b, c)


def test_intensity_functions_keep_their_promises():
    rows = torch.rand(3, 10, 12, 9) * 5 - 1
    out = gamma(rows, torch.tensor([0.7, 1.0, 1.5]), retain_stats=True)
    assert torch.allclose(out.mean((1, 2, 3)), rows.mean((1, 2, 3)), atol=1e-4)
    assert torch.allclose(out.std((1, 2, 3)), rows.std((1, 2, 3)), atol=1e-4)
    assert not torch.allclose(out[0], rows[0])
    out = contrast(rows, torch.tensor([1.25, 0.75, 1.0]), preserve_range=True)
    assert bool((out.amax((1, 2, 3)) <= rows.amax((1, 2, 3))).all()) and bool((out.amin((1, 2, 3)) >= rows.amin((1, 2, 3))).all())
    assert torch.allclose(out[2], rows[2], atol=1e-6)
    flat = torch.full((2, 9, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([[0.5, 0.7, 1.0], [1.0, 1.0, 1.0]])), flat)
    spike = torch.zeros(1, 9, 9, 9)
    spike[0, 4, 4, 4] = 1
    blurred = gaussian_blur(spike, torch.tensor([[1.0, 1.0, 1.0]]))
    assert math.isclose(float(blurred.sum()), 1.0, rel_tol=1e-5) and float(blurred.max()) < 0.1
    assert torch.equal(simulate_lowres(rows, torch.tensor([1.0, 1.0, 1.0]), (0, 1, 2)), rows)
    # zoom 0.5 matches nearest-exact down + linear up, as nnU-Net does it
    half = simulate_lowres(rows[:1], torch.tensor([0.5]), (0, 1, 2))
    down = torch.nn.functional.interpolate(rows[:1, None], size=(5, 6, 4), mode="nearest-exact")
    up = torch.nn.functional.interpolate(down, size=(10, 12, 9), mode="trilinear")
    assert torch.allclose(half, up[:, 0], atol=1e-5)


def test_downsample_targets_builds_the_pyramid_with_nearest():
    seg = torch.randint(-1, 3, (2, 1, 16, 16, 8), dtype=torch.int16)
    pyramid = downsample_targets(seg, [[1, 1, 1], [0.5, 0.5, 1], [0.25, 0.25, 0.5]])
    assert pyramid[0] is seg
    assert [tuple(t.shape[2:]) for t in pyramid] == [(16, 16, 8), (8, 8, 8), (4, 4, 4)]
    assert pyramid[1].dtype == torch.int16 and set(pyramid[2].unique().tolist()) <= {-1, 0, 1, 2}
    assert torch.equal(pyramid[1], seg[:, :, 1::2, 1::2, :])  # nearest-exact at half size: voxel 2i + 1


def test_settings_presets_and_errors():
    light = AugmentationSettings.from_dict({"preset": "light", "noise_p": 0.3, "scale_range": [0.9, 1.1]})
    assert light.preset == "light" and light.noise_p == 0.3 and light.scale_range == (0.9, 1.1) and light.blur_p == 0.0
    assert AugmentationSettings.from_dict(light.to_dict()) == light
    with pytest.raises(SettingsError, match=r"augmentation\.rotation_p"):
        AugmentationSettings(rotation_p=1.5)
    with pytest.raises(SettingsError, match="unknown augmentation"):
        AugmentationSettings.from_dict({"rotaton_p": 0.1})
    with pytest.raises(SettingsError, match="preset"):
        AugmentationSettings.from_preset("heavy")
    with pytest.raises(SettingsError, match="mirror_axes"):
        Augmenter(AugmentationSettings(mirror_axes=(2,)), (16, 16), has_ignore=False, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_parameters():
    settings = AugmentationSettings(rotation_p=1.0, noise_p=0.0)
    cpu, gpu = (Augmenter(settings, (16, 16, 16), has_ignore=True, seed=9) for _ in range(2))
    image = torch.randn(2, 1, *cpu.input_size())
    seg = torch.randint(0, 3, (2, 1, *cpu.input_size()), dtype=torch.int16)
    out_cpu, (seg_cpu,) = cpu(image, [seg])
    out_gpu, (seg_gpu,) = gpu(image.cuda(), [seg.cuda()])
    assert out_gpu.device.type == "cuda" and torch.allclose(out_cpu, out_gpu.cpu(), atol=1e-4)
    assert (seg_cpu != seg_gpu.cpu()).float().mean() < 1e-3


def test_nnunet_margin_caps_the_zoom_out_like_nnunet():
    worst = input_size((72, 80, 80), AugmentationSettings(input_margin="worst_case"))
    capped = input_size((72, 80, 80), AugmentationSettings())
    assert all(c < w for c, w in zip(capped, worst))
    assert math.prod(capped) < 0.7 * math.prod(worst)
    no_scale = input_size((72, 80, 80), AugmentationSettings(scale_range=(0.7, 1.0)))
    assert no_scale == input_size((72, 80, 80), AugmentationSettings(scale_range=(0.7, 1.0), input_margin="worst_case"))
