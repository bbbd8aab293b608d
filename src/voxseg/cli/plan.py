"""`voxseg plan` and `voxseg preprocess`: thin wrappers over voxseg.planning / voxseg.preprocessing."""

from __future__ import annotations

import argparse
from pathlib import Path

from voxseg.errors import InputError, NotFoundError


def _numbers(kind: type, name: str):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} expects comma-separated numbers like 64,128,128, got {text!r}") from None
        if any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"{name} values must be positive, got {text!r}")
        return values
    return parse


def _configs(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="fingerprint a dataset and write WORK/plans.json for a GPU memory budget")
    p.add_argument("dataset", type=Path, help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="WORK_DIR")
    p.add_argument("--gpu-memory", type=float, default=8.0, metavar="GB", help="training memory budget (default 8)")
    p.add_argument("--configs", type=_configs, default=("2d", "3d_fullres", "3d_lowres"), help="e.g. 2d,3d_fullres")
    p.add_argument("--patch-size", type=_numbers(int, "--patch-size"), metavar="Z,Y,X")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument("--spacing", type=_numbers(float, "--spacing"), metavar="Z,Y,X", help="target spacing, dataset axis order")
    p.add_argument("--architecture", default="plain_unet", choices=("plain_unet", "resenc_unet"))
    p.add_argument("--like", default=None, metavar="OTHER_WORK",
                   help="reuse another WORK folder's configurations (spacing, patch, topology, normalisation) so a model "
                        "trained there can be fine-tuned here with `train --pretrained` (default: plan from scratch)")
    p.add_argument("--normalization", default=None, metavar="C=SCHEME,...",
                   help="override the scheme chosen from channel_names, e.g. 0=noNorm,1=zscore "
                        "(CT, zscore, noNorm, rescale_to_0_1, rgb_to_0_1)")
    p.add_argument("-j", "--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run_plan)

    p = sub.add_parser("preprocess", help="write the preprocessed store and splits.json for planned configurations")
    p.add_argument("work_dir", type=Path)
    p.add_argument("--configs", type=_configs, default=None, help="default: every planned configuration")
    p.add_argument("-j", "--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already stored")
    p.add_argument("--group-regex", help="patient id from the case id (first group), keeps a patient in one fold")
    p.add_argument("--splits", type=Path, help="use this splits.json instead of generated folds")
    p.set_defaults(func=run_preprocess)


def run_plan(args: argparse.Namespace) -> int:
    from voxseg.planning.normalization import describe, parse_overrides
    from voxseg.planning.planner import PlannerOptions, plan_and_save

    if not args.dataset.is_dir():
        raise NotFoundError("dataset folder not found", path=args.dataset, fix="pass the folder holding dataset.json")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}", fix="e.g. --batch-size 2")
    options = PlannerOptions(gpu_memory_gb=args.gpu_memory, configs=args.configs, patch_size=args.patch_size,
                             batch_size=args.batch_size, spacing=args.spacing, architecture=args.architecture,
                             normalization=parse_overrides(args.normalization) if args.normalization else None,
                             like=str(args.like) if args.like else None)
    plan = plan_and_save(args.dataset, args.output, options, workers=args.workers)
    for c, (name, norm) in enumerate(zip(plan.channel_names, plan.normalization)):
        print(f"channel {c} ({name}): {describe(norm)}")
    if plan.is_region_based:
        print(f"region-based: {len(plan.regions)} sigmoid outputs {dict(zip(plan.region_names, plan.regions))}, "
              f"painted in order {plan.regions_class_order}")
    for name, cfg in plan.configurations.items():
        est = cfg.memory["estimate_bytes"] / 1e9
        print(f"{name:>10}: spacing {[round(s, 3) for s in cfg.spacing]} patch {cfg.patch_size} batch {cfg.batch_size} "
              f"stages {len(cfg.network['features'])} memory {est:.1f}/{args.gpu_memory:g} GB")
    print(f"wrote {args.output / 'plans.json'}")
    return 0


def run_preprocess(args: argparse.Namespace) -> int:
    from voxseg.preprocessing.preprocess import preprocess_dataset

    written = preprocess_dataset(args.work_dir, args.configs, workers=args.workers, overwrite=args.overwrite,
                                 group_regex=args.group_regex, splits_file=args.splits)
    for name, n in written.items():
        print(f"{name}: {n} case(s) preprocessed into {args.work_dir / 'store' / name}")
    return 0
