"""Region-based datasets (labels given as lists): targets, sigmoid losses, decoding, ensembling,
sampling locations, post-processing, and a tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from voxseg.data.io import Geometry, read_image
from voxseg.data.labels import IGNORE
from voxseg.inference.ensemble import ensemble_files, load_probabilities, save_probabilities
from voxseg.inference.postprocess import apply_postprocessing, find_postprocessing
from voxseg.losses import LossSettings, build_loss
from voxseg.losses.regions import RegionDiceBCELoss
from voxseg.model.outputs import OutputScheme
from voxseg.preprocessing.locations import class_locations, output_groups

# BraTS-like nesting plus an overlap: whole = {1, 2, 3}, core = {2, 3}, odd = {1, 3}
REGIONS = ((1, 2, 3), (2, 3), (1, 3))
SCHEME = OutputScheme(4, REGIONS, (1, 2, 3))


def test_region_targets_nested_overlapping_and_ignore():
    labels = torch.tensor([[[0, 1, 2, 3, IGNORE]]], dtype=torch.int16)  # (B=1, 1, S=5)
    masks = SCHEME.region_masks(labels)
    assert masks.shape == (1, 3, 5)
    assert masks[0, 0].tolist() == [False, True, True, True, False]
    assert masks[0, 1].tolist() == [False, False, True, True, False]
    assert masks[0, 2].tolist() == [False, True, False, True, False]


def test_region_decoding_paints_in_order_later_overwrites():
    p = torch.zeros(3, 4)
    p[0] = torch.tensor([0.9, 0.9, 0.9, 0.1])  # whole
    p[1] = torch.tensor([0.9, 0.2, 0.9, 0.9])  # core: painted after whole (also where whole is off)
    p[2] = torch.tensor([0.1, 0.1, 0.8, 0.1])  # odd: last
    assert SCHEME.segmentation(p).tolist() == [2, 1, 3, 2]
    reordered = OutputScheme(4, REGIONS, (3, 1, 2))  # region 0 paints 3, region 1 paints 1, ...
    assert reordered.segmentation(p).tolist() == [1, 3, 2, 1]


def test_bce_dice_equals_hand_computation_and_ignore_is_masked():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=gen, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 5, 6), generator=gen).to(torch.int16)
    labels[0, 0, 0] = IGNORE
    loss = RegionDiceBCELoss(REGIONS, batch_dice=False, smooth=0.0)
    out = loss(logits, labels)
    targets = SCHEME.region_masks(labels).float()
    valid = (labels != IGNORE).expand_as(logits).float()
    bce = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * valid).sum() / valid.sum()
    p = torch.sigmoid(logits) * valid
    dice = (2 * (p * targets).sum((2, 3))) / (p.sum((2, 3)) + targets.sum((2, 3)))
    torch.testing.assert_close(out["bce"], bce)
    torch.testing.assert_close(out["dice"], 1 - dice.mean(1).mean())
    out["loss"].backward()
    assert logits.grad[0, :, 0].abs().max() == 0, "ignored voxels get no gradient in any region"
    assert logits.grad[0, :, 1].abs().max() > 0


def test_unannotated_region_is_masked_per_sample():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=gen, requires_grad=True)
    labels = torch.randint(0, 4, (2, 1, 4, 4), generator=gen).to(torch.int16)
    annotated = torch.tensor([[True, True, True], [True, False, True]])
    out = RegionDiceBCELoss(REGIONS)(logits, labels, annotated=annotated)
    out["loss"].backward()
    assert logits.grad[1, 1].abs().max() == 0, "region 1 of sample 1 is not annotated: no loss from it"
    assert logits.grad[0, 1].abs().max() > 0
    full = RegionDiceBCELoss(REGIONS)(logits, labels, annotated=torch.ones(2, 3, dtype=torch.bool))
    torch.testing.assert_close(full["loss"], RegionDiceBCELoss(REGIONS)(logits, labels)["loss"])


def test_build_loss_picks_the_region_loss_and_checks_weights():
    loss = build_loss(LossSettings(), num_classes=4, class_weights=None, ds_scales=None, batch_dice=False, outputs=SCHEME)
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 4, (1, 1, 4, 4)).to(torch.int16)
    parts = loss({"seg": [logits]}, {"labels": [labels]})
    assert {"loss", "seg/bce", "seg/dice"} <= set(parts)
    from voxseg.errors import SettingsError

    with pytest.raises(SettingsError, match="for 3 regions"):
        build_loss(LossSettings(), num_classes=4, class_weights=[1, 1, 1, 1], ds_scales=None, batch_dice=False, outputs=SCHEME)


def test_region_locations_share_voxels_of_nested_regions():
    seg = np.zeros((1, 4, 4, 4), np.int16)
    seg[0, 1, 1, 1] = 1
    seg[0, 2, 2, 2] = 2
    locs = class_locations(seg, output_groups(4, REGIONS), has_ignore=False, seed=0)
    as_set = {k: {tuple(v) for v in a} for k, a in locs.items()}
    assert as_set == {"1": {(1, 1, 1), (2, 2, 2)}, "2": {(2, 2, 2)}, "3": {(1, 1, 1)}}


def test_region_ensemble_averages_sigmoids_and_applies_the_order(tmp_path):
    g = Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    a = np.array([[[0.9, 0.9]], [[0.9, 0.1]]], np.float32)  # (R=2, 1, 2)
    b = np.array([[[0.9, 0.1]], [[0.5, 0.1]]], np.float32)
    save_probabilities(tmp_path / "a.npz", a, g, regions_class_order=(1, 2))
    save_probabilities(tmp_path / "b.npz", b, g, regions_class_order=(1, 2))
    seg = ensemble_files([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "x.nrrd", save_probabilities_to=tmp_path / "m.npz")
    assert seg.tolist() == [[2, 0]]  # mean whole (0.9, 0.5): voxel 1 is exactly 0.5, not > 0.5
    assert load_probabilities(tmp_path / "m.npz")[2] == (1, 2)
    save_probabilities(tmp_path / "c.npz", a[:, :, :], g)  # same shape, softmax decoding
    from voxseg.errors import InputError

    with pytest.raises(InputError, match="decoding differs"):
        ensemble_files([tmp_path / "a.npz", tmp_path / "c.npz"], tmp_path / "y.nrrd")


def test_postprocessing_keeps_largest_component_per_region():
    ref = np.zeros((1, 12, 12), np.int16)
    ref[0, 2:8, 2:8] = 1
    ref[0, 4:6, 4:6] = 2
    pred = ref.copy()
    pred[0, 10, 10] = 2  # a stray speck: part of both regions
    rule = find_postprocessing([(pred, ref)], [(1, 2), (2,)])
    assert rule["keep_largest_foreground"] or rule["keep_largest_per_class"]
    assert (apply_postprocessing(pred, rule) == ref).all()


@pytest.mark.slow
def test_region_dataset_trains_predicts_and_saves_one_channel_per_region(tmp_path):
    from voxseg.cli.main import main
    from voxseg.data.demo import make_demo_dataset

    raw = make_demo_dataset(tmp_path / "raw", cases=4, test_cases=1, seed=3, size_range=(24, 32), regions=True)
    work = tmp_path / "work"
    assert main(["plan", str(raw), "-o", str(work), "--configs", "3d_fullres", "--patch-size", "16,32,32", "-j", "1"]) == 0
    plans = json.loads((work / "plans.json").read_text())
    assert plans["regions"] == [[1, 2], [2]] and plans["regions_class_order"] == [1, 2]
    cfg = plans["configurations"]["3d_fullres"]
    cfg["network"]["features"] = [min(8 * 2**i, 32) for i in range(len(cfg["network"]["features"]))]
    (work / "plans.json").write_text(json.dumps(plans))
    assert main(["preprocess", str(work), "-j", "1"]) == 0
    sets = ["training.epochs=1", "training.iterations_per_epoch=2", "training.val_iterations=1", "sampling.workers=0"]
    assert (
        main(["train", str(work), "3d_fullres", "0", "--device", "cpu", "--name", "r", *[a for s in sets for a in ("--set", s)]])
        == 0
    )
    fold = work / "runs" / "3d_fullres__default__r" / "fold_0"
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines()]
    assert {"train/seg/bce", "val/dice/whole", "val/dice/lesion"} <= set(log[0])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "2"}, "evaluated per region"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "-m",
                str(fold.parent),
                "-i",
                str(raw / "imagesTs"),
                "-o",
                str(out),
                "--device",
                "cpu",
                "--no-tta",
                "--save-probabilities",
            ]
        )
        == 0
    )
    seg, _ = read_image(out / "demo_004.nii.gz")
    probs, _, order = load_probabilities(out / "demo_004.npz")
    assert probs.shape == (2, *seg.shape) and order == (1, 2)
    expected = OutputScheme(3, ((1, 2), (2,)), (1, 2)).segmentation(torch.from_numpy(probs)).numpy()
    assert (expected == seg).mean() > 0.999  # float16 on disk: ties at 0.5 may round
