"""`voxseg train WORK_DIR CONFIG FOLD|all [--settings F] [--set k=v ...] [--trainer T] [--resume]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxseg.cli.launch import relaunch_under_torchrun
from voxseg.cli.main import DEVICE_HELP


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one configuration on one fold (or all)",
        description=(
            "Train one planned configuration on one cross-validation fold (or on all cases) into "
            "WORK/runs/<config>__<trainer>__<name>/fold_N/ (settings.yaml, log.jsonl, progress.png, checkpoints), then "
            "predict and evaluate the fold's validation cases. Settings come from the defaults, a YAML file and --set "
            "overrides; checkpoint_latest.pt is written every epoch, so --resume continues a killed run exactly."
        ),
    )
    p.add_argument("work_dir", type=Path, help="work folder with plans.json and the preprocessed store")
    p.add_argument("config", help="configuration from plans.json, e.g. 3d_fullres or 2d")
    p.add_argument("fold", help="fold index from splits.json, or 'all'")
    p.add_argument("--settings", type=Path, default=None, help="YAML file with settings groups (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. training.epochs=50 (repeatable)",
    )
    p.add_argument("--trainer", default="default", help="registered name, package.module:Class or path/file.py:Class")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help=DEVICE_HELP)
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt")
    p.add_argument("--name", default=None, help="run name (default: a hash of the settings)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs on this node: >1 relaunches under torchrun")
    p.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        metavar="RUN_DIR|CHECKPOINT",
        help="fine-tune from this run, fold folder or checkpoint: matching weights are copied, output "
        "classes are matched by name; the default learning rate drops to 1e-3 (default: train from scratch)",
    )
    p.add_argument(
        "--previous-stage",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="3d_cascade_fullres: the 3d_lowres run whose out-of-fold segmentations it refines "
        "(default: the one 3d_lowres run in WORK/runs)",
    )
    p.add_argument(
        "--val-best",
        action="store_true",
        help="final validation with checkpoint_best.pt instead of the final weights (default: final)",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    relaunch_under_torchrun(args.gpus)
    from voxseg.training.settings import load_settings
    from voxseg.workflows.train import train_fold

    settings = load_settings(args.settings, args.overrides)
    run_dir = train_fold(
        args.work_dir,
        args.config,
        args.fold,
        settings,
        trainer=args.trainer,
        device=args.device,
        resume=args.resume,
        name=args.name,
        val_best=args.val_best,
        pretrained=args.pretrained,
        previous_stage=args.previous_stage,
    )
    print(f"done: {run_dir}")
    return 0
