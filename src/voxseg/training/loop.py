"""The epoch loop, outside the trainer class: timing, validation, logging, checkpoints, early stopping.

Checkpoints hold the trainer's state (network, optimizer, scaler, schedule, loader stream, case
sampler, augmentation generator) and the global RNG states, so `--resume` continues exactly as the
uninterrupted run would have. ``checkpoint_latest.pt`` is written (atomically) at the end of every
epoch, so a run killed at any point resumes from its last finished epoch; ``--resume`` falls back to
``checkpoint_best.pt`` with a warning when the latest is missing or unreadable, as nnU-Net does.

The loop, not the trainer's hooks, feeds the case sampler (per-sample losses after each step, the
epoch's end after validation): an overridden hook cannot silently switch adaptive sampling off.
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxseg.errors import CheckpointError, SettingsError, VoxsegError
from voxseg.model.checkpoint import load_checkpoint, save_checkpoint
from voxseg.progress import Progress
from voxseg.runlog import append_log, read_log, save_progress, truncate_log
from voxseg.sampling.batch import Batch
from voxseg.training.checkpoint import rng_state, set_rng_state
from voxseg.training.tracking import start_tracking
from voxseg.training.trainer import StepResult, Trainer, ValidationResult

EMA_MOMENTUM = 0.9  # nnU-Net's pseudo-Dice EMA for picking the best checkpoint
RESUMABLE = ("checkpoint_latest.pt", "checkpoint_best.pt")


def _validate(trainer: Trainer, last_batch: Callable[[Batch], None] | None = None) -> dict[str, Any]:
    """Validation loss parts and pseudo-Dice, reduced over ranks; `last_batch` sees the last batch (tracking overlays)."""
    iters = trainer.settings.training.val_iterations
    if trainer.val_loader is None or iters == 0:
        return {}
    dist = trainer.ctx.dist
    trainer.network.eval()
    sums: dict[str, float] = defaultdict(float)
    counts = None
    for _ in range(max(1, iters // dist.world_size)):
        batch = next(trainer.val_loader)
        out = trainer.validation_step(batch)
        if not isinstance(out, ValidationResult):
            raise SettingsError(
                f"{type(trainer).__name__}.validation_step returned {type(out).__name__}",
                fix="return voxseg.training.trainer.ValidationResult(parts, tp_fp_fn)",
            )
        for k, v in out.parts.items():
            sums[k] += v
        counts = out.tp_fp_fn if counts is None else counts + out.tp_fp_fn
    if last_batch is not None:
        last_batch(batch)
    keys = sorted(sums)
    n = max(1, iters // dist.world_size) * dist.world_size
    totals = dist.all_reduce_sum(np.array([sums[k] for k in keys]))
    assert counts is not None  # the loop above runs at least once
    counts = dist.all_reduce_sum(counts)
    record: dict[str, float | None] = {f"val/{k}": float(v / n) for k, v in zip(keys, totals)}
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    dice = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-8), np.nan)
    names = trainer.ctx.plan.output_names if trainer.ctx.plan.is_region_based else trainer.ctx.class_names[1:]
    record.update({f"val/dice/{name}": (None if math.isnan(d) else float(d)) for name, d in zip(names, dice)})
    record["val/mean_dice"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
    return record


def _step(trainer: Trainer, batch) -> dict[str, float]:
    """One training step; feeds adaptive case sampling from the step's per-sample losses."""
    result = trainer.train_step(batch)
    if isinstance(result, dict):  # an override returning its parts only
        result = StepResult(result)
    if trainer.settings.sampling.adaptive:
        if result.sample_losses is None:
            raise SettingsError(
                f"sampling.adaptive needs per-sample losses, but {type(trainer).__name__}.train_step returned none",
                fix="return StepResult(parts, sample_losses=...) from train_step (as the default trainer does), or turn sampling.adaptive off",
            )
        trainer.case_sampler.update(list(batch.case_ids), result.sample_losses)
    return result.parts


def _resume_state(trainer: Trainer, run_dir: Path) -> dict[str, Any]:
    """Load checkpoint_latest.pt, or checkpoint_best.pt with a warning; say which."""
    problems = []
    for name in RESUMABLE:
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{name} missing")
            continue
        try:
            ckpt = load_checkpoint(path, map_location=trainer.device)
        except VoxsegError as e:
            problems.append(f"{name} unreadable ({e.message})")
            continue
        if name != RESUMABLE[0]:
            print(f"warning: {'; '.join(problems)}; resuming from {name} instead", file=sys.stderr)
        trainer.load_state_dict(ckpt["trainer"])
        set_rng_state(ckpt["rng"])
        if trainer.ctx.dist.is_main:
            print(f"resumed from {path} (epoch {ckpt['loop']['epoch']})")
        return ckpt["loop"]
    raise CheckpointError(f"nothing to resume: {'; '.join(problems)}", path=run_dir, fix="train without --resume first")


