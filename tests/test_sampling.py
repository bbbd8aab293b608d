"""Case and patch sampling: statistical checks with fixed seeds on tiny synthetic stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from voxseg.data.labels import IGNORE
from voxseg.errors import SettingsError
from voxseg.preprocessing.store import Store, write_case
from voxseg.sampling.case_sampler import (
    CaseSampler,
    apply_floor_cap,
    foreground_rarity_weights,
)
from voxseg.sampling.config import SamplingSettings
from voxseg.sampling.patch_sampler import PatchSampler, forced_flags


def locations_of(seg: np.ndarray, has_ignore: bool) -> dict[str, np.ndarray]:
    labels = seg[0]
    locs = {str(k): np.argwhere(labels == k).astype(np.int32) for k in np.unique(labels) if k > 0}
    if has_ignore:
        locs["annotated"] = np.argwhere(labels != IGNORE).astype(np.int32)
    return locs


def write_synthetic_case(
    root: Path, case_id: str, seg: np.ndarray, *, has_ignore: bool = False, channels: int = 1, extra: dict | None = None
) -> None:
    """Image = voxel index (so a crop's position can be read back from its values), labels as given."""
    shape = seg.shape
    image = np.stack([np.arange(np.prod(shape), dtype=np.float32).reshape(shape) + 1 + c for c in range(channels)])
    counts = {str(k): int((seg == k).sum()) for k in np.unique(seg) if k > 0}
    write_case(
        root,
        case_id,
        image,
        seg[None].astype(np.int8),
        {"class_voxel_counts": counts},
        locations_of(seg[None], has_ignore),
        extra,
    )


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("oversample_foreground", 1.5),
        ("center_jitter", -0.1),
        ("weight_cap", 0.5),
        ("weight_floor", 2.0),
        ("adaptive_momentum", 1.0),
        ("workers", -1),
        ("prefetch", 0),
        ("class_probabilities", {0: 1.0}),
    ],
)
def test_bad_settings_raise_settings_error_naming_the_field(field, value):
    with pytest.raises(SettingsError, match=f"sampling.{field}"):
        SamplingSettings(**{field: value})


def test_settings_defaults_and_worker_count():
    s = SamplingSettings()
    assert (s.oversample_foreground, s.center_jitter, s.weight_floor, s.weight_cap) == (0.33, 0.1, 0.1, 10.0)
    assert 1 <= s.resolved_workers() <= 4
    assert SamplingSettings(workers=0).resolved_workers() == 0
    assert SamplingSettings(class_probabilities={"2": 3}).class_probabilities == {2: 3.0}


# -- forced pattern ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, p, n_forced", [(2, 0.33, 1), (5, 0.33, 2), (4, 0.0, 0), (4, 1.0, 4), (12, 0.33, 4)])
def test_forced_flags_follow_nnunet_formula(batch, p, n_forced):
    flags = forced_flags(batch, p)
    assert flags.sum() == batch - round(batch * (1 - p)) == n_forced
    assert not flags[: batch - n_forced].any() and flags[batch - n_forced :].all()


def test_forced_flags_are_split_from_the_global_batch():
    ranks = [forced_flags(2, 0.33, rank=r, world_size=3) for r in range(3)]
    assert np.array_equal(np.concatenate(ranks), forced_flags(6, 0.33))


# -- floor / cap ------------------------------------------------------------------------------------
def test_floor_and_cap_hold_and_keep_ratios_of_free_cases():
    p = np.array([1000.0, 1, 1, 2, 0, 3, 1, 1])
    q = apply_floor_cap(p, 0.2, 3.0)
    n = len(p)
    assert q.sum() == pytest.approx(1.0)
    assert q.min() >= 0.2 / n - 1e-12 and q.max() <= 3.0 / n + 1e-12
    free = (q > 0.2 / n + 1e-9) & (q < 3.0 / n - 1e-9)
    assert free.sum() >= 2
    ratios = q[free] / p[free]
    assert np.allclose(ratios, ratios[0])


# -- case sampler -----------------------------------------------------------------------------------
def _chi2_p(sampler: CaseSampler, draws: int, seed: int = 0) -> tuple[float, np.ndarray]:
    counts = np.bincount(sampler.draw(draws, np.random.default_rng(seed)), minlength=len(sampler))
    return chisquare(counts, sampler.probabilities * draws).pvalue, counts


