"""A 2D RGB PNG dataset end to end: plan 2d, train, predict PNGs of the input size, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from voxseg.cli.main import main
from voxseg.data.demo import make_rgb_demo_dataset
from voxseg.data.io import read_channels, read_image


@pytest.mark.slow
def test_rgb_png_dataset_trains_predicts_and_evaluates(tmp_path):
    raw = make_rgb_demo_dataset(tmp_path / "raw", cases=4, test_cases=1, seed=1, size_range=(40, 56))
    work = tmp_path / "work"
    assert main(["verify", str(raw), "-j", "1"]) == 0
    assert main(["plan", str(raw), "-o", str(work), "--configs", "2d", "--patch-size", "32,32", "-j", "1"]) == 0
    plans = json.loads((work / "plans.json").read_text())
    assert plans["channel_names"] == ["R", "G", "B"] and [n["scheme"] for n in plans["normalization"]] == ["zscore"] * 3
    cfg = plans["configurations"]["2d"]
    cfg["network"]["features"] = [min(8 * 2**i, 32) for i in range(len(cfg["network"]["features"]))]
    (work / "plans.json").write_text(json.dumps(plans))
    assert main(["preprocess", str(work), "-j", "1"]) == 0
    sets = ["training.epochs=1", "training.iterations_per_epoch=2", "training.val_iterations=1", "sampling.workers=0"]
    assert (
        main(["train", str(work), "2d", "0", "--device", "cpu", "--name", "rgb", *[a for s in sets for a in ("--set", s)]]) == 0
    )
    fold = work / "runs" / "2d__default__rgb" / "fold_0"
    assert sorted(p.suffix for p in (fold / "validation").glob("rgb_*.png")), "validation predictions are PNG"
    out = tmp_path / "pred"
    assert main(["predict", "-m", str(fold.parent), "-i", str(raw / "imagesTs"), "-o", str(out), "--device", "cpu"]) == 0
    seg, _ = read_image(out / "rgb_004.png")
    image, _ = read_channels(raw / "imagesTs" / "rgb_004_0000.png")
    assert image.shape[0] == 3 and seg.shape == image.shape[1:]
    assert set(np.unique(seg)) <= {0, 1, 2}
    assert main(["evaluate", str(out), str(raw / "labelsTs"), "-d", str(raw / "dataset.json")]) == 0
    assert set(json.loads((out / "summary.json").read_text())["mean"]) == {"1", "2"}
