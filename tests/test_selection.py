"""Selection on cross-validation: runs and pairwise ensembles ranked, post-processing per candidate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voxseg.cli.main import main
from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError
from voxseg.inference.ensemble import save_probabilities
from voxseg.inference.selection import find_run_postprocessing, select_best

G = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _reference(i: int) -> np.ndarray:
    ref = np.zeros((8, 16, 16), np.uint8)
    ref[2:6, 3 + i : 9 + i, 3:9] = 1
    return ref


def _fake_run(work: Path, name: str, predictions: dict[str, np.ndarray]) -> Path:
    """A run folder as training's final validation leaves it: two folds of CV predictions."""
    run = work / "runs" / name
    cases = sorted(predictions)
    for fold, part in enumerate((cases[::2], cases[1::2])):
        val = run / f"fold_{fold}" / "validation"
        val.mkdir(parents=True)
        (run / f"fold_{fold}" / "run.json").write_text(json.dumps({"work_dir": str(work), "val": part}))
        per_case = []
        for cid in part:
            seg = predictions[cid]
            write_image(val / f"{cid}.nii.gz", seg, G)
            probs = np.stack([seg == 0, seg == 1]).astype(np.float32) * 0.8 + 0.1
            save_probabilities(val / f"{cid}.npz", probs, G)
            per_case.append({"case_id": cid, "prediction_file": str(val / f"{cid}.nii.gz"), "reference_file": "", "metrics": {}})
        (val / "summary.json").write_text(json.dumps({"metric_per_case": per_case}))
    return run


@pytest.fixture
def work(tmp_path):
    raw = tmp_path / "raw"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"})
    )
    refs = {f"case{i}": _reference(i) for i in range(4)}
    for cid, ref in refs.items():
        write_image(raw / "labelsTr" / f"{cid}.nii.gz", ref, G)
    work = tmp_path / "work"
    work.mkdir()
    (work / "plans.json").write_text(json.dumps({"dataset_path": str(raw)}))
    specks = {}
    for cid, ref in refs.items():
        s = ref.copy()
        s[0, 14, 14] = 1  # a stray component: post-processing removes it
        specks[cid] = s
    shifted = {cid: np.roll(ref, 1, axis=2) for cid, ref in refs.items()}  # a worse model
    _fake_run(work, "3d_fullres__default__a", specks)
    _fake_run(work, "3d_cascade_fullres__default__b", shifted)
    return work


def test_select_ranks_runs_and_ensembles_with_postprocessing(work):
    text = select_best(work)
    result = json.loads((work / "selection.json").read_text())
    names = [r["candidate"] for r in result["ranking"]]
    assert set(names) == {
        "3d_fullres__default__a",
        "3d_cascade_fullres__default__b",
        "3d_cascade_fullres__default__b + 3d_fullres__default__a",
    }, "runs, the cascade and their ensemble"
    assert result["best"] == "3d_fullres__default__a"
    best = result["ranking"][0]
    assert best["dice_postprocessed"] == pytest.approx(1.0) and best["dice"] < 1.0, "post-processing removes the specks"
    assert best["postprocessing"]["keep_largest_foreground"] or best["postprocessing"]["keep_largest_per_class"]
    assert f"voxseg predict -m {work / 'runs' / '3d_fullres__default__a'}" in text
    assert (work / "runs" / "3d_fullres__default__a" / "postprocessing.json").is_file(), "predict applies the winner's rule"
    dices = [r["dice_postprocessed"] for r in result["ranking"]]
    assert dices == sorted(dices, reverse=True)


def test_find_postprocessing_of_one_run(work):
    rule = find_run_postprocessing(work / "runs" / "3d_fullres__default__a")
    assert rule["mean_dice_after"] == pytest.approx(1.0) and rule["num_cases"] == 4
    assert main(["find-postprocessing", str(work / "runs" / "3d_fullres__default__a")]) == 0


def test_select_cli_and_its_errors(work, tmp_path, capsys):
    assert main(["select", str(work)]) == 0
    assert "best: 3d_fullres__default__a" in capsys.readouterr().out
    empty = tmp_path / "empty"
    (empty / "runs" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match="no run has cross-validation results"):
        select_best(empty)
