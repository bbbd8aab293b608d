"""nnU-Net v2's default training augmentation, timed per batch; run ONLY in the reference venv.

    benchmarks/.refenv/bin/python benchmarks/bench_augment_reference.py --patch 72 80 80 --batch 2

Builds the transform pipeline exactly as ``nnUNetTrainer.get_training_transforms`` does for a 3D
configuration (rotation +-30 deg, mirror axes 0-2, no deep supervision so both sides do the same
work) and feeds it the enlarged patch nnU-Net's loader would deliver, one sample at a time as
nnU-Net's workers do. Prints one JSON line. Kept apart from bench_augment.py so voxseg never
imports batchgeneratorsv2 or nnunetv2.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs="+", required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    torch.manual_seed(0)

    patch = tuple(args.patch)
    rotation = (-30.0 / 360 * 2 * np.pi, 30.0 / 360 * 2 * np.pi)
    initial = tuple(int(i) for i in get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25)))
    transforms = nnUNetTrainer.get_training_transforms(
        patch,
        rotation,
        None,
        (0, 1, 2),
        False,
        use_mask_for_norm=None,
        is_cascaded=False,
        foreground_labels=[1, 2],
        regions=None,
        ignore_label=None,
    )
    images = [torch.randn(args.channels, *initial) for _ in range(args.batch)]
    segs = [torch.randint(0, 3, (1, *initial), dtype=torch.int16) for _ in range(args.batch)]

    def one_batch() -> None:
        for image, seg in zip(images, segs):
            transforms(image=image.clone(), segmentation=seg.clone())

    one_batch()
    start = time.perf_counter()
    for _ in range(args.iters):
        one_batch()
    ms = (time.perf_counter() - start) / args.iters * 1000
    print(json.dumps({"ms_per_batch": ms, "input_size": list(initial)}))


if __name__ == "__main__":
    main()
