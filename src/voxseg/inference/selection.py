"""Choosing on cross-validation: the post-processing rule of a run, and the best configuration.

Both read what training's final validation leaves in each fold: ``fold_N/validation/`` with the
predictions (``CASE<ending>``), class probabilities (``CASE.npz``) and ``summary.json``.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import numpy as np

from voxseg.errors import InputError
from voxseg.evaluation.evaluate import load_label_setup
from voxseg.evaluation.metrics import compute_metrics, label_key, nanmean
from voxseg.inference.ensemble import load_probabilities, probabilities_to_segmentation
from voxseg.inference.postprocess import find_postprocessing_folders, save_rule


def _run_info(run_dir: Path) -> tuple[Path, list[Path]]:
    """The raw dataset folder of a run and its folds' validation folders."""
    folds = sorted(p / "validation" for p in run_dir.glob("fold_*") if (p / "validation" / "summary.json").is_file())
    if not folds:
        raise InputError("no fold_N/validation/summary.json", path=run_dir, fix="train folds with training.final_validation=true (the default)")
    meta = json.loads((folds[0].parent / "run.json").read_text())
    plans = json.loads((Path(meta["work_dir"]) / "plans.json").read_text())
    return Path(plans["dataset_path"]), folds


def find_run_postprocessing(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    dataset, folds = _run_info(run_dir)
    ending = load_label_setup(dataset / "dataset.json").file_ending
    with tempfile.TemporaryDirectory() as tmp:
        # All folds' validation predictions in one folder = the cross-validation prediction set.
        for fold in folds:
            for p in fold.glob(f"*{ending}"):
                (Path(tmp) / p.name).symlink_to(p.resolve())
        rule = find_postprocessing_folders(tmp, dataset / "labelsTr", dataset / "dataset.json")
    save_rule(rule, run_dir)
    return rule


def _cv_score(folds: list[Path]) -> float:
    scores = [json.loads((f / "summary.json").read_text())["foreground_mean"]["Dice"] for f in folds]
    return float(np.mean(scores))


def _ensemble_score(a: list[Path], b: list[Path], dataset: Path) -> float | None:
    from voxseg.data.spec import load_dataset, read_label

    spec = load_dataset(dataset)
    setup = load_label_setup(dataset / "dataset.json")
    files_a = {p.stem: p for f in a for p in f.glob("*.npz")}
    files_b = {p.stem: p for f in b for p in f.glob("*.npz")}
    cases = sorted(set(files_a) & set(files_b))
    if not cases:
        return None
    dices = []
    for case in cases:
        pa, geometry, order = load_probabilities(files_a[case])
        pb, _, _ = load_probabilities(files_b[case])
        seg = probabilities_to_segmentation((pa + pb) / 2, order)
        ref, _ = read_label(spec.case(case).label, spec)
        m = compute_metrics(seg, ref[0], setup.eval_labels, geometry.spacing, metrics=("dice",))
        dices.append(nanmean([m[label_key(lab)]["Dice"] for lab in setup.eval_labels]))
    return nanmean(dices)


def select_best(work_dir: str | Path) -> str:
    """A table of cross-validation foreground Dice per run and pairwise ensemble, and the best's command."""
    work_dir = Path(work_dir)
    runs = {}
    for run in sorted(p for p in (work_dir / "runs").iterdir() if p.is_dir()):
        try:
            runs[run] = _run_info(run)
        except InputError:
            continue
    if not runs:
        raise InputError("no run has cross-validation results", path=work_dir / "runs", fix="train folds with final validation first")
    rows = [((run,), _cv_score(folds)) for run, (_, folds) in runs.items()]
    for (ra, (dataset, fa)), (rb, (_, fb)) in itertools.combinations(runs.items(), 2):
        score = _ensemble_score(fa, fb, dataset)
        if score is not None:
            rows.append(((ra, rb), score))
    rows.sort(key=lambda r: -r[1])
    lines = ["cross-validation foreground Dice:"] + [f"  {score:.4f}  {' + '.join(r.name for r in combo)}" for combo, score in rows]
    best = rows[0][0]
    lines.append("best: " + " + ".join(r.name for r in best))
    lines.append(f"predict with: voxseg predict -m {' '.join(str(r) for r in best)} -i INPUT_DIR -o OUTPUT_DIR")
    return "\n".join(lines)
