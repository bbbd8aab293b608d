"""nnU-Net trainer for benchmarks: short, configurable runs that record their own timings.

Installed by ``benchmarks/setup_reference.sh`` at the TOP LEVEL of nnU-Net's
``nnunetv2/training/nnUNetTrainer/`` package: nnU-Net finds a trainer by importing its trainer
modules in alphabetical order, and a sub-package that imports torchvision (absent in the
reference venv, which keeps a CPU torch) would fail before a nested copy were reached.

nnU-Net constructs trainers by name from its CLI, so the only way to hand it run lengths is the
environment (read once, in ``__init__``):
  VOXSEG_BENCH_ITERS        timed training iterations (default 20), per epoch
  VOXSEG_BENCH_WARMUP_ITERS untimed iterations before them, as a first epoch of their own
                            (default 0: one epoch only)
  VOXSEG_BENCH_EPOCHS       epochs of VOXSEG_BENCH_ITERS iterations each (accuracy runs: nnU-Net's
                            poly learning-rate schedule over that many epochs); when set, no
                            warm-up epoch
  VOXSEG_BENCH_VAL_ITERS  validation iterations per epoch (default 2)
  VOXSEG_BENCH_FINAL_VAL  "1" runs nnU-Net's sliding-window validation at the end (default off)

Each epoch's wall time from the first batch request to the last optimiser step, and the part of
it spent inside ``train_step`` (the rest is waiting for the data loader), are written to
``<output_folder>/bench_stats.json`` so the caller needs no log parsing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class nnUNetTrainerBench(nnUNetTrainer):
    def __init__(
        self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._timed_iters = _env_int("VOXSEG_BENCH_ITERS", 20)
        self._warmup_iters = _env_int("VOXSEG_BENCH_WARMUP_ITERS", 0)
        epochs = _env_int("VOXSEG_BENCH_EPOCHS", 0)
        if epochs > 0:
            self._warmup_iters = 0
        self.num_epochs = epochs if epochs > 0 else 2 if self._warmup_iters > 0 else 1
        self.num_iterations_per_epoch = self._timed_iters
        self.num_val_iterations_per_epoch = _env_int("VOXSEG_BENCH_VAL_ITERS", 2)
        self._final_validation = os.environ.get("VOXSEG_BENCH_FINAL_VAL", "0") == "1"
        self._bench_epochs: list[dict] = []
        self._step_seconds = 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self):
        # run_training reads num_iterations_per_epoch after this hook, so epochs may differ in length
        warm = self._warmup_iters > 0 and self.current_epoch == 0
        self.num_iterations_per_epoch = self._warmup_iters if warm else self._timed_iters
        super().on_train_epoch_start()
        self._step_seconds = 0.0
        self._epoch_start = time.perf_counter()

    def train_step(self, batch: dict) -> dict:
        # train_step returns a CPU numpy loss, so the device is synchronised when it returns.
        t0 = time.perf_counter()
        out = super().train_step(batch)
        self._step_seconds += time.perf_counter() - t0
        return out

    def on_train_epoch_end(self, train_outputs):
        wall = time.perf_counter() - self._epoch_start
        self._bench_epochs.append(
            {
                "epoch": self.current_epoch,
                "iterations": self.num_iterations_per_epoch,
                "wall_s": wall,
                "step_s": self._step_seconds,
            }
        )
        super().on_train_epoch_end(train_outputs)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            stats = {
                "epochs": self._bench_epochs,
                "peak_gpu_bytes": (torch.cuda.max_memory_allocated() if self.device.type == "cuda" else None),
            }
            Path(self.output_folder, "bench_stats.json").write_text(json.dumps(stats, indent=1))

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self._final_validation:
            super().perform_actual_validation(save_probabilities)
