"""Fine-tuning: weights by name and shape, output channels by class name, --like plans, schedules."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from voxseg.errors import CheckpointError
from voxseg.model.build import NetworkSpec, build_from_spec
from voxseg.model.checkpoint import load_checkpoint, save_checkpoint
from voxseg.plans import load_plans
from voxseg.training.pretrained import transfer_weights
from voxseg.training.run import train
from voxseg.training.settings import load_settings
from voxseg.training.trainer import lr_factor

QUICK = ["training.iterations_per_epoch=2", "training.val_iterations=0", "training.final_validation=false", "sampling.workers=0"]


def _plan(tiny_work, class_names):
    plan = load_plans(tiny_work)
    return dataclasses.replace(plan, class_names=class_names, num_classes=len(class_names))


def test_output_channels_follow_class_names_not_label_values(tiny_work, tmp_path):
    source = _plan(tiny_work, ["background", "organ", "lesion"])
    target = _plan(tiny_work, ["background", "lesion", "organ", "vessel"])  # values swapped, one new class
    src_net = build_from_spec(NetworkSpec.from_plan(source, "3d_fullres"))
    save_checkpoint(tmp_path / "c.pt", {"trainer": {"network": src_net.state_dict()}, "meta": {"plan": source.to_json()}})
    dst_net = build_from_spec(NetworkSpec.from_plan(target, "3d_fullres"))
    fresh = {k: v.clone() for k, v in dst_net.state_dict().items()}
    report = transfer_weights(dst_net, target, tmp_path / "c.pt")
    src, dst = src_net.state_dict(), dst_net.state_dict()
    for level in range(len(dst_net.seg_layers)):
        w, sw = dst[f"seg_layers.{level}.weight"], src[f"seg_layers.{level}.weight"]
        assert torch.equal(w[0], sw[0]) and torch.equal(w[1], sw[2]) and torch.equal(w[2], sw[1])
        assert torch.equal(w[3], fresh[f"seg_layers.{level}.weight"][3]), "a new class keeps its fresh weights"
    assert torch.equal(dst["encoder.stages.0.0.0.weight"], src["encoder.stages.0.0.0.weight"])
    assert report.classes["vessel"].startswith("new") and "was channel 2" in report.classes["lesion"]
    assert any("copied" in line for line in report.lines())


def test_another_topology_is_a_one_line_error_pointing_to_like(tiny_work, tmp_path):
    plan = _plan(tiny_work, ["background", "organ", "lesion"])
    small = dataclasses.replace(NetworkSpec.from_plan(plan, "3d_fullres"))
    network = dict(small.network, features=[f * 2 for f in small.network["features"]])
    save_checkpoint(
        tmp_path / "c.pt",
        {
            "trainer": {"network": build_from_spec(dataclasses.replace(small, network=network)).state_dict()},
            "meta": {"plan": plan.to_json()},
        },
    )
    with pytest.raises(CheckpointError, match="another topology") as e:
        transfer_weights(build_from_spec(small), plan, tmp_path / "c.pt")
    assert "--like" in str(e.value)


def test_like_plans_identical_topology_with_this_datasets_statistics(tiny_work, demo_dataset_ignore, tmp_path):
    from voxseg.cli.main import main

    work = tmp_path / "work"
    assert main(["plan", str(demo_dataset_ignore), "-o", str(work), "--like", str(tiny_work), "-j", "1"]) == 0
    ours, theirs = load_plans(work), load_plans(tiny_work)
    assert ours.configurations.keys() == theirs.configurations.keys()
    for name, cfg in ours.configurations.items():
        other = theirs.configurations[name]
        assert (cfg.network, cfg.patch_size, cfg.spacing, cfg.batch_size) == (
            other.network,
            other.patch_size,
            other.spacing,
            other.batch_size,
        )
    assert ours.has_ignore and ours.dataset_path != theirs.dataset_path
    fingerprint = json.loads((work / "fingerprint.json").read_text())
    assert ours.normalization[0].mean == pytest.approx(fingerprint["channel_stats"][0]["mean"])


def test_warmup_then_poly():
    assert [round(lr_factor(e, 10, 0.9, warmup=3), 4) for e in range(5)] == [
        0.25,
        0.5,
        0.75,
        round((1 - 3 / 10) ** 0.9, 4),
        round((1 - 4 / 10) ** 0.9, 4),
    ]
    assert lr_factor(0, 10, 0.9) == 1.0


def test_fine_tune_with_frozen_encoder_keeps_the_encoder(tiny_work):
    base = train(tiny_work, "3d_fullres", "0", load_settings(None, [*QUICK, "training.epochs=1"]), device="cpu", name="ft-base")
    tuned = train(
        tiny_work,
        "3d_fullres",
        "0",
        load_settings(None, [*QUICK, "training.epochs=1", "training.freeze_encoder_epochs=1"]),
        device="cpu",
        name="ft-tuned",
        pretrained=base.parent,
    )
    a = load_checkpoint(base / "checkpoint_final.pt")
    b = load_checkpoint(tuned / "checkpoint_final.pt")
    assert b["trainer"]["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3), "fine-tuning default lr"
    wa, wb = a["trainer"]["network"], b["trainer"]["network"]
    for k in wa:
        if k.startswith("encoder."):
            assert torch.equal(wa[k], wb[k]), k
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if k.startswith("decoder.")), "the decoder trains"
    assert json.loads((tuned / "run.json").read_text())["pretrained"]
