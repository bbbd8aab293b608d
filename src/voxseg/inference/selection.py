"""Choosing on cross-validation: the post-processing rule of a run, and the best configuration.

Both read what training's final validation leaves in each fold: ``fold_N/validation/`` with the
predictions (``CASE<ending>``), probabilities (``CASE.npz``) and ``summary.json``.

`select_best` is nnU-Net's find_best_configuration: every trained run (2d, 3d_fullres, 3d_lowres,
3d_cascade_fullres, ...) and every pair of runs (an ensemble averaging their CV probabilities) is a
candidate; each gets its own post-processing rule decided on its CV predictions; candidates are
ranked by mean foreground Dice after post-processing over the cases all of them predicted. The
result is written to ``WORK/selection.json`` (rules of ensembles beside it) with the exact commands
that reproduce the winner on new images.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxseg.data.io import read_image
from voxseg.data.spec import map_label_values
from voxseg.errors import InputError
from voxseg.evaluation.evaluate import LabelSetup, load_label_setup
from voxseg.inference.ensemble import load_probabilities, probabilities_to_segmentation
from voxseg.inference.postprocess import find_postprocessing, save_rule
from voxseg.io_utils import atomic_write_json

SELECTION_FILE = "selection.json"


@dataclass
class RunCV:
    """One trained run's cross-validation outputs: case id -> (segmentation file, probability file)."""

    run_dir: Path
    dataset: Path
    cases: dict[str, tuple[Path, Path | None]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name


def run_cv(run_dir: Path) -> RunCV:
    """The CV predictions of `run_dir`'s folds; InputError when it has none."""
    folds = sorted(p / "validation" for p in run_dir.glob("fold_*") if (p / "validation" / "summary.json").is_file())
    if not folds:
        raise InputError(
            "no fold_N/validation/summary.json", path=run_dir, fix="train folds with training.final_validation=true (the default)"
        )
    meta = json.loads((folds[0].parent / "run.json").read_text())
    plans = json.loads((Path(meta["work_dir"]) / "plans.json").read_text())
    out = RunCV(run_dir, Path(plans["dataset_path"]))
    for fold in folds:
        summary = json.loads((fold / "summary.json").read_text())
        for case in summary["metric_per_case"]:
            seg = fold / Path(case["prediction_file"]).name
            npz = fold / f"{case['case_id']}.npz"
            out.cases[case["case_id"]] = (seg, npz if npz.is_file() else None)
    return out


def _references(dataset: Path, setup: LabelSetup, case_ids: list[str]) -> Iterator[np.ndarray]:
    for cid in case_ids:
        ref, _ = read_image(dataset / "labelsTr" / f"{cid}{setup.file_ending}")
        yield map_label_values(ref, setup.ignore_value)


def _segmentations(members: list[RunCV], case_ids: list[str]) -> Iterator[np.ndarray]:
    """The CV segmentation of each case: the run's own, or the members' averaged probabilities."""
    for cid in case_ids:
        if len(members) == 1:
            yield read_image(members[0].cases[cid][0])[0]
            continue
        total, _, order = load_probabilities(_probabilities_file(members[0], cid))
        for m in members[1:]:
            total += load_probabilities(_probabilities_file(m, cid))[0]
        yield probabilities_to_segmentation(total / len(members), order)


def _probabilities_file(run: RunCV, case_id: str) -> Path:
    npz = run.cases[case_id][1]
    assert npz is not None, "ensembles are formed only of runs that saved the case's probabilities"
    return npz


def find_run_postprocessing(run_dir: str | Path) -> dict:
    """Decide and save (RUN_DIR/postprocessing.json) the rule of one run on its CV predictions."""
    cv = run_cv(Path(run_dir))
    setup = load_label_setup(cv.dataset / "dataset.json")
    cases = sorted(cv.cases)
    rule = find_postprocessing(zip(_segmentations([cv], cases), _references(cv.dataset, setup, cases)), setup.eval_labels)
    save_rule(rule, run_dir)
    return rule


@dataclass
class Candidate:
    members: list[RunCV]
    rule: dict
    dice_before: float
    dice_after: float

    @property
    def name(self) -> str:
        return " + ".join(m.name for m in self.members)


def select_best(work_dir: str | Path) -> str:
    """Rank runs and pairwise ensembles on CV (post-processing per candidate); returns the report
    text (table and commands) and writes WORK/selection.json."""
    work_dir = Path(work_dir)
    runs = []
    for run in sorted(p for p in (work_dir / "runs").iterdir() if p.is_dir()):
        try:
            runs.append(run_cv(run))
        except InputError:
            continue
    if not runs:
        raise InputError(
            "no run has cross-validation results", path=work_dir / "runs", fix="train folds with final validation first"
        )
    dataset = runs[0].dataset
    setup = load_label_setup(dataset / "dataset.json")
    cases = sorted(set.intersection(*(set(r.cases) for r in runs)))
    if not cases:
        raise InputError(
            "the runs share no cross-validation case", path=work_dir / "runs", fix="train the same folds for every configuration"
        )
    combos = [[r] for r in runs]
    combos += [
        list(pair)
        for pair in itertools.combinations(runs, 2)
        if all(pair[i].cases[c][1] is not None for i in (0, 1) for c in cases)
    ]
    candidates = []
    for members in combos:
        rule = find_postprocessing(zip(_segmentations(members, cases), _references(dataset, setup, cases)), setup.eval_labels)
        candidates.append(Candidate(members, rule, rule["mean_dice_before"], rule["mean_dice_after"]))
    candidates.sort(key=lambda c: -c.dice_after)
    best = candidates[0]
    commands = _commands(best, work_dir)
    atomic_write_json(
        work_dir / SELECTION_FILE,
        {
            "cases": len(cases),
            "ranking": [
                {
                    "candidate": c.name,
                    "runs": [str(m.run_dir) for m in c.members],
                    "dice": c.dice_before,
                    "dice_postprocessed": c.dice_after,
                    "postprocessing": c.rule,
                }
                for c in candidates
            ],
            "best": best.name,
            "commands": commands,
        },
    )
    lines = [f"cross-validation mean foreground Dice over {len(cases)} cases (after / before post-processing):"]
    lines += [f"  {c.dice_after:.4f} / {c.dice_before:.4f}  {c.name}" for c in candidates]
    lines += [f"best: {best.name}", "predict new images with:"] + [f"  {cmd}" for cmd in commands]
    return "\n".join(lines)


def _commands(best: Candidate, work_dir: Path) -> list[str]:
    """The commands that reproduce `best` on INPUT_DIR (its post-processing rule saved where they read it)."""
    q = shlex.quote
    if len(best.members) == 1:
        run = best.members[0].run_dir
        save_rule(best.rule, run)  # predict applies RUN/postprocessing.json
        return [f"voxseg predict -m {q(str(run))} -i INPUT_DIR -o OUTPUT_DIR"]
    rule_path = work_dir / f"postprocessing__{'+'.join(m.name for m in best.members)}.json"
    atomic_write_json(rule_path, best.rule)
    steps = [
        f"voxseg predict -m {q(str(m.run_dir))} -i INPUT_DIR -o OUTPUT_DIR/{m.name} --save-probabilities" for m in best.members
    ]
    folders = " ".join(f"OUTPUT_DIR/{m.name}" for m in best.members)
    steps.append(f"voxseg ensemble {folders} -o OUTPUT_DIR/ensemble --postprocessing {q(str(rule_path))}")
    return steps
