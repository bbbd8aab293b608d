"""nnU-Net loader throughput: patches/s of its training data pipeline on its preprocessed data.

    python loader.py RAW WORK [--patch 72 80 80] [--batch 2] [--workers 2] [--batches 40]
                     [--warmup 5] [--config 3d_fullres]

Exactly the training half of ``nnUNetTrainer.get_dataloaders`` -- nnUNetDataLoader (foreground
oversampling 0.33) with the trainer's default ``get_training_transforms`` in a
NonDetMultiThreadedAugmenter of --workers processes -- but not its validation loader, which would
compete for the same cores. Prints one JSON line: patches_per_s, s_per_batch, batches, batch,
patch, batch_shape, workers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nnunet_env as ne


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--patch", type=int, nargs="+", default=[72, 80, 80])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--config", default="3d_fullres")
    a = ap.parse_args()
    ne.use_work(a.raw, a.work)
    tr, loader, transforms = ne.training_pipeline(a.raw, a.work, a.patch, a.batch, a.config)
    loader.transforms = transforms

    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    gen = NonDetMultiThreadedAugmenter(
        loader, None, a.workers, num_cached=max(6, a.workers // 2), seeds=None, pin_memory=False, wait_time=0.002
    )
    for _ in range(a.warmup):
        next(gen)
    t0 = time.perf_counter()
    for _ in range(a.batches):
        batch = next(gen)
    wall = time.perf_counter() - t0
    gen._finish()
    ne.emit(
        {
            "patches_per_s": a.batches * tr.batch_size / wall,
            "s_per_batch": wall / a.batches,
            "batches": a.batches,
            "batch": tr.batch_size,
            "patch": list(tr.configuration_manager.patch_size),
            "batch_shape": list(batch["data"].shape),
            "workers": a.workers,
        }
    )


if __name__ == "__main__":
    main()
