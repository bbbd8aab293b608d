"""Shared helpers for the benchmark suite, and the convention every ``bench_*.py`` follows.

Convention (``benchmarks/run.py`` relies on it)
------------------------------------------------
Each stage script ``benchmarks/bench_<stage>.py`` (stages: preprocess, loader, augment, train,
predict) exposes two functions and may be run on its own as well:

    run_ours(**kw) -> dict                 # voxseg's side
    run_reference(python, **kw) -> dict    # nnU-Net's side; ``python`` is the reference venv's
                                           # interpreter (benchmarks/.refenv/bin/python)

Both return a flat dict of metric -> number (``None`` when not measured) with the SAME keys on
both sides, so run.py can print them as ours / theirs / ratio. A value that is a ``str`` is not a
metric but a hand-over (``"pred_dir"``). Both accept ``**_`` and ignore keywords they do not use,
so run.py can add keywords without breaking them. Keywords run.py passes to every stage:

    raw: Path        nnU-Net raw dataset folder ``.../DatasetNNN_Name`` (imagesTr, labelsTr,
                     dataset.json; imagesTs/labelsTs hold the held-out cases). Never written to.
    work: Path       this side's scratch folder, the SAME for all stages of one run: a stage may
                     reuse what an earlier one left there (preprocess -> store/plans, train ->
                     model for predict) and must rebuild it when absent.
    device: str      "cpu" | "cuda"
    workers: int     data-loading / preprocessing worker processes
    patch: tuple     patch size (z, y, x), e.g. (72, 80, 80) -- used by every stage that samples
    batch: int       batch size
    iterations: int  timed training iterations (train), batches timed (loader, augment)
    warmup: int      train only: untimed iterations before the timed ones (start-up, compile);
                     the model predict uses has had warmup + iterations steps on both sides
    quick: bool      the --quick run: keep it short

Keys each stage returns (:data:`METRICS`; lower is better unless in :data:`HIGHER_IS_BETTER`):
    preprocess  wall_s, peak_rss_mb          (peak RSS of the largest single process, in MB)
    loader      patches_per_s
    augment     ms_per_batch
    train       ms_per_it (end to end, data wait included), data_wait_share, peak_rss_mb,
                peak_gpu_mb
    predict     s_per_case_tta, s_per_case_no_tta, peak_rss_mb, and "pred_dir" (str):
                predictions of imagesTs, which run.py scores (dice, hd95) with
                :func:`score_predictions`.
    accuracy    dice, dice_min, dice_max, case_dice_sd, hd95, train_s, s_per_case_tta: a longer
                training on both sides (epochs x iterations, each side's own schedule), then TTA
                predictions of imagesTs scored by :func:`score_predictions`; min/max over repeats.

nnU-Net's side runs in its own venv through the scripts in ``benchmarks/reference/``. The usual
``run_reference`` is one line: ``return common.run_nnunet("loader", python, **kw)``; other
scripts go through :func:`run_reference_script`, which returns the ONE JSON line each prints.
Those scripts point nnU-Net's folder variables (nnUNet_raw, nnUNet_preprocessed, nnUNet_results)
into ``work`` themselves, so nothing here or in a user's shell is changed globally.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = BENCH_DIR / "reference"
DEFAULT_REFENV = BENCH_DIR / ".refenv"
STAGES = ("preprocess", "loader", "augment", "train", "predict", "accuracy", "import")
METRICS = {
    "preprocess": ("wall_s", "peak_rss_mb"),
    "loader": ("patches_per_s",),
    "augment": ("ms_per_batch",),
    "train": ("ms_per_it", "data_wait_share", "peak_rss_mb", "peak_gpu_mb"),
    "predict": ("s_per_case_tta", "s_per_case_no_tta", "peak_rss_mb", "dice", "hd95"),
    "accuracy": ("dice", "dice_min", "dice_max", "case_dice_sd", "hd95", "train_s", "s_per_case_tta"),
    # bench_import.py: imported nnU-Net models
    "import": ("dice_vs_nnunet", "dice_vs_nnunet_auto", "max_prob_diff", "s_per_case"),
}
HIGHER_IS_BETTER = {"patches_per_s", "dice", "dice_min", "dice_max", "dice_vs_nnunet"}


def reference_python(venv: Path = DEFAULT_REFENV) -> Path | None:
    """The reference venv's interpreter, or None when setup_reference.sh has not been run."""
    py = Path(venv) / "bin" / "python"
    return py if py.exists() else None


def run_reference_script(
    python: str | Path, script: str, *args: object, timeout: float | None = None, env: dict[str, str] | None = None
) -> dict:
    """Run ``benchmarks/reference/<script>`` with the reference python; return its JSON line.

    The script's last stdout line that parses as a JSON object is the result; on failure the
    error names the command and shows the end of its output, since the script's traceback lives
    in another interpreter.
    """
    cmd = [str(python), str(REFERENCE_DIR / script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if proc.returncode == 0 and line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"reference script failed (exit {proc.returncode}): {' '.join(cmd)}: {_cause(proc)}\n{_tail(proc)}")


def _tail(proc: subprocess.CompletedProcess) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])


_ERROR_LINE = re.compile(r"^\s*(error:|[\w.]*(Error|Exception)\b)")


def _cause(proc: subprocess.CompletedProcess) -> str:
    """The output's last line that names an error (a launcher's own wrapper error excepted), so a
    failure reads as its cause even when the traceback scrolled out of the tail (torchrun)."""
    lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln) and "ChildFailedError" not in ln]
    return (errors or lines or ["no output"])[-1][:300]


