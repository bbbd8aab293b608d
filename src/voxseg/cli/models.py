"""`voxseg import-nnunet`: thin wrapper over voxseg.nnunet (model import/export commands live here)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _folds(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-nnunet", help="turn a trained nnU-Net v2 model folder into a voxseg run folder (same predictions)", description=(
        "Convert a trained nnU-Net v2 model folder (plans.json, dataset.json, fold_X/checkpoint_*.pth) into a voxseg "
        "run folder whose checkpoints `voxseg predict` runs with nnU-Net's own inference recipe, so it predicts what "
        "nnU-Net predicts. The folder is assembled beside RUN_DIR and renamed into place."))
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="nnU-Net's <Trainer>__<Plans>__<configuration> folder (plans.json, dataset.json, fold_*/checkpoint_final.pth)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="voxseg run folder to write")
    p.add_argument("--folds", type=_folds, default=None,
                   help="comma-separated fold names, e.g. 0,1 (all = fold_all) (default: every fold_N with checkpoint_final.pth)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import in RUN_DIR")
    p.set_defaults(func=run_import_nnunet)


def run_import_nnunet(args: argparse.Namespace) -> int:
    from voxseg.nnunet import import_nnunet

    r = import_nnunet(args.model_dir, args.output, folds=args.folds, overwrite=args.overwrite)
    print(f"imported {r.trainer} {r.config_name} ({r.architecture}), fold(s) {', '.join(r.folds)} into {r.run_dir}; "
          f"predict with: voxseg predict -m {r.run_dir} -i IMAGES -o OUT")
    return 0
