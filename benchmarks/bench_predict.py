"""Prediction wall time per case, `voxseg predict` vs `nnUNetv2_predict`, TTA on and off.

    python benchmarks/bench_predict.py [--device cpu|cuda] [--quick] [--patch Z Y X] [--batch 2]
        [--workers 2] [--iterations N] [--warmup W] [--out DIR] [--refenv DIR]

Whole commands (interpreter start-up, model loading, reading and writing included) on the
held-out cases ``RAW/imagesTs``, wall time divided by the number of cases; each side with its
default tiling (step 0.5, Gaussian weighting) and TTA = all mirror axes. nnU-Net runs with
-npp/-nps = ``--workers`` (benchmarks/reference/predict.py).

Same model size on both sides: the models bench_train.py trained in WORK (one plan, voxseg's
topology forced onto nnU-Net, warmup + iterations steps each). When WORK has none, this script
trains them first with the same keywords. "pred_dir" (the TTA predictions, both sides' default)
is scored by run.py -- and by the standalone table here -- with one scorer for both sides. With a
model trained for a handful of steps the Dice is near zero on both sides: it shows that the two
predictors agree, not how good a trained model is.

Peak RSS: the largest single process of the command (ours is one process with threads).

``--matrix`` runs the full comparison instead (``predict_matrix.py``): nnU-Net's own model imported
into voxseg (same weights) and voxseg's own model of the same plan, on CT-like cases of 110-130
and 300-320 voxels per axis, with and without mirroring, plus one voxseg option at a time.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train
import common

# `voxseg predict` as the console script runs it, plus the command's peak RSS on the last line.
_CHILD = (
    "import json, resource, sys; from voxseg.cli.main import main; rc = main(sys.argv[1:]); "
    "rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)); "
    "print(json.dumps({'rc': rc, 'peak_rss_mb': rss / 1024})); sys.exit(rc)"
)


def held_out_cases(raw: Path) -> int:
    images = Path(raw) / "imagesTs"
    cases = {p.name.rsplit("_", 1)[0] for p in images.iterdir()} if images.is_dir() else set()
    if not cases:
        raise FileNotFoundError(f"{images}: no held-out cases (fix: make the dataset with test cases)")
    return len(cases)


def predict_command(model: Path, images: Path, out: Path, device: str, tta: bool) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one `voxseg predict` command."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["predict", "-m", str(model), "-i", str(images), "-o", str(out), "--device", device]
    start = time.perf_counter()
    out = common.run_child([sys.executable, "-c", _CHILD, *args, *([] if tta else ["--no-tta"])], f"voxseg {' '.join(args)}")
    wall = time.perf_counter() - start
    return wall, json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def run_ours(*, raw: Path, work: Path, device: str = "cpu", **kw) -> dict:
    raw, work = Path(raw), Path(work)
    model = bench_train.model_dir(work)
    trained_now = not (model / "checkpoint_final.pt").is_file()
    if trained_now:
        bench_train.run_ours(raw=raw, work=work, device=device, **kw)
    cases = held_out_cases(raw)
    tta_s, tta_rss = predict_command(model, raw / "imagesTs", work / "pred_tta", device, tta=True)
    plain_s, plain_rss = predict_command(model, raw / "imagesTs", work / "pred_no_tta", device, tta=False)
    return {
        "s_per_case_tta": tta_s / cases,
        "s_per_case_no_tta": plain_s / cases,
        "peak_rss_mb": max(tta_rss, plain_rss),
        "pred_dir": str(work / "pred_tta"),
        "model": f"{model} ({'trained now' if trained_now else 'from the train stage'})",
    }


def reference_model_dir(raw: Path, work: Path) -> Path:
    """Where benchmarks/reference/train.py leaves nnU-Net's fold "all"."""
    return (
        Path(work).resolve() / "nnUNet_results" / Path(raw).name / "nnUNetTrainerBench__nnUNetBenchPlans__3d_fullres" / "fold_all"
    )


def run_reference(python, *, raw: Path, work: Path, timeout: float | None = None, **kw) -> dict:
    raw, work = Path(raw), Path(work)
    model = reference_model_dir(raw, work)
    trained_now = not (model / "checkpoint_final.pth").is_file()
    if trained_now:
        bench_train.run_reference(python, raw=raw, work=work, timeout=timeout, **kw)
    result = common.run_nnunet("predict", python, raw=raw, work=work, timeout=timeout, **kw)
    return {
        **{k: result.get(k) for k in ("s_per_case_tta", "s_per_case_no_tta", "peak_rss_mb", "pred_dir")},
        "model": f"{model} ({'trained now' if trained_now else 'from the train stage'})",
    }


def main() -> None:
    if "--matrix" in sys.argv:  # the full comparison on the same model (predict_matrix.py)
        import predict_matrix

        predict_matrix.main([a for a in sys.argv[1:] if a != "--matrix"])
        return
    a = bench_train.standalone_args(__doc__.splitlines()[0])
    kw, root, prof = bench_train.standalone_keywords(a)
    python = common.reference_python(a.refenv)
    load_before = bench_train.load_average()
    sides = {"ours": run_ours(**kw, work=root / "ours")}
    if python is not None:
        sides["theirs"] = run_reference(python, **kw, work=root / "nnunet")
    raw = kw["raw"]
    for side in sides.values():
        side.update(common.score_predictions(Path(side["pred_dir"]), raw))
    theirs = sides.get("theirs", {})
    info = common.header(a.device, python)
    info["run"] = (
        f"{held_out_cases(raw)} held-out cases {prof.size_range}; models: patch {list(kw['patch'])} "
        f"batch {kw['batch']}, {kw['warmup']}+{kw['iterations']} training steps, one plan (see bench_train.py)"
    )
    info["load average (1/5/15 min)"] = f"{load_before} before, {bench_train.load_average()} after"
    rows = [
        common.Row("predict", m, sides["ours"].get(m), theirs.get(m, "n/a (no refenv)") if theirs else "n/a (no refenv)")
        for m in common.METRICS["predict"]
    ]
    print(common.format_table(rows, info))
    print(f"\nmodel, ours: {sides['ours']['model']}\nmodel, nnU-Net: {theirs.get('model', 'n/a')}")


if __name__ == "__main__":
    main()
