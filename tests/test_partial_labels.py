"""Partial labels: the marginal and exclusion losses (Shi et al. 2021) on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from voxseg.losses import CELoss, DiceCELoss, SoftDiceLoss
from voxseg.losses.compound import exclusion_loss


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_marginal_ce_merges_unannotated_classes_into_background():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).reshape(1, 4, 1, 1)  # one voxel, 4 classes
    background = torch.zeros(1, 1, 1, 1, dtype=torch.int64)
    annotated = torch.tensor([[True, False, True, False]])  # classes 1 and 3 not annotated
    p = softmax([0.0, 1.0, 2.0, -1.0])
    got = CELoss()(logits, background, annotated=annotated)["loss"]
    assert math.isclose(float(got), -math.log(p[0] + p[1] + p[3]), rel_tol=1e-6)
    assert math.isclose(float(CELoss()(logits, background)["loss"]), -math.log(p[0]), rel_tol=1e-6)
    lesion = torch.full((1, 1, 1, 1), 2)
    assert math.isclose(float(CELoss()(logits, lesion, annotated=annotated)["loss"]), -math.log(p[2]), rel_tol=1e-6), (
        "an annotated class keeps its own probability"
    )


def test_marginal_dice_counts_only_annotated_classes():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[[0, 2], [2, 0]]]])
    annotated = torch.tensor([[True, False, True]])
    got = SoftDiceLoss(smooth=0.0)(logits, target, annotated=annotated)["loss"]
    p = torch.softmax(logits, 1)[0, 2]
    y = (target[0, 0] == 2).float()
    hand = 1 - 2 * (p * y).sum() / (p.sum() + y.sum())  # class 1 is not in the average
    torch.testing.assert_close(got, hand)


def test_marginal_equals_plain_loss_on_fully_annotated_cases():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 5, 5)
    target = torch.randint(0, 4, (3, 1, 5, 5))
    target[0, 0, 0] = -1
    everything = torch.ones(3, 4, dtype=torch.bool)
    for batch_dice in (False, True):
        loss = DiceCELoss(batch_dice=batch_dice, class_weights=[0.5, 1, 2, 3])
        torch.testing.assert_close(loss(logits, target, annotated=everything)["loss"], loss(logits, target)["loss"])


def test_batch_dice_pools_a_class_only_over_the_cases_that_annotate_it():
    torch.manual_seed(2)
    logits = torch.randn(2, 2, 4, 4)
    target = torch.randint(0, 2, (2, 1, 4, 4))
    annotated = torch.tensor([[True, True], [True, False]])
    got = SoftDiceLoss(batch_dice=True, smooth=0.0)(logits, target, annotated=annotated)["loss"]
    alone = SoftDiceLoss(batch_dice=True, smooth=0.0)(logits[:1], target[:1])["loss"]
    torch.testing.assert_close(got, alone)


def test_exclusion_loss_on_one_voxel():
    logits = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1)
    lesion = torch.full((1, 1, 1, 1), 2)
    annotated = torch.tensor([[True, False, True]])  # the organ (1) is not annotated
    p1 = softmax([0.0, 1.0, 2.0])[1]
    hand = 2 * p1 / (p1 + 1 + 1e-5) - math.log(1 - p1)
    assert math.isclose(float(exclusion_loss(logits, lesion, annotated)), hand, rel_tol=1e-5)
    assert float(exclusion_loss(logits, lesion, torch.ones(1, 3, dtype=torch.bool))) == 0.0
    parts = DiceCELoss(exclusion_weight=0.5)(logits, lesion, annotated=annotated)
    assert math.isclose(float(parts["loss"]), float(parts["ce"] + parts["dice"] + 0.5 * parts["exclusion"]), rel_tol=1e-6)


# --- the dataset, store, loader and evaluation side ---------------------------------------------


@pytest.fixture(scope="module")
def partial_work(tmp_path_factory):
    from voxseg.cli.main import main
    from voxseg.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("partial")
    raw = make_demo_dataset(root / "raw", cases=4, seed=4, size_range=(24, 32), partial_fraction=0.5)
    work = root / "work"
    assert main(["plan", str(raw), "-o", str(work), "--configs", "3d_fullres", "--patch-size", "16,32,32", "-j", "1"]) == 0
    assert main(["preprocess", str(work), "-j", "1"]) == 0
    return raw, work


def test_dataset_store_and_loader_know_what_each_case_annotates(partial_work):
    from voxseg.data.spec import load_dataset
    from voxseg.preprocessing.store import Store
    from voxseg.sampling.config import SamplingSettings
    from voxseg.sampling.loader import build_loader

    raw, work = partial_work
    spec = load_dataset(raw)
    assert spec.annotated_classes == {"demo_000": ("lesion",), "demo_001": ("lesion",)}
    assert spec.annotated_outputs("demo_000") == [True, False, True] and spec.annotated_outputs("demo_003") is None
    store = Store(work / "store" / "3d_fullres")
    partial = store.open("demo_000")
    assert "1" not in partial.locations, "sampling can never force a patch onto the unannotated organ"
    assert "1" in store.open("demo_003").locations
    loader = build_loader(
        store.root, ["demo_000", "demo_003"], SamplingSettings(workers=0), patch_size=(16, 32, 32), batch_size=2
    )
    try:
        for _ in range(5):
            batch = next(loader)
            for cid, row, _forced, seg in zip(batch.case_ids, batch.annotated.tolist(), batch.forced.tolist(), batch.seg):
                assert row == ([True, False, True] if cid == "demo_000" else [True, True, True])
                if cid == "demo_000":
                    assert not (seg == 1).any()
    finally:
        loader.close()


def test_verify_checks_annotated_classes(partial_work, tmp_path):
    import json
    import shutil

    from voxseg.data.io import read_image, write_image
    from voxseg.data.spec import load_dataset
    from voxseg.data.verify import verify_dataset
    from voxseg.errors import DatasetError

    raw = tmp_path / "raw"
    shutil.copytree(partial_work[0], raw)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["annotated_classes"]["nobody"] = ["lesion"]
    (raw / "dataset.json").write_text(json.dumps(meta))
    label, geometry = read_image(raw / "labelsTr" / "demo_000.nii.gz")
    label[0, 0, 0] = 1  # an organ voxel in a case that does not annotate the organ
    write_image(raw / "labelsTr" / "demo_000.nii.gz", label, geometry)
    messages = [p.message for p in verify_dataset(raw, workers=1, progress=False)]
    assert any("unknown cases ['nobody']" in m for m in messages)
    assert any("does not annotate" in m for m in messages)
    meta["annotated_classes"] = {"demo_000": ["liver"]}
    (raw / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="liver"):
        load_dataset(raw)


def test_evaluate_gives_nan_not_zero_for_unannotated_classes(partial_work, tmp_path):
    import shutil

    from voxseg.evaluation.evaluate import evaluate_folders

    raw, _ = partial_work
    pred = tmp_path / "pred"
    shutil.copytree(raw / "labelsTr", pred)
    summary = evaluate_folders(pred, raw / "labelsTr", raw / "dataset.json", progress=False)
    by_case = {c["case_id"]: c["metrics"] for c in summary["metric_per_case"]}
    assert math.isnan(by_case["demo_000"]["1"]["Dice"]), "organ not annotated in demo_000: skipped"
    assert by_case["demo_003"]["1"]["Dice"] == 1.0
    assert summary["mean"]["1"]["Dice"] == 1.0, "the mean skips the NaN"
