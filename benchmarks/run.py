"""Run the benchmark suite: voxseg against nnU-Net v2 on the same demo data, one table.

    python benchmarks/run.py [--device cpu|cuda] [--quick] [--out DIR] [--stages a,b,...]
                             [--refenv DIR] [--keep]

Builds one demo dataset (``voxseg.data.demo.make_demo_dataset``; held-out cases in imagesTs), then
for each stage (preprocess, loader, augment, train, predict, accuracy, import) calls ``bench_<stage>.run_ours`` and
``bench_<stage>.run_reference`` with the same keywords (convention: ``benchmarks/common.py``),
scores both sides' predictions with one scorer, and prints/writes one markdown table with the
machine, versions and date. A stage whose script or function does not exist yet prints
"n/a (not built yet)"; a side that fails prints "failed" and its traceback goes to DIR/log.txt.

Hand-written orchestration rather than pytest-benchmark/asv: the stages are minutes long, share
state (preprocessed data, a trained model), and compare against a second Python environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common


@dataclass(frozen=True)
class Profile:
    """Sizes of one run; ``--quick`` on CPU must finish in < 20 minutes on 2 cores."""

    cases: int
    test_cases: int
    size_range: tuple[int, int]
    patch: tuple[int, int, int]
    batch: int
    workers: int
    loader_batches: int
    augment_batches: int
    train_iterations: int
    train_warmup: int
    repeats: dict[str, int] = field(default_factory=dict)
    train_patch: tuple[int, int, int] | None = None  # train/predict only; None: ``patch``


PROFILES = {
    # nnU-Net's CPU training at 72x80x80 batch 2 takes 20-60 s/it on 2 shared cores (measured),
    # so --quick trains (and predicts) with a smaller patch.
    ("cpu", True): Profile(
        6, 1, (48, 96), (72, 80, 80), 2, 2, 20, 10, 3, 1, {"preprocess": 1, "loader": 1, "augment": 1}, train_patch=(32, 64, 64)
    ),
    ("cpu", False): Profile(20, 4, (48, 96), (72, 80, 80), 2, 2, 60, 30, 50, 5, {"preprocess": 3, "loader": 3, "augment": 3}),
    ("cuda", True): Profile(
        10, 2, (112, 208), (64, 160, 160), 2, 8, 40, 20, 50, 20, {"preprocess": 1, "loader": 1, "augment": 1}
    ),
    ("cuda", False): Profile(
        20, 4, (112, 208), (64, 160, 160), 2, 8, 100, 50, 250, 50, {"preprocess": 2, "loader": 3, "augment": 3}
    ),
}
STAGE_ITERATIONS = {"loader": "loader_batches", "augment": "augment_batches", "train": "train_iterations"}


def load_stage(stage: str):
    """The stage module, or None while nobody has written it (import errors inside it propagate)."""
    try:
        return importlib.import_module(f"bench_{stage}")
    except ModuleNotFoundError as e:
        if e.name == f"bench_{stage}":
            return None
        raise


def call_side(fn, args: tuple, kw: dict, repeats: int, log) -> dict | str:
    """Median result of ``fn`` over repeats, or "failed" with the traceback in the log."""
    try:
        return common.median_over(lambda: fn(*args, **kw), repeats)
    except Exception:  # one broken stage must not lose the rest of a long run
        log.write(f"--- {getattr(fn, '__module__', '?')}.{fn.__name__}\n{traceback.format_exc()}\n")
        log.flush()
        return "failed"


def run(device: str, quick: bool, out: Path, stages: list[str], refenv: Path, keep: bool) -> str:
    from voxseg.data.demo import make_demo_dataset

    prof = PROFILES[(device, quick)]
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    python = common.reference_python(refenv)
    demo = make_demo_dataset(scratch / "demo", cases=prof.cases, seed=0, size_range=prof.size_range, test_cases=prof.test_cases)
    raw = common.make_nnunet_raw(demo, scratch / "raw")
    base = {
        "raw": raw,
        "device": device,
        "workers": prof.workers,
        "patch": prof.patch,
        "batch": prof.batch,
        "warmup": prof.train_warmup,
        "quick": quick,
        "refenv": refenv,
    }
    rows: list[common.Row] = []
    results: dict[str, dict] = {}
    with open(out / "log.txt", "w") as log:
        for stage in stages:
            t0 = time.perf_counter()
            try:
                mod = load_stage(stage)
            except Exception:  # a half-written bench script must not stop the other stages
                log.write(f"--- import bench_{stage}\n{traceback.format_exc()}\n")
                rows.append(common.Row(stage, "-", "failed (import)", "failed (import)"))
                continue
            kw = dict(base, iterations=getattr(prof, STAGE_ITERATIONS.get(stage, "train_iterations")))
            if stage in ("train", "predict") and prof.train_patch:
                kw["patch"] = prof.train_patch
            if stage == "accuracy":  # its own patch and schedule (bench_accuracy.PROFILES)
                kw.update(mod.profile_keywords(device, quick))
            repeats = prof.repeats.get(stage, 1)
            ours: dict | str = "n/a (not built yet)"
            theirs: dict | str = "n/a (not built yet)"
            if mod is not None and hasattr(mod, "run_ours"):
                ours = call_side(mod.run_ours, (), dict(kw, work=scratch / "ours"), repeats, log)
            if python is None:
                theirs = "n/a (run benchmarks/setup_reference.sh)"
            elif mod is not None and hasattr(mod, "run_reference"):
                theirs = call_side(mod.run_reference, (python,), dict(kw, work=scratch / "nnunet"), repeats, log)
            if stage == "predict":
                ours, theirs = (_with_scores(side, raw, log) for side in (ours, theirs))
            results[stage] = {"ours": ours, "theirs": theirs, "seconds": time.perf_counter() - t0}
            rows += _rows(stage, ours, theirs)
            print(f"[run] {stage}: {results[stage]['seconds']:.0f} s", file=sys.stderr, flush=True)
    info = common.header(device, python)
    info["profile"] = (
        f"{'quick' if quick else 'full'}: {prof.cases}+{prof.test_cases} cases "
        f"{prof.size_range}, patch {list(prof.patch)} batch {prof.batch}, "
        f"{prof.workers} workers, train {prof.train_warmup}+{prof.train_iterations} it"
        + (f" at patch {list(prof.train_patch)}" if prof.train_patch else "")
    )
    table = common.format_table(rows, info)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"info": info, "stages": results}, indent=1, default=str))
    if not keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return table


def _with_scores(side: dict | str, raw: Path, log) -> dict | str:
    """Add Dice/HD95 of the side's held-out predictions (one scorer for both sides)."""
    if not isinstance(side, dict) or not side.get("pred_dir"):
        return side
    try:
        return {**side, **common.score_predictions(Path(side["pred_dir"]), raw)}
    except Exception:
        log.write(f"--- scoring {side['pred_dir']}\n{traceback.format_exc()}\n")
        return {**side, "dice": "failed", "hd95": "failed"}


