"""The low-resolution cascade: planning, out-of-fold next-stage inputs, input channels and their
corruption, training, prediction through both stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from voxseg.augment.cascade import cascade_inputs, corrupt
from voxseg.cli.main import main
from voxseg.data.demo import make_demo_dataset
from voxseg.errors import InputError
from voxseg.model.checkpoint import load_checkpoint
from voxseg.model.outputs import previous_stage_channels
from voxseg.plans import load_plans
from voxseg.preprocessing.store import Store

SETS = ["training.epochs=1", "training.iterations_per_epoch=2", "training.val_iterations=1", "sampling.workers=0"]


def _train(work, config, fold, *extra):
    return main(
        ["train", str(work), config, fold, "--device", "cpu", "--name", "c", *[a for s in SETS for a in ("--set", s)], *extra]
    )


@pytest.fixture(scope="module")
def cascade_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    raw = make_demo_dataset(root / "raw", cases=4, test_cases=1, seed=3, size_range=(56, 64))
    work = root / "work"
    assert main(["plan", str(raw), "-o", str(work), "--gpu-memory", "0.4", "--configs", "3d_fullres,3d_lowres", "-j", "1"]) == 0
    plans = json.loads((work / "plans.json").read_text())
    for cfg in plans["configurations"].values():
        cfg["network"]["features"] = [8 * 2**i for i in range(len(cfg["network"]["features"]))]
    (work / "plans.json").write_text(json.dumps(plans))
    splits = root / "splits.json"
    splits.write_text(
        json.dumps(
            [
                {"train": ["demo_002", "demo_003"], "val": ["demo_000", "demo_001"]},
                {"train": ["demo_000", "demo_001"], "val": ["demo_002", "demo_003"]},
            ]
        )
    )
    assert main(["preprocess", str(work), "-j", "1", "--splits", str(splits)]) == 0
    for fold in ("0", "1"):
        assert _train(work, "3d_lowres", fold) == 0
    return raw, work


def test_plan_has_lowres_and_a_cascade_reading_the_fullres_store(cascade_work):
    _, work = cascade_work
    plan = load_plans(work)
    assert plan.configuration("3d_lowres").next_stage == "3d_cascade_fullres"
    cascade = plan.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and plan.store_of("3d_cascade_fullres") == "3d_fullres"
    assert not (work / "store" / "3d_cascade_fullres").exists(), "the cascade shares the 3d_fullres store"


def test_next_stage_predictions_are_out_of_fold_and_on_the_fullres_grid(cascade_work):
    _, work = cascade_work
    run = work / "runs" / "3d_lowres__default__c"
    store = Store(work / "store" / "3d_fullres")
    for fold, val in (("0", {"demo_000", "demo_001"}), ("1", {"demo_002", "demo_003"})):
        files = sorted((run / f"fold_{fold}" / "next_stage").glob("*.npy"))
        assert {p.stem for p in files} == val, "each fold writes exactly its validation cases"
        for p in files:
            seg = np.load(p)
            assert seg.shape == store.open(p.stem).seg.shape
            assert set(np.unique(seg)) <= {0, 1, 2}


def test_cascade_inputs_are_one_hot_and_corruption_keeps_them_exclusive():
    labels = torch.zeros(4, 1, 12, 16, 16, dtype=torch.int16)
    labels[:, :, 3:9, 4:12, 4:12] = 1
    labels[:, :, 5:7, 6:9, 6:9] = 2
    labels[0, 0, 0, 0, 0] = -1  # padding / ignore counts as background
    x = cascade_inputs(torch.randn(4, 1, 12, 16, 16), labels, 3)
    assert x.shape == (4, 3, 12, 16, 16)
    onehot = previous_stage_channels(labels, 3)
    torch.testing.assert_close(x[:, 1:], onehot)
    assert onehot[0, :, 0, 0, 0].sum() == 0
    changed = 0
    for seed in range(10):
        out = corrupt(onehot, torch.Generator().manual_seed(seed))
        assert (out.sum(1) <= 1).all(), "a voxel never has two labels"
        assert set(out.unique().tolist()) <= {0.0, 1.0}
        changed += int(not torch.equal(out, onehot))
        torch.testing.assert_close(out, corrupt(onehot, torch.Generator().manual_seed(seed)))  # seeded
    assert changed >= 3, "nnU-Net's corruption changes a good share of the batches"


@pytest.mark.slow
def test_cascade_trains_on_previous_stage_inputs_and_predicts_through_both_stages(cascade_work, tmp_path):
    raw, work = cascade_work
    assert _train(work, "3d_cascade_fullres", "0") == 0
    fold = work / "runs" / "3d_cascade_fullres__default__c" / "fold_0"
    meta = load_checkpoint(fold / "checkpoint_final.pt")["meta"]
    assert meta["network_spec"]["in_channels"] == 1 + 2, "image + one-hot of organ and lesion"
    assert meta["previous_stage"]["config"] == "3d_lowres"
    assert json.loads((fold / "run.json").read_text())["previous_stage"].endswith("3d_lowres__default__c")
    out = tmp_path / "pred"
    assert (
        main(["predict", "-m", str(fold.parent), "-i", str(raw / "imagesTs"), "-o", str(out), "--device", "cpu", "--no-tta"]) == 0
    )
    assert (out / "demo_004.nii.gz").is_file()

    from voxseg.inference.models import load_models
    from voxseg.inference.predictor import Predictor

    predictor = Predictor(load_models([fold.parent], None, "final", torch.device("cpu")), torch.device("cpu"), tta=False)
    assert [g.config_name for g in predictor.stages] == ["3d_lowres", "3d_cascade_fullres"]
    assert len(predictor.stages[0].networks) == 2, "the previous stage ensembles its folds"


def test_missing_previous_stage_predictions_name_the_folds_to_train(cascade_work):
    _, work = cascade_work
    moved = work / "runs" / "3d_lowres__default__c" / "fold_1" / "next_stage" / "demo_002.npy"
    keep = moved.read_bytes()
    moved.unlink()
    try:
        with pytest.raises(InputError, match="train folds 1 of 3d_lowres__default__c"):
            from voxseg.training.run import train
            from voxseg.training.settings import load_settings

            train(work, "3d_cascade_fullres", "0", load_settings(None, SETS), device="cpu", name="c2")
    finally:
        moved.write_bytes(keep)
