"""Accuracy after an equal number of training iterations: voxseg vs nnU-Net on ONE plan.

    python benchmarks/bench_accuracy.py [--quick] [--patch Z Y X] [--batch 2] [--workers 2]
        [--epochs E] [--iterations I] [--repeats R] [--out DIR] [--refenv DIR]

Both sides train 3d_fullres, fold "all", on the same raw dataset for E epochs of I iterations
each, with the same patch, batch and network (voxseg's plan with the patch forced; its topology
written into nnU-Net's plans, as in bench_train.py), each with its own defaults otherwise:
Dice + CE with deep supervision, SGD with Nesterov momentum 0.99, poly learning-rate decay over
the E epochs, 33% foreground oversampling, its own augmentation. Then each predicts the held-out
cases (``imagesTs``) with its default TTA (all mirror axes) and one scorer,
:func:`common.score_predictions`, scores both.

R repeats per side (ours with training seeds 0..R-1; nnU-Net has no seed option, so its repeats
differ by chance alone). Returned: ``dice`` (mean over repeats of the mean foreground Dice),
``dice_min``/``dice_max`` (over repeats), ``case_dice_sd`` (standard deviation over held-out cases
of their mean foreground Dice, averaged over repeats), ``hd95``, ``train_s`` (wall time of one
training command, start-up included) and ``s_per_case_tta`` (the prediction command's wall time
per held-out case: prediction speed at the accuracy measured here).

The CPU patch is small (16x40x40, what voxseg plans for a 0.5 GB budget on this data) so that a
few hundred iterations fit in minutes on 2 cores; the question here is accuracy at equal
iterations, not speed (bench_train.py and bench_predict.py measure that).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_predict
import bench_train
import common

CONFIG = bench_train.CONFIG
# Scratch subfolder of each side's work: the models here must not replace bench_train's.
SUBDIR = "accuracy"
# (patch, epochs, iterations per epoch, repeats) per (device, quick).
PROFILES = {
    ("cpu", True): ((16, 40, 40), 4, 25, 1),
    ("cpu", False): ((16, 40, 40), 12, 25, 2),
    ("cuda", True): ((64, 160, 160), 10, 50, 1),
    ("cuda", False): ((64, 160, 160), 20, 50, 2),
}


def train_in_this_process(work: str, device: str, workers: int, epochs: int, iterations: int, seed: int) -> dict:
    """voxseg's default trainer for epochs x iterations; what the child prints."""
    from voxseg.training.run import train
    from voxseg.training.settings import load_settings

    settings = load_settings(
        None,
        [
            f"training.epochs={epochs}",
            f"training.iterations_per_epoch={iterations}",
            f"training.seed={seed}",
            "training.val_iterations=1",
            "training.final_validation=false",
            f"sampling.workers={workers}",
        ],
    )
    fold = train(work, CONFIG, "all", settings, device=device, name=f"accuracy_seed{seed}")
    return {"model_dir": str(fold)}


def summarise(runs: list[dict]) -> dict:
    """Repeats -> the stage's metrics (see the module docstring)."""
    dice = [r["dice"] for r in runs]
    return {
        "dice": statistics.mean(dice),
        "dice_min": min(dice),
        "dice_max": max(dice),
        "case_dice_sd": statistics.mean(statistics.pstdev(r["case_dice"]) for r in runs),
        "hd95": statistics.mean(r["hd95"] for r in runs),
        "train_s": statistics.mean(r["train_s"] for r in runs),
        "s_per_case_tta": statistics.mean(r["s_per_case_tta"] for r in runs),
        "repeats": len(runs),
        "per_repeat_dice": dice,
        "pred_dir": runs[-1]["pred_dir"],
    }


def run_ours(
    *,
    raw: Path,
    work: Path,
    device: str = "cpu",
    workers: int = 2,
    patch=(16, 40, 40),
    batch: int = 2,
    epochs: int = 12,
    iterations: int = 25,
    repeats: int = 1,
    **_,
) -> dict:
    from voxseg.preprocessing.preprocess import preprocess_dataset

    raw, work = Path(raw), Path(work) / SUBDIR
    bench_train.forced_plan(raw, work, patch, batch, workers)
    preprocess_dataset(work, [CONFIG], workers=workers, progress=False)
    runs = []
    for seed in range(repeats):
        args = {"work": str(work), "device": device, "workers": workers, "epochs": epochs, "iterations": iterations, "seed": seed}
        start = time.perf_counter()
        trained = common.call_in_child("bench_accuracy", "train_in_this_process", args, "voxseg accuracy training")
        train_s = time.perf_counter() - start
        model = Path(trained["model_dir"])
        pred = work / f"pred_seed{seed}"
        pred_s, _ = bench_predict.predict_command(model, raw / "imagesTs", pred, device, tta=True)
        runs.append(
            {
                **common.score_predictions(pred, raw),
                "train_s": train_s,
                "pred_dir": str(pred),
                "s_per_case_tta": pred_s / bench_predict.held_out_cases(raw),
            }
        )
    return summarise(runs)


