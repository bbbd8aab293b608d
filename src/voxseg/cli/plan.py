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


def _workers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--workers", type=int, default=None, help="processes (default: all cores)")


def _plan_options(p: argparse.ArgumentParser) -> None:
    """The options of `plan` (also those of `plan-and-preprocess`)."""
    p.add_argument("dataset", type=Path, help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="WORK_DIR",
        help="work folder for fingerprint.json, plans.json and later the store and runs",
    )
    p.add_argument("--gpu-memory", type=float, default=8.0, metavar="GB", help="training memory budget")
    p.add_argument(
        "--configs",
        type=_configs,
        default=("2d", "3d_fullres", "3d_lowres"),
        help="configurations to plan, e.g. 2d,3d_fullres; 3d_lowres is kept only for large images",
    )
    p.add_argument(
        "--patch-size",
        type=_numbers(int, "--patch-size"),
        metavar="Z,Y,X",
        help="fixed patch size (default: the largest that fits the memory budget)",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="fixed batch size (default: what fits the memory budget, at least 2)"
    )
    p.add_argument(
        "--spacing",
        type=_numbers(float, "--spacing"),
        metavar="Z,Y,X",
        help="target spacing, dataset axis order (default: the median spacing, nnU-Net's rule for very anisotropic data)",
    )
    p.add_argument(
        "--architecture",
        default="plain_unet",
        choices=("plain_unet", "resenc_unet"),
        help="network family: nnU-Net's plain U-Net or its residual-encoder variant",
    )
    p.add_argument(
        "--like",
        default=None,
        metavar="OTHER_WORK",
        help="reuse another WORK folder's configurations (spacing, patch, topology, normalisation) so a model "
        "trained there can be fine-tuned here with `train --pretrained` (default: plan from scratch)",
    )
    p.add_argument(
        "--normalization",
        default=None,
        metavar="C=SCHEME,...",
        help="override the scheme chosen from channel_names, e.g. 0=noNorm,1=zscore "
        "(CT, zscore, noNorm, rescale_to_0_1, rgb_to_0_1; default: from channel_names)",
    )
    _workers_option(p)


def _preprocess_options(p: argparse.ArgumentParser) -> None:
    """The options of `preprocess` that `plan-and-preprocess` shares."""
    p.add_argument("--overwrite", action="store_true", help="redo cases that are already stored")
    p.add_argument(
        "--group-regex",
        help="patient id from the case id (first group), keeps a patient in one fold "
        "(default: dataset.json's groups, else every case is its own patient)",
    )
    p.add_argument("--splits", type=Path, help="use this splits.json instead of generated folds (default: 5 folds, written once)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="fingerprint a dataset and write WORK/plans.json for a GPU memory budget",
        description=(
            "Verify a raw dataset, fingerprint it (spacings, shapes, intensities; cached in WORK/fingerprint.json) and write "
            "WORK/plans.json: per configuration the target spacing, patch and batch size, network topology and normalisation, "
            "sized so that training fits the --gpu-memory budget. plans.json is plain JSON and may be edited by hand."
        ),
    )
    _plan_options(p)
    p.set_defaults(func=run_plan)

    p = sub.add_parser(
        "preprocess",
        help="write the preprocessed store and splits.json for planned configurations",
        description=(
            "Crop, normalise and resample every training case for each planned configuration into WORK/store/<config>/ "
            "and write WORK/splits.json (cross-validation folds). Cases already stored with the same plan are kept, so an "
            "interrupted run continues where it stopped."
        ),
    )
    p.add_argument("work_dir", type=Path, help="work folder holding plans.json (from `voxseg plan`)")
    p.add_argument(
        "--configs", type=_configs, default=None, help="configurations to preprocess (default: every planned configuration)"
    )
    _workers_option(p)
    _preprocess_options(p)
    p.set_defaults(func=run_preprocess)

    p = sub.add_parser(
        "plan-and-preprocess",
        help="plan, then preprocess every planned configuration, in one step",
        description=(
            "`voxseg plan` followed by `voxseg preprocess` of every configuration it planned, like nnU-Net's "
            "nnUNetv2_plan_and_preprocess: takes the options of both."
        ),
    )
    _plan_options(p)
    _preprocess_options(p)
    p.set_defaults(func=run_plan_and_preprocess)


def run_plan(args: argparse.Namespace) -> int:
    from voxseg.planning.normalization import describe, parse_overrides
    from voxseg.planning.planner import PlannerOptions, plan_and_save

    if not args.dataset.is_dir():
        raise NotFoundError("dataset folder not found", path=args.dataset, fix="pass the folder holding dataset.json")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}", fix="e.g. --batch-size 2")
    options = PlannerOptions(
        gpu_memory_gb=args.gpu_memory,
        configs=args.configs,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        spacing=args.spacing,
        architecture=args.architecture,
        normalization=parse_overrides(args.normalization) if args.normalization else None,
        like=str(args.like) if args.like else None,
    )
    plan = plan_and_save(args.dataset, args.output, options, workers=args.workers)
    for c, (name, norm) in enumerate(zip(plan.channel_names, plan.normalization)):
        print(f"channel {c} ({name}): {describe(norm)}")
    if plan.regions:
        print(
            f"region-based: {len(plan.regions)} sigmoid outputs {dict(zip(plan.output_names, plan.regions))}, "
            f"painted in order {plan.regions_class_order}"
        )
    for name, cfg in plan.configurations.items():
        est = cfg.memory["estimate_bytes"] / 1e9
        print(
            f"{name:>10}: spacing {[round(s, 3) for s in cfg.spacing]} patch {cfg.patch_size} batch {cfg.batch_size} "
            f"stages {len(cfg.network['features'])} memory {est:.1f}/{args.gpu_memory:g} GB"
        )
    print(f"wrote {args.output / 'plans.json'}")
    return 0


def run_plan_and_preprocess(args: argparse.Namespace) -> int:
    run_plan(args)
    return run_preprocess(argparse.Namespace(**{**vars(args), "work_dir": args.output, "configs": None}))


def run_preprocess(args: argparse.Namespace) -> int:
    from voxseg.preprocessing.preprocess import preprocess_dataset

    written = preprocess_dataset(
        args.work_dir,
        args.configs,
        workers=args.workers,
        overwrite=args.overwrite,
        group_regex=args.group_regex,
        splits_file=args.splits,
    )
    for name, n in written.items():
        print(f"{name}: {n} case(s) preprocessed into {args.work_dir / 'store' / name}")
    return 0
