"""`voxseg import-nnunet`, `voxseg export`, `voxseg install`: thin wrappers over voxseg.nnunet and
voxseg.inference.package (model import/export commands live here)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _folds(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-nnunet",
        help="turn a trained nnU-Net v2 model folder into a voxseg run folder (same predictions)",
        description=(
            "Convert a trained nnU-Net v2 model folder (plans.json, dataset.json, fold_X/checkpoint_*.pth) into a voxseg "
            "run folder whose checkpoints `voxseg predict` runs with nnU-Net's own inference recipe, so it predicts what "
            "nnU-Net predicts. The folder is assembled beside RUN_DIR and renamed into place."
        ),
    )
    p.add_argument(
        "model_dir",
        type=Path,
        metavar="MODEL_DIR",
        help="nnU-Net's <Trainer>__<Plans>__<configuration> folder (plans.json, dataset.json, fold_*/checkpoint_final.pth)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="RUN_DIR", help="voxseg run folder to write")
    p.add_argument(
        "--folds",
        type=_folds,
        default=None,
        help="comma-separated fold names, e.g. 0,1 (all = fold_all) (default: every fold_N with checkpoint_final.pth)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import in RUN_DIR")
    p.set_defaults(func=run_import_nnunet)

    p = sub.add_parser(
        "export",
        help="pack trained runs into one model zip that predicts anywhere",
        description=(
            "Write one zip with everything prediction needs: each run's plan, settings and class names (in the checkpoints), "
            "dataset.json, the chosen checkpoint of each fold without optimiser state, the run's postprocessing.json, the "
            "trainer file of a custom network, a cascade's previous stage, and a manifest with versions and sha256 "
            "checksums. `voxseg predict -m MODEL.zip` predicts with it directly; `voxseg install` unpacks it."
        ),
    )
    p.add_argument(
        "run_dirs",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="run folders (WORK/runs/NAME, or an imported nnU-Net model); several = an ensemble",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.zip", help="the zip to write")
    p.add_argument(
        "--folds", type=_folds, default=None, help="comma-separated fold names, e.g. 0,1 (default: every trained fold)"
    )
    p.add_argument("--checkpoint", default="final", choices=("final", "best"), help="which checkpoint of each fold to pack")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also store each fold's network as ONNX for `voxseg predict --backend onnx` (needs voxseg[onnx])",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset of --onnx (default: 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL.zip")
    p.set_defaults(func=run_export)

    p = sub.add_parser(
        "install",
        help="unpack a model zip into a folder that predicts like it",
        description=(
            "Unpack a zip written by `voxseg export` into DIR (manifest.json, dataset.json, models/NAME/ run folders), "
            "checking every file against the manifest's sha256. `voxseg predict -m DIR` then predicts as from the zip; "
            "each DIR/models/NAME is an ordinary run folder. The folder is assembled beside DIR and renamed into place."
        ),
    )
    p.add_argument("package", type=Path, metavar="MODEL.zip", help="a zip written by `voxseg export`")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder to create")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier install in DIR")
    p.set_defaults(func=run_install)


def run_import_nnunet(args: argparse.Namespace) -> int:
    from voxseg.nnunet import import_nnunet

    r = import_nnunet(args.model_dir, args.output, folds=args.folds, overwrite=args.overwrite)
    print(
        f"imported {r.trainer} {r.config_name} ({r.architecture}), fold(s) {', '.join(r.folds)} into {r.run_dir}; "
        f"predict with: voxseg predict -m {r.run_dir} -i IMAGES -o OUT"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from voxseg.inference.package import export_model

    r = export_model(
        args.run_dirs,
        args.output,
        folds=args.folds,
        checkpoint=args.checkpoint,
        onnx=args.onnx,
        opset=args.opset,
        overwrite=args.overwrite,
    )
    stages = f" (+ previous stage {', '.join(r.previous_stages)})" if r.previous_stages else ""
    onnx = f", ONNX opset {r.onnx_opset}" if r.onnx_opset else ""
    models = ", ".join(f"{m} fold(s) {','.join(r.folds[m])}" for m in r.models)
    print(
        f"exported {models}{stages}, {r.checkpoint} checkpoints{onnx} "
        f"-> {r.path} ({r.bytes / 1e6:.1f} MB); predict with: voxseg predict -m {r.path} -i IMAGES -o OUT"
    )
    return 0


def run_install(args: argparse.Namespace) -> int:
    from voxseg.inference.package import install_model

    folder = install_model(args.package, args.output, overwrite=args.overwrite)
    print(f"installed {args.package} into {folder}; predict with: voxseg predict -m {folder} -i IMAGES -o OUT")
    return 0
