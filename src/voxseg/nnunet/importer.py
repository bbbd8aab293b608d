"""`voxseg import-nnunet`: an nnU-Net v2 trained-model folder -> a voxseg run folder, same predictions.

Input: ``<Trainer>__<Plans>__<configuration>/`` with plans.json, dataset.json and
``fold_X/checkpoint_final.pth`` (checkpoint_best/latest.pth are imported too when present). Output::

    RUN_DIR/fold_X/checkpoint_{final,best,latest}.pt   voxseg checkpoints (meta + converted weights)
    RUN_DIR/nnunet/                                    the nnU-Net json files it came from
    RUN_DIR/import.json                                what was imported, from where

Like nnU-Net's predictor, the first fold's final checkpoint decides the configuration, the trainer
and the mirror axes. Each checkpoint's meta carries ``inference`` (the recipe the predictor follows
for imported models: nnU-Net's Gaussian map, tiles summed in float16, logits averaged over folds and
resampled back before softmax/sigmoid, fp16 autocast on CUDA). The folder is assembled beside RUN_DIR and renamed into
place, so an interrupted import leaves nothing a later ``voxseg predict`` would use.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxseg import __version__
from voxseg.errors import CheckpointError, NotFoundError
from voxseg.io_utils import atomic_write_json, check_replaceable, staged_folder
from voxseg.model.build import NetworkSpec, build_from_spec
from voxseg.model.checkpoint import load_checkpoint, save_checkpoint
from voxseg.nnunet.plans import ConvertedPlans, convert_plans
from voxseg.nnunet.weights import convert_state_dict, uses_running_stats

CHECKPOINT_FILES = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth", "latest": "checkpoint_latest.pth"}
NNUNET_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
IMPORT_RECORD = "import.json"


@dataclass
class ImportResult:
    run_dir: Path
    config_name: str
    trainer: str
    architecture: str
    folds: list[str]
    checkpoints: list[str] = field(default_factory=list)  # RUN_DIR-relative paths written


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise NotFoundError(
            f"{path.name} not found", path=path, fix="pass an nnU-Net trained-model folder <Trainer>__<Plans>__<configuration>"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"invalid JSON ({e.msg}, line {e.lineno})", path=path, fix="restore the file nnU-Net wrote"
        ) from None


def select_folds(model_dir: Path, folds: Sequence[str] | None) -> list[str]:
    """Folds to import: the requested ones, else every fold_N with a final checkpoint (fold_all only
    when there is no other, as nnU-Net's predictor chooses)."""
    found = {p.name[len("fold_") :] for p in model_dir.glob("fold_*") if (p / CHECKPOINT_FILES["final"]).is_file()}
    if folds is not None:
        missing = [f for f in folds if f not in found]
        if missing:
            raise NotFoundError(
                f"fold(s) {missing} have no {CHECKPOINT_FILES['final']} (found {sorted(found)})",
                path=model_dir,
                fix="pass --folds with trained folds only",
            )
        return list(folds)
    numbered = sorted((f for f in found if f != "all"), key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
    chosen = numbered or sorted(found)
    if not chosen:
        raise NotFoundError(
            f"no fold_*/{CHECKPOINT_FILES['final']} found",
            path=model_dir,
            fix="pass the <Trainer>__<Plans>__<configuration> folder of a finished nnU-Net training",
        )
    return chosen


def _network_weights(ckpt: dict, path: Path) -> dict:
    weights = ckpt.get("network_weights")
    if not isinstance(weights, dict) or "trainer_name" not in ckpt or "init_args" not in ckpt:
        raise CheckpointError(
            "not an nnU-Net v2 checkpoint (no network_weights/trainer_name/init_args)",
            path=path,
            fix="pass the folder nnUNetv2_train wrote",
        )
    return weights


def _build_meta(
    converted: ConvertedPlans, config_name: str, spec: NetworkSpec, mirror_axes: list[int], source: dict[str, Any]
) -> dict[str, Any]:
    plan = converted.plan
    return {
        "plan": plan.to_json(),
        "config_name": config_name,
        "network_spec": spec.to_json(),
        "builder": None,
        "mirror_axes": mirror_axes,
        "class_names": plan.class_names,
        "inference": recipe(converted.export_order),
        "nnunet": source,
    }


def recipe(export_order: int) -> dict[str, Any]:
    """How the predictor runs an imported model (read by voxseg.inference.predictor)."""
    return {"gaussian": "nnunet", "accumulate": "float16", "export": "nnunet", "export_order": export_order, "autocast": "fp16"}


def import_nnunet(
    model_dir: str | Path, run_dir: str | Path, *, folds: Sequence[str] | None = None, overwrite: bool = False
) -> ImportResult:
    """Write a voxseg run folder predicting exactly what the nnU-Net model in ``model_dir`` predicts.

    Refuses (CheckpointError, one line) any model voxseg would predict differently. ``overwrite``
    replaces an earlier import at ``run_dir``, never another folder. Example:
    ``import_nnunet("nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres", "runs/imported")``
    """
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    if not model_dir.is_dir():
        raise NotFoundError(
            "model folder not found",
            path=model_dir,
            fix="pass nnUNet_results/DatasetNNN_Name/<Trainer>__<Plans>__<configuration>",
        )
    check_replaceable(run_dir, IMPORT_RECORD, "an imported nnU-Net model", overwrite)
    plans = _read_json(model_dir / "plans.json")
    dataset_json = _read_json(model_dir / "dataset.json")
    chosen = select_folds(model_dir, folds)

    first_path = model_dir / f"fold_{chosen[0]}" / CHECKPOINT_FILES["final"]
    first = load_checkpoint(first_path)
    _network_weights(first, first_path)
    trainer, config_name = str(first["trainer_name"]), str(first["init_args"].get("configuration"))
    converted = convert_plans(plans, dataset_json, config_name, path=model_dir / "plans.json")
    mirror = first.get("inference_allowed_mirroring_axes")
    mirror_axes = [] if mirror is None else [int(a) for a in mirror]  # None: nnU-Net does not mirror
    network = converted.plan.configuration(config_name).network
    arch_name = (
        plans["configurations"].get(config_name, {}).get("architecture", {}).get("network_class_name", network["architecture"])
    )

    with staged_folder(run_dir) as staging:
        written = []
        for fold in chosen:
            for name, filename in CHECKPOINT_FILES.items():
                path = model_dir / f"fold_{fold}" / filename
                if not path.is_file():
                    continue
                ckpt = first if path == first_path else load_checkpoint(path)
                weights = _network_weights(ckpt, path)
                if ckpt["trainer_name"] != trainer or ckpt["init_args"].get("configuration") != config_name:
                    raise CheckpointError(
                        f"trained as {ckpt['trainer_name']}/{ckpt['init_args'].get('configuration')}, "
                        f"fold {chosen[0]} as {trainer}/{config_name}",
                        path=path,
                        fix="import folds of one training only (--folds)",
                    )
                model = converted.model
                if uses_running_stats(weights) and model.norm != "batch":
                    model = dataclasses.replace(model, norm="batch")  # e.g. nnUNetTrainerBN
                spec = NetworkSpec(network, len(converted.plan.channel_names), converted.plan.output_channels, model)
                net = build_from_spec(spec, deep_supervision=False)
                state = convert_state_dict(
                    weights, net, network, path=path, what=f"the plans' {arch_name.rsplit('.', 1)[-1]} (trainer {trainer})"
                )
                source = {
                    "model_dir": str(model_dir.resolve()),
                    "trainer": trainer,
                    "plans_name": plans.get("plans_name"),
                    "configuration": config_name,
                    "fold": fold,
                    "checkpoint": filename,
                    "epoch": ckpt.get("current_epoch"),
                }
                target = Path(f"fold_{fold}") / f"checkpoint_{name}.pt"
                save_checkpoint(
                    staging / target,
                    {"trainer": {"network": state}, "meta": _build_meta(converted, config_name, spec, mirror_axes, source)},
                )
                written.append(str(target))
        for fname in NNUNET_FILES:
            if (model_dir / fname).is_file():
                (staging / "nnunet").mkdir(exist_ok=True)
                shutil.copyfile(model_dir / fname, staging / "nnunet" / fname)
        atomic_write_json(
            staging / IMPORT_RECORD,
            {
                "source": str(model_dir.resolve()),
                "trainer": trainer,
                "plans_name": plans.get("plans_name"),
                "configuration": config_name,
                "network": arch_name,
                "folds": chosen,
                "checkpoints": written,
                "mirror_axes": mirror_axes,
                "inference": recipe(converted.export_order),
                "imported": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "voxseg": __version__,
            },
        )
    return ImportResult(run_dir, config_name, trainer, arch_name.rsplit(".", 1)[-1], chosen, written)
