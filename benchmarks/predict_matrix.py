"""The prediction benchmark's full matrix (``bench_predict.py --matrix``): same model, same cases.

CT-like volumes with isotropic spacing (``make_demo_dataset(isotropic=True)``): eight training
cases of 110-130 voxels per axis, held-out cases of 110-130 ("small", 2 cases) and 300-320 voxels
per axis ("large", 1 case). Models, per network width:

- imported: nnU-Net trains its own plan (ExperimentPlanner for a 2 GB GPU: patch 80x96x80, five
  stages) on the CPU; ``voxseg import-nnunet`` brings the same weights into voxseg. Both predict the
  same cases; the table shows the speed ratio and the Dice between the two label maps (the minimum
  over cases and classes).
- own: voxseg trains the same plan (network, patch, spacing, normalisation) itself.

Widths: "full" is nnU-Net's (32..320 features); "narrow" divides every stage's features by 4, so
the large case with mirroring fits a CPU benchmark: with the full width nnU-Net alone would take
about two hours for that one case (384 tiles x 8 mirrorings x 2.1 s), so that cell is skipped.

Every number is a whole command (interpreter start, model loading, reading, preprocessing,
export, writing) divided by the cases, each side with its defaults: nnU-Net's -npp/-nps 2
(``reference/cpu_predict.py``), voxseg's precision "auto" (bf16 on CPUs that compute it natively).
Peak RSS is the largest single process of the command. nnU-Net's side of a row is measured once
and kept in OUT/results.json (it does not change with voxseg); voxseg's side is measured every run.
The options table varies one voxseg option at a time on the small cases (full width, imported
model, no mirroring: the cell furthest from its goal).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import common
import numpy as np

SIZES = {"small": ((110, 130), 2), "large": ((300, 320), 1)}
WIDTHS = {"full": 1, "narrow": 4}
GPU_MEMORY_GB = 2
TRAIN = {"epochs": 4, "iterations": 25}  # both sides; enough for a model that segments the organ
_CHILD = (
    "import json, resource, sys; from voxseg.cli.main import main; rc = main(sys.argv[1:]); "
    "rss = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)); "
    "print(json.dumps({'rc': rc, 'peak_rss_mb': rss / 1024})); sys.exit(rc)"
)


def voxseg(*args: object) -> dict:
    """One whole `voxseg` command in a child process: wall seconds and peak RSS."""
    start = time.perf_counter()
    out = common.run_child([sys.executable, "-c", _CHILD, *map(str, args)], f"voxseg {' '.join(map(str, args))}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]}


def dataset(root: Path) -> Path:
    """The nnU-Net raw folder: imagesTr/labelsTr, imagesTs_small/ and imagesTs_large/ (+ labels)."""
    from voxseg.data.demo import make_demo_dataset

    raw = root / "raw" / "Dataset911_CTLike"
    if (raw / "imagesTs_large").is_dir():
        return raw
    small = make_demo_dataset(
        root / "demo", cases=8, test_cases=SIZES["small"][1], seed=11, size_range=SIZES["small"][0], isotropic=True
    )
    large = make_demo_dataset(
        root / "demo_large", cases=0, test_cases=SIZES["large"][1], seed=12, size_range=SIZES["large"][0], isotropic=True
    )
    common.make_nnunet_raw(small, root / "raw", dataset_id=911, name="CTLike")
    for size, source in (("small", small), ("large", large)):
        for kind in ("images", "labels"):
            link = raw / f"{kind}Ts_{size}"
            if not link.exists():
                link.symlink_to((source / f"{kind}Ts").resolve(), target_is_directory=True)
    return raw


def nnunet_model(python: Path, raw: Path, work: Path, width: str) -> dict:
    return common.run_reference_script(
        python,
        "cpu_predict.py",
        "train",
        raw,
        work,
        "--plans-name",
        f"CPUBench_{width}",
        "--gpu-memory-target",
        GPU_MEMORY_GB,
        "--feature-divisor",
        WIDTHS[width],
        "--epochs",
        TRAIN["epochs"],
        "--iterations",
        TRAIN["iterations"],
    )


def own_model(raw: Path, imported_run: Path, work: Path, width: str) -> Path:
    """voxseg trained on the imported model's plan (its network, patch, spacing, normalisation)."""
    from voxseg.model.checkpoint import load_checkpoint
    from voxseg.plans import ConfigurationPlan, Plan, load_plans

    run = work / "runs" / f"3d_fullres__default__own_{width}"
    if (run / "fold_all" / "checkpoint_final.pt").is_file():
        return run
    if not (work / "plans.json").is_file():
        voxseg("plan", raw, "-o", work, "--configs", "3d_fullres")
    imported = Plan.from_json(load_checkpoint(imported_run / "fold_all" / "checkpoint_final.pt")["meta"]["plan"])
    plan = load_plans(work)
    cfg = imported.configuration("3d_fullres")
    plan.configurations["3d_fullres"] = ConfigurationPlan.from_json(cfg.to_json())
    plan.normalization, plan.transpose_forward, plan.transpose_backward = (
        imported.normalization,
        imported.transpose_forward,
        imported.transpose_backward,
    )
    plan.save(work)
    voxseg("preprocess", work, "--configs", "3d_fullres")
    sets = [
        f"training.epochs={TRAIN['epochs']}",
        f"training.iterations_per_epoch={TRAIN['iterations']}",
        "training.val_iterations=0",
    ]
    voxseg(
        "train", work, "3d_fullres", "all", "--device", "cpu", "--name", f"own_{width}", *[a for s in sets for a in ("--set", s)]
    )
    return run


