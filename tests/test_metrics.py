"""Metrics against hand-computed values and a brute-force surface-distance reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from voxseg.data.labels import IGNORE
from voxseg.evaluation.metrics import (
    compute_metrics,
    foreground_mean,
    label_key,
    mean_metrics,
)


def cube(shape, start, size, shift=(0, 0, 0)):
    m = np.zeros(shape, np.int16)
    m[tuple(slice(s + d, s + d + size) for s, d in zip(start, shift))] = 1
    return m


def ball(shape, centre, radius):
    grid = np.indices(shape)
    return (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2).astype(np.int16)


def brute_force_surface(mask):
    """Voxels of the mask with a face neighbour outside it (outside the image counts as outside)."""
    padded = np.pad(mask, 1)
    core = tuple(slice(1, -1) for _ in mask.shape)
    surface = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for d in (-1, 1):
            surface |= mask & ~np.roll(padded, d, axis=axis)[core]
    return np.argwhere(surface)


@pytest.mark.parametrize(
    "axis,k,spacing", [(2, 2, (1.0, 1.0, 1.0)), (0, 2, (2.0, 1.0, 0.5)), (2, 3, (2.0, 1.0, 0.5)), (1, 1, (3.0, 0.7, 0.7))]
)
def test_shifted_cubes(axis, k, spacing):
    shape, L = (24, 24, 24), 8
    shift = [0, 0, 0]
    shift[axis] = k
    ref = cube(shape, (4, 4, 4), L)
    pred = cube(shape, (4, 4, 4), L, shift)
    m = compute_metrics(pred, ref, [1], spacing, nsd_tolerance=k * spacing[axis])["1"]
    overlap = L * L * (L - k)
    assert (m["TP"], m["FP"], m["FN"]) == (overlap, L**3 - overlap, L**3 - overlap)
    assert m["TN"] == 24**3 - 2 * L**3 + overlap
    assert m["n_pred"] == m["n_ref"] == L**3
    assert m["Dice"] == pytest.approx(2 * overlap / (2 * L**3))
    assert m["IoU"] == pytest.approx(overlap / (2 * L**3 - overlap))
    # The moved front face (> 5 % of the surface) lies exactly k voxels from the reference face.
    assert m["HD95"] == pytest.approx(k * spacing[axis])
    assert m["NSD"] == pytest.approx(1.0)


def test_identical_masks_and_concentric_spheres():
    ref = ball((32, 32, 32), (16, 16, 16), 8)
    same = compute_metrics(ref, ref, [1], (1, 1, 1))["1"]
    assert same["Dice"] == 1 and same["HD95"] == 0 and same["NSD"] == 1
    pred = ball((32, 32, 32), (16, 16, 16), 6)
    m = compute_metrics(pred, ref, [1], (1, 1, 1))["1"]
    assert abs(m["HD95"] - 2.0) <= 1.0
    assert m["Dice"] == pytest.approx(2 * 6**3 / (6**3 + 8**3), abs=0.03)
    # Halving the voxel size doubles the grid, so millimetre distances stay the same.
    fine = compute_metrics(ball((64,) * 3, (32,) * 3, 12), ball((64,) * 3, (32,) * 3, 16), [1], (0.5, 0.5, 0.5))["1"]
    assert abs(fine["HD95"] - 2.0) <= 0.5


@pytest.mark.parametrize("seed", [0, 1])
def test_hd95_and_nsd_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape, spacing, tol = (10, 14, 12), (2.5, 0.8, 1.1), 1.5
    pred = (rng.random(shape) < 0.25).astype(np.int16)
    ref = np.zeros(shape, np.int16)
    ref[2:9, 0:10, 3:12] = 1  # touches the image border
    ref[5, 4, 5] = 0
    m = compute_metrics(pred, ref, [1], spacing, nsd_tolerance=tol)["1"]
    ps = brute_force_surface(pred.astype(bool)) * spacing
    rs = brute_force_surface(ref.astype(bool)) * spacing
    d = cdist(ps, rs)
    p2r, r2p = d.min(1), d.min(0)
    assert m["HD95"] == pytest.approx(max(np.percentile(p2r, 95), np.percentile(r2p, 95)))
    assert m["NSD"] == pytest.approx(((p2r <= tol).sum() + (r2p <= tol).sum()) / (len(p2r) + len(r2p)))


def test_2d_and_channel_axis():
    ref = np.zeros((1, 20, 20), np.int16)
    ref[0, 5:10, 5:10] = 1
    pred = np.roll(ref, 3, axis=2)
    m = compute_metrics(pred, ref, [1], (1.0, 2.0))["1"]
    assert m["Dice"] == pytest.approx(2 * 10 / 50) and m["HD95"] == pytest.approx(6.0)


def test_empty_masks():
    empty = np.zeros((8, 8, 8), np.int16)
    full = cube((8, 8, 8), (2, 2, 2), 3)
    both = compute_metrics(empty, empty, [1], (1, 1, 1))["1"]
    assert math.isnan(both["Dice"]) and math.isnan(both["IoU"]) and math.isnan(both["HD95"]) and math.isnan(both["NSD"])
    assert both["TN"] == 512
    missed = compute_metrics(empty, full, [1], (1, 1, 1))["1"]
    assert missed["Dice"] == 0 and missed["NSD"] == 0 and math.isnan(missed["HD95"]) and missed["FN"] == 27
    spurious = compute_metrics(full, empty, [1], (1, 1, 1))["1"]
    assert spurious["Dice"] == 0 and spurious["FP"] == 27 and math.isnan(spurious["HD95"])


def test_ignore_voxels_are_excluded_everywhere():
    ref = cube((16, 16, 16), (4, 4, 4), 6)
    pred = ref.copy()
    pred[0:3] = 1  # spurious slab ...
    ref[0:3] = IGNORE  # ... entirely inside the unannotated region
    m = compute_metrics(pred, ref, [1], (1, 1, 1))["1"]
    assert m["Dice"] == 1 and m["FP"] == 0 and m["HD95"] == 0 and m["NSD"] == 1
    assert m["TN"] == 16**3 - 3 * 16 * 16 - 6**3
    # A prediction of the ignore sentinel itself is never a hit.
    m2 = compute_metrics(np.where(ref == IGNORE, 1, ref), ref, [1], (1, 1, 1))["1"]
    assert m2["Dice"] == 1


def test_regions_and_keys():
    ref = np.zeros((12, 12, 12), np.int16)
    ref[2:6] = 1
    ref[6:10] = 2
    pred = ref.copy()
    pred[6:10] = 1  # label 2 called 1: wrong per label, right for the region (1, 2)
    m = compute_metrics(pred, ref, [1, 2, (1, 2)], (1, 1, 1), metrics=("dice",))
    assert set(m) == {"1", "2", "(1, 2)"}
    assert m["(1, 2)"]["Dice"] == 1 and m["2"]["Dice"] == 0 and m["1"]["Dice"] == pytest.approx(0.5 * 2 / 1.5)
    assert "HD95" not in m["1"]
    assert label_key((3,)) == "3" and label_key(np.int64(4)) == "4"
    with pytest.raises(ValueError):
        compute_metrics(pred, ref, [1], (1, 1, 1), metrics=("dice", "hausdorff"))


def test_means_use_nanmean():
    per_case = [{"1": {"Dice": 0.5}, "2": {"Dice": float("nan")}}, {"1": {"Dice": 1.0}, "2": {"Dice": 0.2}}]
    means = mean_metrics(per_case)
    assert means["1"]["Dice"] == pytest.approx(0.75) and means["2"]["Dice"] == pytest.approx(0.2)
    assert foreground_mean(means)["Dice"] == pytest.approx(0.475)
    assert math.isnan(mean_metrics([{"1": {"Dice": float("nan")}}])["1"]["Dice"])
