"""One stage of the GPU check, run in its own process by check.py; writes its result as JSON.

    python benchmarks/gpu/stages.py STAGE --profile run|dry --work DIR --result FILE [--refenv DIR]

Each stage reuses the benchmark suite's functions (bench_train, bench_augment, bench_predict,
calibrate_memory, common, the reference scripts) at the profile's sizes (profiles.py) and returns
a flat-ish dict of numbers. Stages share WORK: ``raw/`` (data), ``ours/`` (voxseg's plan, store and
model), ``nnunet/`` (nnU-Net's), ``refenv/`` (the reference environment on a GPU host). A stage
whose input is missing either rebuilds it (our store, a fallback model for predict) or says it is
skipped; it never stops the stages after it. Result: ``{"status": "ok" | "failed: ..." |
"skipped: ...", "metrics": {...}, "notes": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmarks/ is not a package
import common  # noqa: E402
from profiles import COMPILE_OFF, COMPILE_ON, PROFILES, KitProfile  # noqa: E402

DATASET = "Dataset901_VoxsegDemo"
CONFIG = "3d_fullres"


class Skip(Exception):
    """The stage cannot run here (missing input or hardware); the reason is its status."""


class Failed(Exception):
    """The stage ran but a check failed; the numbers it measured are kept."""

    def __init__(self, message: str, metrics: dict):
        super().__init__(message)
        self.metrics = metrics


@dataclass
class Ctx:
    profile: KitProfile
    work: Path
    refenv: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.profile.device

    @property
    def raw(self) -> Path:
        return self.work / "raw" / DATASET

    @property
    def ours(self) -> Path:
        return self.work / "ours"

    @property
    def nnunet(self) -> Path:
        return self.work / "nnunet"

    def need_data(self) -> Path:
        if not (self.raw / "dataset.json").is_file() or not any((self.raw / "imagesTs").glob("*")):
            raise Skip("no data (the data stage did not finish)")
        return self.raw

    def reference_python(self) -> Path:
        python = common.reference_python(self.refenv) if self.refenv else None
        if python is None:
            raise Skip("reference env missing")
        return python


# -- ours ------------------------------------------------------------------------------------------
def stage_env(ctx: Ctx) -> dict:
    """Versions, the GPU, and every package voxseg imports; fails naming each missing piece."""
    import importlib
    import platform

    import torch

    out: dict = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            bf16=torch.cuda.is_bf16_supported(),
            cudnn=torch.backends.cudnn.version(),
            nccl=_nccl_version(),
        )
    problems = []
    for name in (
        "voxseg",
        "numpy",
        "scipy",
        "SimpleITK",
        "nibabel",
        "cc3d",
        "yaml",
        "matplotlib",
        "tqdm",
        "PIL",
        "tifffile",
        "triton",
    ):
        try:
            module = importlib.import_module(name)
            out[f"pkg_{name}"] = str(getattr(module, "__version__", "?"))
        except Exception as e:  # report every missing package, not only the first
            out[f"pkg_{name}"] = f"missing ({type(e).__name__})"
            if name != "triton" or ctx.device == "cuda":  # triton: torch.compile on a GPU
                problems.append(f"cannot import {name}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        out["nvidia_smi"] = smi.stdout.strip() if smi.returncode == 0 else f"failed: {smi.stderr.strip()[:200]}"
    try:
        from voxseg.device import autocast_dtype, resolve_device

        out["voxseg_autocast"] = str(autocast_dtype("auto", resolve_device(ctx.device)))
    except Exception as e:  # no device: every later stage on it fails too, this one says why
        problems.append(one_line(e))
    if problems:
        raise Failed("; ".join(problems), out)
    return out


def _nccl_version() -> str:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception as e:  # a build without NCCL: the ddp stage will say more
        return f"unavailable ({type(e).__name__})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _write_ct_case(raw: Path, index: int, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    import numpy as np

    from voxseg.data.demo import make_case
    from voxseg.data.io import Geometry, write_image

    rng = np.random.default_rng([18, index])
    image, label = make_case(rng, shape, spacing)
    geometry = Geometry(tuple(spacing), (0.0,) * len(shape), tuple(np.eye(len(shape)).ravel().tolist()))
    write_image(raw / "imagesTs" / f"ct_{index:03d}_0000.nii.gz", image, geometry)
    write_image(raw / "labelsTs" / f"ct_{index:03d}.nii.gz", label, geometry)


def stage_data(ctx: Ctx) -> dict:
    """The demo training cases, plus two CT-sized held-out volumes for predict (imagesTs)."""
    from voxseg.data.demo import make_demo_dataset

    p = ctx.profile
    start = time.perf_counter()
    make_demo_dataset(ctx.raw, cases=p.cases, seed=0, size_range=p.size_range)
    train_s = time.perf_counter() - start
    for sub in ("imagesTs", "labelsTs"):
        (ctx.raw / sub).mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: _write_ct_case(ctx.raw, i, p.ct_shape, p.ct_spacing), range(2)))
    return {
        "train_cases": p.cases,
        "train_size_range": list(p.size_range),
        "ct_cases": 2,
        "ct_shape": "x".join(map(str, p.ct_shape)),
        "ct_spacing": list(p.ct_spacing),
        "train_data_s": train_s,
        "ct_data_s": time.perf_counter() - start - train_s,
    }


def ensure_store(ctx: Ctx) -> float:
    """Our plan (patch and batch forced, bench_train.forced_plan) and store, made once; seconds spent."""
    import bench_train

    from voxseg.preprocessing.preprocess import preprocess_dataset
    from voxseg.preprocessing.store import Store

    raw, p = ctx.need_data(), ctx.profile
    if (ctx.ours / "plans.json").is_file() and Store(ctx.ours / "store" / CONFIG).case_ids():
        return 0.0
    start = time.perf_counter()
    bench_train.forced_plan(raw, ctx.ours, p.patch, p.batch, p.preprocess_workers)
    preprocess_dataset(ctx.ours, [CONFIG], workers=p.preprocess_workers, progress=False)
    return time.perf_counter() - start


def _train_keywords(ctx: Ctx) -> dict:
    p = ctx.profile
    return {"raw": ctx.raw, "work": ctx.ours, "device": ctx.device, "workers": p.workers, "patch": p.patch, "batch": p.batch}


def _last_loss(model_dir: Path) -> float | None:
    from voxseg.runlog import read_log

    log = read_log(Path(model_dir) / "log.jsonl")
    return log[-1].get("train/loss") if log else None


def stage_train(ctx: Ctx) -> dict:
    """A few hundred steps at a realistic patch with the profile's GPU paths (bf16, compile, device
    augmentation): end-to-end ms/it, data-wait share, peak GPU memory vs the plan's prediction.
    If the compiled run fails, an eager run still measures the rest (and the stage fails)."""
    import bench_train
    import yaml

    p = ctx.profile
    metrics: dict = {"preprocess_s": ensure_store(ctx)}
    kw = dict(_train_keywords(ctx), iterations=p.iterations, warmup=p.warmup)
    failure = None
    try:
        result = bench_train.run_ours(**kw, overrides=p.train_overrides)
    except Exception as e:
        if COMPILE_ON not in p.train_overrides:
            raise
        traceback.print_exc()
        failure = f"compiled training failed ({one_line(e)}); the numbers are from an eager run"
        eager = tuple(o for o in p.train_overrides if o != COMPILE_ON) + (COMPILE_OFF,)
        result = bench_train.run_ours(**kw, overrides=eager)
    model = Path(result["model_dir"])
    steps = json.loads((model / "bench_stats.json").read_text())["steps"]
    settings = yaml.safe_load((model / "settings.yaml").read_text())
    plan = json.loads((ctx.ours / "plans.json").read_text())["configurations"][CONFIG]
    predicted = plan.get("memory", {}).get("estimate_bytes")
    metrics.update({k: result.get(k) for k in ("ms_per_it", "data_wait_share", "peak_gpu_mb", "peak_rss_mb")})
    metrics.update(
        step_ms=result["ms_per_it"] * (1 - result["data_wait_share"]),
        warmup_s=steps[p.warmup - 1][1] - steps[0][0] if p.warmup else None,
        predicted_gpu_mb=predicted / 2**20 if predicted else None,
        loss=_last_loss(model),
        plan=result.get("plan"),
        precision=settings["training"]["precision"],
        compile=settings["training"]["compile"],
        augmentation_where=settings["augmentation"]["where"],
        iterations=p.iterations,
        warmup=p.warmup,
        workers=p.workers,
    )
    if metrics["peak_gpu_mb"] and metrics["predicted_gpu_mb"]:
        metrics["peak_over_predicted"] = metrics["peak_gpu_mb"] / metrics["predicted_gpu_mb"]
    if failure:
        raise Failed(failure, metrics)
    if metrics["loss"] is None or not math.isfinite(metrics["loss"]):
        raise Failed(f"training loss is {metrics['loss']}", metrics)
    return metrics


def stage_augment(ctx: Ctx) -> dict:
    """ms per batch of the default augmentation on the device (batch 2, one channel)."""
    import bench_augment
    import torch

    from voxseg.augment.config import AugmentationSettings

    p, device = ctx.profile, torch.device(ctx.device)
    return {
        f"ms_per_batch_{'x'.join(map(str, patch))}": bench_augment.time_augmenter(
            AugmentationSettings(), tuple(patch), device, p.augment_batches
        )
        for patch in p.augment_patches
    }


def stage_memory(ctx: Ctx) -> dict:
    """The planner's memory model: plan at each budget, train, predicted vs measured peak."""
    import calibrate_memory
    import torch

    p = ctx.profile
    spacing, median = p.memory_problem
    rows = calibrate_memory.budget_rows(
        list(p.memory_budgets_gb), torch.device(ctx.device), spacing=spacing, median_shape=median, steps=p.memory_steps
    )
    out: dict = {"problem": f"median {'x'.join(map(str, median))} at {list(spacing)} mm, 3 classes", "rows": rows}
    if all(r["measured"] is not None for r in rows) and len(rows) >= 2:
        out["refit_activation_scale"], out["refit_constant_bytes"] = calibrate_memory.refit(rows)
    else:
        ctx.notes.append("no allocator peak on a CPU: predicted only")
    return out


