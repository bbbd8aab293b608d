"""Training speed: ms per iteration end to end, voxseg's trainer vs nnUNetv2_train, on ONE plan.

    python benchmarks/bench_train.py [--device cpu|cuda] [--quick] [--patch Z Y X] [--batch 2]
        [--workers 2] [--iterations N] [--warmup W] [--out DIR] [--refenv DIR]

Both sides train 3d_fullres, fold "all", on the same raw dataset with ``--workers`` loader
processes. Same plan: voxseg plans with the benchmark's patch and batch forced, and its network
topology (features, kernels, strides, convs per stage) is written into nnU-Net's
``nnUNetPlans.json`` before nnUNetv2_train runs (benchmarks/reference/train.py copies it to
``nnUNetBenchPlans`` with the same patch/batch). The result's "plan" says whether that changed
nnU-Net's own topology. Forcing ours onto theirs, not the reverse, because nnU-Net keeps the
network it planned for its own patch and rejects a patch its strides do not divide.

Timing, same definition on both sides: W untimed warm-up iterations (start-up, loader fill,
torch.compile on CUDA), then N timed iterations from the end of the last warm-up step to the end
of the last step; ``data_wait_share`` is the part of that window outside the training step
(waiting for the loader). Ours runs the default trainer with timestamps around ``train_step``
(:class:`BenchTrainer`), in a child interpreter so its peak RSS is its own (largest single
process, loader workers included, as for nnU-Net). Precision is each side's default (CPU: fp32
both; CUDA: ours bf16, nnU-Net fp16 autocast).

Standalone it builds its own demo dataset; --quick on CPU (6 cases, patch 32x64x64, 2+5
iterations) takes about 2 minutes for both sides on 2 cores, preprocessing included. Also imported by benchmarks/run.py and by
bench_predict.py (which reuses the model trained here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import common

from voxseg.training.trainer import Trainer

CONFIG = "3d_fullres"
RUN_NAME = "bench"
# A forced batch is the point of the benchmark, not a planning mistake: the planner's GPU budget
# check must not reject it (the plan's memory estimate is not used here).
FORCED_PLAN_BUDGET_GB = 1024.0
# nnU-Net's PlainConvUNet arch_kwargs <- our plan's network keys.
_ARCH_KEYS = {
    "features_per_stage": "features",
    "kernel_sizes": "kernel_sizes",
    "strides": "strides",
    "n_conv_per_stage": "n_conv_per_stage",
    "n_conv_per_stage_decoder": "n_conv_per_stage_decoder",
}


class Profile(NamedTuple):
    """Standalone sizes (run.py passes its own). A NamedTuple, not a dataclass: voxseg's
    ``load_trainer`` executes this file without registering it in sys.modules, which dataclasses
    need under postponed annotations."""

    cases: int
    test_cases: int
    size_range: tuple[int, int]
    patch: tuple[int, int, int]
    batch: int
    warmup: int
    iterations: int


PROFILES = {
    ("cpu", True): Profile(6, 1, (48, 96), (32, 64, 64), 2, 2, 5),
    ("cpu", False): Profile(20, 4, (48, 96), (72, 80, 80), 2, 3, 10),
    ("cuda", True): Profile(10, 2, (112, 208), (64, 160, 160), 2, 20, 50),
    ("cuda", False): Profile(20, 4, (112, 208), (64, 160, 160), 2, 50, 250),
}


class BenchTrainer(Trainer):
    """voxseg's default trainer unchanged, plus a timestamp pair around every training step.

    The loop times whole epochs only; per-step stamps let the warm-up iterations be cut off
    without a second epoch (which would also change the LR schedule). ``train_step`` returns
    Python floats, so on CUDA the device is synchronised when the second stamp is taken.
    """

    name = "bench"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.steps: list[tuple[float, float]] = []

    def train_step(self, batch):
        start = time.perf_counter()
        parts = super().train_step(batch)
        self.steps.append((start, time.perf_counter()))
        return parts

    def on_epoch_end(self, epoch, logs):
        super().on_epoch_end(epoch, logs)
        import torch

        from voxseg.io_utils import atomic_write_json

        gpu = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        atomic_write_json(self.ctx.run_dir / "bench_stats.json", {"steps": self.steps, "peak_gpu_bytes": gpu})


def timed_window(steps: list[tuple[float, float]], warmup: int, epoch_record: dict) -> tuple[float, float]:
    """(ms per iteration, data-wait share) of the steps after ``warmup``.

    Without warm-up the window starts at the first batch request, which only the loop saw: its
    epoch record (``s_per_iteration``, ``data_wait_share``) is then the measurement.
    """
    if warmup == 0:
        return 1000 * epoch_record["s_per_iteration"], epoch_record["data_wait_share"]
    timed = steps[warmup:]
    wall = timed[-1][1] - steps[warmup - 1][1]
    busy = sum(end - start for start, end in timed)
    return 1000 * wall / len(timed), 1 - busy / wall


def model_dir(work: Path) -> Path:
    """The fold folder our benchmark training writes (and bench_predict reuses)."""
    return Path(work) / "runs" / f"{CONFIG}__{BenchTrainer.name}__{RUN_NAME}" / "fold_all"


def forced_plan(raw: Path, work: Path, patch, batch: int, workers: int) -> dict:
    """voxseg's plan with the benchmark's patch and batch forced, saved in ``work``; its key facts."""
    from voxseg.planning.planner import PlannerOptions, plan_and_save

    options = PlannerOptions(gpu_memory_gb=FORCED_PLAN_BUDGET_GB, configs=(CONFIG,), patch_size=tuple(patch), batch_size=batch)
    plan = plan_and_save(raw, work, options, workers=workers, progress=False)
    cfg = plan.configuration(CONFIG)
    return {
        "spacing": cfg.spacing,
        "transpose": plan.transpose_forward,
        "network": cfg.network,
        "patch": cfg.patch_size,
        "batch": cfg.batch_size,
    }


def train_in_this_process(
    work: str, device: str, workers: int, iterations: int, warmup: int, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """One epoch of warmup + iterations steps with BenchTrainer; what the child prints.

    ``overrides``: extra ``--set`` settings (e.g. ``training.compile=off``), applied last.
    """
    import resource

    from voxseg.runlog import read_log
    from voxseg.training.run import train
    from voxseg.training.settings import load_settings

    settings = load_settings(
        None,
        [
            "training.epochs=1",
            f"training.iterations_per_epoch={warmup + iterations}",
            "training.val_iterations=0",
            "training.final_validation=false",
            f"sampling.workers={workers}",
            *overrides,
        ],
    )
    # A file spec (not the class) so the checkpoint names a trainer a later `voxseg predict` can load.
    fold = train(work, CONFIG, "all", settings, trainer=f"{Path(__file__).resolve()}:BenchTrainer", device=device, name=RUN_NAME)
    stats = json.loads((fold / "bench_stats.json").read_text())
    ms, wait = timed_window(stats["steps"], warmup, read_log(fold / "log.jsonl")[-1])
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    gpu = stats["peak_gpu_bytes"]
    return {
        "ms_per_it": ms,
        "data_wait_share": wait,
        "peak_rss_mb": rss / 1024,
        "peak_gpu_mb": gpu / 2**20 if gpu is not None else None,
        "model_dir": str(fold),
    }


def run_ours(
    *,
    raw: Path,
    work: Path,
    device: str = "cpu",
    workers: int = 2,
    patch=(72, 80, 80),
    batch: int = 2,
    iterations: int = 20,
    warmup: int = 2,
    overrides: tuple[str, ...] = (),
    **_,
) -> dict:
    from voxseg.preprocessing.preprocess import preprocess_dataset

    work = Path(work)
    # Re-planning over the preprocess stage's plan keeps its store: patch and batch do not change
    # the stored arrays, so preprocess_dataset only fills in what is missing.
    plan = forced_plan(Path(raw), work, patch, batch, workers)
    preprocess_dataset(work, [CONFIG], workers=workers, progress=False)
    args = {
        "work": str(work),
        "device": device,
        "workers": workers,
        "iterations": iterations,
        "warmup": warmup,
        "overrides": list(overrides),
    }
    result = common.call_in_child("bench_train", "train_in_this_process", args, "voxseg benchmark training")
    net = plan["network"]
    result["plan"] = (
        f"voxseg's: patch {'x'.join(map(str, plan['patch']))}, batch {plan['batch']}, "
        f"{len(net['features'])} stages {net['features']}"
    )
    return result


def force_topology(raw: Path, work: Path, ours: dict) -> str:
    """Write our plan's topology into nnU-Net's nnUNetPlans.json; say what that changed."""
    plans_path = Path(work).resolve() / "nnUNet_preprocessed" / Path(raw).name / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    cfg = plans["configurations"][CONFIG]
    net, theirs = ours["network"], cfg["architecture"]["network_class_name"]
    if net.get("architecture", "plain_unet") != "plain_unet" or not theirs.endswith("PlainConvUNet"):
        raise RuntimeError(f"cannot force {net.get('architecture')} onto {theirs}: only plain U-Nets map")
    if [round(s, 4) for s in cfg["spacing"]] != [round(s, 4) for s in ours["spacing"]] or list(
        plans["transpose_forward"]
    ) != list(ours["transpose"]):
        raise RuntimeError(
            f"spacing/transpose differ (nnU-Net {cfg['spacing']} {plans['transpose_forward']}, "
            f"voxseg {ours['spacing']} {ours['transpose']}): the same topology would mean a different network"
        )
    arch = cfg["architecture"]["arch_kwargs"]
    wanted = {name: [list(v) if isinstance(v, (list, tuple)) else v for v in net[key]] for name, key in _ARCH_KEYS.items()}
    changed = sorted(k for k, v in wanted.items() if arch.get(k) != v)
    arch.update(wanted, n_stages=len(net["features"]))
    plans_path.write_text(json.dumps(plans, indent=1))
    return "voxseg's topology forced (" + (f"changed {', '.join(changed)})" if changed else "identical to nnU-Net's own)")


def run_reference(
    python,
    *,
    raw: Path,
    work: Path,
    device: str = "cpu",
    workers: int = 2,
    patch=(72, 80, 80),
    batch: int = 2,
    iterations: int = 20,
    warmup: int = 2,
    timeout: float | None = None,
    **_,
) -> dict:
    work = Path(work)
    kw = dict(raw=Path(raw), work=work, device=device, workers=workers, patch=tuple(patch), batch=batch)
    if not (work / "nnUNet_preprocessed" / Path(raw).name / "nnUNetPlans.json").is_file():
        # Preprocess in its own command so its processes do not count in the training's peak RSS.
        common.run_nnunet("preprocess", python, **kw, timeout=timeout)
    # Our plan only (no store) in a side folder: the topology to force, independent of our work.
    note = force_topology(Path(raw), work, forced_plan(Path(raw), work / "voxseg_plan", patch, batch, workers))
    result = common.run_nnunet("train", python, **kw, iterations=iterations, warmup=warmup, timeout=timeout)
    return {
        **{k: result.get(k) for k in common.METRICS["train"]},
        "model_dir": result["model_dir"],
        "plan": f"{note}: patch {'x'.join(map(str, patch))}, batch {batch}",
    }


def standalone_dataset(device: str, quick: bool, out: Path) -> tuple[Path, Profile, Path]:
    """(nnU-Net raw folder, profile, folder for both sides' work) of a standalone run.

    Kept per profile under ``out`` so bench_predict.py run afterwards with the same ``--out``
    reuses the models trained here. The demo data is deterministic, so it is made only once.
    """
    from voxseg.data.demo import make_demo_dataset

    prof = PROFILES[(device, quick)]
    root = Path(out) / f"{device}_{'quick' if quick else 'full'}"
    demo = root / "demo"
    if not (demo / "dataset.json").is_file():
        make_demo_dataset(demo, cases=prof.cases, test_cases=prof.test_cases, seed=0, size_range=prof.size_range)
    return common.make_nnunet_raw(demo, root / "raw"), prof, root


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def standalone_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="small data and patch, few iterations (CPU: ~2 min for both sides)")
    ap.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="loader worker processes, each side")
    ap.add_argument("--iterations", type=int, default=None, help="timed training iterations")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations before them")
    ap.add_argument("--out", type=Path, default=common.BENCH_DIR / "out" / "standalone")
    ap.add_argument("--refenv", type=Path, default=common.DEFAULT_REFENV)
    return ap.parse_args()


def standalone_keywords(a: argparse.Namespace) -> tuple[dict, Path, Profile]:
    """run.py's keywords for a standalone run (profile defaults, command-line overrides)."""
    raw, prof, root = standalone_dataset(a.device, a.quick, a.out)
    kw = {
        "raw": raw,
        "device": a.device,
        "workers": a.workers,
        "patch": tuple(a.patch or prof.patch),
        "batch": a.batch or prof.batch,
        "iterations": a.iterations or prof.iterations,
        "warmup": prof.warmup if a.warmup is None else a.warmup,
        "quick": a.quick,
    }
    return kw, root, prof


def main() -> None:
    a = standalone_args(__doc__.splitlines()[0])
    kw, root, prof = standalone_keywords(a)
    python = common.reference_python(a.refenv)
    load_before = load_average()
    ours = run_ours(**kw, work=root / "ours")
    theirs = run_reference(python, **kw, work=root / "nnunet") if python else {}
    info = common.header(a.device, python)
    info["run"] = (
        f"{prof.cases} cases {prof.size_range}, patch {list(kw['patch'])} batch {kw['batch']}, "
        f"{kw['workers']} loader workers each, {kw['warmup']} warm-up + {kw['iterations']} timed iterations"
    )
    info["load average (1/5/15 min)"] = f"{load_before} before, {load_average()} after"
    rows = [
        common.Row("train", m, ours.get(m), theirs.get(m) if theirs else "n/a (no refenv)")
        for m in common.METRICS["train"]
        if ours.get(m) is not None or (theirs or {}).get(m) is not None
    ]
    print(common.format_table(rows, info))
    print(f"\nplan, ours: {ours['plan']}\nplan, nnU-Net: {theirs.get('plan', 'n/a')}")


if __name__ == "__main__":
    main()
