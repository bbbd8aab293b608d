"""nnU-Net training speed: ms per iteration end to end with nnUNetv2_train and nnUNetTrainerBench.

    python train.py RAW WORK [--iterations 20] [--warmup 0] [--epochs 0] [--patch Z Y X] [--batch 2]
                    [--workers 2] [--device cpu] [--config 3d_fullres]

Runs the real CLI (``nnUNetv2_train ID CONFIG all -tr nnUNetTrainerBench -p nnUNetBenchPlans``)
with ``nnUNet_n_proc_DA=--workers``; fold "all" trains on every imagesTr case so imagesTs stays
held out for predict.py. The trainer times each epoch from its first batch request to its last
step (validation and checkpointing excluded) and the part spent inside ``train_step``; the rest is
waiting for data. --warmup iterations run first as an untimed epoch of their own, so start-up (and
torch.compile on CUDA) stays out of the timed --iterations. Prints one JSON line: ms_per_it,
data_wait_share, warmup_ms_per_it, wall_s (whole command), peak_rss_mb, peak_gpu_mb, iterations,
warmup, model_dir.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nnunet_env as ne


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="accuracy runs: this many epochs of --iterations each, nnU-Net's LR schedule over them (no warm-up)",
    )
    ap.add_argument("--patch", type=int, nargs="+")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--config", default="3d_fullres")
    a = ap.parse_args()
    ne.use_work(a.raw, a.work)
    ne.ensure_preprocessed(a.raw, a.work)
    ne.bench_plans(a.raw, a.work, a.patch, a.batch, a.config)
    env = {
        "nnUNet_n_proc_DA": str(a.workers),
        "VOXSEG_BENCH_ITERS": str(a.iterations),
        "VOXSEG_BENCH_WARMUP_ITERS": str(a.warmup),
        "VOXSEG_BENCH_VAL_ITERS": "1",
        "VOXSEG_BENCH_EPOCHS": str(a.epochs),
    }
    wall = ne.run_timed(
        [
            "nnUNetv2_train",
            str(ne.dataset_id(a.raw)),
            a.config,
            "all",
            "-tr",
            ne.TRAINER,
            "-p",
            ne.BENCH_PLANS,
            "-device",
            a.device,
        ],
        env,
    )
    model_dir = Path(a.work).resolve() / "nnUNet_results" / Path(a.raw).name / f"{ne.TRAINER}__{ne.BENCH_PLANS}__{a.config}"
    stats = json.loads((model_dir / "fold_all" / "bench_stats.json").read_text())
    first, last = stats["epochs"][0], stats["epochs"][-1]
    gpu = stats["peak_gpu_bytes"]
    ne.emit(
        {
            "ms_per_it": 1000 * last["wall_s"] / last["iterations"],
            "data_wait_share": 1 - last["step_s"] / last["wall_s"],
            "warmup_ms_per_it": (1000 * first["wall_s"] / first["iterations"] if len(stats["epochs"]) > 1 else None),
            "wall_s": wall,
            "peak_rss_mb": ne.peak_rss_mb(),
            "peak_gpu_mb": gpu / 2**20 if gpu is not None else None,
            "iterations": a.iterations,
            "warmup": a.warmup,
            "model_dir": str(model_dir),
        }
    )


if __name__ == "__main__":
    main()