def run_reference(
    python,
    *,
    raw: Path,
    work: Path,
    device: str = "cpu",
    workers: int = 2,
    patch=(16, 40, 40),
    batch: int = 2,
    epochs: int = 12,
    iterations: int = 25,
    repeats: int = 1,
    timeout: float | None = None,
    **_,
) -> dict:
    raw, work = Path(raw), Path(work) / SUBDIR
    if not (work / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json").is_file():
        # No patch here: nnU-Net's own network may not divide it; ours is forced below.
        common.run_reference_script(python, "plan_preprocess.py", raw, work, "--np", workers, timeout=timeout)
    note = bench_train.force_topology(raw, work, bench_train.forced_plan(raw, work / "voxseg_plan", patch, batch, workers))
    runs = []
    for _ in range(repeats):
        shutil.rmtree(bench_predict.reference_model_dir(raw, work), ignore_errors=True)
        trained = common.run_reference_script(
            python,
            "train.py",
            raw,
            work,
            "--patch",
            *patch,
            "--batch",
            batch,
            "--workers",
            workers,
            "--iterations",
            iterations,
            "--epochs",
            epochs,
            "--device",
            device,
            timeout=timeout,
        )
        predicted = common.run_reference_script(
            python, "predict.py", raw, work, "--tta", "on", "--workers", workers, "--device", device, timeout=timeout
        )
        runs.append(
            {
                **common.score_predictions(Path(predicted["pred_dir"]), raw),
                "train_s": trained["wall_s"],
                "pred_dir": predicted["pred_dir"],
                "s_per_case_tta": predicted["s_per_case_tta"],
            }
        )
    return {**summarise(runs), "plan": note}


def profile_keywords(device: str, quick: bool) -> dict:
    patch, epochs, iterations, repeats = PROFILES[(device, quick)]
    return {"patch": patch, "epochs": epochs, "iterations": iterations, "repeats": repeats}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="fewer iterations, one repeat")
    ap.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None, help="iterations per epoch")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=common.BENCH_DIR / "out" / "standalone")
    ap.add_argument("--refenv", type=Path, default=common.DEFAULT_REFENV)
    a = ap.parse_args()
    # The full CPU dataset (20 + 4 held-out cases) even for --quick: accuracy needs the held-out cases.
    raw, _, root = bench_train.standalone_dataset(a.device, False, a.out)
    kw = profile_keywords(a.device, a.quick)
    kw.update(
        {
            k: v
            for k, v in (
                ("patch", tuple(a.patch) if a.patch else None),
                ("epochs", a.epochs),
                ("iterations", a.iterations),
                ("repeats", a.repeats),
            )
            if v is not None
        }
    )
    kw.update(raw=raw, device=a.device, workers=a.workers, batch=a.batch)
    python = common.reference_python(a.refenv)
    load_before = bench_train.load_average()
    ours = run_ours(**kw, work=root / "ours")
    theirs = run_reference(python, **kw, work=root / "nnunet") if python else {}
    info = common.header(a.device, python)
    info["run"] = (
        f"{bench_predict.held_out_cases(raw)} held-out cases; patch {list(kw['patch'])} batch {kw['batch']}, "
        f"{kw['epochs']} epochs x {kw['iterations']} iterations = {kw['epochs'] * kw['iterations']} per training, "
        f"{kw['repeats']} repeat(s) per side, {a.workers} loader workers"
    )
    info["load average (1/5/15 min)"] = f"{load_before} before, {bench_train.load_average()} after"
    rows = [
        common.Row("accuracy", m, ours.get(m), theirs.get(m) if theirs else "n/a (no refenv)") for m in common.METRICS["accuracy"]
    ]
    print(common.format_table(rows, info))
    print(f"\nper repeat, ours: {ours['per_repeat_dice']}; nnU-Net: {theirs.get('per_repeat_dice', 'n/a')}")
    print(f"plan: {theirs.get('plan', 'n/a')}")


if __name__ == "__main__":
    main()
