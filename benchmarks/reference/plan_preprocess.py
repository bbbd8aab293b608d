"""nnU-Net plan+preprocess wall time: ``nnUNetv2_plan_and_preprocess -c CONFIG -np N``.

    python plan_preprocess.py RAW WORK [--np 2] [--config 3d_fullres] [--patch Z Y X] [--batch B]

Starts from an empty ``WORK/nnUNet_preprocessed/<dataset>`` so repeats time the same work. With
--patch/--batch it also writes nnUNetBenchPlans.json for the loader/train/predict scripts.
Prints one JSON line: wall_s, peak_rss_mb (largest single process), cases, planned patch/batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nnunet_env as ne


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--np", type=int, default=2, dest="processes")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--patch", type=int, nargs="+")
    ap.add_argument("--batch", type=int)
    a = ap.parse_args()
    ne.use_work(a.raw, a.work)
    shutil.rmtree(ne.preprocessed_dir(a.raw, a.work), ignore_errors=True)
    wall = ne.plan_and_preprocess(a.raw, a.work, a.processes, a.config)
    folder = ne.preprocessed_dir(a.raw, a.work)
    cfg = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"][a.config]
    if a.patch or a.batch:
        ne.bench_plans(a.raw, a.work, a.patch, a.batch, a.config)
    cases = len(list((folder / cfg["data_identifier"]).glob("*.pkl")))
    ne.emit(
        {
            "wall_s": wall,
            "peak_rss_mb": ne.peak_rss_mb(),
            "cases": cases,
            "processes": a.processes,
            "planned_patch": cfg["patch_size"],
            "planned_batch": cfg["batch_size"],
        }
    )


if __name__ == "__main__":
    main()
