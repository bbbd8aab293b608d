"""Imported nnU-Net models predict what nnU-Net predicts: `voxseg import-nnunet` + `voxseg predict`
against nnU-Net's own predictor on the same small trained models.

    python benchmarks/bench_import.py [--variants plain,resenc,2d,regions] [--refenv DIR]

Per variant nnU-Net plans, preprocesses and trains a small model on CPU (fold "all", a few
iterations of nnUNetTrainerBench: equality needs no good model) and predicts the held-out cases
with probabilities (benchmarks/reference/import_check.py); voxseg imports the model folder and
predicts the same images with ``voxseg predict --save-probabilities``. Variants:

    plain    nnU-Net's default planner, 3d_fullres (PlainConvUNet)
    resenc   nnUNetPlannerResEncM, 3d_fullres (ResidualEncoderUNet)
    2d       default planner, 2d
    regions  default planner, 3d_fullres, a region-based dataset (sigmoid outputs)

Reported: ``dice_vs_nnunet``, the smallest per-class Dice between the two label maps over cases
and classes (a class empty on both sides is left out); ``max_prob_diff``, the largest absolute
probability difference (ours are stored as float16, which alone accounts for up to ~5e-4);
foreground voxels on each side (a model predicting only background would prove nothing);
``s_per_case``, each side's prediction time per case.

The data (voxseg's demo generator: 4 + 2 cases of 24-40 voxels) and nnU-Net's trained models are
cached in a temp folder keyed by this file and the reference script, so the test that uses them
(tests/test_nnunet_import.py) and repeated runs train nothing twice. The data does not depend on
run.py's dataset: run.py's stage "import" passes its keywords, but only ``work`` and ``refenv`` are
used. run_ours imports and predicts; run_reference times nnU-Net's own prediction of the same cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

VARIANTS = {  # name -> (planner, configuration, region-based dataset)
    "plain": ("ExperimentPlanner", "3d_fullres", False),
    "resenc": ("nnUNetPlannerResEncM", "3d_fullres", False),
    "2d": ("ExperimentPlanner", "2d", False),
    "regions": ("ExperimentPlanner", "3d_fullres", True),
}
ITERATIONS = 10
DATASET = {"cases": 4, "test_cases": 2, "seed": 1, "size_range": (24, 40)}


def reference_root() -> Path:
    """The shared cache: temp dir keyed by the code that decides what it holds."""
    key = hashlib.sha1()
    for f in (Path(__file__), common.REFERENCE_DIR / "import_check.py"):
        key.update(f.read_bytes())
    key.update(json.dumps([DATASET, ITERATIONS]).encode())
    return Path(tempfile.gettempdir()) / f"voxseg-import-reference-{key.hexdigest()[:12]}"


def dataset(regions: bool) -> Path:
    """The nnU-Net raw folder of the demo data (made once)."""
    from voxseg.data.demo import make_demo_dataset

    root = reference_root() / ("regions" if regions else "labels")
    raw = root / "raw" / (f"Dataset{903 if regions else 902}_Import{'Regions' if regions else ''}")
    if not (raw / "dataset.json").is_file():
        demo = make_demo_dataset(root / "demo", regions=regions, **DATASET)
        common.make_nnunet_raw(
            demo, root / "raw", dataset_id=903 if regions else 902, name="ImportRegions" if regions else "Import"
        )
    return raw


def ensure_reference(python: str | Path, variant: str, pred_dir: Path | None = None) -> dict:
    """nnU-Net's trained model and predictions for ``variant`` (cached); keys of import_check.py + raw."""
    planner, config, regions = VARIANTS[variant]
    raw = dataset(regions)
    args = ["model", raw, raw.parent.parent / "work", "--planner", planner, "--config", config, "--iterations", ITERATIONS] + (
        ["--pred-dir", pred_dir] if pred_dir else []
    )
    return {**common.run_reference_script(python, "import_check.py", *args), "raw": str(raw)}


def compare(ours: Path, theirs: Path) -> dict:
    """Agreement of two prediction folders (label maps CASE.nii.gz, probabilities CASE.npz)."""
    import SimpleITK as sitk

    dices, diff, fg_ours, fg_theirs, disagree = [], 0.0, 0, 0, 0
    cases = sorted(p.name[: -len(".nii.gz")] for p in Path(theirs).glob("*.nii.gz"))
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(ours) / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(theirs) / f"{case}.nii.gz")))
        for c in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
            both = int((a == c).sum() + (b == c).sum())
            dices.append(2 * int(((a == c) & (b == c)).sum()) / both)
        fg_ours, fg_theirs, disagree = (
            fg_ours + int((a > 0).sum()),
            fg_theirs + int((b > 0).sum()),
            disagree + int((a != b).sum()),
        )
        with np.load(Path(ours) / f"{case}.npz") as p, np.load(Path(theirs) / f"{case}.npz") as q:
            diff = max(diff, float(np.abs(p["probabilities"].astype(np.float32) - q["probabilities"]).max()))
    return {
        "dice_vs_nnunet": min(dices) if dices else math.nan,
        "max_prob_diff": diff,
        "fg_voxels_ours": fg_ours,
        "fg_voxels_nnunet": fg_theirs,
        "voxels_disagreeing": disagree,
        "cases": len(cases),
    }


