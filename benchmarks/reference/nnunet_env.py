"""Helpers shared by the reference scripts (run with the reference venv's python, not ours).

Every script takes the raw dataset folder ``.../DatasetNNN_Name`` and a scratch WORK folder and
keeps all of nnU-Net's state under WORK:

    WORK/nnUNet_raw/DatasetNNN_Name -> RAW   (symlink; nnU-Net never writes raw data)
    WORK/nnUNet_preprocessed/...   WORK/nnUNet_results/...

nnU-Net reads its three folder variables when ``nnunetv2.paths`` is first imported, so
:func:`use_work` must run before any nnunetv2 import; it sets them for this process and its
children only.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH_PLANS = "nnUNetBenchPlans"
TRAINER = "nnUNetTrainerBench"


def dataset_id(raw: Path) -> int:
    m = re.fullmatch(r"Dataset(\d{3})_\w+", Path(raw).name)
    if m is None:
        raise SystemExit(f"{raw}: not an nnU-Net raw dataset folder name (fix: name it DatasetNNN_Name)")
    return int(m.group(1))


def use_work(raw: Path, work: Path) -> dict[str, str]:
    """Point nnU-Net's folder variables into WORK and link the raw dataset there."""
    raw, work = Path(raw).resolve(), Path(work).resolve()
    env = {
        "nnUNet_raw": str(work / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
        "nnUNet_results": str(work / "nnUNet_results"),
    }
    for folder in env.values():
        Path(folder).mkdir(parents=True, exist_ok=True)
    link = work / "nnUNet_raw" / raw.name
    if not link.exists():
        link.symlink_to(raw, target_is_directory=True)
    os.environ.update(env)
    return env


def preprocessed_dir(raw: Path, work: Path) -> Path:
    return Path(work).resolve() / "nnUNet_preprocessed" / Path(raw).name


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run an nnU-Net console command (e.g. ``nnUNetv2_train``) by its entry point; return wall s.

    Called through this interpreter rather than as a script file, so it works whether nnU-Net sits
    in a venv (not necessarily activated) or in a --target folder on PYTHONPATH.
    """
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name=cmd[0])
    module, attr = ep.value.split(":")
    code = f"import sys; from {module} import {attr}; sys.argv[0] = {cmd[0]!r}; sys.exit({attr}())"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *cmd[1:]],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return wall


def plan_and_preprocess(raw: Path, work: Path, processes: int, config: str = "3d_fullres") -> float:
    return run_timed(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id(raw)), "-c", config, "-np", str(processes)])


def ensure_preprocessed(raw: Path, work: Path, processes: int = 2) -> None:
    if not (preprocessed_dir(raw, work) / "nnUNetPlans.json").exists():
        plan_and_preprocess(raw, work, processes)


def bench_plans(raw: Path, work: Path, patch: list[int] | None, batch: int | None, config: str = "3d_fullres") -> dict:
    """nnU-Net's plans with patch/batch overridden, saved as ``nnUNetBenchPlans.json``.

    The copy keeps the data identifier, so it reads the data nnUNetPlans preprocessed. The network
    is the planned one: the patch must stay divisible by its total stride per axis.
    """
    folder = preprocessed_dir(raw, work)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    cfg = plans["configurations"][config]
    if patch is not None:
        strides = cfg["architecture"]["arch_kwargs"]["strides"]
        total = [1] * len(patch)
        for s in strides:
            s = s if isinstance(s, (list, tuple)) else [s] * len(patch)
            total = [t * v for t, v in zip(total, s)]
        if any(p % t for p, t in zip(patch, total)):
            raise SystemExit(
                f"patch {patch} is not divisible by the planned network's total stride {total} (fix: choose a multiple of it)"
            )
        cfg["patch_size"] = list(patch)
    if batch is not None:
        cfg["batch_size"] = int(batch)
    plans["plans_name"] = BENCH_PLANS
    (folder / f"{BENCH_PLANS}.json").write_text(json.dumps(plans, indent=1))
    return plans


def training_pipeline(raw: Path, work: Path, patch: list[int], batch: int, config: str = "3d_fullres"):
    """What ``nnUNetTrainer.get_dataloaders`` builds for training, without starting workers.

    Returns (trainer, nnUNetDataLoader without transforms, the trainer's default training
    transforms). Fold "all": every training case. Preprocesses first when WORK has no plans.
    """
    import torch
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    ensure_preprocessed(raw, work)
    plans = bench_plans(raw, work, patch, batch, config)
    plans["continue_training"] = False  # the trainer pops this key, which its CLI adds
    dataset_json = json.loads((preprocessed_dir(raw, work) / "dataset.json").read_text())
    tr = nnUNetTrainer(plans, config, "all", dataset_json, device=torch.device("cpu"))
    tr._set_batch_size_and_oversample()  # part of initialize(), which would also build the network
    final_patch = tr.configuration_manager.patch_size
    rotation, dummy_2d, initial_patch, mirror_axes = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = tr.get_training_transforms(
        final_patch,
        rotation,
        tr._get_deep_supervision_scales(),
        mirror_axes,
        dummy_2d,
        use_mask_for_norm=tr.configuration_manager.use_mask_for_norm,
        is_cascaded=tr.is_cascaded,
        foreground_labels=tr.label_manager.foreground_labels,
        regions=tr.label_manager.foreground_regions if tr.label_manager.has_regions else None,
        ignore_label=tr.label_manager.ignore_label,
    )
    dataset_tr, _ = tr.get_tr_and_val_datasets()
    loader = nnUNetDataLoader(
        dataset_tr,
        tr.batch_size,
        initial_patch,
        final_patch,
        tr.label_manager,
        oversample_foreground_percent=tr.oversample_foreground_percent,
        sampling_probabilities=None,
        pad_sides=None,
        transforms=None,
        probabilistic_oversampling=tr.probabilistic_oversampling,
    )
    return tr, loader, transforms


def peak_rss_mb() -> float:
    """Peak RSS of this process or its largest finished child (per process, not summed)."""
    return (
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024.0
    )


def emit(result: dict) -> None:
    """The one JSON line the caller parses (benchmarks.common.run_reference_script)."""
    print(json.dumps(result), flush=True)
