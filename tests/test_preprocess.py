"""Plan + preprocess a tiny demo dataset; compare one stored case with an independent resampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from voxseg.data.io import read_case_images
from voxseg.data.labels import IGNORE
from voxseg.data.spec import load_dataset, read_label
from voxseg.planning.planner import PlannerOptions, plan_and_save
from voxseg.plans import load_plans
from voxseg.preprocessing.preprocess import (
    preprocess_case,
    preprocess_dataset,
    restore_labels,
    store_dir,
)
from voxseg.preprocessing.resample import resample_channels, resample_labels
from voxseg.preprocessing.store import Store

OPTS = PlannerOptions(configs=("2d", "3d_fullres"))


@pytest.fixture(scope="module")
def work(demo_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    plan_and_save(demo_dataset, work, OPTS, workers=1, progress=False)
    preprocess_dataset(work, workers=1, progress=False)
    return work


def _independent(image, spacing, target, plan):
    """scipy zoom, in-plane cubic per slice clipped to the slice's range (skimage resize, as nnU-Net
    calls it per slice), then nearest along z (the anisotropic rule)."""
    norm = plan.normalization[0]
    x = (np.clip(image[0], norm.lower, norm.upper) - norm.mean) / norm.std
    shape = [int(round(s * sp / t)) for s, sp, t in zip(x.shape, spacing, target)]
    inplane = np.stack(
        [
            np.clip(
                ndimage.zoom(sl, (shape[1] / x.shape[1], shape[2] / x.shape[2]), order=3, mode="nearest", grid_mode=True),
                sl.min(),
                sl.max(),
            )
            for sl in x
        ]
    )
    z = np.clip(np.floor((np.arange(shape[0]) + 0.5) * x.shape[0] / shape[0]).astype(int), 0, x.shape[0] - 1)
    return inplane[z]


def test_plan_file_layout(work):
    plans = json.loads((work / "plans.json").read_text())
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    assert plans["normalization"][0]["scheme"] == "ct"
    full = plans["configurations"]["3d_fullres"]
    assert full["dims"] == 3 and len(full["spacing"]) == 3 and full["batch_size"] >= 2
    assert plans["configurations"]["2d"]["spacing"] == full["spacing"][1:]
    assert (work / "dataset.json").is_file() and (work / "fingerprint.json").is_file()
    assert (
        sorted(c for s in json.loads((work / "splits.json").read_text()) for c in s["val"])
        == load_dataset(plans["dataset_path"]).case_ids
    )


@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_stored_case_matches_independent_resampling(work, demo_dataset, config):
    plan = load_plans(work)
    spec = load_dataset(demo_dataset)
    case = spec.training[0]
    image, geometry = read_case_images(case.images)
    seg, _ = read_label(case.label, spec)
    stored = Store(store_dir(work, config)).open(case.case_id)
    cfg = plan.configurations[config]
    target = list(cfg.spacing) if cfg.dims == 3 else [geometry.spacing[0], *cfg.spacing]
    expected = _independent(image, geometry.spacing, target, plan)
    assert stored.image.shape[1:] == expected.shape == stored.seg.shape[1:]
    assert stored.properties["spacing"] == pytest.approx(target)
    np.testing.assert_allclose(stored.image[0], expected, atol=1e-3)
    assert set(np.unique(stored.seg)) == set(np.unique(seg))
    fg = stored.image[0][stored.seg[0] > 0]  # dataset statistics: foreground roughly zero-mean, unit-std
    assert abs(float(fg.mean())) < 1.0 and 0.2 < float(fg.std()) < 2.0
    counts = np.bincount(stored.seg.ravel().astype(np.int64), minlength=3)
    assert stored.properties["class_voxel_counts"] == counts.tolist()
    locs = stored.locations["1"]
    assert len(locs) == counts[1] and (stored.seg[0][tuple(locs.T)] == 1).all()


def test_restore_inverts_preprocessing(work, demo_dataset):
    plan = load_plans(work)
    spec = load_dataset(demo_dataset)
    case = spec.training[1]
    image, geometry = read_case_images(case.images)
    seg, _ = read_label(case.label, spec)
    _, seg_pp, props = preprocess_case(image, geometry, plan, "3d_fullres", seg)
    back = restore_labels(seg_pp, props)
    assert back.shape == seg.shape
    organ = (back == 1), (seg == 1)
    dice = 2 * (organ[0] & organ[1]).sum() / (organ[0].sum() + organ[1].sum())
    assert dice > 0.9


def test_resume_after_deleted_and_half_written_case(work):
    root = store_dir(work, "3d_fullres")
    before = np.load(root / "demo_002.npy")
    (root / "demo_002.json").unlink()  # unfinished case
    (root / "demo_002.npy").write_bytes(b"\x93NUMPY half")  # half-written array
    (root / ".demo_003.abc.tmp.npy").write_bytes(b"junk")  # temp file of an interrupted write
    written = preprocess_dataset(work, ["3d_fullres"], workers=1, progress=False)
    assert written == {"3d_fullres": 1}
    np.testing.assert_array_equal(np.load(root / "demo_002.npy"), before)
    assert not list(root.glob(".*tmp*"))
    assert preprocess_dataset(work, ["3d_fullres"], workers=1, progress=False) == {"3d_fullres": 0}


def test_ignore_label_store_has_annotated_locations(demo_dataset_ignore, tmp_path):
    plan_and_save(demo_dataset_ignore, tmp_path, PlannerOptions(configs=("3d_fullres",)), workers=1, progress=False)
    preprocess_dataset(tmp_path, workers=1, progress=False)
    stored = Store(store_dir(tmp_path, "3d_fullres")).open("demo_000")
    assert load_plans(tmp_path).has_ignore and (stored.seg == IGNORE).any()
    ann = stored.locations["annotated"]
    assert len(ann) > 0 and (stored.seg[0][tuple(ann.T)] != IGNORE).all()


def test_resample_matches_clipped_scipy_zoom_and_labels_keep_classes():
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.normal(size=(20, 24, 18)), 1.5).astype(np.float32)
    shape = (27, 17, 30)
    ref = ndimage.zoom(a, [n / o for n, o in zip(shape, a.shape)], order=3, mode="nearest", grid_mode=True)
    ref = np.clip(ref, a.min(), a.max())  # skimage resize's clip, as nnU-Net uses it
    np.testing.assert_allclose(resample_channels(a[None], shape, order=3)[0], ref, atol=1e-5)
    seg = np.zeros((1, 20, 24, 18), np.int16)
    seg[0, 5:15, 6:18, 4:14] = 1
    seg[0, 8:11, 9:12, 7:10] = 2
    seg[0, :2] = IGNORE
    out = resample_labels(seg, (40, 48, 36))
    assert set(np.unique(out)) == {IGNORE, 0, 1, 2}
    assert abs((out == 1).sum() / 8 - (seg == 1).sum()) / (seg == 1).sum() < 0.1


def test_cubic_overshoot_is_clipped_to_the_input_range_as_skimage_resize_does():
    # A step edge makes the cubic spline overshoot; nnU-Net's skimage resize clips it to the range of
    # each channel (of each 2D slice along the coarse axis when that axis is resampled separately).
    a = np.zeros((2, 12, 16, 16), np.float32)
    a[0, :, :, 8:] = 1.0
    a[1, :6, :, 8:] = 2.0  # slices 0-5 span [0, 2], slices 6-11 are all zero
    out = resample_channels(a, (12, 23, 21), order=3)
    raw = ndimage.zoom(a[0], (1, 23 / 16, 21 / 16), order=3, mode="nearest", grid_mode=True)
    assert raw.min() < -0.01 and raw.max() > 1.01, "the unclipped spline overshoots here"
    np.testing.assert_allclose(out[0], np.clip(raw, 0, 1), atol=1e-5)
    assert out[1].min() >= 0 and out[1].max() <= 2
    per_slice = resample_channels(a, (24, 23, 21), order=3, nearest_axis=0)
    assert per_slice.shape == (2, 24, 23, 21)
    assert (per_slice[1, 12:] == 0).all(), "a constant slice stays constant: its own range, not the channel's"
    assert per_slice[1, :12].min() >= 0 and per_slice[1, :12].max() <= 2 and per_slice[1, :12].max() == 2


def test_plan_refuses_a_dataset_that_fails_verify(demo_dataset, tmp_path, capsys):
    import shutil

    from voxseg.errors import DatasetError

    broken = tmp_path / "raw"
    shutil.copytree(demo_dataset, broken)
    label = sorted((broken / "labelsTr").iterdir())[0]
    label.unlink()
    with pytest.raises(DatasetError) as e:
        plan_and_save(broken, tmp_path / "work", OPTS, workers=1, progress=False)
    assert e.value.fix and not (tmp_path / "work" / "plans.json").exists()
    assert label.stem.split(".")[0] in capsys.readouterr().err


def test_cli_override_that_cannot_fit_is_one_error_line(work, demo_dataset, tmp_path):
    import argparse

    from voxseg.cli import plan as cli_plan
    from voxseg.errors import PlanError

    parser = argparse.ArgumentParser()
    cli_plan.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "plan",
            str(demo_dataset),
            "-o",
            str(work),
            "--configs",
            "3d_fullres",
            "--patch-size",
            "16,32,32",
            "--batch-size",
            "100000",
            "--gpu-memory",
            "1",
            "-j",
            "1",
        ]
    )
    with pytest.raises(PlanError, match="over the 1 GB budget"):
        args.func(args)