def stage_predict(ctx: Ctx) -> dict:
    """`voxseg predict` with TTA on the two CT-sized volumes: whole command and per stage
    (benchmarks/gpu/timed_predict.py); outputs checked against the inputs' grids."""
    import bench_predict
    import bench_train
    import numpy as np

    from voxseg.data.io import read_image

    raw = ctx.need_data()
    model = bench_train.model_dir(ctx.ours)
    source = "the train stage's"
    if not (model / "checkpoint_final.pt").is_file():
        ensure_store(ctx)
        bench_train.run_ours(**_train_keywords(ctx), iterations=2, warmup=0, overrides=(COMPILE_OFF,))
        source = "fallback: 2 eager steps (the train stage left none)"
    out = ctx.ours / "pred_ct"
    args = ["predict", "-m", str(model), "-i", str(raw / "imagesTs"), "-o", str(out), "--device", ctx.device]
    start = time.perf_counter()
    printed = common.run_child([sys.executable, str(HERE / "timed_predict.py"), *args], "voxseg predict (timed)")
    wall = time.perf_counter() - start
    stats = json.loads(printed.strip().splitlines()[-1])
    cases = bench_predict.held_out_cases(raw)
    metrics = {
        "whole_command_s": wall,
        "cases": cases,
        "s_per_case": wall / cases,
        "tta": True,
        "model": source,
        "stage_s": stats["stage_s"],
        "peak_gpu_mb": stats["peak_gpu_mb"],
        "peak_rss_mb": stats["peak_rss_mb"],
    }
    if stats["not_instrumented"]:
        ctx.notes.append(f"not timed (renamed?): {', '.join(stats['not_instrumented'])}")
    mismatched = []
    for image in sorted((raw / "imagesTs").glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        pred, geo = read_image(out / f"{case}.nii.gz")
        ref, ref_geo = read_image(image)
        if pred.shape != ref.shape or not (np.allclose(geo.spacing, ref_geo.spacing) and np.allclose(geo.origin, ref_geo.origin)):
            mismatched.append(case)
    if mismatched:
        raise Failed(f"predictions not on the input grid: {', '.join(mismatched)}", metrics)
    return metrics


def stage_ddp(ctx: Ctx) -> dict:
    """`voxseg train` under torchrun: 2 ranks (gloo on a CPU, NCCL on >= 2 GPUs); 1 GPU: one NCCL rank."""
    import torch

    from voxseg.runlog import read_log

    p = ctx.profile
    ensure_store(ctx)
    gpus = torch.cuda.device_count() if ctx.device == "cuda" else 0
    ranks = 2 if ctx.device == "cpu" or gpus >= 2 else 1
    sets = [
        "training.epochs=1",
        f"training.iterations_per_epoch={p.ddp_iterations}",
        "training.val_iterations=0",
        "training.final_validation=false",
        f"sampling.workers={p.workers}",
        f"training.batch_size={p.batch}",
        COMPILE_OFF,
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "voxseg",
        "train",
        str(ctx.ours),
        CONFIG,
        "all",
        "--device",
        ctx.device,
        "--name",
        "ddp",
        *[a for s in sets for a in ("--set", s)],
    ]
    start = time.perf_counter()
    common.run_child(cmd, f"torchrun --nproc_per_node={ranks} voxseg train")
    wall = time.perf_counter() - start
    log = read_log(ctx.ours / "runs" / f"{CONFIG}__default__ddp" / "fold_all" / "log.jsonl")
    if ranks == 1:
        ctx.notes.append("one GPU: checks torchrun and the NCCL process group only; DDP's wrapper and all-reduce need >= 2 GPUs")
    metrics = {
        "ranks": ranks,
        "backend": "nccl" if ctx.device == "cuda" else "gloo",
        "wall_s": wall,
        "ms_per_it": 1000 * log[-1]["s_per_iteration"] if log else None,
        "loss": log[-1].get("train/loss") if log else None,
    }
    if not log or metrics["loss"] is None or not math.isfinite(metrics["loss"]):
        raise Failed(f"no finite training loss in the log ({metrics['loss']})", metrics)
    return metrics


# -- nnU-Net's side ----------------------------------------------------------------------------------
def stage_nnunet_env(ctx: Ctx) -> dict:
    """The reference env: after the install stage, made by setup_reference.sh --system-torch over
    the installed wheels (nnunetv2 is already in WORK/site); else the existing one. Its versions."""
    python = common.reference_python(ctx.refenv) if ctx.refenv else None
    if python is None and ctx.refenv is not None and (ctx.work / "site").is_dir():
        # --system-torch wraps the `python3` on PATH: make that this interpreter (the one with torch)
        bindir = Path(sys.executable).parent
        if not (bindir / "python3").exists():
            raise RuntimeError(
                f"{bindir / 'python3'} missing: setup_reference.sh --system-torch needs this "
                "interpreter as python3 (fix: run the kit with --python .../python3)"
            )
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
        subprocess.run(["bash", str(HERE.parent / "setup_reference.sh"), str(ctx.refenv), "--system-torch"], check=True, env=env)
    python = ctx.reference_python()
    code = (
        "import importlib.metadata as m, torch, nnunetv2;"
        "print(m.version('nnunetv2'), torch.__version__, torch.cuda.is_available())"
    )
    info = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"python": str(python), "nnunetv2": info[0], "torch": info[1], "cuda_available": info[2] == "True"}


