"""Channel normalisation: nnU-Net's name -> scheme mapping and each scheme on known arrays."""

from __future__ import annotations

import numpy as np
import pytest

from voxseg.errors import DatasetError, PlanError
from voxseg.planning.normalization import parse_overrides, plan_normalization, scheme_for_name
from voxseg.plans import Normalization
from voxseg.preprocessing.normalize import normalize_channels

STATS = {"mean": 50.0, "std": 10.0, "p00_5": 0.0, "p99_5": 100.0}


@pytest.mark.parametrize(
    "name, scheme",
    [
        ("CT", "ct"),
        ("ct", "ct"),
        ("zscore", "zscore"),
        ("ZScore", "zscore"),
        ("noNorm", "nonorm"),
        ("NONORM", "nonorm"),
        ("rescale_to_0_1", "rescale_to_0_1"),
        ("RGB_to_0_1", "rgb_to_0_1"),
        ("T1", "zscore"),
        ("R", "zscore"),
        ("MRI", "zscore"),
    ],
)
def test_channel_names_pick_nnunets_scheme(name, scheme):
    assert scheme_for_name(name) == scheme


def test_plan_normalization_uses_stats_crop_ratio_and_overrides():
    plan = plan_normalization(["CT", "T2", "noNorm"], [STATS] * 3, median_kept_fraction=0.5)
    assert [n.scheme for n in plan] == ["ct", "zscore", "nonorm"]
    assert (plan[0].lower, plan[0].upper, plan[0].mean, plan[0].std) == (0.0, 100.0, 50.0, 10.0)
    assert plan[1].use_nonzero_mask, "cropping kept < 75%: z-score inside the non-zero mask"
    assert not plan_normalization(["T2"], [STATS], median_kept_fraction=0.9)[0].use_nonzero_mask
    overridden = plan_normalization(["CT", "T2", "x"], [STATS] * 3, 0.9, parse_overrides("0=noNorm,2=rescale_to_0_1"))
    assert [n.scheme for n in overridden] == ["nonorm", "zscore", "rescale_to_0_1"]
    with pytest.raises(PlanError, match="CHANNEL=SCHEME"):
        parse_overrides("0=minmax")
    with pytest.raises(PlanError, match="channel"):
        plan_normalization(["CT"], [STATS], 0.9, {3: "zscore"})


def test_each_scheme_on_known_arrays():
    image = np.stack([np.array([[-100, 0, 50, 200]], np.float32)] * 4)  # 4 channels, (1, 4) each
    schemes = [
        Normalization("ct", mean=50.0, std=10.0, lower=0.0, upper=100.0),
        Normalization("zscore"),
        Normalization("nonorm"),
        Normalization("rescale_to_0_1"),
    ]
    out = normalize_channels(image.copy(), schemes)
    np.testing.assert_allclose(out[0], [[-5, -5, 0, 5]])
    x = np.array([-100, 0, 50, 200], np.float64)
    np.testing.assert_allclose(out[1], [(x - x.mean()) / x.std()], rtol=1e-5)
    np.testing.assert_array_equal(out[2], image[2])
    np.testing.assert_allclose(out[3], [[0, 1 / 3, 0.5, 1]], rtol=1e-6)
    rgb = normalize_channels(np.array([[[0, 51, 255]]], np.float32), [Normalization("rgb_to_0_1")])
    np.testing.assert_allclose(rgb, [[[0, 0.2, 1]]])


def test_masked_zscore_uses_the_mask_and_zeros_outside():
    image = np.array([[[0, 0, 2, 4, 6]]], np.float32)
    mask = image[0] != 0
    out = normalize_channels(image.copy(), [Normalization("zscore", use_nonzero_mask=True)], mask)
    inside = np.array([2, 4, 6], np.float64)
    np.testing.assert_allclose(out[0, 0, 2:], (inside - inside.mean()) / inside.std(), rtol=1e-6)
    assert (out[0, 0, :2] == 0).all()


def test_rgb_outside_8_bit_is_refused_not_squeezed():
    with pytest.raises(DatasetError, match="8-bit"):
        normalize_channels(np.array([[[0, 300]]], np.float32), [Normalization("rgb_to_0_1")])


def test_unknown_scheme_in_plans_is_an_error():
    with pytest.raises(PlanError, match="unknown normalization scheme"):
        Normalization("minmax")


def test_masked_zscore_normalises_zero_voxels_inside_the_filled_mask():
    """The mask is the hole-filled non-zero region of all channels (nnU-Net's), not `image != 0`:
    a zero voxel enclosed by tissue is normalised like its neighbours, not zeroed."""
    from voxseg.data.crop import filled_nonzero_mask

    image = np.zeros((1, 5, 5), np.float32)  # one 2D channel
    image[0, 1:4, 1:4] = [[2, 4, 6], [8, 0, 10], [12, 14, 16]]  # a zero hole in the middle
    mask = filled_nonzero_mask(image)
    assert mask[2, 2] and mask.sum() == 9
    out = normalize_channels(image.copy(), [Normalization("zscore", use_nonzero_mask=True)], mask)
    inside = image[0][mask].astype(np.float64)
    np.testing.assert_allclose(out[0][mask], (inside - inside.mean()) / inside.std(), rtol=1e-6)
    assert out[0, 2, 2] == pytest.approx((0 - inside.mean()) / inside.std(), rel=1e-6) and out[0, 2, 2] != 0
    assert (out[0][~mask] == 0).all()


def test_zscore_statistics_are_per_channel_and_only_masked_channels_use_the_mask():
    rng = np.random.default_rng(0)
    image = np.zeros((3, 8, 16, 16), np.float32)
    image[:, 2:6, 4:12, 4:12] = rng.normal(
        [[[[1000.0]]], [[[-5.0]]], [[[3.0]]]], [[[[200.0]]], [[[0.01]]], [[[2.0]]]], (3, 4, 8, 8)
    )
    mask = image[0] != 0
    schemes = [
        Normalization("zscore", use_nonzero_mask=True),
        Normalization("zscore", use_nonzero_mask=True),
        Normalization("zscore"),
    ]
    out = normalize_channels(image.copy(), schemes, mask)
    for c in (0, 1):  # inside the mask: mean 0, std 1 whatever the channel's scale; outside: 0
        assert out[c][mask].mean() == pytest.approx(0, abs=1e-4) and out[c][mask].std() == pytest.approx(1, rel=1e-4)
        assert (out[c][~mask] == 0).all()
    whole = image[2].astype(np.float64)  # unmasked: statistics of every voxel, background included
    np.testing.assert_allclose(out[2], (whole - whole.mean()) / whole.std(), rtol=1e-4, atol=1e-5)
    assert out[2][~mask].std() == 0 and out[2][~mask][0] == pytest.approx(-whole.mean() / whole.std(), rel=1e-5)


def test_zscore_of_a_constant_channel_or_an_empty_mask_is_zero_not_nan():
    flat = normalize_channels(np.full((1, 4, 4), 7.0, np.float32), [Normalization("zscore")])
    assert np.isfinite(flat).all() and (flat == 0).all()
    empty = normalize_channels(
        np.ones((1, 4, 4), np.float32), [Normalization("zscore", use_nonzero_mask=True)], np.zeros((4, 4), bool)
    )
    assert np.isfinite(empty).all() and (empty == 0).all()
    with pytest.raises(ValueError, match="non-zero mask is required"):
        normalize_channels(np.ones((1, 4, 4), np.float32), [Normalization("zscore", use_nonzero_mask=True)])
