"""The cascade's training inputs: which low-resolution run, and its out-of-fold segmentations.

nnU-Net's 3d_cascade_fullres trains on the 3d_fullres store plus, per case, the 3d_lowres stage's
segmentation of that case predicted by the low-resolution fold that did NOT train on it (so the
cascade learns to fix the mistakes it will see at test time). voxseg's low-resolution final
validation writes those segmentations, resampled onto the full-resolution store grid, to
``RUN/fold_N/next_stage/CASE.npy``; after all folds every training case has one.
"""

from __future__ import annotations

import json
from pathlib import Path

from voxseg.errors import InputError, NotFoundError
from voxseg.plans import Plan

NEXT_STAGE_DIR = "next_stage"
PREVIOUS = "previous_stage"  # name of the extra label map holding the previous stage's segmentation


def find_previous_run(work_dir: Path, plan: Plan, config: str, given: str | Path | None) -> Path:
    """The previous stage's run folder: `given`, or the one run of that configuration in WORK/runs."""
    previous = plan.configuration(config).previous_stage
    if previous is None:
        raise InputError(f"configuration {config!r} has no previous stage", fix="--previous-stage is only for 3d_cascade_fullres")
    if given is not None:
        run = Path(given)
        if run.name.startswith("fold_"):
            run = run.parent
        if not run.is_dir():
            raise NotFoundError(
                "previous-stage run folder not found", path=run, fix=f"pass a {previous} run folder (WORK/runs/{previous}__...)"
            )
        return run
    runs = sorted(p for p in (work_dir / "runs").glob(f"{previous}__*") if p.is_dir())
    if not runs:
        raise InputError(
            f"no {previous} run in {work_dir / 'runs'}",
            fix=f"train the {previous} folds first: voxseg train {work_dir} {previous} 0 (... 4)",
        )
    if len(runs) > 1:
        raise InputError(
            f"{len(runs)} {previous} runs ({', '.join(r.name for r in runs)})", fix=f"choose one with --previous-stage {runs[0]}"
        )
    return runs[0]


def next_stage_files(run: Path) -> dict[str, Path]:
    """Case id -> the previous stage's out-of-fold segmentation on the next stage's store grid."""
    return {p.stem: p for fold in sorted(run.glob("fold_*")) for p in sorted((fold / NEXT_STAGE_DIR).glob("*.npy"))}


def check_complete(files: dict[str, Path], cases: list[str], run: Path, work_dir: Path) -> None:
    """Every case needs its previous-stage segmentation; name the folds still to train otherwise."""
    missing = sorted(set(cases) - set(files))
    if not missing:
        return
    splits_path = work_dir / "splits.json"
    splits = json.loads(splits_path.read_text()) if splits_path.is_file() else []
    folds = sorted({i for i, s in enumerate(splits) if set(s["val"]) & set(missing)})
    what = f"folds {', '.join(map(str, folds))}" if folds else "all folds"
    raise InputError(
        f"{len(missing)} case(s) have no previous-stage prediction (e.g. {missing[0]}): train {what} of {run.name} "
        "with final validation",
        path=run,
        fix=f"voxseg train {work_dir} {run.name.split('__')[0]} FOLD for each missing fold (training.final_validation=true)",
    )