def _nnunet_environment(ctx: Ctx) -> None:
    # nnU-Net reads this in every process it starts (trainer, predictor)
    os.environ["nnUNet_compile"] = "true" if ctx.profile.nnunet_compile else "false"  # noqa: SIM112 (nnU-Net's name)


def stage_nnunet_preprocess(ctx: Ctx) -> dict:
    raw, python = ctx.need_data(), ctx.reference_python()
    # its own plan (no forced patch: nnU-Net may not divide ours); bench_train forces our topology later
    return common.run_reference_script(python, "plan_preprocess.py", raw, ctx.nnunet, "--np", ctx.profile.preprocess_workers)


def stage_nnunet_train(ctx: Ctx) -> dict:
    import bench_train

    p = ctx.profile
    raw, python = ctx.need_data(), ctx.reference_python()
    _nnunet_environment(ctx)
    result = bench_train.run_reference(
        python,
        raw=raw,
        work=ctx.nnunet,
        device=ctx.device,
        workers=p.workers,
        patch=p.patch,
        batch=p.batch,
        iterations=p.nnunet_iterations,
        warmup=p.nnunet_warmup,
    )
    result.update(
        step_ms=result["ms_per_it"] * (1 - result["data_wait_share"]),
        compile=p.nnunet_compile,
        iterations=p.nnunet_iterations,
        warmup=p.nnunet_warmup,
        workers=p.workers,
    )
    return result


