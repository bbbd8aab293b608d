"""The Python API: each stage of the pipeline as one function, doing what its command does.

``import voxseg`` exposes these (and `Settings`, `Trainer`, `Predictor`) lazily, so importing voxseg
stays fast and a function only imports the stage it runs. docs/python-api.md walks through them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxseg.errors import SettingsError

if TYPE_CHECKING:
    from voxseg.plans import Plan
    from voxseg.training.settings import Settings
    from voxseg.training.trainer import Trainer


def plan(dataset: str | Path, work: str | Path, *, workers: int | None = 1, progress: bool = True, **options: Any) -> Plan:
    """Verify and fingerprint a raw dataset and write ``WORK/plans.json`` (``voxseg plan``).

    Args:
        dataset: the raw dataset folder (dataset.json, imagesTr/, labelsTr/).
        work: the work folder to write (fingerprint.json, plans.json; later the store and runs).
        workers: processes for verifying and fingerprinting; 1 (the default) runs in this process, so a
            script needs no ``if __name__ == "__main__":`` guard; None: all cores (then it does).
        progress: show progress bars.
        **options: `voxseg.planning.planner.PlannerOptions` fields: ``gpu_memory_gb`` (8.0), ``configs``
            (("2d", "3d_fullres", "3d_lowres")), ``patch_size``, ``batch_size``, ``spacing`` (array order),
            ``architecture`` ("plain_unet" or "resenc_unet"), ``normalization`` ({channel: scheme}), ``like``
            (another work folder).

    Returns:
        The `Plan` written to plans.json.

    Example:
        >>> import voxseg
        >>> plan = voxseg.plan(dataset, tmp / "work", configs=("3d_fullres",), patch_size=(16, 32, 32), progress=False)
        >>> list(plan.configurations), plan.configurations["3d_fullres"].patch_size
        (['3d_fullres'], [16, 32, 32])
    """
    from voxseg.planning.planner import PlannerOptions, plan_and_save

    names = [f.name for f in dataclasses.fields(PlannerOptions)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise SettingsError(f"unknown planning option(s) {unknown}", fix=f"use {', '.join(names)}")
    for key in ("configs", "patch_size", "spacing"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    return plan_and_save(dataset, work, PlannerOptions(**options), workers=workers, progress=progress)


def preprocess(
    work: str | Path,
    configs: Sequence[str] | None = None,
    *,
    workers: int | None = 1,
    overwrite: bool = False,
    progress: bool = True,
    group_regex: str | None = None,
    splits_file: str | Path | None = None,
) -> dict[str, int]:
    """Write the preprocessed store and splits.json of a planned work folder (``voxseg preprocess``).

    Args:
        work: the work folder holding plans.json.
        configs: configurations to preprocess (None: every planned one).
        workers: processes; 1 (the default) runs in this process (no pool, no ``__main__`` guard needed);
            None: all cores.
        overwrite: redo cases that are already stored.
        progress: show progress bars.
        group_regex: patient id from the case id (first group), keeping a patient's cases in one fold.
        splits_file: a splits.json to use instead of generated folds.

    Returns:
        Cases written per configuration.

    Example:
        >>> voxseg.preprocess(tmp / "work", workers=1, progress=False)
        {'3d_fullres': 4}
    """
    from voxseg.preprocessing.preprocess import preprocess_dataset

    return preprocess_dataset(
        work, configs, workers=workers, overwrite=overwrite, progress=progress, group_regex=group_regex, splits_file=splits_file
    )


def load_settings(values: Settings | Mapping[str, Any] | str | Path | None = None) -> Settings:
    """Training settings from the defaults and overrides, as ``voxseg train --settings/--set`` build them.

    Args:
        values: a `Settings` (returned as is), ``{"training.epochs": 5, ...}`` (dotted keys, any value
            YAML can hold), a YAML settings file, or None for the defaults.

    Example:
        >>> voxseg.load_settings({"training.epochs": 5, "augmentation.preset": "light"}).training.epochs
        5
    """
    from voxseg.training import settings as settings_module

    if isinstance(values, settings_module.Settings):
        return values
    if isinstance(values, (str, Path)):
        return settings_module.load_settings(values)
    # JSON is YAML, which is how `--set key=value` values are read
    return settings_module.load_settings(None, [f"{key}={json.dumps(value)}" for key, value in (values or {}).items()])


def train(
    work: str | Path,
    config: str,
    fold: int | str,
    settings: Settings | Mapping[str, Any] | str | Path | None = None,
    *,
    trainer: str | type[Trainer] = "default",
    device: str = "auto",
    resume: bool = False,
    name: str | None = None,
    val_best: bool = False,
    pretrained: str | Path | None = None,
    previous_stage: str | Path | None = None,
) -> Path:
    """Train one configuration on one fold (or ``"all"``), then predict and score its validation cases (``voxseg train``).

    Args:
        work: the preprocessed work folder.
        config: a planned configuration, e.g. ``"3d_fullres"``.
        fold: fold index from splits.json, or ``"all"``.
        settings: anything `load_settings` accepts (a `Settings`, ``{"training.epochs": 5}``, a YAML file, None).
        trainer: a registered name, ``package.module:Class``, ``path/file.py:Class`` or a `Trainer` subclass.
        device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        resume: continue from checkpoint_latest.pt.
        name: the run's name (None: a hash of the settings): ``WORK/runs/<config>__<trainer>__<name>/``.
        val_best: final validation with checkpoint_best.pt instead of the final weights.
        pretrained: fine-tune from this run, fold folder or checkpoint.
        previous_stage: 3d_cascade_fullres: the 3d_lowres run it refines (None: the one in WORK/runs).

    Returns:
        The fold folder ``WORK/runs/<config>__<trainer>__<name>/fold_<fold>``.

    Example:
        >>> fold_dir = voxseg.train(tmp / "work", "3d_fullres", 0, {"training.epochs": 1, "training.iterations_per_epoch": 2,
        ...                                                         "training.val_iterations": 0}, device="cpu", name="api")
        training 3d_fullres fold 0 with trainer 'default' on cpu -> ...
        >>> sorted(p.name for p in fold_dir.glob("checkpoint_*.pt"))
        ['checkpoint_best.pt', 'checkpoint_final.pt', 'checkpoint_latest.pt']
    """
    from voxseg.workflows.train import train_fold

    return train_fold(
        work,
        config,
        str(fold),
        load_settings(settings),
        trainer=trainer,
        device=device,
        resume=resume,
        name=name,
        val_best=val_best,
        pretrained=pretrained,
        previous_stage=previous_stage,
    )


def evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: str | Path,
    *,
    output: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    nsd_tolerance: float = 1.0,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Dice, IoU, HD95 and NSD of a prediction folder against references (``voxseg evaluate``).

    Args:
        pred_dir: folder of predicted label files.
        ref_dir: folder of reference label files with the same names.
        dataset_json: dataset.json (labels, regions, ignore label, file ending).
        output: the summary file (None: PRED_DIR/summary.json); a CSV is written beside it.
        metrics: metric names (None: all of Dice, IoU, HD95, NSD and the counts).
        nsd_tolerance: surface Dice tolerance in mm.
        workers: processes (1: none started).
        progress: show a progress bar.

    Returns:
        The summary (nnU-Net's layout): ``mean`` per class, ``foreground_mean``, ``metric_per_case``.

    Example:
        >>> summary = voxseg.evaluate(tmp / "predictions", dataset / "labelsTs", dataset / "dataset.json", progress=False)
        >>> 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
        True
    """
    from voxseg.evaluation.evaluate import evaluate_folders
    from voxseg.evaluation.metrics import ALL_METRICS

    return evaluate_folders(
        pred_dir,
        ref_dir,
        dataset_json,
        output=output,
        metrics=tuple(metrics or ALL_METRICS),
        nsd_tolerance=nsd_tolerance,
        num_workers=workers,
        progress=progress,
    )
