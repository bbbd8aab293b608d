"""`voxseg verify` and `voxseg demo-data`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voxseg.errors import NotFoundError


def _size_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX like 48,96, got {text!r}") from None
    return lo, hi


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a raw dataset folder and list every problem",
        description=(
            "Check a raw dataset in nnU-Net's layout (dataset.json, imagesTr/, labelsTr/, optional imagesTs/) "
            "without changing it: dataset.json keys, file names and channels, label values, image/label geometry. "
            "Prints every problem with its file and the fix, and exits 1 if there is any; `voxseg plan` runs the same "
            "checks first."
        ),
    )
    p.add_argument("dataset", type=Path, help="folder with dataset.json, imagesTr/, labelsTr/")
    p.add_argument("-j", "--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run_verify)

    p = sub.add_parser(
        "demo-data",
        help="write a small synthetic CT-like dataset",
        description=(
            "Write a synthetic CT-like dataset in nnU-Net's layout (an organ and a lesion class on noisy "
            "anisotropic volumes) to try voxseg or to test a pipeline without real scans; the same seed gives the "
            "same files."
        ),
    )
    p.add_argument("out_dir", type=Path, help="dataset folder to create (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--cases", type=int, default=20, help="training cases")
    p.add_argument("--test-cases", type=int, default=0, help="extra cases written to imagesTs/labelsTs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--ignore-fraction", type=float, default=0.0, help="fraction of slices marked unannotated")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3), help="2D images or 3D volumes")
    p.add_argument("--size-range", type=_size_range, default=(48, 96), metavar="MIN,MAX", help="image size per axis, in voxels")
    p.add_argument("--regions", action="store_true", help="declare nnU-Net regions: whole = organ + lesion, lesion")
    p.add_argument("--rgb", action="store_true", help="write a 2D natural-image dataset instead: RGB PNG images, PNG labels")
    p.add_argument(
        "--partial-fraction",
        type=float,
        default=0.0,
        help="fraction of training cases that annotate only the lesion (dataset.json annotated_classes) (default: 0)",
    )
    p.set_defaults(func=run_demo_data)


def run_verify(args: argparse.Namespace) -> int:
    from voxseg.data.verify import verify_dataset

    if not args.dataset.is_dir():
        raise NotFoundError("dataset folder not found", path=args.dataset, fix="pass the folder holding dataset.json")
    problems = verify_dataset(args.dataset, workers=args.workers)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {args.dataset}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: OK")
    return 0


def run_demo_data(args: argparse.Namespace) -> int:
    from voxseg.data.demo import make_demo_dataset, make_rgb_demo_dataset

    if args.rgb:
        out = make_rgb_demo_dataset(
            args.out_dir, cases=args.cases, test_cases=args.test_cases, seed=args.seed, size_range=args.size_range
        )
        print(f"wrote {args.cases} RGB training cases to {out}")
        return 0
    out = make_demo_dataset(
        args.out_dir,
        cases=args.cases,
        seed=args.seed,
        ignore_fraction=args.ignore_fraction,
        dim=args.dim,
        size_range=args.size_range,
        test_cases=args.test_cases,
        regions=args.regions,
        partial_fraction=args.partial_fraction,
    )
    print(f"wrote {args.cases} training cases to {out}")
    return 0
