"""`voxseg demo`: the whole pipeline on built-in synthetic data, printing each stage.

demo-data -> verify -> plan -> preprocess -> train (short schedule) -> predict test cases ->
evaluate -> report. On a CPU it plans for a small memory budget so the whole run takes a few
minutes on 2 cores; on a GPU it plans for the default 8 GB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from voxseg.cli.main import DEVICE_HELP
from voxseg.errors import DatasetError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on built-in demo data",
        description=(
            "Run every stage on synthetic data and print what each does: demo-data, verify, plan, preprocess, a short "
            "training of fold 0, prediction of 3 held-out cases, evaluation and an HTML report, all under --out. "
            "Takes a few minutes on a CPU; a quick check that an installation works."
        ),
    )
    p.add_argument("-o", "--out", type=Path, default=Path("voxseg_demo"), help="output folder (default ./voxseg_demo)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"), help=DEVICE_HELP)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 12 on CPU, 50 on GPU)")
    p.add_argument("--cases", type=int, default=12, help="training cases (3 more are held out for testing)")
    p.set_defaults(func=run_demo)


class _Stages:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.t = self.start

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.t != self.start:
            print(f"   ({now - self.t:.1f} s)", flush=True)
        self.t = now
        print(f"\n== {name}", flush=True)


def run_demo(args: argparse.Namespace) -> int:
    from voxseg.data.demo import make_demo_dataset
    from voxseg.data.verify import verify_dataset
    from voxseg.device import resolve_device
    from voxseg.evaluation.evaluate import evaluate_folders
    from voxseg.evaluation.report import build_report
    from voxseg.inference.cohort import predict
    from voxseg.planning.planner import PlannerOptions, plan_and_save
    from voxseg.preprocessing.preprocess import preprocess_dataset
    from voxseg.training.settings import load_settings
    from voxseg.workflows.train import train_fold

    out: Path = args.out
    raw, work, preds = out / "raw", out / "work", out / "predictions"
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    stage = _Stages()

    stage(f"demo-data -> {raw}")
    # Lesions larger than the benchmarks' (radius x1.6): 300 CPU iterations learn both classes.
    make_demo_dataset(raw, cases=args.cases, test_cases=3, seed=0, size_range=(40, 64), lesion_scale=1.6)
    print(f"   {args.cases} training cases in imagesTr/, 3 held-out cases in imagesTs/ + labelsTs/")

    stage("verify")
    problems = verify_dataset(raw, progress=False)
    if problems:
        raise DatasetError(f"demo data failed verification: {problems[0]}", path=raw)
    print("   clean")

    budget = 0.5 if cpu else 8.0
    stage(f"plan (3d_fullres, {budget} GB training-memory budget) -> {work / 'plans.json'}")
    plan = plan_and_save(raw, work, PlannerOptions(gpu_memory_gb=budget, configs=("3d_fullres",)), progress=False)
    cfg = plan.configuration("3d_fullres")
    print(
        f"   spacing {[round(s, 2) for s in cfg.spacing]}, patch {cfg.patch_size}, batch {cfg.batch_size}, features {cfg.network['features']}"
    )

    stage("preprocess")
    counts = preprocess_dataset(work, progress=False)
    print(f"   {counts}")

    epochs = args.epochs or (12 if cpu else 50)
    stage(f"train fold 0 ({epochs} epochs x 25 iterations on {device})")
    settings = load_settings(None, [f"training.epochs={epochs}", "training.iterations_per_epoch=25", "training.val_iterations=5"])
    run_fold = train_fold(work, "3d_fullres", "0", settings, device=args.device, name="demo")

    stage(f"predict held-out cases -> {preds}")
    # Mirroring TTA costs 8 forward passes per tile in 3D: on a CPU the demo skips it.
    predict([run_fold.parent], raw / "imagesTs", preds, device=args.device, tta=not cpu, progress=False)

    stage("evaluate")
    summary = evaluate_folders(preds, raw / "labelsTs", raw / "dataset.json", progress=False)
    names = summary.get("label_names", {})
    for key, values in summary["mean"].items():
        print(f"   {names.get(key, key):>8}: Dice {values['Dice']:.3f}  HD95 {values['HD95']:.1f} mm")
    print(f"   foreground mean Dice {summary['foreground_mean']['Dice']:.3f}")

    stage("report")
    report = out / "report.html"
    build_report([run_fold, preds], report, images_dir=raw / "imagesTs", labels_dir=raw / "labelsTs")
    stage("done")
    print(f"   total {time.perf_counter() - stage.start:.0f} s; open {report.resolve()}")
    return 0
