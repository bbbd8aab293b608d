"""`voxseg predict`, `voxseg ensemble`, `voxseg find-postprocessing`, `voxseg select`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from voxseg.cli.launch import relaunch_under_torchrun
from voxseg.cli.main import DEVICE_HELP
from voxseg.errors import InputError, NotFoundError


def _folds(text: str) -> list[str] | None:
    return None if text == "all" else [f.strip() for f in text.split(",") if f.strip()]


def _part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N like 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--part {text}: need 0 <= I < N")
    return i, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment a folder of images with one or more trained runs",
        description=(
            "Segment every case of a folder of images named like nnU-Net's (CASE_0000<ending>, one file per channel) "
            "with the folds of one or more run folders (several runs = an ensemble, averaged in probability space), "
            "with sliding-window tiles and mirroring test-time augmentation. Outputs keep each input's geometry and file "
            "ending and are written atomically; a case that cannot be read is reported and skipped."
        ),
    )
    p.add_argument(
        "-m",
        "--models",
        nargs="+",
        type=Path,
        required=True,
        metavar="RUN_DIR|MODEL.zip",
        help="run folders, model zips from `voxseg export` or folders from `voxseg install` (several = ensemble)",
    )
    p.add_argument("-i", "--input", type=Path, required=True, help="folder of CASE_0000<ending> images")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the predictions (created)")
    p.add_argument(
        "--folds", type=_folds, default=None, help="comma-separated fold indices, or all (default: every trained fold)"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        choices=("final", "best", "latest"),
        help="which checkpoint_*.pt of each fold (default: final; for a model zip the kind it holds)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=("torch", "onnx"),
        help="run the networks with torch, or with ONNX Runtime (a zip exported with --onnx; needs voxseg[onnx])",
    )
    p.add_argument("--no-tta", action="store_true", help="skip mirroring test-time augmentation (8x faster in 3D)")
    p.add_argument("--step-size", type=float, default=0.5, help="tile step as a fraction of the patch")
    p.add_argument(
        "--tile-batch",
        type=int,
        default=None,
        help="tiles per forward pass, mirror flips ride along (default: 4 on a GPU, 1 on a CPU)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help=DEVICE_HELP)
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz class probabilities")
    p.add_argument("--heads", action="store_true", help="also write extra heads as CASE_<head><ending>")
    p.add_argument(
        "--continue",
        dest="skip_existing",
        action="store_true",
        help="skip cases whose outputs already exist (outputs are written atomically, so existing ones are complete)",
    )
    p.add_argument(
        "--part",
        type=_part,
        default=None,
        metavar="I/N",
        help="predict only shard I of N (I from 0): every N-th case of the sorted list, for N processes or machines (default: all)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="network precision: auto = bf16 where the hardware computes it natively (CUDA GPUs with bf16, CPUs with "
        "AVX512-BF16/AMX, about 2x faster there), fp16 on other GPUs, else fp32; fp32 reproduces nnU-Net's CPU results exactly",
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=("auto", "on", "off"),
        help="torch.compile the networks: auto = on a CPU when the cohort's network work pays for the "
        "compilation (-26%% per forward pass measured; 7-21 s to compile), on, or off",
    )
    p.add_argument(
        "--io-workers",
        type=int,
        default=0,
        metavar="N",
        help="N processes for reading/preprocessing and N for writing (nnU-Net's -npp/-nps); 0 = two background threads",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="processes (GPUs) on this node: >1 relaunches under torchrun, each rank predicting its share of the cases",
    )
    p.set_defaults(func=run_predict)

    p = sub.add_parser(
        "ensemble",
        help="average saved probabilities (CASE.npz) of several prediction folders",
        description=(
            "Combine the predictions of different configurations or runs: for every case present as CASE.npz in all "
            "folders (written by `voxseg predict --save-probabilities`), average the class probabilities and write the "
            "segmentation with the geometry stored in the .npz."
        ),
    )
    p.add_argument("folders", nargs="+", type=Path, help="two or more prediction folders holding CASE.npz files")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the ensembled segmentations (created)")
    p.add_argument("--file-ending", default=".nii.gz", help="file ending (format) of the written segmentations")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged CASE.npz")
    p.add_argument(
        "--postprocessing",
        type=Path,
        default=None,
        metavar="RULE.json",
        help="apply a post-processing rule (written by `voxseg select`) to the ensembled segmentations (default: none)",
    )
    p.set_defaults(func=run_ensemble)

    p = sub.add_parser(
        "find-postprocessing",
        help="decide on cross-validation whether largest-component filtering helps",
        description=(
            "Decide, on a run's cross-validation predictions (fold_N/validation/ from training's final validation), "
            "whether keeping only the largest connected component -- of all foreground, then per class -- raises the "
            "Dice, and save the rule as RUN_DIR/postprocessing.json; `voxseg predict` applies it from then on."
        ),
    )
    p.add_argument("run_dir", type=Path, help="run folder whose fold_N/validation/ predictions to use")
    p.set_defaults(func=run_find_postprocessing)

    p = sub.add_parser(
        "select",
        help="compare trained configurations and their pairwise ensembles on cross-validation",
        description=(
            "Rank every run of WORK/runs/ that has cross-validation results, and every pair of them ensembled, by mean "
            "foreground Dice on the validation folds, and print the `voxseg predict` command of the best. Pairs are "
            "scored from the saved CASE.npz probabilities, without predicting again."
        ),
    )
    p.add_argument("work_dir", type=Path, help="work folder whose runs/ to compare")
    p.set_defaults(func=run_select)


def run_predict(args: argparse.Namespace) -> int:
    relaunch_under_torchrun(args.gpus)
    from voxseg.inference.cohort import predict

    if args.io_workers < 0:
        raise InputError(f"--io-workers {args.io_workers} must be >= 0", fix="use 0 (threads) or a number of processes")
    result = predict(
        args.models,
        args.input,
        args.output,
        folds=args.folds,
        checkpoint=args.checkpoint,
        backend=args.backend,
        tta=not args.no_tta,
        step=args.step_size,
        tile_batch=args.tile_batch,
        device=args.device,
        save_probabilities=args.save_probabilities,
        heads=args.heads,
        io_workers=args.io_workers,
        precision=args.precision,
        compile=args.compile,
        skip_existing=args.skip_existing,
        part=args.part,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{result.summary()} -> {args.output}")
    return 1 if result.failed else 0


def run_ensemble(args: argparse.Namespace) -> int:
    from voxseg.inference.ensemble import ensemble_folders

    rule = None
    if args.postprocessing is not None:
        if not args.postprocessing.is_file():
            raise NotFoundError(
                "post-processing rule not found", path=args.postprocessing, fix="pass the JSON file `voxseg select` wrote"
            )
        rule = json.loads(args.postprocessing.read_text())
    written = ensemble_folders(
        args.folders, args.output, args.file_ending, save_probabilities=args.save_probabilities, postprocessing=rule
    )
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
