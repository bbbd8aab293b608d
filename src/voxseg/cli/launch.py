"""`--gpus K`: run the same command as K processes under torchrun (torch.distributed's launcher)."""

from __future__ import annotations

import os
import sys


def relaunch_under_torchrun(gpus: int) -> None:
    """Replace this process by ``torchrun --nproc_per_node=K -m voxseg <same arguments>`` when
    K > 1 and not already launched by torchrun; returns otherwise."""
    if gpus <= 1 or "RANK" in os.environ:
        return
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a == "--gpus":
            skip = not skip
            continue
        if not a.startswith("--gpus="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", "-m", "voxseg", *argv]
    os.execv(sys.executable, cmd)
