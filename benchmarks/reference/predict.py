"""nnU-Net prediction wall time per case with and without test-time augmentation (mirroring).

    python predict.py RAW WORK [--tta both|on|off] [--workers 2] [--device cpu] [--config 3d_fullres]

Predicts ``RAW/imagesTs`` with the model train.py left in WORK (``nnUNetv2_predict ... -tr
nnUNetTrainerBench -p nnUNetBenchPlans -f all``), with -npp/-nps = --workers. Wall time of the
whole command (model loading included) divided by the number of cases. Predictions go to
WORK/pred_tta and WORK/pred_no_tta. Prints one JSON line: s_per_case_tta, s_per_case_no_tta,
cases, pred_dir (the TTA predictions when made: nnU-Net's default).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nnunet_env as ne


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--tta", default="both", choices=("both", "on", "off"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--config", default="3d_fullres")
    a = ap.parse_args()
    ne.use_work(a.raw, a.work)
    images = Path(a.raw) / "imagesTs"
    cases = len({p.name.rsplit("_", 1)[0] for p in images.iterdir()}) if images.is_dir() else 0
    if cases == 0:
        raise SystemExit(f"{images}: no held-out cases (fix: make the dataset with test cases)")
    result: dict = {"s_per_case_tta": None, "s_per_case_no_tta": None, "cases": cases}
    for tta in ("on", "off"):
        if a.tta not in ("both", tta):
            continue
        out = Path(a.work).resolve() / ("pred_tta" if tta == "on" else "pred_no_tta")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            "nnUNetv2_predict",
            "-i",
            str(images),
            "-o",
            str(out),
            "-d",
            str(ne.dataset_id(a.raw)),
            "-c",
            a.config,
            "-tr",
            ne.TRAINER,
            "-p",
            ne.BENCH_PLANS,
            "-f",
            "all",
            "-chk",
            "checkpoint_final.pth",
            "-npp",
            str(a.workers),
            "-nps",
            str(a.workers),
            "-device",
            a.device,
            "--disable_progress_bar",
        ] + (["--disable_tta"] if tta == "off" else [])
        wall = ne.run_timed(cmd)
        result[f"s_per_case_{'tta' if tta == 'on' else 'no_tta'}"] = wall / cases
        result.setdefault("pred_dir", str(out))
    result["peak_rss_mb"] = ne.peak_rss_mb()
    ne.emit(result)


if __name__ == "__main__":
    main()
