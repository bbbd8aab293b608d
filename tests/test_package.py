"""Model zips: `voxseg export` / `install`, predicting from a zip exactly as from the run folder, damaged
or incompatible zips as one line, custom trainer code, region-based, imported nnU-Net and ensembles."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from voxseg.cli.main import main
from voxseg.inference.package import FORMAT_VERSION, MANIFEST, install_model, package_postprocessing
from voxseg.inference.predictor import Predictor
from voxseg.model.checkpoint import load_checkpoint
from voxseg.training.run import train
from voxseg.training.settings import load_settings

QUICK = [
    "training.epochs=1",
    "training.iterations_per_epoch=1",
    "training.val_iterations=0",
    "training.final_validation=false",
    "sampling.workers=0",
]
RULE = {"keep_largest_foreground": True, "foreground_labels": [1, 2], "keep_largest_per_class": []}


def _train(work: Path, fold: str, name: str, trainer: str = "default") -> Path:
    return train(work, "3d_fullres", fold, load_settings(None, QUICK), trainer=trainer, device="cpu", name=name).parent


@pytest.fixture(scope="module")
def run(tiny_work) -> Path:
    """Folds 0 and 1 of a tiny run, with a post-processing rule beside them."""
    _train(tiny_work, "0", "pkg")
    run = _train(tiny_work, "1", "pkg")
    (run / "postprocessing.json").write_text(json.dumps(RULE))
    return run


@pytest.fixture(scope="module")
def model_zip(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zip") / "model.zip"
    assert main(["export", str(run), "-o", str(out)]) == 0
    return out


def _predict(models, images: Path, out: Path, *extra: str) -> dict[str, bytes]:
    assert (
        main(["predict", "-m", *map(str, models), "-i", str(images), "-o", str(out), "--device", "cpu", "--no-tta", *extra]) == 0
    )
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _rewrite(source: Path, target: Path, *, drop: str | None = None, change: dict[str, bytes] | None = None) -> Path:
    """A copy of a zip with one member dropped or replaced (the manifest kept as it was, unless replaced)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for name in zin.namelist():
            if name != drop:
                zout.writestr(name, (change or {}).get(name, zin.read(name)))
    return target


def test_zip_and_installed_folder_predict_exactly_what_the_run_folder_predicts(run, model_zip, demo_dataset, tmp_path, capsys):
    images = demo_dataset / "imagesTs"
    reference = _predict([run], images, tmp_path / "folder", "--save-probabilities")
    assert sorted(reference) == ["demo_004.nii.gz", "demo_004.npz", "demo_005.nii.gz", "demo_005.npz"]
    assert _predict([model_zip], images, tmp_path / "zip", "--save-probabilities") == reference

    assert main(["install", str(model_zip), "-o", str(tmp_path / "installed")]) == 0
    assert "predict with: voxseg predict -m" in capsys.readouterr().out
    assert _predict([tmp_path / "installed"], images, tmp_path / "inst", "--save-probabilities") == reference
    # every packed model is an ordinary run folder too
    assert (
        _predict([tmp_path / "installed" / "models" / run.name], images, tmp_path / "inst_run", "--save-probabilities")
        == reference
    )
    assert package_postprocessing(model_zip) == RULE  # the rule travelled with the zip (and was applied: same bytes)

    with pytest.raises(ValueError, match="already holds an installed model"):
        install_model(model_zip, tmp_path / "installed")
    assert install_model(model_zip, tmp_path / "installed", overwrite=True) == tmp_path / "installed"
    with pytest.raises(ValueError, match="not an installed model"):
        install_model(model_zip, demo_dataset)


