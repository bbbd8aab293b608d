"""Trained models for prediction: run folders -> checkpoints -> networks grouped by plan configuration.

Networks of one configuration (folds of a run, or several runs with the same plan) form a
`ModelGroup`, so a case is preprocessed once per group and the group's outputs are averaged.
Only `voxseg.model` is needed to rebuild a network: inference never imports the training stack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voxseg.errors import CheckpointError, InputError
from voxseg.inference.onnx_backend import OnnxNetwork
from voxseg.inference.package import installed_runs, localize, locate, package_checkpoints, package_postprocessing
from voxseg.model.checkpoint import load_checkpoint, network_from_meta
from voxseg.model.outputs import OutputScheme
from voxseg.plans import ConfigurationPlan, Plan

CHECKPOINTS = ("final", "best", "latest")
BACKENDS = ("torch", "onnx")


@dataclass
class ModelGroup:
    """Networks (folds/runs) sharing one plan configuration, so a case is preprocessed once for all."""

    plan: Plan
    config_name: str
    networks: list[nn.Module] = field(default_factory=list)
    head_names: list[str] = field(default_factory=list)
    mirror_axes: tuple[int, ...] | None = None  # TTA axes; None = every spatial axis
    # How the sliding window and export are run; imported nnU-Net models record nnU-Net's recipe.
    recipe: dict[str, Any] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)  # the checkpoint files, for messages
    previous: ModelGroup | None = None  # cascade: the stage whose segmentation this one refines

    @property
    def config(self) -> ConfigurationPlan:
        return self.plan.configuration(self.config_name)

    @property
    def outputs(self) -> OutputScheme:
        return OutputScheme.from_plan(self.plan)


def fold_dirs(run_dir: Path, folds: Sequence[str] | None) -> list[Path]:
    """A fold folder itself, or the fold_* folders of a run folder (all, or the requested ones)."""
    if not run_dir.is_dir():
        raise CheckpointError("model folder not found", path=run_dir, fix="pass a run folder (WORK/runs/NAME) or a fold_N folder")
    if any((run_dir / f"checkpoint_{c}.pt").is_file() for c in CHECKPOINTS):
        return [run_dir]
    found = sorted(p for p in run_dir.glob("fold_*") if p.is_dir())
    if folds is not None:
        missing = [f for f in folds if not (run_dir / f"fold_{f}").is_dir()]
        if missing:
            raise CheckpointError(
                f"fold(s) {missing} not trained (found {[p.name for p in found]})",
                path=run_dir,
                fix="train them, or pass --folds with trained folds only",
            )
        found = [run_dir / f"fold_{f}" for f in folds]
    if not found:
        raise CheckpointError(
            "no trained folds found", path=run_dir, fix="pass a run folder holding fold_N/ with checkpoints (train first)"
        )
    return found


def _checkpoints(
    run_dir: Path, folds: Sequence[str] | None, checkpoint: str | None, onnx: bool
) -> Iterator[tuple[Path, dict, bytes | str | None]]:
    """(checkpoint file, checkpoint, its ONNX network when `onnx`) for each fold of a run folder, a
    model zip or a folder `voxseg install` wrote (`voxseg.inference.package`)."""
    if locate(run_dir) is not None:
        yield from package_checkpoints(run_dir, folds, checkpoint, onnx)
        return
    installed = installed_runs(run_dir) if run_dir.is_dir() else None
    if installed is not None:
        for run in installed[0]:
            yield from _checkpoints(run, folds, checkpoint or installed[1], onnx)
        return
    for fold_dir in fold_dirs(run_dir, folds):
        path = fold_dir / f"checkpoint_{checkpoint or 'final'}.pt"
        ckpt = load_checkpoint(path, map_location="cpu")
        localize(ckpt.get("meta"), fold_dir.parent, fold_dir.parent)
        if onnx and not path.with_suffix(".onnx").is_file():
            raise CheckpointError(
                "no ONNX network beside the checkpoint",
                path=path.with_suffix(".onnx"),
                fix="export the run with `voxseg export RUN_DIR -o MODEL.zip --onnx` and predict from that zip",
            )
        yield path, ckpt, str(path.with_suffix(".onnx")) if onnx else None


def load_models(
    run_dirs: Sequence[Path], folds: Sequence[str] | None, checkpoint: str | None, device: torch.device, backend: str = "torch"
) -> list[ModelGroup]:
    """The networks of run folders, model zips or installed models, grouped by configuration.

    `checkpoint` None means "final" for run folders and the kind a zip holds; `backend` "onnx" runs
    the ONNX networks an export stored (`voxseg.inference.onnx_backend`) instead of torch.
    """
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise InputError(f"unknown checkpoint '{checkpoint}'", fix=f"use one of {', '.join(CHECKPOINTS)}")
    if backend not in BACKENDS:
        raise InputError(f"unknown backend '{backend}'", fix=f"use one of {', '.join(BACKENDS)}")
    groups: dict[tuple[str, str, str], ModelGroup] = {}
    for run_dir in run_dirs:
        for path, ckpt, onnx in _checkpoints(Path(run_dir), folds, checkpoint, backend == "onnx"):
            meta = ckpt.get("meta")
            if not isinstance(meta, dict) or "plan" not in meta:
                raise CheckpointError(
                    "not a voxseg checkpoint (no 'meta')",
                    path=path,
                    fix="pass a run folder written by `voxseg train`; nnU-Net models: `voxseg import-nnunet`",
                )
            if onnx is not None:
                network: nn.Module = OnnxNetwork(onnx, device)
            else:
                network = network_from_meta(meta)
                network.load_state_dict(ckpt["trainer"]["network"])
                network.to(device).eval()
            mirror = meta.get("mirror_axes")
            recipe = meta.get("inference", {})
            previous = meta.get("previous_stage")
            key = (
                json.dumps(meta["plan"], sort_keys=True),
                meta["config_name"],
                json.dumps([mirror, recipe, previous], sort_keys=True),
            )
            heads = [h["name"] for h in meta.get("network_spec", {}).get("heads", [])] or [
                h["name"] for h in meta.get("settings", {}).get("heads", [])
            ]
            group = groups.setdefault(
                key,
                ModelGroup(
                    Plan.from_json(meta["plan"]),
                    meta["config_name"],
                    head_names=heads,
                    mirror_axes=None if mirror is None else tuple(mirror),
                    recipe=recipe,
                ),
            )
            group.networks.append(network)
            group.sources.append(path)
            if previous is not None and group.previous is None:
                kind = path.stem[len("checkpoint_") :]  # the stage's own kind (a zip's or installed model's, when not asked)
                group.previous = _previous_stage(Path(previous["run_dir"]), kind, device, path, backend)
    out = list(groups.values())
    if any(g.plan.num_classes != out[0].plan.num_classes or g.outputs != out[0].outputs for g in out):
        raise InputError("the models predict different classes or regions", fix="ensemble only models of the same dataset")
    return out


def _previous_stage(run_dir: Path, checkpoint: str, device: torch.device, source: Path, backend: str) -> ModelGroup:
    """A cascade's previous stage: every fold of the run its checkpoint records (one group)."""
    if not run_dir.is_dir() and locate(run_dir) is None:
        raise CheckpointError(
            f"the cascade's previous stage {run_dir} is gone",
            path=source,
            fix="restore that run folder, or retrain the cascade with --previous-stage",
        )
    (group,) = load_models([run_dir], None, checkpoint, device, backend)
    return group


def load_postprocessing(run_dirs: Sequence[Path]) -> dict | None:
    """A rule saved by `voxseg find-postprocessing` beside a single run's folds (or packed with
    the single model a zip or installed folder predicts with)."""
    if len(run_dirs) != 1:
        return None
    run = Path(run_dirs[0])
    if locate(run) is not None:
        return package_postprocessing(run)
    installed = installed_runs(run) if run.is_dir() else None
    if installed is not None:
        return load_postprocessing(installed[0])
    rule = run / "postprocessing.json"
    return json.loads(rule.read_text()) if rule.is_file() else None
