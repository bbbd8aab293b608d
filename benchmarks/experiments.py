"""Feature experiments on synthetic data (CPU): what the dataset features buy, end to end.

    python benchmarks/experiments.py {regions,rgb,partial,finetune,cascade,all} [--out DIR] [--epochs E] [--iterations I]

Each experiment builds its data with ``voxseg demo-data``'s generators (lesions of the demo's size, lesion_scale 1.6), runs the real commands
(plan, preprocess, train, predict, evaluate) and prints a markdown table of held-out Dice; the
numbers are recorded in the docs (datasets.md, losses.md, training.md):

- regions:  a region-based dataset (whole = organ + lesion, lesion): Dice per region, and the
            probability files hold one channel per region.
- rgb:      a 2D RGB PNG dataset trained with the 2d configuration: Dice per class, PNG outputs
            of the input size.
- partial:  half the training cases annotate only the lesion (organ voxels turned background):
            held-out organ Dice with ``annotated_classes`` (marginal loss) vs the same label maps
            without it (those cases teach "organ = background").
- finetune: a model trained on one synthetic dataset, fine-tuned (``--pretrained``, plan ``--like``)
            on a related one whose label values are swapped, vs training from scratch, both for
            the same small number of iterations.
- cascade:  cases of 110-130 voxels per axis under a small memory budget: both stages planned,
            5 low-resolution folds and a cascade fold trained, one predict command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from voxseg.cli.main import main
from voxseg.data.demo import make_demo_dataset, make_rgb_demo_dataset


def run(*args: str) -> None:
    if main([str(a) for a in args]) != 0:
        raise SystemExit(f"voxseg {' '.join(map(str, args))} failed")


def _train_predict(
    raw: Path, work: Path, config: str, name: str, epochs: int, iterations: int, *extra: str, plan: tuple[str, ...] = ()
) -> dict:
    """plan (unless done) -> preprocess -> train fold 'all' -> predict imagesTs -> evaluate; the summary."""
    if not (work / "plans.json").is_file():
        run("plan", raw, "-o", work, "--configs", config, "--gpu-memory", "0.5", *plan)
        run("preprocess", work)
    sets = [f"training.epochs={epochs}", f"training.iterations_per_epoch={iterations}", "training.val_iterations=0"]
    start = time.perf_counter()
    run("train", work, config, "all", "--device", "cpu", "--name", name, *[a for s in sets for a in ("--set", s)], *extra)
    train_s = time.perf_counter() - start
    out = work / f"pred_{name}"
    run(
        "predict",
        "-m",
        work / "runs" / f"{config}__default__{name}",
        "-i",
        raw / "imagesTs",
        "-o",
        out,
        "--device",
        "cpu",
        "--no-tta",
        "--save-probabilities",
    )
    run("evaluate", out, raw / "labelsTs", "-d", raw / "dataset.json", "--metrics", "dice")
    summary = json.loads((out / "summary.json").read_text())
    summary["train_s"] = train_s
    summary["pred_dir"] = str(out)
    return summary


def _dice_row(label: str, summary: dict) -> str:
    names = summary["label_names"]
    cells = " | ".join(f"{names.get(k, k)} {v['Dice']:.3f}" for k, v in summary["mean"].items())
    return f"| {label} | {cells} | {summary['train_s']:.0f} s |"


def regions(out: Path, epochs: int, iterations: int) -> list[str]:
    raw = make_demo_dataset(out / "raw", cases=20, test_cases=4, seed=0, size_range=(40, 64), regions=True, lesion_scale=1.6)
    s = _train_predict(raw, out / "work", "3d_fullres", "regions", epochs, iterations)
    import numpy as np

    channels = {np.load(p)["probabilities"].shape[0] for p in Path(s["pred_dir"]).glob("*.npz")}
    return [
        "| region-based demo | held-out Dice: whole | lesion | train |",
        "|---|---|---|---|",
        _dice_row(f"{epochs} x {iterations} it, sigmoid BCE + Dice", s),
        f"probability channels per case: {sorted(channels)}",
    ]


def rgb(out: Path, epochs: int, iterations: int) -> list[str]:
    raw = make_rgb_demo_dataset(out / "raw", cases=20, test_cases=4, seed=0, size_range=(96, 160))
    s = _train_predict(raw, out / "work", "2d", "rgb", epochs, iterations)
    from voxseg.data.io import read_channels, read_image

    same = all(
        read_image(p)[0].shape == read_channels(raw / "imagesTs" / p.name.replace(".png", "_0000.png"))[0].shape[1:]
        for p in Path(s["pred_dir"]).glob("*.png")
    )
    return [
        "| 2D RGB PNG demo | held-out Dice: organ | lesion | train |",
        "|---|---|---|---|",
        _dice_row(f"2d, {epochs} x {iterations} it", s),
        f"PNG predictions of the input size: {same}",
    ]


def partial(out: Path, epochs: int, iterations: int) -> list[str]:
    raw = make_demo_dataset(
        out / "raw_partial", cases=20, test_cases=4, seed=0, size_range=(40, 64), partial_fraction=0.5, lesion_scale=1.6
    )
    plain = out / "raw_plain"
    shutil.copytree(raw, plain, dirs_exist_ok=True)
    meta = json.loads((plain / "dataset.json").read_text())
    meta.pop("annotated_classes")
    (plain / "dataset.json").write_text(json.dumps(meta, indent=2))
    rows = ["| half the cases annotate only the lesion | organ | lesion | train |", "|---|---|---|---|"]
    for label, data, work in (
        ("with annotated_classes (marginal loss)", raw, out / "work_partial"),
        ("same label maps, no annotated_classes", plain, out / "work_plain"),
    ):
        s = _train_predict(data, work, "3d_fullres", "p", epochs, iterations)
        rows.append(f"| {label} | {s['mean']['1']['Dice']:.3f} | {s['mean']['2']['Dice']:.3f} | {s['train_s']:.0f} s |")
    return rows


def finetune(out: Path, epochs: int, iterations: int) -> list[str]:
    source = make_demo_dataset(out / "raw_source", cases=20, test_cases=2, seed=0, size_range=(40, 64), lesion_scale=1.6)
    target = make_demo_dataset(out / "raw_target", cases=6, test_cases=4, seed=7, size_range=(40, 64), lesion_scale=1.6)
    meta = json.loads((target / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "lesion": 1, "organ": 2}  # the same classes under swapped values
    (target / "dataset.json").write_text(json.dumps(meta, indent=2))
    import numpy as np

    from voxseg.data.io import read_image, write_image

    for folder in ("labelsTr", "labelsTs"):
        for p in (target / folder).glob("*.nii.gz"):
            seg, g = read_image(p)
            write_image(p, np.choose(seg, [0, 2, 1]).astype(np.uint8), g)
    base = _train_predict(source, out / "work_source", "3d_fullres", "base", epochs, iterations)
    short = max(1, epochs // 4)
    like = ("--like", str(out / "work_source"))
    tuned = _train_predict(
        target,
        out / "work_target",
        "3d_fullres",
        "tuned",
        short,
        iterations,
        "--pretrained",
        str(out / "work_source" / "runs" / "3d_fullres__default__base" / "fold_all"),
        plan=like,
    )
    scratch = _train_predict(target, out / "work_target", "3d_fullres", "scratch", short, iterations, plan=like)
    return [
        f"| related dataset, {short} x {iterations} it | organ | lesion | train |",
        "|---|---|---|---|",
        f"| source model ({epochs} x {iterations} it, on its own held-out cases) | {base['mean']['1']['Dice']:.3f} | {base['mean']['2']['Dice']:.3f} | {base['train_s']:.0f} s |",
        f"| fine-tuned from it (--pretrained) | {tuned['mean']['2']['Dice']:.3f} | {tuned['mean']['1']['Dice']:.3f} | {tuned['train_s']:.0f} s |",
        f"| from scratch | {scratch['mean']['2']['Dice']:.3f} | {scratch['mean']['1']['Dice']:.3f} | {scratch['train_s']:.0f} s |",
    ]


def cascade(out: Path, epochs: int, iterations: int) -> list[str]:
    """Cases of 110-130 voxels per axis and a 0.5 GB budget: plan both stages, 5 low-resolution
    folds, one cascade fold, then one predict command through both stages."""
    raw = make_demo_dataset(out / "raw", cases=10, test_cases=2, seed=0, size_range=(110, 130))
    work = out / "work"
    start = time.perf_counter()
    run("plan", raw, "-o", work, "--gpu-memory", "0.5", "--configs", "3d_fullres,3d_lowres")
    plan = json.loads((work / "plans.json").read_text())["configurations"]
    run("preprocess", work)
    sets = [f"training.epochs={epochs}", f"training.iterations_per_epoch={iterations}", "training.val_iterations=2"]
    flags = [a for s in sets for a in ("--set", s)]
    for fold in range(5):
        run("train", work, "3d_lowres", fold, "--device", "cpu", "--name", "e", *flags)
    run("train", work, "3d_cascade_fullres", 0, "--device", "cpu", "--name", "e", *flags)
    out_dir = work / "pred"
    run(
        "predict",
        "-m",
        work / "runs" / "3d_cascade_fullres__default__e",
        "-i",
        raw / "imagesTs",
        "-o",
        out_dir,
        "--device",
        "cpu",
        "--no-tta",
    )
    run("evaluate", out_dir, raw / "labelsTs", "-d", raw / "dataset.json", "--metrics", "dice")
    summary = json.loads((out_dir / "summary.json").read_text())
    folds = sum(1 for _ in (work / "runs" / "3d_lowres__default__e").glob("fold_*/next_stage"))
    lines = ["| configuration | spacing | patch |", "|---|---|---|"]
    lines += [f"| {k} | {[round(v, 2) for v in c['spacing']]} | {c['patch_size']} |" for k, c in plan.items()]
    lines += [
        f"low-resolution folds with next-stage inputs: {folds}; cascade held-out Dice "
        + ", ".join(f"{summary['label_names'][k]} {v['Dice']:.3f}" for k, v in summary["mean"].items())
        + f"; whole run {time.perf_counter() - start:.0f} s ({epochs} x {iterations} it per fold)"
    ]
    return lines


EXPERIMENTS = {"regions": regions, "rgb": rgb, "partial": partial, "finetune": finetune, "cascade": cascade}


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=(*EXPERIMENTS, "all"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/experiments"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--iterations", type=int, default=25)
    a = ap.parse_args()
    for name in EXPERIMENTS if a.experiment == "all" else (a.experiment,):
        folder = a.out / name
        shutil.rmtree(folder, ignore_errors=True)
        lines = EXPERIMENTS[name](folder, a.epochs, a.iterations)
        print(f"\n## {name}\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    cli()