def test_manifest_records_versions_checksums_folds_and_classes(run, model_zip):
    with zipfile.ZipFile(model_zip) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        members = {n: zf.read(n) for n in zf.namelist() if n != MANIFEST}
    assert manifest["format"] == "voxseg-model" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["voxseg"] and manifest["torch"] == torch.__version__ and manifest["created"]
    assert manifest["checkpoint"] == "final" and manifest["predict"] == [run.name] and manifest["onnx"] is None
    assert manifest["configurations"] == ["3d_fullres"]
    assert manifest["classes"]["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    entry = manifest["models"][run.name]
    assert entry["folds"] == ["0", "1"] and entry["postprocessing"] and entry["source"] == str(run.resolve())
    assert (
        set(members)
        == set(manifest["files"])
        == {
            "dataset.json",
            f"models/{run.name}/postprocessing.json",
            *(f"models/{run.name}/fold_{f}/checkpoint_final.pt" for f in ("0", "1")),
        }
    )
    for name, data in members.items():
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert json.loads(members["dataset.json"])["labels"] == {"background": 0, "organ": 1, "lesion": 2}

    packed = torch.load(io.BytesIO(members[f"models/{run.name}/fold_0/checkpoint_final.pt"]), weights_only=False)
    original = load_checkpoint(run / "fold_0" / "checkpoint_final.pt")
    assert list(packed["trainer"]) == ["network"], "no optimiser or loader state in the zip"
    assert {k: v for k, v in packed["meta"].items() if k != "package"} == original["meta"]
    assert all(torch.equal(packed["trainer"]["network"][k], v) for k, v in original["trainer"]["network"].items())
    assert model_zip.stat().st_size < sum((run / f"fold_{f}" / "checkpoint_final.pt").stat().st_size for f in ("0", "1")) / 1.5


def _damaged(kind: str, model_zip: Path, target: Path, run_name: str) -> Path:
    member = f"models/{run_name}/fold_0/checkpoint_final.pt"
    with zipfile.ZipFile(model_zip) as zf:
        manifest = json.loads(zf.read(MANIFEST))
        data = zf.read(member)
    if kind == "flipped byte":
        return _rewrite(model_zip, target, change={member: data[:100] + bytes([data[100] ^ 1]) + data[101:]})
    if kind == "missing member":
        return _rewrite(model_zip, target, drop=member)
    if kind == "truncated":
        target.write_bytes(model_zip.read_bytes()[: model_zip.stat().st_size // 2])
        return target
    if kind == "newer format":
        return _rewrite(
            model_zip, target, change={MANIFEST: json.dumps({**manifest, "format_version": FORMAT_VERSION + 1}).encode()}
        )
    return _rewrite(model_zip, target, drop=MANIFEST)  # "no manifest"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("flipped byte", "fails its checksum"),
        ("missing member", "member(s) missing"),
        ("truncated", "not a voxseg model zip"),
        ("newer format", f"in model format {FORMAT_VERSION + 1}; this voxseg"),
        ("no manifest", "no manifest.json"),
    ],
)
def test_damaged_or_newer_zip_is_a_one_line_error(kind, message, run, model_zip, demo_dataset, tmp_path, capsys):
    broken = _damaged(kind, model_zip, tmp_path / "broken.zip", run.name)
    capsys.readouterr()
    code = main(
        ["predict", "-m", str(broken), "-i", str(demo_dataset / "imagesTs"), "-o", str(tmp_path / "out"), "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 1 and len(err.splitlines()) == 1 and err.startswith(f"error: {broken}: ") and message in err and "(fix: " in err
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert main(["install", str(broken), "-o", str(tmp_path / "installed")]) == 1
    assert not (tmp_path / "installed").exists() and not list(tmp_path.glob(".installed.installing-*"))


def test_one_checkpoint_kind_and_chosen_folds(run, demo_dataset, tmp_path, capsys):
    best = tmp_path / "best.zip"
    assert main(["export", str(run), "-o", str(best), "--folds", "1", "--checkpoint", "best"]) == 0
    with zipfile.ZipFile(best) as zf:
        assert sorted(n for n in zf.namelist() if n.endswith(".pt")) == [f"models/{run.name}/fold_1/checkpoint_best.pt"]
    predictor = Predictor.from_run(best, device="cpu")  # no checkpoint given: the kind the zip holds
    assert len(predictor.groups[0].networks) == 1
    with pytest.raises(ValueError, match="holds best checkpoints, not final"):
        Predictor.from_run(best, device="cpu", checkpoint="final")
    with pytest.raises(ValueError, match=r"fold\(s\) \['0'\] are not in the package"):
        Predictor.from_run(best, device="cpu", folds=[0])
    assert main(["export", str(run), "-o", str(best), "--checkpoint", "best"]) == 1
    assert "output file exists" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(best), "--checkpoint", "best", "--overwrite"]) == 0


def test_custom_trainer_code_travels_in_the_zip(tiny_work, demo_dataset, tmp_path):
    trainer_file = tmp_path / "my_trainers" / "two_output_trainer.py"
    trainer_file.parent.mkdir()
    shutil.copy(Path(__file__).parents[1] / "examples" / "two_output_trainer.py", trainer_file)
    custom = _train(tiny_work, "all", "custom", trainer=f"{trainer_file}:TwoOutputTrainer")
    meta = load_checkpoint(custom / "fold_all" / "checkpoint_final.pt")["meta"]
    assert meta["builder"] == f"{trainer_file}:TwoOutputTrainer"
    reference = _predict([custom], demo_dataset / "imagesTs", tmp_path / "folder")
    assert main(["export", str(custom), "-o", str(tmp_path / "custom.zip")]) == 0
    shutil.rmtree(trainer_file.parent)  # the zip must not need the original file

    with zipfile.ZipFile(tmp_path / "custom.zip") as zf:
        manifest = json.loads(zf.read(MANIFEST))
        assert manifest["models"][custom.name]["code"] == [f"models/{custom.name}/code/two_output_trainer.py"]
        packed = torch.load(io.BytesIO(zf.read(f"models/{custom.name}/fold_all/checkpoint_final.pt")), weights_only=False)
    assert packed["meta"]["builder"] == "code/two_output_trainer.py:TwoOutputTrainer"
    assert _predict([tmp_path / "custom.zip"], demo_dataset / "imagesTs", tmp_path / "zip") == reference
    install_model(tmp_path / "custom.zip", tmp_path / "installed")
    assert _predict([tmp_path / "installed"], demo_dataset / "imagesTs", tmp_path / "inst") == reference
    # an installed model exports again, with its code
    assert main(["export", str(tmp_path / "installed" / "models" / custom.name), "-o", str(tmp_path / "again.zip")]) == 0
    assert _predict([tmp_path / "again.zip"], demo_dataset / "imagesTs", tmp_path / "again") == reference


def test_region_based_run_round_trips(tmp_path):
    from voxseg.data.demo import make_demo_dataset

    raw = make_demo_dataset(tmp_path / "raw", cases=3, test_cases=1, seed=4, size_range=(24, 32), regions=True)
    work = tmp_path / "work"
    assert main(["plan", str(raw), "-o", str(work), "--configs", "3d_fullres", "--patch-size", "16,32,32", "-j", "1"]) == 0
    plans = json.loads((work / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["network"]["features"] = [8, 16, 32, 32][
        : len(plans["configurations"]["3d_fullres"]["network"]["features"])
    ]
    (work / "plans.json").write_text(json.dumps(plans))
    assert main(["preprocess", str(work), "-j", "1"]) == 0
    regions = _train(work, "all", "regions")
    assert main(["export", str(regions), "-o", str(tmp_path / "regions.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "regions.zip") as zf:
        classes = json.loads(zf.read(MANIFEST))["classes"]
    assert classes["regions_class_order"] == [1, 2] and len(classes["regions"]) == 2
    reference = _predict([regions], raw / "imagesTs", tmp_path / "folder", "--save-probabilities")
    assert _predict([tmp_path / "regions.zip"], raw / "imagesTs", tmp_path / "zip", "--save-probabilities") == reference


def test_imported_nnunet_model_and_an_ensemble_round_trip(run, demo_dataset, tmp_path):
    from test_nnunet_import import DATASET_JSON, nnunet_plans, nnunet_state, write_model

    from voxseg.nnunet import import_nnunet

    plans = nnunet_plans()
    state, _ = nnunet_state(plans)
    imported = import_nnunet(
        write_model(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres", plans, state), tmp_path / "imported"
    ).run_dir
    assert main(["export", str(imported), str(run), "-o", str(tmp_path / "ensemble.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "ensemble.zip") as zf:
        manifest = json.loads(zf.read(MANIFEST))
        assert json.loads(zf.read("dataset.json")) == DATASET_JSON, "the import's own dataset.json"
    assert manifest["predict"] == ["imported", run.name]
    assert manifest["models"]["imported"]["inference"] == "nnunet" and manifest["models"][run.name]["inference"] == "voxseg"
    images = demo_dataset / "imagesTs"
    assert _predict([tmp_path / "ensemble.zip"], images, tmp_path / "zip") == _predict(
        [imported, run], images, tmp_path / "folders"
    )
    # one model of a zip: MODEL.zip/models/NAME (as a cascade's previous stage is loaded)
    assert _predict([tmp_path / "ensemble.zip" / "models" / "imported"], images, tmp_path / "one") == _predict(
        [imported], images, tmp_path / "one_folder"
    )


def test_cascade_packs_its_previous_stage(run, demo_dataset, tmp_path):
    """A 3d_cascade_fullres checkpoint as the trainer writes it (meta["previous_stage"] names the previous run),
    here with random weights on top of the tiny run, so it needs no cascade training."""
    from voxseg.model.build import NetworkSpec, build_from_spec
    from voxseg.model.checkpoint import save_checkpoint
    from voxseg.plans import Plan

    previous = shutil.copytree(run, tmp_path / "lowres")
    meta = load_checkpoint(run / "fold_0" / "checkpoint_final.pt")["meta"]
    plan = Plan.from_json(meta["plan"])
    plan.configurations["3d_cascade_fullres"] = Plan.from_json(meta["plan"]).configurations["3d_fullres"]
    plan.configurations["3d_cascade_fullres"].previous_stage = "3d_fullres"
    spec = NetworkSpec.from_plan(plan, "3d_cascade_fullres")
    assert spec.in_channels == 3, "image + one-hot previous-stage channels"
    torch.manual_seed(0)
    cascade_meta = {
        **meta,
        "plan": plan.to_json(),
        "config_name": "3d_cascade_fullres",
        "network_spec": spec.to_json(),
        "previous_stage": {"run_dir": str(previous), "config": "3d_fullres"},
    }
    cascade = tmp_path / "cascade"
    save_checkpoint(
        cascade / "fold_0" / "checkpoint_final.pt",
        {"trainer": {"network": build_from_spec(spec, deep_supervision=False).state_dict()}, "meta": cascade_meta},
    )
    images = demo_dataset / "imagesTs"
    reference = _predict([cascade], images, tmp_path / "folder", "--save-probabilities")

    assert main(["export", str(cascade), "-o", str(tmp_path / "cascade.zip")]) == 0
    shutil.rmtree(previous)  # the zip holds the previous stage itself
    with zipfile.ZipFile(tmp_path / "cascade.zip") as zf:
        manifest = json.loads(zf.read(MANIFEST))
        packed = torch.load(io.BytesIO(zf.read("models/cascade/fold_0/checkpoint_final.pt")), weights_only=False)
    assert manifest["predict"] == ["cascade"] and manifest["models"]["cascade"]["previous_stage"] == "lowres"
    assert manifest["models"]["lowres"]["folds"] == ["0", "1"] and manifest["configurations"] == [
        "3d_cascade_fullres",
        "3d_fullres",
    ]
    assert packed["meta"]["previous_stage"] == {"run_dir": "../lowres", "config": "3d_fullres"}
    # the previous stage's rule travels with it; as from folders, only the predicting model's own rule is applied
    assert manifest["models"]["lowres"]["postprocessing"] and package_postprocessing(tmp_path / "cascade.zip") is None
    assert _predict([tmp_path / "cascade.zip"], images, tmp_path / "zip", "--save-probabilities") == reference
    install_model(tmp_path / "cascade.zip", tmp_path / "installed")
    assert _predict([tmp_path / "installed"], images, tmp_path / "inst", "--save-probabilities") == reference
    predictor = Predictor.from_run(tmp_path / "cascade.zip", device="cpu", tta=False)
    assert [g.config_name for g in predictor.stages] == ["3d_fullres", "3d_cascade_fullres"]
