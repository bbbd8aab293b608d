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
    p = sub.add_parser("verify", help="check a raw dataset folder and list every problem")
    p.add_argument("dataset", type=Path, help="folder with dataset.json, imagesTr/, labelsTr/")
    p.add_argument("-j", "--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=run_verify)

    p = sub.add_parser("demo-data", help="write a small synthetic CT-like dataset")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--test-cases", type=int, default=0, help="extra cases written to imagesTs/labelsTs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-fraction", type=float, default=0.0, help="fraction of slices marked unannotated")
    p.add_argument("--dim", type=int, default=3, choices=(2, 3))
    p.add_argument("--size-range", type=_size_range, default=(48, 96), metavar="MIN,MAX")
    p.add_argument("--regions", action="store_true", help="declare nnU-Net regions: whole = organ + lesion, lesion")
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
    from voxseg.data.demo import make_demo_dataset

    out = make_demo_dataset(
        args.out_dir,
        cases=args.cases,
        seed=args.seed,
        ignore_fraction=args.ignore_fraction,
        dim=args.dim,
        size_range=args.size_range,
        test_cases=args.test_cases,
        regions=args.regions,
    )
    print(f"wrote {args.cases} training cases to {out}")
    return 0