def stage_nnunet_predict(ctx: Ctx) -> dict:
    import bench_predict

    p = ctx.profile
    raw, python = ctx.need_data(), ctx.reference_python()
    if not (bench_predict.reference_model_dir(raw, ctx.nnunet) / "checkpoint_final.pth").is_file():
        raise Skip("no nnU-Net model (nnunet_train did not finish)")
    _nnunet_environment(ctx)
    result = common.run_reference_script(
        python, "predict.py", raw, ctx.nnunet, "--tta", "on", "--workers", p.predict_workers, "--device", ctx.device
    )
    cases = result["cases"]
    return {
        "whole_command_s": result["s_per_case_tta"] * cases,
        "cases": cases,
        "s_per_case": result["s_per_case_tta"],
        "tta": True,
        "peak_rss_mb": result.get("peak_rss_mb"),
        "workers": p.predict_workers,
    }


STAGE_FUNCTIONS = {
    "env": stage_env,
    "data": stage_data,
    "train": stage_train,
    "augment": stage_augment,
    "memory": stage_memory,
    "predict": stage_predict,
    "ddp": stage_ddp,
    "nnunet_env": stage_nnunet_env,
    "nnunet_preprocess": stage_nnunet_preprocess,
    "nnunet_train": stage_nnunet_train,
    "nnunet_predict": stage_nnunet_predict,
}


