"""`voxseg train`: train one fold, then predict its validation cases from the raw images.

Final validation runs the real predictor on the fold's checkpoint (final, or best with
``--val-best``), exactly as `voxseg predict` would, and evaluates the result. Its folder
``fold_N/validation/`` (predictions, ``CASE.npz`` probabilities, ``summary.json``) is what
``find-postprocessing`` and ``select`` read.
"""

from __future__ import annotations

import json
from pathlib import Path

from voxseg.data.spec import load_dataset
from voxseg.device import resolve_device
from voxseg.evaluation.evaluate import evaluate_folders
from voxseg.inference.cohort import CaseInput, predict_cases
from voxseg.inference.models import load_models
from voxseg.inference.predictor import Predictor
from voxseg.distributed import is_main_process
from voxseg.training.run import train
from voxseg.training.settings import Settings
from voxseg.training.trainer import Trainer


def final_validation(run_dir: Path, *, checkpoint: str = "final", device: str = "auto", progress: bool = False) -> dict:
    """Predict the fold's validation cases from the raw images with the predictor, then evaluate."""
    meta = json.loads((run_dir / "run.json").read_text())
    plan = json.loads((Path(meta["work_dir"]) / "plans.json").read_text())
    spec = load_dataset(plan["dataset_path"])
    dev = resolve_device(device)
    predictor = Predictor(load_models([run_dir], None, checkpoint, dev), dev)
    out_dir = run_dir / "validation"
    cases = [CaseInput(cid, list(spec.case(cid).images)) for cid in meta["val"]]
    predict_cases(predictor, cases, spec.file_ending, out_dir, save_probabilities=True, progress=progress)
    summary = evaluate_folders(out_dir, spec.root / "labelsTr", spec.root / "dataset.json", output=out_dir / "summary.json", progress=False)
    print(f"final validation ({checkpoint} checkpoint): foreground Dice {summary['foreground_mean'].get('Dice', float('nan')):.4f} "
          f"on {len(cases)} cases -> {out_dir}")
    return summary


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
) -> Path:
    """Train one fold (or `all`) and, unless disabled, validate it; returns the fold folder."""
    run_dir = train(work_dir, config, fold, settings, trainer=trainer, device=device, resume=resume, name=name, pretrained=pretrained)
    if is_main_process() and settings.training.final_validation and fold != "all" and json.loads((run_dir / "run.json").read_text())["val"]:
        final_validation(run_dir, checkpoint="best" if val_best else "final", device=device)
    return run_dir