def _rows(stage: str, ours: dict | str, theirs: dict | str) -> list[common.Row]:
    if not isinstance(ours, dict) and not isinstance(theirs, dict):
        return [common.Row(stage, "-", ours, theirs)]
    present = {**(ours if isinstance(ours, dict) else {}), **(theirs if isinstance(theirs, dict) else {})}
    keys = [k for k in common.METRICS[stage] if present.get(k) is not None]

    def get(side: dict | str, key: str):
        return side.get(key) if isinstance(side, dict) else side

    return [common.Row(stage, k, get(ours, k), get(theirs, k)) for k in keys]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="small run (< 20 min on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=common.BENCH_DIR / "out")
    ap.add_argument("--stages", default=",".join(common.STAGES), help=f"comma-separated subset of {','.join(common.STAGES)}")
    ap.add_argument(
        "--refenv", type=Path, default=common.DEFAULT_REFENV, help="nnU-Net reference venv made by setup_reference.sh"
    )
    ap.add_argument("--keep", action="store_true", help="keep DIR/scratch (data, stores, models)")
    a = ap.parse_args()
    stages = [s for s in a.stages.split(",") if s]
    unknown = set(stages) - set(common.STAGES)
    if unknown:
        ap.error(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(common.STAGES)}")
    print(run(a.device, a.quick, a.out, stages, a.refenv, a.keep))


if __name__ == "__main__":
    main()
