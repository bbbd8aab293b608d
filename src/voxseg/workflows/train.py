"""`voxseg train`: train one fold, then predict its validation cases from the raw images.

Final validation runs the real predictor on the fold's checkpoint (final, or best with
``--val-best``), exactly as `voxseg predict` would, and evaluates the result. Its folder
``fold_N/validation/`` (predictions, ``CASE.npz`` probabilities, ``summary.json``) is what
``find-postprocessing`` and ``select`` read. A cascade's low-resolution stage then also writes
its validation segmentations onto the next stage's store grid (``fold_N/next_stage/CASE.npy``):
after all folds, every training case has an out-of-fold low-resolution segmentation for the
3d_cascade_fullres stage to train on.
"""

from __future__ import annotations

import json
from pathlib import Path

from voxseg.data.io import label_file_ending, read_image
from voxseg.data.spec import load_dataset
from voxseg.device import resolve_device
from voxseg.distributed import is_main_process
from voxseg.errors import InputError
from voxseg.evaluation.evaluate import evaluate_folders
from voxseg.inference.cohort import CaseInput, predict_cases
from voxseg.inference.models import load_models
from voxseg.inference.predictor import Predictor
from voxseg.io_utils import atomic_save_npy
from voxseg.plans import Plan, load_plans
from voxseg.preprocessing.preprocess import labels_to_store_grid, store_dir
from voxseg.preprocessing.store import Store, label_dtype
from voxseg.training.cascade import NEXT_STAGE_DIR
from voxseg.training.run import train
from voxseg.training.settings import Settings
from voxseg.training.trainer import Trainer


def final_validation(run_dir: Path, *, checkpoint: str = "final", device: str = "auto", progress: bool = False) -> dict:
    """Predict the fold's validation cases from the raw images with the predictor, then evaluate."""
    meta = json.loads((run_dir / "run.json").read_text())
    plans = load_plans(meta["work_dir"])
    spec = load_dataset(plans.dataset_path)
    dev = resolve_device(device)
    predictor = Predictor(load_models([run_dir], None, checkpoint, dev), dev)
    out_dir = run_dir / "validation"
    cases = [CaseInput(cid, list(spec.case(cid).images)) for cid in meta["val"]]
    predict_cases(predictor, cases, spec.file_ending, out_dir, save_probabilities=True, progress=progress)
    summary = evaluate_folders(
        out_dir, spec.root / "labelsTr", spec.root / "dataset.json", output=out_dir / "summary.json", progress=False
    )
    print(
        f"final validation ({checkpoint} checkpoint): foreground Dice {summary['foreground_mean'].get('Dice', float('nan')):.4f} "
        f"on {len(cases)} cases -> {out_dir}"
    )
    next_stage = plans.configuration(meta["config"]).next_stage
    if next_stage is not None:
        export_next_stage(run_dir, plans, next_stage, label_file_ending(spec.file_ending))
    return summary


def export_next_stage(run_dir: Path, plan: Plan, next_stage: str, ending: str) -> Path:
    """The fold's validation segmentations on `next_stage`'s store grid: fold_N/next_stage/CASE.npy."""
    meta = json.loads((run_dir / "run.json").read_text())
    store = Store(store_dir(meta["work_dir"], next_stage, plan))
    out = run_dir / NEXT_STAGE_DIR
    for cid in meta["val"]:
        if not store.has_case(cid):
            raise InputError(
                f"case {cid} is not preprocessed for {next_stage}",
                path=store.root,
                fix=f"run `voxseg preprocess {meta['work_dir']} --configs {next_stage}` first",
            )
        seg, _ = read_image(run_dir / "validation" / f"{cid}{ending}")
        grid = labels_to_store_grid(seg[None], store.properties(cid))
        atomic_save_npy(out / f"{cid}.npy", grid.astype(label_dtype(plan.num_classes)))
    return out


def train_fold(
    work_dir: str | Path,
    config: str,
    fold: str,
    settings: Settings,
    *,
    trainer: str | type[Trainer] = "default",
    device: str = "auto",
    resume: bool = False,
    name: str | None = None,
    val_best: bool = False,
    pretrained: str | Path | None = None,
    previous_stage: str | Path | None = None,
) -> Path:
    """Train one fold (or `all`) and, unless disabled, validate it; returns the fold folder."""
    run_dir = train(
        work_dir,
        config,
        fold,
        settings,
        trainer=trainer,
        device=device,
        resume=resume,
        name=name,
        pretrained=pretrained,
        previous_stage=previous_stage,
    )
    if (
        is_main_process()
        and settings.training.final_validation
        and fold != "all"
        and json.loads((run_dir / "run.json").read_text())["val"]
    ):
        final_validation(run_dir, checkpoint="best" if val_best else "final", device=device)
    return run_dir
