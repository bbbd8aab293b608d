"""Checkpoints: atomic writes, everything needed to resume exactly and to predict without the plan."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxseg.errors import CheckpointError, NotFoundError
from voxseg.io_utils import atomic_path


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("checkpoint not found", path=path, fix="train first, or pick another --checkpoint (final|best|latest)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which one
        raise CheckpointError(f"cannot load checkpoint ({type(e).__name__})", path=path, fix="delete it and train again") from None