def test_empirical_case_distribution_matches_bounded_weights():
    ids = [f"c{i}" for i in range(10)]
    weights = [50.0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    sampler = CaseSampler(ids, weights, floor=0.5, cap=3.0)
    n = len(ids)
    assert sampler.probabilities.max() == pytest.approx(3.0 / n)
    assert sampler.probabilities.min() == pytest.approx(0.5 / n)
    pvalue, counts = _chi2_p(sampler, 20000)
    assert pvalue > 0.01
    assert counts[-1] > 0  # the zero-weight case is still drawn thanks to the floor


def test_uniform_draws_pass_chi_square():
    pvalue, _ = _chi2_p(CaseSampler([f"c{i}" for i in range(7)]), 7000, seed=3)
    assert pvalue > 0.01


def test_importance_weights_undo_the_bias_in_expectation():
    ids = [f"c{i}" for i in range(5)]
    sampler = CaseSampler(ids, [8.0, 1, 1, 1, 1], floor=0.1, cap=10)
    draws = sampler.draw(20000, np.random.default_rng(1))
    w = sampler.importance_weights([ids[i] for i in draws])
    assert w.mean() == pytest.approx(1.0, abs=0.03)
    assert w[np.array(draws) == 0].max() < 1 < w[np.array(draws) == 1].min()


def test_case_weights_from_json_and_csv(tmp_path):
    for i in range(3):
        write_synthetic_case(tmp_path / "store", f"c{i}", np.zeros((4, 4, 4), np.int8))
    store = Store(tmp_path / "store")
    (tmp_path / "w.json").write_text(json.dumps({"c0": 1, "c1": 2, "c2": 1}))
    (tmp_path / "w.csv").write_text("case,weight\nc0,1\nc1,2\nc2,1\n")
    for name in ("w.json", "w.csv"):
        s = CaseSampler.from_settings(SamplingSettings(case_weights=str(tmp_path / name)), store, ["c0", "c1", "c2"])
        assert np.allclose(s.probabilities, [0.25, 0.5, 0.25])
    # A fold may train on a subset; ids from the store that are not in the fold are fine.
    s = CaseSampler.from_settings(SamplingSettings(case_weights=str(tmp_path / "w.json")), store, ["c0", "c1"])
    assert np.allclose(s.probabilities, [1 / 3, 2 / 3])


def test_missing_and_unknown_case_ids_are_named(tmp_path):
    for i in range(2):
        write_synthetic_case(tmp_path / "store", f"c{i}", np.zeros((4, 4, 4), np.int8))
    (tmp_path / "w.json").write_text(json.dumps({"c0": 1, "typo7": 2}))
    with pytest.raises(SettingsError, match=r"c1.*typo7") as err:
        CaseSampler.from_settings(
            SamplingSettings(case_weights=str(tmp_path / "w.json")), Store(tmp_path / "store"), ["c0", "c1"]
        )
    assert err.value.path == str(tmp_path / "w.json")
    with pytest.raises(SettingsError, match="not found"):
        CaseSampler.from_settings(SamplingSettings(case_weights=str(tmp_path / "nope.csv")), Store(tmp_path / "store"), ["c0"])


def test_foreground_rarity_gives_every_class_equal_mass(tmp_path):
    segs = {"a": [1, 2], "b": [1], "c": [1], "d": [1], "e": []}
    for cid, classes in segs.items():
        seg = np.zeros((4, 4, 4), np.int8)
        for k in classes:
            seg[k, k, k] = k
        write_synthetic_case(tmp_path, cid, seg)
    s = CaseSampler.from_settings(
        SamplingSettings(case_weights="foreground_rarity", weight_floor=0.0, weight_cap=5), Store(tmp_path), list(segs)
    )
    # class 2 (only in "a") gets as much mass as class 1 (in a..d); "e" has no foreground.
    assert s.probabilities[0] == pytest.approx(0.5 + 0.125)
    assert np.allclose(s.probabilities[1:4], 0.125) and s.probabilities[4] == 0
    w = foreground_rarity_weights([{1: 5}, {1: 9}])
    assert w[0] == w[1] > 0  # every case holds every class: uniform


def test_adaptive_moves_toward_high_loss_cases_within_bounds():
    ids = [f"c{i}" for i in range(4)]
    s = CaseSampler(ids, floor=0.2, cap=2.0, adaptive=True, momentum=0.5, blend=0.8)
    v0 = s.version
    for _ in range(3):
        s.update(["c0", "c1", "c2", "c0"], [4.0, 1.0, 1.0, 4.0])  # c3 never drawn: takes the mean EMA
        s.end_epoch()
    p = s.probabilities
    assert p[0] > p[1] and p[0] > p[3] and np.isclose(p[1], p[2])
    assert p.max() <= 2.0 / 4 + 1e-12 and p.min() >= 0.2 / 4 - 1e-12
    assert s.version > v0 and len(s.schedule) == 3 and s.schedule[-1]["max_share"] == pytest.approx(p.max() * 4)
    # DDP: the reduce hook sees (2, N) totals; doubling both sums and counts leaves means unchanged.
    s2 = CaseSampler(ids, adaptive=True)
    s2.update(["c0"], [3.0])
    s2.end_epoch(reduce=lambda t: 2 * t)
    assert s2.ema[0] == pytest.approx(3.0)


def test_case_sampler_state_round_trip():
    ids = [f"c{i}" for i in range(3)]
    s = CaseSampler(ids, adaptive=True)
    s.update(ids, [1.0, 2.0, 5.0])
    s.end_epoch()
    s.update(["c0"], [7.0])
    restored = CaseSampler(ids, adaptive=True)
    restored.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert np.allclose(restored.probabilities, s.probabilities) and restored.version == s.version
    s.end_epoch()
    restored.end_epoch()
    assert np.allclose(restored.probabilities, s.probabilities)
    with pytest.raises(SettingsError):
        CaseSampler(["x"]).load_state_dict(s.state_dict())


# -- patch sampler ----------------------------------------------------------------------------------
def _final_region(sampler: PatchSampler, arr: np.ndarray) -> np.ndarray:
    off = [(i - p) // 2 for i, p in zip(sampler.input_size, sampler.patch_size)]
    return arr[(slice(None),) + tuple(slice(o, o + p) for o, p in zip(off, sampler.patch_size))]


def _border_case(tmp_path: Path, shape=(12, 20, 16)) -> Store:
    """Class 1: single voxels at all 8 corners; class 2: one voxel in the middle of every face."""
    seg = np.zeros(shape, np.int8)
    for corner in np.ndindex(2, 2, 2):
        seg[tuple(c * (s - 1) for c, s in zip(corner, shape))] = 1
    mid = [s // 2 for s in shape]
    for ax in range(3):
        for end in (0, shape[ax] - 1):
            pos = list(mid)
            pos[ax] = end
            seg[tuple(pos)] = 2
    write_synthetic_case(tmp_path, "border", seg)
    return Store(tmp_path)


@pytest.mark.parametrize("input_size", [None, (10, 14, 12)])
def test_forced_patches_always_contain_the_chosen_class_even_at_borders(tmp_path, input_size):
    case = _border_case(tmp_path).open("border")
    sampler = PatchSampler((6, 8, 8), input_size, center_jitter=0.5)
    image = np.empty((1, *sampler.input_size), np.float32)
    seg = np.empty((1, *sampler.input_size), np.int16)
    rng = np.random.default_rng(0)
    hit = {1: set(), 2: set()}
    for _ in range(3000):
        choice = sampler.choose(case, True, rng)
        sampler.crop(case, choice, image, seg)
        final = _final_region(sampler, seg)
        assert (final == choice.forced_class).any()
        assert choice.forced_class in sampler.classes_in_patch(case, choice)
        # The box stays inside the image (it is larger than the patch on every axis).
        assert all(0 <= lo <= s - p for lo, s, p in zip(choice.lower, case.spatial_shape, sampler.patch_size))
        hit[choice.forced_class].add(tuple(choice.lower))
    # Both classes chosen uniformly; many distinct positions (the jitter moves the voxel around).
    assert len(hit[1]) >= 8 and len(hit[2]) >= 6


def test_crop_reads_the_right_voxels_and_pads_outside_the_image(tmp_path):
    seg = np.zeros((6, 7, 8), np.int8)
    seg[2, 3, 4] = 1
    write_synthetic_case(tmp_path / "a", "small", seg)
    write_synthetic_case(
        tmp_path / "b",
        "small",
        np.where(np.arange(8) < 4, 0, IGNORE).astype(np.int8) * np.ones((6, 7, 8), np.int8),
        has_ignore=True,
    )
    expected = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8) + 1
    for root, has_ignore in (("a", False), ("b", True)):
        case = Store(tmp_path / root).open("small")
        sampler = PatchSampler((8, 8, 8), (10, 12, 10), has_ignore=has_ignore)  # larger than the image
        image = np.empty((1, 10, 12, 10), np.float32)
        labels = np.empty((1, 10, 12, 10), np.int16)
        rng = np.random.default_rng(1)
        for forced in (False, True) * 50:
            choice = sampler.choose(case, forced, rng)
            sampler.crop(case, choice, image, labels)
            lo = sampler.input_lower(choice)
            inside = tuple(slice(-low, -low + s) for low, s in zip(lo, (6, 7, 8)))
            assert np.array_equal(image[0][inside], expected)
            assert image.sum() == expected.sum()  # everything else is 0
            assert (labels == (IGNORE if has_ignore else 0)).sum() >= labels.size - np.prod((6, 7, 8))
            # The image (smaller than the patch) lies wholly inside the final patch.
            assert all(s - p <= low <= 0 for low, s, p in zip(choice.lower, (6, 7, 8), (8, 8, 8)))


def test_unforced_patches_with_ignore_label_are_never_all_ignore(tmp_path):
    seg = np.full((24, 24, 24), IGNORE, np.int8)
    seg[20:22, 1:3, 18:20] = 0  # a small annotated island near a corner
    seg[21, 2, 19] = 1
    write_synthetic_case(tmp_path, "sparse", seg, has_ignore=True)
    case = Store(tmp_path).open("sparse")
    sampler = PatchSampler((8, 8, 8), (12, 12, 12), has_ignore=True, center_jitter=0.5)
    image = np.empty((1, 12, 12, 12), np.float32)
    labels = np.empty((1, 12, 12, 12), np.int16)
    rng = np.random.default_rng(2)
    for _ in range(2000):
        choice = sampler.choose(case, False, rng)
        sampler.crop(case, choice, image, labels)
        assert (_final_region(sampler, labels) != IGNORE).any()


def test_class_probabilities_restrict_the_forced_class(tmp_path):
    seg = np.zeros((10, 10, 10), np.int8)
    seg[1, 1, 1], seg[8, 8, 8], seg[5, 5, 5] = 1, 2, 3
    write_synthetic_case(tmp_path, "three", seg)
    case = Store(tmp_path).open("three")
    rng = np.random.default_rng(3)
    only2 = PatchSampler((4, 4, 4), class_probabilities={2: 1.0, 1: 0.0})
    assert {only2.choose(case, True, rng).forced_class for _ in range(200)} == {2}
    skewed = PatchSampler((4, 4, 4), class_probabilities={1: 3.0, 3: 1.0})
    picks = np.array([skewed.choose(case, True, rng).forced_class for _ in range(4000)])
    assert chisquare([(picks == 1).sum(), (picks == 3).sum()], [3000, 1000]).pvalue > 0.01
    absent = PatchSampler((4, 4, 4), class_probabilities={4: 1.0})
    assert absent.choose(case, True, rng).forced_class is None  # no wanted class present -> random


def test_2d_patches_come_from_the_foreground_slice_or_annotated_slices(tmp_path):
    seg = np.full((20, 16, 16), IGNORE, np.int8)
    seg[[3, 11]] = 0  # two annotated slices
    seg[11, 0, 15] = 1  # foreground in one of them, at a border
    seg[11, 15, 0] = 2
    write_synthetic_case(tmp_path, "stack", seg, has_ignore=True)
    case = Store(tmp_path).open("stack")
    sampler = PatchSampler((8, 8), (10, 12), has_ignore=True)
    image = np.empty((1, 10, 12), np.float32)
    labels = np.empty((1, 10, 12), np.int16)
    rng = np.random.default_rng(4)
    slices = {True: set(), False: set()}
    for forced in (True, False) * 500:
        choice = sampler.choose(case, forced, rng)
        sampler.crop(case, choice, image, labels)
        slices[forced].add(choice.slice_index)
        final = _final_region(sampler, labels)
        if forced:
            assert (final == choice.forced_class).any()
        assert (final != IGNORE).any()
    assert slices[True] == {11} and slices[False] == {3, 11}
    # Without an ignore label unforced slices are uniform over the whole stack.
    plain = PatchSampler((8, 8))
    z = [plain.choose(case, False, rng).slice_index for _ in range(4000)]
    assert chisquare(np.bincount(z, minlength=20)).pvalue > 0.01


def test_case_without_foreground_gives_random_patch_when_forced(tmp_path):
    write_synthetic_case(tmp_path, "empty", np.zeros((10, 12, 14), np.int8))
    case = Store(tmp_path).open("empty")
    sampler = PatchSampler((4, 4, 4))
    rng = np.random.default_rng(5)
    choices = [sampler.choose(case, True, rng) for _ in range(300)]
    assert all(c.forced_class is None for c in choices)
    assert len({c.lower for c in choices}) > 100


def test_copy_box_matches_a_padded_reference_for_every_overlap():
    from voxseg.sampling.patch_sampler import _copy_box

    src = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7) + 1
    padded = np.pad(src, ((0, 0), (9, 9), (9, 9), (9, 9)), constant_values=-5)
    out = np.empty((2, 4, 8, 3), np.float32)
    rng = np.random.default_rng(6)
    for _ in range(400):
        lower = rng.integers(-9, 7, 3)
        out.fill(np.nan)  # stale values must not survive
        _copy_box(src, None, lower, out, -5)
        z, y, x = lower + 9
        assert np.array_equal(out, padded[:, z : z + 4, y : y + 8, x : x + 3])
    plane = np.empty((2, 8, 3), np.float32)
    _copy_box(src, 4, (-2, 5), plane, -5)  # 2D crop from slice 4
    assert np.array_equal(plane, padded[:, 13, 7:15, 14:17])