def fit(trainer: Trainer, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train to `training.epochs`; returns the last log record."""
    t = trainer.settings.training
    dist = trainer.ctx.dist
    main = dist.is_main
    log_path = run_dir / "log.jsonl"
    state: dict[str, Any] = {"epoch": 0, "ema": None, "best": -math.inf, "stale": 0}  # as _resume_state returns it
    if resume:
        state = _resume_state(trainer, run_dir)
        if main:
            truncate_log(log_path, state["epoch"])
    elif main and log_path.exists():
        log_path.unlink()
    record: dict[str, Any] = {}
    reduce = dist.all_reduce_sum if dist.world_size > 1 else None
    tracking = start_tracking(trainer, run_dir, start_step=state["epoch"])  # None when off, and off rank 0
    for epoch in range(state["epoch"], t.epochs):
        trainer.epoch = epoch
        trainer.network.train()
        start = time.perf_counter()
        wait = 0.0
        sums: dict[str, float] = defaultdict(float)
        lr = trainer.optimizer.param_groups[0]["lr"]
        with Progress(t.iterations_per_epoch, f"epoch {epoch}", unit="it", enabled=main) as bar:
            for _ in range(t.iterations_per_epoch):
                t0 = time.perf_counter()
                batch = next(trainer.loader)
                wait += time.perf_counter() - t0
                parts = _step(trainer, batch)
                del batch  # lets the loader recycle the batch's slot
                for k, v in parts.items():
                    sums[k] += v
                bar.set_postfix(f"loss={parts['loss']:.3f}")
                bar.update()
        trainer.lr_schedule.step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - start
        record = {"epoch": epoch, "lr": lr}
        keys = sorted(sums)  # every rank logs the same parts: averaged over ranks, as nnU-Net does
        totals = dist.all_reduce_sum(np.array([sums[k] for k in keys])) / dist.world_size
        record.update({f"train/{k}": float(v) / t.iterations_per_epoch for k, v in zip(keys, totals)})
        record.update(_validate(trainer, tracking.on_last_batch(epoch) if tracking else None))
        metric = trainer.selection_metric(record)
        if metric is not None:
            state["ema"] = metric if state["ema"] is None else EMA_MOMENTUM * state["ema"] + (1 - EMA_MOMENTUM) * metric
            record["val/ema_dice"] = state["ema"]
        record.update(
            epoch_time=time.perf_counter() - start,
            data_wait=wait,
            data_wait_share=wait / max(train_time, 1e-9),
            s_per_iteration=train_time / t.iterations_per_epoch,
        )
        trainer.case_sampler.end_epoch(reduce=reduce)
        trainer.on_epoch_end(epoch, record)
        improved = state["ema"] is not None and state["ema"] > state["best"]
        if improved:
            state["best"], state["stale"] = state["ema"], 0
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        if main:
            append_log(log_path, record)
            if tracking:
                tracking.log_epoch(epoch, record)
            save_progress(run_dir / "progress.png", read_log(log_path))
            trainer.loader.write_stats(run_dir / "sampling_stats.json")
            summary = ", ".join(
                f"{k}={v:.4f}" for k, v in record.items() if k in ("train/loss", "val/loss", "val/mean_dice") and v is not None
            )
            print(f"epoch {epoch}: {summary}, {record['epoch_time']:.1f} s (data wait {wait:.1f} s)", flush=True)
            payload = _payload(trainer, state)
            if improved:
                save_checkpoint(run_dir / "checkpoint_best.pt", payload)
            if t.checkpoint_every is not None and (epoch + 1) % t.checkpoint_every == 0:
                save_checkpoint(run_dir / f"checkpoint_epoch_{epoch + 1}.pt", payload)
            save_checkpoint(run_dir / "checkpoint_latest.pt", payload)
        if t.early_stopping_patience is not None and state["stale"] >= t.early_stopping_patience:
            if main:
                print(f"early stopping: no better EMA pseudo-Dice for {state['stale']} epochs")
            break
    if tracking:
        tracking.close()
    if main:
        save_checkpoint(run_dir / "checkpoint_final.pt", _payload(trainer, state))
        if not (run_dir / "checkpoint_best.pt").exists():
            save_checkpoint(run_dir / "checkpoint_best.pt", _payload(trainer, state))
    dist.barrier()
    return record


def _payload(trainer: Trainer, state: dict[str, Any]) -> dict[str, Any]:
    return {"trainer": trainer.state_dict(), "rng": rng_state(), "loop": dict(state), "meta": trainer.ctx_meta()}