def import_and_predict(model_dir: Path, images: Path, out: Path, precision: str = "fp32") -> float:
    """`voxseg import-nnunet` then `voxseg predict --save-probabilities`; seconds the prediction took.

    fp32 (nnU-Net's CPU precision) for the exactness check; "auto" is what `voxseg predict` uses by
    default (bf16 on CPUs that compute it natively)."""
    from voxseg.cli.main import main

    run = out.parent / f"{out.name}_run"
    if main(["import-nnunet", str(model_dir), "-o", str(run), "--overwrite"]) != 0:
        raise RuntimeError(f"voxseg import-nnunet {model_dir} failed")
    t0 = time.perf_counter()
    args = ["predict", "-m", str(run), "-i", str(images), "-o", str(out), "--save-probabilities"]
    args += ["--device", "cpu", "--precision", precision]
    if main(args) != 0:
        raise RuntimeError(f"voxseg predict -m {run} failed")
    return time.perf_counter() - t0


def _variants(kw: dict) -> list[str]:
    if kw.get("variants"):
        return list(kw["variants"])
    return ["plain", "resenc"] if kw.get("quick") else list(VARIANTS)


def run_ours(*, work: Path, refenv: Path = common.DEFAULT_REFENV, **kw) -> dict:
    python = common.reference_python(refenv)
    if python is None:
        raise RuntimeError("the import check needs nnU-Net's models: run benchmarks/setup_reference.sh")
    rows = {}
    for variant in _variants(kw):
        ref = ensure_reference(python, variant)
        out = Path(work) / "import" / variant
        seconds = import_and_predict(Path(ref["model_dir"]), Path(ref["raw"]) / "imagesTs", out)
        rows[variant] = {**compare(out, Path(ref["pred_dir"])), "s_per_case": seconds / ref["cases"]}
        auto = out.parent / f"{variant}_auto"
        import_and_predict(Path(ref["model_dir"]), Path(ref["raw"]) / "imagesTs", auto, precision="auto")
        rows[variant]["dice_vs_nnunet_auto"] = compare(auto, Path(ref["pred_dir"]))["dice_vs_nnunet"]
    return {
        "dice_vs_nnunet": min(r["dice_vs_nnunet"] for r in rows.values()),
        "dice_vs_nnunet_auto": min(r["dice_vs_nnunet_auto"] for r in rows.values()),
        "max_prob_diff": max(r["max_prob_diff"] for r in rows.values()),
        "s_per_case": float(np.mean([r["s_per_case"] for r in rows.values()])),
        "variants": json.dumps(rows),
    }


def run_reference(python, *, work: Path, **kw) -> dict:
    times = []
    for variant in _variants(kw):
        ref = ensure_reference(python, variant, pred_dir=Path(work) / "import" / f"pred_{variant}")
        times.append(ref["predict_s"] / ref["cases"])
    return {"s_per_case": float(np.mean(times)), "dice_vs_nnunet": None, "max_prob_diff": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--refenv", type=Path, default=common.DEFAULT_REFENV)
    ap.add_argument("--out", type=Path, default=common.BENCH_DIR / "out" / "import")
    a = ap.parse_args()
    variants = [v for v in a.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    ours = run_ours(work=a.out, refenv=a.refenv, variants=variants)
    python = common.reference_python(a.refenv)
    theirs = run_reference(python, work=a.out, variants=variants)
    print("| variant | dice_vs_nnunet (min) | max_prob_diff | fg voxels ours / nnU-Net | disagreeing voxels |")
    print("|---|---|---|---|---|")
    for name, r in json.loads(ours["variants"]).items():
        print(
            f"| {name} | {r['dice_vs_nnunet']:.4f} | {r['max_prob_diff']:.2e} | {r['fg_voxels_ours']} / "
            f"{r['fg_voxels_nnunet']} | {r['voxels_disagreeing']} |"
        )
    print(f"\ns per case: voxseg {ours['s_per_case']:.2f}, nnU-Net {theirs['s_per_case']:.2f} (CPU, TTA on)")


if __name__ == "__main__":
    main()
