"""`voxseg evaluate` on tiny label files written in the test."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from voxseg.cli.evaluate import register
from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError, NotFoundError
from voxseg.evaluation.evaluate import evaluate_folders, load_label_setup
from voxseg.inference.postprocess import find_postprocessing_folders

SPACING = (2.0, 1.0, 1.0)
GEOMETRY = Geometry(SPACING, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def write_dataset(tmp_path, labels=None, ending=".nrrd"):
    meta = {
        "channel_names": {"0": "CT"},
        "labels": labels or {"background": 0, "liver": 1, "tumour": 2, "ignore": 3},
        "file_ending": ending,
        "numTraining": 3,
    }
    if labels and any(isinstance(v, list) for v in labels.values()):
        meta["regions_class_order"] = [1, 2]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path / "dataset.json"


def make_cases(tmp_path):
    """Three cases: perfect, a 1-slice shift (2 mm along z), and one with no tumour anywhere."""
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:8, 2:10, 2:10] = 1
    ref[4:6, 4:6, 4:6] = 2
    shifted = np.zeros_like(ref)
    shifted[3:9, 2:10, 2:10] = 1
    shifted[5:7, 4:6, 4:6] = 2
    no_tumour = np.where(ref == 2, 1, ref)
    with_ignore = ref.copy()
    with_ignore[0, :, :] = 3  # raw ignore value; the prediction paints liver there
    pred_ignore = ref.copy()
    pred_ignore[0, :, :] = 1
    for case, r, p in (("a", with_ignore, pred_ignore), ("b", ref, shifted), ("c", no_tumour, no_tumour)):
        write_image(refs / f"{case}.nrrd", r, GEOMETRY)
        write_image(preds / f"{case}.nrrd", p, GEOMETRY)
    return preds, refs


def test_summary_layout_values_and_csv(tmp_path):
    dataset_json = write_dataset(tmp_path)
    preds, refs = make_cases(tmp_path)
    summary = evaluate_folders(preds, refs, dataset_json, progress=False)
    on_disk = json.loads((preds / "summary.json").read_text())
    assert on_disk["mean"]["1"]["Dice"] == pytest.approx(summary["mean"]["1"]["Dice"])
    assert [c["case_id"] for c in summary["metric_per_case"]] == ["a", "b", "c"]
    a, b, c = (case["metrics"] for case in summary["metric_per_case"])
    # Case a: the liver painted over ignore voxels is not a false positive.
    assert a["1"]["Dice"] == 1 and a["1"]["FP"] == 0 and a["1"]["TN"] == 9 * 12 * 12 - (6 * 64 - 8)
    # Case b: one slice of shift is 2 mm along z.
    # liver = box minus tumour: 5 shared slices of the box, less the 12 voxels tumour in either file
    assert b["1"]["Dice"] == pytest.approx(2 * (5 * 64 - 12) / (2 * (6 * 64 - 8))) and b["1"]["HD95"] == pytest.approx(2.0)
    assert b["2"]["Dice"] == pytest.approx(0.5)
    # Case c: no tumour in either file -> NaN, left out of the mean (nanmean).
    assert math.isnan(c["2"]["Dice"]) and math.isnan(c["2"]["HD95"])
    assert summary["mean"]["2"]["Dice"] == pytest.approx(0.75)
    assert summary["foreground_mean"]["Dice"] == pytest.approx((summary["mean"]["1"]["Dice"] + 0.75) / 2)
    assert summary["label_names"] == {"1": "liver", "2": "tumour"}
    assert summary["metric_per_case"][0]["prediction_file"].endswith("pred/a.nrrd")
    rows = list(csv.DictReader((preds / "summary.csv").open()))
    assert len(rows) == 6 and rows[0]["case_id"] == "a" and rows[0]["name"] == "liver" and float(rows[0]["Dice"]) == 1


def test_parallel_equals_serial_and_metric_choice(tmp_path):
    dataset_json = write_dataset(tmp_path)
    preds, refs = make_cases(tmp_path)
    serial = evaluate_folders(preds, refs, dataset_json, output=tmp_path / "s.json", metrics=("dice",), progress=False)
    parallel = evaluate_folders(
        preds, refs, dataset_json, output=tmp_path / "p.json", metrics=("dice",), num_workers=2, progress=False
    )
    assert json.dumps(serial["metric_per_case"]) == json.dumps(parallel["metric_per_case"])
    assert set(serial["mean"]["1"]) == {"TP", "FP", "FN", "TN", "n_pred", "n_ref", "Dice"}
    assert (tmp_path / "p.csv").is_file()


def test_regions_are_evaluated_as_unions(tmp_path):
    dataset_json = write_dataset(tmp_path, labels={"background": 0, "whole": [1, 2], "core": [2]})
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:5, 1:7, 1:7] = 1
    ref[2:4, 3:5, 3:5] = 2
    write_image(refs / "r.nrrd", ref, GEOMETRY)
    write_image(preds / "r.nrrd", np.where(ref > 0, 1, 0).astype(np.uint8), GEOMETRY)
    setup = load_label_setup(dataset_json)
    assert setup.eval_labels == ((1, 2), (2,)) and setup.names == {"(1, 2)": "whole", "2": "core"}
    m = evaluate_folders(preds, refs, dataset_json, progress=False)["metric_per_case"][0]["metrics"]
    assert m["(1, 2)"]["Dice"] == 1 and m["2"]["Dice"] == 0


def test_user_mistakes_name_the_file(tmp_path):
    dataset_json = write_dataset(tmp_path)
    preds, refs = make_cases(tmp_path)
    write_image(preds / "d.nrrd", np.zeros((10, 12, 12), np.uint8), GEOMETRY)
    with pytest.raises(InputError, match="no reference") as e:
        evaluate_folders(preds, refs, dataset_json, progress=False)
    assert "d.nrrd" in str(e.value)
    write_image(refs / "d.nrrd", np.zeros((10, 12, 12), np.uint8), Geometry((3.0, 1.0, 1.0), GEOMETRY.origin, GEOMETRY.direction))
    with pytest.raises(InputError, match="case d: prediction spacing differs"):
        evaluate_folders(preds, refs, dataset_json, progress=False)
    write_image(refs / "d.nrrd", np.zeros((9, 12, 12), np.uint8), GEOMETRY)
    with pytest.raises(InputError, match="case d: prediction shape differs"):
        evaluate_folders(preds, refs, dataset_json, progress=False)
    with pytest.raises(NotFoundError, match=r"dataset\.json not found"):
        evaluate_folders(preds, refs, tmp_path / "nowhere", progress=False)
    with pytest.raises(InputError, match="no prediction files"):
        evaluate_folders(refs, refs, write_dataset(tmp_path, ending=".nii.gz"), progress=False)


def test_cli_evaluate(tmp_path, capsys):
    dataset_json = write_dataset(tmp_path)
    preds, refs = make_cases(tmp_path)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "evaluate",
            str(preds),
            str(refs),
            "-d",
            str(dataset_json),
            "-o",
            str(tmp_path / "out.json"),
            "--metrics",
            "dice,hd95",
            "--nsd-tolerance",
            "2",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "out.json" in out
    assert "NSD" not in json.loads((tmp_path / "out.json").read_text())["mean"]["1"]
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", str(preds), str(refs), "-d", str(dataset_json), "--metrics", "dice,hausdorff"])


def test_postprocessing_rule_from_folders(tmp_path):
    dataset_json = write_dataset(tmp_path)
    preds, refs = make_cases(tmp_path)
    blob = np.zeros((10, 12, 12), np.uint8)
    blob[2:8, 2:10, 2:10] = 1
    noisy = blob.copy()
    noisy[0, 0, 0] = 1  # a stray speck far from the organ
    write_image(refs / "e.nrrd", blob, GEOMETRY)
    write_image(preds / "e.nrrd", noisy, GEOMETRY)
    rule = find_postprocessing_folders(preds, refs, dataset_json, save_to=tmp_path)
    assert rule["keep_largest_foreground"] is True and rule["num_cases"] == 4
    assert json.loads((tmp_path / "postprocessing.json").read_text()) == rule