def one_line(e: BaseException) -> str:
    """An exception as one line (a child's failure names its cause on its first line: common.py)."""
    first = ([line.strip() for line in str(e).splitlines() if line.strip()] or [""])[0]
    return f"{type(e).__name__}: {first}"[:400]


def run_stage(name: str, ctx: Ctx) -> dict:
    metrics: dict = {}
    try:
        metrics = STAGE_FUNCTIONS[name](ctx)
        status = "ok"
    except Skip as e:
        status = f"skipped: {e}"
    except Failed as e:
        status, metrics = f"failed: {e}", e.metrics
    except Exception as e:  # the stage's own error is its result; the traceback goes to the log
        traceback.print_exc()
        status = f"failed: {one_line(e)}"
    return {"status": status, "metrics": metrics, "notes": ctx.notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=sorted(STAGE_FUNCTIONS))
    ap.add_argument("--profile", choices=sorted(PROFILES), required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--result", type=Path, required=True)
    ap.add_argument("--refenv", type=Path, default=None)
    a = ap.parse_args()
    result = run_stage(a.stage, Ctx(PROFILES[a.profile], a.work.resolve(), a.refenv))

    from voxseg.io_utils import atomic_write_json

    atomic_write_json(a.result, result)


if __name__ == "__main__":
    main()
