"""Trained models for prediction: run folders -> checkpoints -> networks grouped by plan configuration.

Networks of one configuration (folds of a run, or several runs with the same plan) form a
`ModelGroup`, so a case is preprocessed once per group and the group's outputs are averaged.
Only `voxseg.model` is needed to rebuild a network: inference never imports the training stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from voxseg.errors import CheckpointError, InputError
from voxseg.model.checkpoint import load_checkpoint, network_from_meta
from voxseg.model.outputs import OutputScheme
from voxseg.plans import ConfigurationPlan, Plan

CHECKPOINTS = ("final", "best", "latest")


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
            raise CheckpointError(f"fold(s) {missing} not trained (found {[p.name for p in found]})", path=run_dir,
                                  fix="train them, or pass --folds with trained folds only")
        found = [run_dir / f"fold_{f}" for f in folds]
    if not found:
        raise CheckpointError("no trained folds found", path=run_dir, fix="pass a run folder holding fold_N/ with checkpoints (train first)")
    return found


def load_models(run_dirs: Sequence[Path], folds: Sequence[str] | None, checkpoint: str, device: torch.device) -> list[ModelGroup]:
    if checkpoint not in CHECKPOINTS:
        raise InputError(f"unknown checkpoint '{checkpoint}'", fix=f"use one of {', '.join(CHECKPOINTS)}")
    groups: dict[tuple[str, str, str], ModelGroup] = {}
    for run_dir in run_dirs:
        for fold_dir in fold_dirs(Path(run_dir), folds):
            path = fold_dir / f"checkpoint_{checkpoint}.pt"
            ckpt = load_checkpoint(path, map_location="cpu")
            meta = ckpt.get("meta")
            if not isinstance(meta, dict) or "plan" not in meta:
                raise CheckpointError("not a voxseg checkpoint (no 'meta')", path=path,
                                      fix="pass a run folder written by `voxseg train`; nnU-Net models: `voxseg import-nnunet`")
            network = network_from_meta(meta)
            network.load_state_dict(ckpt["trainer"]["network"])
            network.to(device).eval()
            mirror = meta.get("mirror_axes")
            recipe = meta.get("inference", {})
            key = (json.dumps(meta["plan"], sort_keys=True), meta["config_name"], json.dumps([mirror, recipe], sort_keys=True))
            heads = [h["name"] for h in meta.get("network_spec", {}).get("heads", [])] or \
                [h["name"] for h in meta.get("settings", {}).get("heads", [])]
            group = groups.setdefault(key, ModelGroup(Plan.from_json(meta["plan"]), meta["config_name"], head_names=heads,
                                                      mirror_axes=None if mirror is None else tuple(mirror), recipe=recipe))
            group.networks.append(network)
            group.sources.append(path)
    out = list(groups.values())
    if any(g.plan.num_classes != out[0].plan.num_classes or g.outputs != out[0].outputs for g in out):
        raise InputError("the models predict different classes or regions", fix="ensemble only models of the same dataset")
    return out


def load_postprocessing(run_dirs: Sequence[Path]) -> dict | None:
    """A rule saved by `voxseg find-postprocessing` beside a single run's folds."""
    rules = [Path(r) / "postprocessing.json" for r in run_dirs]
    if len(run_dirs) == 1 and rules[0].is_file():
        return json.loads(rules[0].read_text())
    return None
