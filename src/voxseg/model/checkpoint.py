"""Checkpoint files and rebuilding their network, without the training stack.

A checkpoint is one ``torch.save`` file written atomically. Its ``meta`` holds what prediction needs
(the plan, the configuration name, the `NetworkSpec`, class names, the mirror axes training
augmented with); ``trainer`` holds the full training state for ``--resume``. A trainer whose class
overrides ``build_network_architecture`` records itself as ``meta["builder"]`` and is imported only
to rebuild such a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from voxseg.errors import CheckpointError, NotFoundError
from voxseg.io_utils import atomic_path
from voxseg.model.build import NetworkSpec, build_from_spec
from voxseg.model.config import HeadSettings, ModelSettings
from voxseg.plans import Plan
from voxseg.registry import TRAINERS


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            "checkpoint not found", path=path, fix="train first, or pick another --checkpoint (final|best|latest)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(
            f"cannot load checkpoint ({type(e).__name__})", path=path, fix="delete it and train again"
        ) from None


def network_spec(meta: dict[str, Any]) -> NetworkSpec:
    """The checkpoint's NetworkSpec (older checkpoints: derived from the plan and settings)."""
    if "network_spec" in meta:
        return NetworkSpec.from_json(meta["network_spec"])
    settings = meta.get("settings", {})
    heads = [HeadSettings(**h) for h in settings.get("heads", [])]
    return NetworkSpec.from_plan(
        Plan.from_json(meta["plan"]), meta["config_name"], ModelSettings(**settings.get("model", {})), heads
    )


def network_from_meta(meta: dict[str, Any]) -> nn.Module:
    """An untrained network of the checkpoint's architecture, deep supervision off (inference)."""
    spec = network_spec(meta)
    builder = meta.get("builder")
    if builder:
        net = TRAINERS.get(builder).build_network_architecture(spec)
        if hasattr(net, "deep_supervision"):
            net.deep_supervision = False
        return net
    return build_from_spec(spec, deep_supervision=False)


def load_network(path: str | Path, state: str = "network") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load the network of a checkpoint file; returns (network in eval mode, meta)."""
    ckpt = load_checkpoint(path)
    if "meta" not in ckpt or "trainer" not in ckpt:
        raise CheckpointError(
            "not a voxseg checkpoint (no 'meta'/'trainer')",
            path=path,
            fix="pass a checkpoint_*.pt written by `voxseg train` (nnU-Net models: `voxseg import-nnunet`)",
        )
    network = network_from_meta(ckpt["meta"])
    try:
        network.load_state_dict(ckpt["trainer"][state])
    except RuntimeError as e:
        raise CheckpointError(
            f"weights do not fit the recorded network ({str(e).splitlines()[0]})",
            path=path,
            fix="the checkpoint and its meta disagree; re-export or retrain",
        ) from None
    return network.eval(), ckpt["meta"]
