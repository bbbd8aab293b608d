"""The epoch loop, outside the trainer class: timing, validation, logging, checkpoints, early stopping.

Checkpoints hold the trainer's state (network, optimizer, scaler, schedule, loader stream, case
sampler, augmentation generator) and the global RNG states, so `--resume` continues exactly as the
uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from voxseg.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from voxseg.training.runlog import append_log, plot_progress, read_log, truncate_log
from voxseg.training.trainer import Trainer

EMA_MOMENTUM = 0.9  # nnU-Net's pseudo-Dice EMA for picking the best checkpoint


def _validate(trainer: Trainer) -> dict[str, Any]:
    iters = trainer.settings.training.val_iterations
    if trainer.val_loader is None or iters == 0:
        return {}
    dist = trainer.ctx.dist
    trainer.network.eval()
    sums: dict[str, float] = defaultdict(float)
    counts = None
    for _ in range(max(1, iters // dist.world_size)):
        out = trainer.validation_step(next(trainer.val_loader))
        for k, v in out["parts"].items():
            sums[k] += v
        counts = out["tp_fp_fn"] if counts is None else counts + out["tp_fp_fn"]
    keys = sorted(sums)
    n = max(1, iters // dist.world_size) * dist.world_size
    totals = dist.all_reduce_sum(np.array([sums[k] for k in keys]))
    counts = dist.all_reduce_sum(counts)
    record = {f"val/{k}": float(v / n) for k, v in zip(keys, totals)}
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    dice = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-8), np.nan)
    names = trainer.ctx.class_names[1:]
    record.update({f"val/dice/{name}": (None if math.isnan(d) else float(d)) for name, d in zip(names, dice)})
    record["val/mean_dice"] = float(np.nanmean(dice)) if np.isfinite(dice).any() else 0.0
    return record


def fit(trainer: Trainer, run_dir: Path, *, resume: bool = False) -> dict[str, Any]:
    """Train to `training.epochs`; returns the last log record."""
    t = trainer.settings.training
    dist = trainer.ctx.dist
    main = dist.is_main
    log_path = run_dir / "log.jsonl"
    state = {"epoch": 0, "ema": None, "best": -math.inf, "stale": 0}
    if resume:
        ckpt = load_checkpoint(run_dir / "checkpoint_latest.pt", map_location=trainer.device)
        trainer.load_state_dict(ckpt["trainer"])
        set_rng_state(ckpt["rng"])
        state = ckpt["loop"]
        if main:
            truncate_log(log_path, state["epoch"])
            print(f"resumed from epoch {state['epoch']}")
    elif main and log_path.exists():
        log_path.unlink()
    record: dict[str, Any] = {}
    for epoch in range(state["epoch"], t.epochs):
        trainer.network.train()
        start = time.perf_counter()
        wait = 0.0
        sums: dict[str, float] = defaultdict(float)
        lr = trainer.optimizer.param_groups[0]["lr"]
        bar = tqdm(range(t.iterations_per_epoch), desc=f"epoch {epoch}", unit="it", disable=not main, leave=False)
        for _ in bar:
            t0 = time.perf_counter()
            batch = next(trainer.loader)
            wait += time.perf_counter() - t0
            parts = trainer.train_step(batch)
            del batch  # lets the loader recycle the batch's slot
            for k, v in parts.items():
                sums[k] += v
            bar.set_postfix(loss=f"{parts['loss']:.3f}")
        trainer.lr_schedule.step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - start
        record = {"epoch": epoch, "lr": lr}
        record.update({f"train/{k}": v / t.iterations_per_epoch for k, v in sums.items()})
        record.update(_validate(trainer))
        if "val/mean_dice" in record:
            d = record["val/mean_dice"]
            state["ema"] = d if state["ema"] is None else EMA_MOMENTUM * state["ema"] + (1 - EMA_MOMENTUM) * d
            record["val/ema_dice"] = state["ema"]
        record.update(
            epoch_time=time.perf_counter() - start,
            data_wait=wait,
            data_wait_share=wait / max(train_time, 1e-9),
            s_per_iteration=train_time / t.iterations_per_epoch,
        )
        trainer.on_epoch_end(epoch, record)
        improved = state["ema"] is not None and state["ema"] > state["best"]
        if improved:
            state["best"], state["stale"] = state["ema"], 0
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        if main:
            append_log(log_path, record)
            plot_progress(run_dir / "progress.png", read_log(log_path))
            trainer.loader.write_stats(run_dir / "sampling_stats.json")
            summary = ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k in ("train/loss", "val/loss", "val/mean_dice") and v is not None)
            print(f"epoch {epoch}: {summary}, {record['epoch_time']:.1f} s (data wait {wait:.1f} s)", flush=True)
            payload = _payload(trainer, state)
            if (epoch + 1) % t.checkpoint_every == 0 or epoch + 1 == t.epochs:
                save_checkpoint(run_dir / "checkpoint_latest.pt", payload)
            if improved:
                save_checkpoint(run_dir / "checkpoint_best.pt", payload)
        if t.early_stopping_patience is not None and state["stale"] >= t.early_stopping_patience:
            if main:
                print(f"early stopping: no better EMA pseudo-Dice for {state['stale']} epochs")
            break
    if main:
        save_checkpoint(run_dir / "checkpoint_final.pt", _payload(trainer, state))
        if not (run_dir / "checkpoint_best.pt").exists():
            save_checkpoint(run_dir / "checkpoint_best.pt", _payload(trainer, state))
    dist.barrier()
    return record


def _payload(trainer: Trainer, state: dict[str, Any]) -> dict[str, Any]:
    return {"trainer": trainer.state_dict(), "rng": rng_state(), "loop": dict(state), "meta": trainer.ctx_meta()}
