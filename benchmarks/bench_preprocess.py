"""Plan + preprocess wall time: `voxseg plan` + `voxseg preprocess` vs nnUNetv2_plan_and_preprocess.

    python benchmarks/bench_preprocess.py [--cases 20] [--workers 2] [--out benchmarks/out/preprocess]

Standalone: writes 20 demo cases (48-96 voxels per axis), times our plan + preprocess (3d_fullres,
-j 2, fresh work folder) and, when benchmarks/.refenv exists, `nnUNetv2_plan_and_preprocess -c
3d_fullres -np 2` on the same files; prints a table with the ratio (goal: ours >= 1.5x faster).
Also imported by benchmarks/run.py (convention in benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common

# Run in a child interpreter so start-up and imports count, as they do for nnU-Net's command.
_CHILD = """
import json, sys
from voxseg.planning.planner import PlannerOptions, plan_and_save
from voxseg.preprocessing.preprocess import preprocess_dataset
raw, work, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = plan_and_save(raw, work, PlannerOptions(configs=("3d_fullres",)), workers=workers, progress=False)
preprocess_dataset(work, ["3d_fullres"], workers=workers, progress=False)
cfg = plan.configurations["3d_fullres"]
import resource
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"peak_rss_mb": rss / 1024, "planned_patch": cfg.patch_size, "planned_batch": cfg.batch_size}))
"""


def run_ours(*, raw: Path, work: Path, workers: int = 2, **_) -> dict:
    work = Path(work)
    for stale in ("store", "plans.json", "fingerprint.json", "splits.json", "dataset.json"):
        target = work / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(raw), str(work), str(workers)], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - start
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_mb": result["peak_rss_mb"]}


def run_reference(python: str | Path, **kw) -> dict:
    result = common.run_nnunet("preprocess", python, **kw)
    return {k: result.get(k) for k in common.METRICS["preprocess"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=common.BENCH_DIR / "out" / "preprocess")
    args = parser.parse_args()
    from voxseg.data.demo import make_demo_dataset

    dataset = args.out / "demo"
    if not (dataset / "dataset.json").is_file():
        make_demo_dataset(dataset, cases=args.cases, seed=0, size_range=(48, 96))
    raw = common.make_nnunet_raw(dataset, args.out / "nnunet_raw")
    ours = run_ours(raw=raw, work=args.out / "work_ours", workers=args.workers)
    python = common.reference_python()
    theirs = run_reference(python, raw=raw, work=args.out / "work_nnunet", workers=args.workers) if python else {}
    rows = [common.Row("preprocess", m, ours.get(m), theirs.get(m)) for m in common.METRICS["preprocess"]]
    print(common.format_table(rows, common.header("cpu", python)))


if __name__ == "__main__":
    main()
