"""`voxseg predict`, `voxseg ensemble`, `voxseg find-postprocessing`, `voxseg select`."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxseg.errors import InputError


def _folds(text: str) -> list[str] | None:
    return None if text == "all" else [f.strip() for f in text.split(",") if f.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment a folder of images with one or more trained runs")
    p.add_argument("-m", "--models", nargs="+", type=Path, required=True, metavar="RUN_DIR", help="run folders (several = ensemble)")
    p.add_argument("-i", "--input", type=Path, required=True, help="folder of CASE_0000<ending> images")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--folds", type=_folds, default=None, help="comma-separated fold indices, or all (default: every trained fold)")
    p.add_argument("--checkpoint", default="final", choices=("final", "best", "latest"))
    p.add_argument("--no-tta", action="store_true", help="skip mirroring test-time augmentation (8x faster in 3D)")
    p.add_argument("--step-size", type=float, default=0.5, help="tile step as a fraction of the patch")
    p.add_argument("--tile-batch", type=int, default=None, help="tiles per forward pass, mirror flips ride along (default: 4 on a GPU, 1 on a CPU)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz class probabilities")
    p.add_argument("--heads", action="store_true", help="also write extra heads as CASE_<head><ending>")
    p.set_defaults(func=run_predict)

    p = sub.add_parser("ensemble", help="average saved probabilities (CASE.npz) of several prediction folders")
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--file-ending", default=".nii.gz")
    p.add_argument("--save-probabilities", action="store_true")
    p.set_defaults(func=run_ensemble)

    p = sub.add_parser("find-postprocessing", help="decide on cross-validation whether largest-component filtering helps")
    p.add_argument("run_dir", type=Path, help="run folder whose fold_N/validation/ predictions to use")
    p.set_defaults(func=run_find_postprocessing)

    p = sub.add_parser("select", help="compare trained configurations and their pairwise ensembles on cross-validation")
    p.add_argument("work_dir", type=Path)
    p.set_defaults(func=run_select)


def run_predict(args: argparse.Namespace) -> int:
    from voxseg.inference.cohort import predict

    failed = predict(
        args.models, args.input, args.output, folds=args.folds, checkpoint=args.checkpoint, tta=not args.no_tta,
        step=args.step_size, tile_batch=args.tile_batch, device=args.device, save_probabilities=args.save_probabilities, heads=args.heads,
    )
    print(f"predictions in {args.output}" + (f"; {len(failed)} case(s) skipped: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run_ensemble(args: argparse.Namespace) -> int:
    from voxseg.inference.ensemble import ensemble_folders

    written = ensemble_folders(args.folders, args.output, args.file_ending, save_probabilities=args.save_probabilities)
    print(f"wrote {len(written)} ensembled cases to {args.output}")
    return 0


def run_find_postprocessing(args: argparse.Namespace) -> int:
    from voxseg.inference.selection import find_run_postprocessing

    rule = find_run_postprocessing(args.run_dir)
    print(f"post-processing rule saved to {args.run_dir / 'postprocessing.json'}: {rule}")
    return 0


def run_select(args: argparse.Namespace) -> int:
    from voxseg.inference.selection import select_best

    if not (args.work_dir / "runs").is_dir():
        raise InputError("no runs/ folder", path=args.work_dir, fix="train at least one configuration first")
    print(select_best(args.work_dir))
    return 0
