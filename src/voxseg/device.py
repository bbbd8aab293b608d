"""Device and precision choice, shared by training and inference.

Kept apart from both stages so the predictor can choose a device without importing the trainer.
``auto`` picks CUDA, then Apple's MPS, then the CPU.
"""

from __future__ import annotations

import torch

from voxseg.errors import InputError

DEVICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`, `cuda`, `mps` or `cpu` -> a torch.device; a device that is not there is a one-line error."""
    if choice not in DEVICES:
        raise InputError(f"unknown device '{choice}'", fix=f"use one of {', '.join(DEVICES)}")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError(
                "--device cuda but no CUDA device is visible", fix="use --device cpu or install a CUDA build of torch"
            )
        return torch.device("cuda", local_rank)
    if choice == "mps" or (choice == "auto" and mps_available()):
        if not mps_available():
            raise InputError(
                "--device mps but PyTorch's MPS backend is not available here",
                fix="use --device cpu (MPS needs Apple silicon and a macOS build of torch)",
            )
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a `precision` setting (auto/bf16/fp16/fp32) on `device`; None = fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        # bf16 needs no loss scaling; CPU autocast for 3D convs is slower than fp32, so auto stays fp32 there.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
