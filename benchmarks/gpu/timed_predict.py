"""`voxseg predict` with a stopwatch on each of its stages; one JSON line at the end.

    python benchmarks/gpu/timed_predict.py predict -m RUN_DIR -i IMAGES -o OUT [voxseg predict options]

Runs the real command (``voxseg.cli.main.main``) after wrapping, not changing, the functions it
calls per case: model loading, reading, preprocessing, the sliding window (network), restoring the
probabilities to the input grid on the device (resampling, uncropping), decoding, writing. A
wrapped call that returns a CUDA tensor is synchronised before its clock stops, so device work is
charged to the stage that queued it. Reading/preprocessing of the next case and writing of the
previous one run in background threads beside the network, so the stage sums overlap and need
not add up to the wall time. A function that was renamed is listed under ``not_instrumented``
rather than failing the command. Printed: rc, stage_s and calls per stage, peak_gpu_mb, peak_rss_mb.
"""

from __future__ import annotations

import functools
import importlib
import json
import resource
import sys
import threading
import time

import torch

TIMED = {  # stage -> where the predict command calls it: (module, attribute path), first found is used
    "load_models": [("voxseg.inference.cohort", "load_models")],
    "read": [("voxseg.inference.cohort", "read_case_images")],
    "preprocess": [("voxseg.inference.cohort", "preprocess_case"), ("voxseg.inference.predictor", "Predictor.preprocess")],
    "network": [("voxseg.inference.predictor", "sliding_window")],
    "restore": [("voxseg.inference.predictor", "restore_shape")],
    "segment": [("voxseg.inference.predictor", "Predictor.segment")],
    "write": [("voxseg.inference.cohort", "write_image")],
}


def _find(module_name: str, path: str):
    """(owner, attribute name) of ``module.path``, or None when it does not exist."""
    owner = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent, None)
    return (owner, name) if owner is not None and hasattr(owner, name) else None


def instrument(totals: dict[str, float], calls: dict[str, int]) -> list[str]:
    """Wrap every function of :data:`TIMED` in place; the stages that could not be found."""
    lock = threading.Lock()
    missing = []
    for stage, places in TIMED.items():
        found = next((f for f in (_find(*place) for place in places) if f is not None), None)
        if found is None:
            missing.append(stage)
            continue
        owner, name = found
        setattr(owner, name, _timed(stage, getattr(owner, name), totals, calls, lock))
    return missing


def _timed(stage: str, fn, totals: dict[str, float], calls: dict[str, int], lock: threading.Lock):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)
        with lock:
            totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - start
            calls[stage] = calls.get(stage, 0) + 1
        return out

    return wrapper


def main() -> int:
    from voxseg.cli.main import main as voxseg_main

    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    missing = instrument(totals, calls)
    rc = voxseg_main(sys.argv[1:])
    rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    print(
        json.dumps(
            {
                "rc": rc,
                "stage_s": totals,
                "calls": calls,
                "not_instrumented": missing,
                "peak_gpu_mb": gpu,
                "peak_rss_mb": rss / 1024,
            }
        )
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