def run_child(cmd: list[str], what: str) -> str:
    """Run ``cmd`` (unbuffered); its stdout, or an error naming ``what`` with the output's end."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {_cause(proc)}\n{_tail(proc)}")
    return proc.stdout


def call_in_child(module: str, function: str, kwargs: dict, what: str) -> dict:
    """``benchmarks/<module>.py``'s ``function(**kwargs)`` in a fresh interpreter (so its peak RSS
    and torch state are its own); the JSON-able dict it returns."""
    code = (
        "import importlib, json, sys; sys.path.insert(0, sys.argv[1]); "
        "fn = getattr(importlib.import_module(sys.argv[2]), sys.argv[3]); "
        "print(json.dumps(fn(**json.loads(sys.argv[4]))))"
    )
    out = run_child([sys.executable, "-c", code, str(BENCH_DIR), module, function, json.dumps(kwargs)], what)
    return json.loads(out.strip().splitlines()[-1])


def run_nnunet(
    stage: str,
    python: str | Path,
    *,
    raw: Path,
    work: Path,
    device: str = "cpu",
    workers: int = 2,
    patch: tuple[int, ...] = (72, 80, 80),
    batch: int = 2,
    iterations: int = 20,
    warmup: int = 0,
    timeout: float | None = None,
    **_,
) -> dict:
    """nnU-Net's side of preprocess, loader, train or predict with the run.py keywords.

    (Augmentation has its own reference script, benchmarks/bench_augment_reference.py.)

    preprocess also writes the bench plans (patch/batch) that loader/train/predict use; each later
    stage preprocesses on its own when ``work`` has nothing yet.
    """
    patch_args = ["--patch", *patch, "--batch", batch]
    args: dict[str, list] = {
        "preprocess": ["--np", workers, *patch_args],
        "loader": [*patch_args, "--workers", workers, "--batches", iterations],
        "train": [*patch_args, "--workers", workers, "--iterations", iterations, "--warmup", warmup, "--device", device],
        "predict": ["--workers", workers, "--device", device],
    }
    script = {"preprocess": "plan_preprocess.py"}.get(stage, f"{stage}.py")
    return run_reference_script(python, script, raw, work, *args[stage], timeout=timeout)


def make_nnunet_raw(dataset: Path, raw_root: Path, dataset_id: int = 901, name: str = "VoxsegDemo") -> Path:
    """Expose one of our raw datasets as ``raw_root/DatasetNNN_Name`` for nnU-Net.

    Our raw format IS nnU-Net's, so symlinks suffice; nothing is copied or modified.
    """
    dataset = Path(dataset).resolve()
    target = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    target.mkdir(parents=True, exist_ok=True)
    for entry in ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        src, dst = dataset / entry, target / entry
        if src.exists() and not dst.exists():
            dst.symlink_to(src, target_is_directory=src.is_dir())
    return target


def header(device: str, python: Path | None = None) -> dict[str, str]:
    """Machine, versions and date printed above every table."""
    import torch

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "voxseg": _version("voxseg"),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if python is not None:
        out = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.metadata as m, torch;print(m.version('nnunetv2'), f'(torch {torch.__version__})')",
            ],
            capture_output=True,
            text=True,
        )
        info["nnunetv2"] = out.stdout.strip() or "unavailable"
    return info


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def median_over(fn: Callable[[], dict], repeats: int) -> dict:
    """Call ``fn`` ``repeats`` times; numbers become their median, other values the last one's."""
    runs = [fn() for _ in range(max(1, repeats))]
    out = dict(runs[-1])
    for key, value in out.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
            out[key] = statistics.median(vals)
    return out


@dataclass
class Row:
    stage: str
    metric: str
    ours: float | str | None
    theirs: float | str | None


def _cell(v: float | str | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def format_table(rows: list[Row], info: dict[str, str]) -> str:
    """Markdown table: stage, metric, ours, theirs, ours/theirs and which side is better."""
    lines = [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "| stage | metric | ours | nnU-Net | ours/nnU-Net | better |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio, better = "", ""
        if isinstance(r.ours, (int, float)) and isinstance(r.theirs, (int, float)) and r.theirs:
            ratio = f"{r.ours / r.theirs:.2f}"
            up = r.metric in HIGHER_IS_BETTER
            if r.ours != r.theirs:
                better = "ours" if (r.ours > r.theirs) == up else "nnU-Net"
        lines.append(f"| {r.stage} | {r.metric} | {_cell(r.ours)} | {_cell(r.theirs)} | {ratio} | {better} |")
    return "\n".join(lines)


def score_predictions(pred_dir: Path, raw: Path) -> dict:
    """Foreground-mean Dice and HD95 (mm) of ``pred_dir`` against ``raw/labelsTs``.

    Both sides are scored by voxseg's evaluator (``voxseg evaluate``, tested against hand-computed
    values), so the comparison does not depend on two evaluators agreeing; nnU-Net's conventions:
    a class absent from prediction and reference is NaN and left out of the means. Also returns
    ``case_dice``, each held-out case's mean foreground Dice, for the spread.
    """
    from voxseg.evaluation.evaluate import evaluate_folders
    from voxseg.evaluation.metrics import nanmean

    summary = evaluate_folders(
        pred_dir, Path(raw) / "labelsTs", Path(raw) / "dataset.json", metrics=("dice", "hd95"), progress=False
    )
    fg = summary["foreground_mean"]
    case_dice = [nanmean([m["Dice"] for m in case["metrics"].values()]) for case in summary["metric_per_case"]]
    return {"dice": fg["Dice"], "hd95": fg["HD95"], "case_dice": case_dice}
