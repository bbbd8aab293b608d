"""nnU-Net's side of the import equality proof (run with the reference venv's python).

    python import_check.py model RAW WORK [--planner ExperimentPlanner] [--config 3d_fullres]
                                          [--iterations 10] [--pred-dir DIR]
    python import_check.py network SPEC.json OUT_DIR

``model``: plans (with --planner), preprocesses --config, trains nnUNetTrainerBench for --iterations
on fold "all" (CPU), then predicts ``RAW/imagesTs`` into --pred-dir with nnU-Net's own predictor
(``nnUNetPredictor.predict_from_files_sequential``: nnUNetv2_predict's steps without its worker
processes, which cost ~20 s per call here) and saves probabilities. Everything lives under WORK;
a step whose output exists is skipped. Prints one JSON line: model_dir, pred_dir, train_s,
predict_s, cases.

``network``: SPEC.json holds ``{"architecture": <plans architecture block>, "in_channels",
"out_channels", "shape", "seed"}``. Builds that network with nnU-Net's own builder, draws every
parameter at random (so no layer is a no-op), runs one input through it in eval mode and writes
OUT_DIR/weights.pth (the state dict as nnU-Net saves it), OUT_DIR/io.npz (input, output). Prints one
JSON line: parameters, output_shape.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nnunet_env as ne

PLANS_NAMES = {"ExperimentPlanner": "nnUNetPlans", "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans"}


def model(a: argparse.Namespace) -> None:
    ne.use_work(a.raw, a.work)
    plans_name = PLANS_NAMES[a.planner]
    ident = str(ne.dataset_id(a.raw))
    folder = ne.preprocessed_dir(a.raw, a.work)
    if not (folder / f"{plans_name}.json").is_file():
        ne.run_timed(["nnUNetv2_extract_fingerprint", "-d", ident, "-np", "1"])
        ne.run_timed(["nnUNetv2_plan_experiment", "-d", ident, "-pl", a.planner])
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    data_dir = folder / plans["configurations"][a.config].get("data_identifier", f"{plans_name}_{a.config}")
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        ne.run_timed(["nnUNetv2_preprocess", "-d", ident, "-plans_name", plans_name, "-c", a.config, "-np", "1"])
    model_dir = Path(a.work).resolve() / "nnUNet_results" / Path(a.raw).name / f"{ne.TRAINER}__{plans_name}__{a.config}"
    train_s = 0.0
    if not (model_dir / "fold_all" / "checkpoint_final.pth").is_file():
        env = {"nnUNet_n_proc_DA": "1", "VOXSEG_BENCH_ITERS": str(a.iterations), "VOXSEG_BENCH_VAL_ITERS": "1"}
        train_s = ne.run_timed(
            ["nnUNetv2_train", ident, a.config, "all", "-tr", ne.TRAINER, "-p", plans_name, "-device", "cpu"], env
        )
    pred_dir = (a.pred_dir or Path(a.work) / f"pred_{plans_name}_{a.config}").resolve()
    images = Path(a.raw) / "imagesTs"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in images.iterdir()})
    predict_s = 0.0
    if not all((pred_dir / f"{c}.npz").is_file() for c in cases):
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        torch.set_num_threads(1)
        pred_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False
        )
        predictor.initialize_from_trained_model_folder(str(model_dir), ("all",), "checkpoint_final.pth")
        predictor.predict_from_files_sequential(str(images), str(pred_dir), save_probabilities=True)
        predict_s = time.perf_counter() - t0
    ne.emit(
        {"model_dir": str(model_dir), "pred_dir": str(pred_dir), "train_s": train_s, "predict_s": predict_s, "cases": len(cases)}
    )


def network(a: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    spec = json.loads(Path(a.spec).read_text())
    arch = spec["architecture"]
    torch.manual_seed(spec.get("seed", 0))
    net = get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        spec["in_channels"],
        spec["out_channels"],
        allow_init=True,
        deep_supervision=False,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 else 0.0) * 0.5)
    net.eval()
    x = torch.randn(1, spec["in_channels"], *spec["shape"])
    with torch.no_grad():
        y = net(x)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "weights.pth")
    np.savez(out / "io.npz", input=x.numpy(), output=y.numpy())
    ne.emit({"parameters": sum(p.numel() for p in net.parameters()), "output_shape": list(y.shape)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("raw", type=Path)
    m.add_argument("work", type=Path)
    m.add_argument("--planner", default="ExperimentPlanner", choices=sorted(PLANS_NAMES))
    m.add_argument("--config", default="3d_fullres")
    m.add_argument("--iterations", type=int, default=10)
    m.add_argument("--pred-dir", type=Path, help="where predictions go (default WORK/pred_<plans>_<config>)")
    n = sub.add_parser("network")
    n.add_argument("spec", type=Path)
    n.add_argument("out", type=Path)
    a = ap.parse_args()
    model(a) if a.cmd == "model" else network(a)


if __name__ == "__main__":
    main()