def dice_between(ours: Path, theirs: Path) -> float:
    """Minimum over cases and foreground labels of the Dice between two prediction folders."""
    from voxseg.data.io import read_image

    dices = []
    for p in sorted(Path(theirs).glob("*.nii.gz")):
        a, b = read_image(Path(ours) / p.name)[0], read_image(p)[0]
        for c in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
            dices.append(2 * float(((a == c) & (b == c)).sum()) / float((a == c).sum() + (b == c).sum()))
    return min(dices) if dices else float("nan")


SKIPPED = {("full", "large", "on")}  # see the module docstring


def run(
    out: Path, python: Path, sizes: list[str], widths: list[str], options: bool, ttas: tuple[str, ...] = ("on", "off")
) -> dict:
    """Every (width, size, TTA) row; nnU-Net's timings already in OUT/results.json are reused."""
    raw = dataset(out)
    results: dict = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results.setdefault("options", [])
    # Rows of other widths/sizes stay; the rows measured now replace theirs.
    done = {(r["width"], r["size"], r["tta"]): r for r in results.get("rows", [])}
    results["rows"] = list(done.values())
    for width in widths:
        model = nnunet_model(python, raw, out / "nnunet", width)
        imported = out / "voxseg" / f"imported_{width}"
        if not imported.is_dir():
            voxseg("import-nnunet", model["model_dir"], "-o", imported)
        own = own_model(raw, imported, out / "voxseg" / "work", width)
        for size in sizes:
            images, cases = raw / f"imagesTs_{size}", SIZES[size][1]
            for tta in ttas:
                if (width, size, tta) in SKIPPED:
                    continue
                tag = f"{width}_{size}_tta{tta}"
                if (width, size, tta) in done:
                    theirs = {
                        "wall_s": done[(width, size, tta)]["nnunet_s"] * cases,
                        "peak_rss_mb": done[(width, size, tta)]["nnunet_rss_mb"],
                    }
                else:
                    theirs = common.run_reference_script(
                        python,
                        "cpu_predict.py",
                        "predict",
                        model["model_dir"],
                        images,
                        out / "pred" / f"nnunet_{tag}",
                        "--tta",
                        tta,
                    )
                flags = [] if tta == "on" else ["--no-tta"]
                ours = voxseg(
                    "predict", "-m", imported, "-i", images, "-o", out / "pred" / f"imported_{tag}", "--device", "cpu", *flags
                )
                mine = voxseg("predict", "-m", own, "-i", images, "-o", out / "pred" / f"own_{tag}", "--device", "cpu", *flags)
                row = {
                    "width": width,
                    "size": size,
                    "tta": tta,
                    "cases": cases,
                    "patch": model["patch"],
                    "features": model["features"],
                    "nnunet_s": theirs["wall_s"] / cases,
                    "imported_s": ours["wall_s"] / cases,
                    "own_s": mine["wall_s"] / cases,
                    "nnunet_rss_mb": theirs["peak_rss_mb"],
                    "imported_rss_mb": ours["peak_rss_mb"],
                    "own_rss_mb": mine["peak_rss_mb"],
                    "dice_imported_vs_nnunet": dice_between(out / "pred" / f"imported_{tag}", out / "pred" / f"nnunet_{tag}"),
                }
                results["rows"] = [r for r in results["rows"] if (r["width"], r["size"], r["tta"]) != (width, size, tta)] + [row]
                print(json.dumps(row), flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=1))
    if options:
        results["options"] = option_rows(out, raw, python)
        (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def option_rows(out: Path, raw: Path, python: Path) -> list[dict]:
    """One voxseg option at a time, small cases, full width, imported model, no mirroring."""
    images, cases = raw / "imagesTs_small", SIZES["small"][1]
    imported = out / "voxseg" / "imported_full"
    theirs = json.loads((out / "results.json").read_text())["rows"]
    reference = next(r for r in theirs if r["width"] == "full" and r["size"] == "small" and r["tta"] == "off")
    zip_path = out / "voxseg" / "imported_full.zip"
    if not zip_path.is_file():
        voxseg("export", imported, "-o", zip_path, "--onnx")
    variants = {
        "default (precision auto = bf16 here, compile auto = off for 2 cases)": ["-m", imported],
        "--compile on (torch.compile, inductor cache warm)": ["-m", imported, "--compile", "on"],
        "--precision fp32 (nnU-Net's arithmetic)": ["-m", imported, "--precision", "fp32"],
        "--backend onnx (ONNX Runtime, fp32)": ["-m", zip_path, "--backend", "onnx"],
        "--io-workers 2 (reader/writer processes)": ["-m", imported, "--io-workers", "2"],
        "--tile-batch 2": ["-m", imported, "--tile-batch", "2"],
    }
    rows = []
    for name, args in variants.items():
        pred = out / "pred" / f"option_{len(rows)}"
        shutil.rmtree(pred, ignore_errors=True)
        times = [
            voxseg("predict", *args, "--no-tta", "-i", images, "-o", pred, "--device", "cpu")["wall_s"] / cases for _ in range(2)
        ]
        row = {
            "option": name,
            "s_per_case": statistics.median(times),
            "nnunet_s": reference["nnunet_s"],
            "dice_vs_nnunet": dice_between(pred, out / "pred" / "nnunet_full_small_ttaoff"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(results: dict) -> str:
    lines = [
        "| width | size | TTA | nnU-Net s/case | voxseg imported s/case (ratio) | voxseg own s/case (ratio) | "
        "Dice imported vs nnU-Net | peak RSS MB nnU-Net / imported / own |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = (list(WIDTHS), list(SIZES), ["on", "off"])
    for r in sorted(results["rows"], key=lambda r: tuple(o.index(r[k]) for o, k in zip(order, ("width", "size", "tta")))):
        lines.append(
            f"| {r['width']} | {r['size']} | {r['tta']} | {r['nnunet_s']:.1f} | {r['imported_s']:.1f} ({r['nnunet_s'] / r['imported_s']:.2f}x) | "
            f"{r['own_s']:.1f} ({r['nnunet_s'] / r['own_s']:.2f}x) | {r['dice_imported_vs_nnunet']:.4f} | "
            f"{r['nnunet_rss_mb']:.0f} / {r['imported_rss_mb']:.0f} / {r['own_rss_mb']:.0f} |"
        )
    if results.get("options"):
        lines += [
            "",
            "| option (small, full width, imported, no TTA) | s/case | vs nnU-Net | Dice vs nnU-Net |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['option']} | {o['s_per_case']:.1f} | {o['nnunet_s'] / o['s_per_case']:.2f}x | {o['dice_vs_nnunet']:.4f} |"
            for o in results["options"]
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="bench_predict.py --matrix", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,large", help="comma list of small, large")
    ap.add_argument("--widths", default="full,narrow", help="comma list of full, narrow")
    ap.add_argument("--tta", default="on,off", help="comma list of on, off")
    ap.add_argument("--no-options", action="store_true", help="skip the one-option-at-a-time table")
    ap.add_argument("--out", type=Path, default=common.BENCH_DIR / "out" / "predict_matrix")
    ap.add_argument("--refenv", type=Path, default=common.DEFAULT_REFENV)
    a = ap.parse_args(argv)
    python = common.reference_python(a.refenv)
    if python is None:
        raise SystemExit("the matrix compares against nnU-Net: run benchmarks/setup_reference.sh first")
    a.out.mkdir(parents=True, exist_ok=True)
    results = run(a.out, python, a.sizes.split(","), a.widths.split(","), options=not a.no_options, ttas=tuple(a.tta.split(",")))
    print("\n".join(f"{k}: {v}" for k, v in common.header("cpu", python).items()))
    print(table(results))
