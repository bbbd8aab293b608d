"""nnU-Net's side of the CPU inference benchmark (run with the reference venv's python).

    python cpu_predict.py train RAW WORK --plans-name NAME [--gpu-memory-target GB]
                                          [--feature-divisor K] [--epochs E] [--iterations I]
    python cpu_predict.py predict MODEL_DIR IN OUT [--tta on|off] [--workers N]

``train``: nnU-Net's own planner (ExperimentPlanner, optionally for another GPU memory target), the
plan's feature counts optionally divided by K (a narrower network for CT-sized volumes on 2 CPU
cores), preprocessing, and E x I iterations of nnUNetTrainerBench on fold "all" (CPU). Cached:
a step whose output exists is skipped. Prints one JSON line: model_dir, plans, train_s.

``predict``: the whole ``nnUNetv2_predict_from_modelfolder`` command (fold "all", -npp/-nps N,
``--disable_tta`` for --tta off) on the CPU. Prints one JSON line: wall_s, peak_rss_mb (the largest
single process of the command), cases.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nnunet_env as ne


def train(a: argparse.Namespace) -> None:
    ne.use_work(a.raw, a.work)
    ident = str(ne.dataset_id(a.raw))
    folder = ne.preprocessed_dir(a.raw, a.work)
    plans_file = folder / f"{a.plans_name}.json"
    if not plans_file.is_file():
        if not (folder / "dataset_fingerprint.json").is_file():
            ne.run_timed(["nnUNetv2_extract_fingerprint", "-d", ident, "-np", "2"])
        target = ["-gpu_memory_target", str(a.gpu_memory_target)] if a.gpu_memory_target else []
        ne.run_timed(["nnUNetv2_plan_experiment", "-d", ident, *target, "-overwrite_plans_name", a.plans_name])
        plans = json.loads(plans_file.read_text())
        if a.feature_divisor > 1:
            for cfg in plans["configurations"].values():
                kw = cfg.get("architecture", {}).get("arch_kwargs", {})
                if "features_per_stage" in kw:
                    kw["features_per_stage"] = [max(4, f // a.feature_divisor) for f in kw["features_per_stage"]]
        plans_file.write_text(json.dumps(plans, indent=1))
    plans = json.loads(plans_file.read_text())
    data_dir = folder / plans["configurations"]["3d_fullres"].get("data_identifier", f"{a.plans_name}_3d_fullres")
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        ne.run_timed(["nnUNetv2_preprocess", "-d", ident, "-plans_name", a.plans_name, "-c", "3d_fullres", "-np", "2"])
    model_dir = Path(a.work).resolve() / "nnUNet_results" / Path(a.raw).name / f"{ne.TRAINER}__{a.plans_name}__3d_fullres"
    train_s = 0.0
    if not (model_dir / "fold_all" / "checkpoint_final.pth").is_file():
        env = {
            "nnUNet_n_proc_DA": "2",
            "VOXSEG_BENCH_ITERS": str(a.iterations),
            "VOXSEG_BENCH_EPOCHS": str(a.epochs),
            "VOXSEG_BENCH_VAL_ITERS": "1",
        }
        train_s = ne.run_timed(
            ["nnUNetv2_train", ident, "3d_fullres", "all", "-tr", ne.TRAINER, "-p", a.plans_name, "-device", "cpu"], env
        )
    cfg = plans["configurations"]["3d_fullres"]
    ne.emit(
        {
            "model_dir": str(model_dir),
            "train_s": train_s,
            "patch": cfg["patch_size"],
            "features": cfg["architecture"]["arch_kwargs"]["features_per_stage"],
        }
    )


def predict(a: argparse.Namespace) -> None:
    cmd = [
        "nnUNetv2_predict_from_modelfolder",
        "-i",
        str(a.input),
        "-o",
        str(a.output),
        "-m",
        str(a.model_dir),
        "-f",
        "all",
        "-npp",
        str(a.workers),
        "-nps",
        str(a.workers),
        "-device",
        "cpu",
    ]
    if a.tta == "off":
        cmd.append("--disable_tta")
    wall = ne.run_timed(cmd)
    cases = len({p.name.rsplit("_", 1)[0] for p in Path(a.input).iterdir() if not p.name.startswith(".")})
    ne.emit({"wall_s": wall, "peak_rss_mb": ne.peak_rss_mb(), "cases": cases})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("raw", type=Path)
    t.add_argument("work", type=Path)
    t.add_argument("--plans-name", required=True)
    t.add_argument("--gpu-memory-target", type=float, default=None)
    t.add_argument("--feature-divisor", type=int, default=1)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--iterations", type=int, default=20)
    p = sub.add_parser("predict")
    p.add_argument("model_dir", type=Path)
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--tta", default="on", choices=("on", "off"))
    p.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    train(a) if a.cmd == "train" else predict(a)


if __name__ == "__main__":
    main()
