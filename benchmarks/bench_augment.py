"""Speed of the batched augmentation, and the label-interpolation measurement behind its default.

    .venv/bin/python benchmarks/bench_augment.py [--iters 20] [--reference benchmarks/.refenv/bin/python]
    .venv/bin/python benchmarks/bench_augment.py --labels

Prints ms per batch (1 channel) for the default preset, for no augmentation (centre crop only) and
with every transform forced on: CPU 2 x [72,80,80], CUDA 2 x [88,160,128] when a GPU is present.
`--reference PYTHON` also times nnU-Net's own default pipeline (batchgeneratorsv2, one sample at
a time on one CPU thread, as its workers do) in that interpreter via bench_augment_reference.py
and prints our speed-up; "n/a" when that interpreter is missing.
`--labels` compares nearest vs one-hot linear label resampling (speed and Dice against the
analytically transformed shape), the numbers quoted in voxseg/augment/spatial.py.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from voxseg.augment.config import AugmentationSettings
from voxseg.augment.pipeline import Augmenter
from voxseg.augment.spatial import SpatialParams, apply_spatial

HERE = Path(__file__).resolve().parent
CPU_PATCH = (72, 80, 80)
GPU_PATCH = (88, 160, 128)
BATCH = 2
EVERYTHING = dict(
    rotation_p=1.0,
    scale_p=1.0,
    noise_p=1.0,
    blur_p=1.0,
    blur_p_per_channel=1.0,
    brightness_p=1.0,
    contrast_p=1.0,
    lowres_p=1.0,
    lowres_p_per_channel=1.0,
    gamma_inv_p=1.0,
    gamma_p=1.0,
)


def time_augmenter(settings: AugmentationSettings, patch: tuple[int, ...], device: torch.device, iters: int) -> float:
    augmenter = Augmenter(settings, patch, has_ignore=True, seed=0)
    size = augmenter.input_size()
    image = torch.randn(BATCH, 1, *size, device=device)
    seg = torch.randint(-1, 3, (BATCH, 1, *size), dtype=torch.int16, device=device)
    augmenter(image, [seg])  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        augmenter(image, [seg])
    _sync(device)
    return (time.perf_counter() - start) / iters * 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_ms(python: str | None, patch: tuple[int, ...], iters: int) -> str:
    if not python or not Path(python).exists():
        return "n/a"
    cmd = [
        python,
        str(HERE / "bench_augment_reference.py"),
        "--patch",
        *map(str, patch),
        "--batch",
        str(BATCH),
        "--iters",
        str(max(3, iters // 4)),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"reference failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return "n/a"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return f"{result['ms_per_batch']:.1f}"


def run_ours(*, device: str = "cpu", patch=CPU_PATCH, iterations: int = 20, **_) -> dict:
    """The suite's convention (benchmarks/common.py): ms per batch of the default preset."""
    return {"ms_per_batch": time_augmenter(AugmentationSettings(), tuple(patch), torch.device(device), iterations)}


def run_reference(python: str | Path, *, patch=CPU_PATCH, iterations: int = 20, **_) -> dict:
    ms = reference_ms(str(python), tuple(patch), iterations)
    return {"ms_per_batch": None if ms == "n/a" else float(ms)}


def speed_table(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    default = AugmentationSettings()
    cases = [("cpu", torch.device("cpu"), CPU_PATCH)]
    if torch.cuda.is_available():
        cases.append(("cuda", torch.device("cuda"), GPU_PATCH))
    print(f"batch {BATCH} x 1 channel, {args.threads} CPU thread(s), mean of {args.iters} batches")
    print(
        f"{'device':<6} {'patch':<15} {'input':<16} {'default ms':>10} {'none ms':>8} {'all-on ms':>9} "
        f"{'nnU-Net ms':>10} {'speed-up':>8}"
    )
    for name, device, patch in cases:
        size = Augmenter(default, patch, has_ignore=True, seed=0).input_size()
        ms = [
            time_augmenter(s, patch, device, args.iters)
            for s in (default, AugmentationSettings.from_preset("none"), replace(default, **EVERYTHING))
        ]
        ref = reference_ms(args.reference, patch, args.iters)
        ratio = "n/a" if ref == "n/a" else f"{float(ref) / ms[0]:.1f}x"
        print(f"{name:<6} {list(patch)!s:<15} {list(size)!s:<16} {ms[0]:>10.1f} {ms[1]:>8.1f} {ms[2]:>9.1f} {ref:>10} {ratio:>8}")


def label_table(args: argparse.Namespace) -> None:
    """Nested ellipsoids (3 classes) rotated 25 deg about every axis and zoomed in (scale 0.8)."""
    torch.set_num_threads(args.threads)
    patch = CPU_PATCH
    size = tuple(p + 40 for p in patch)
    centre = torch.tensor([(s - 1) / 2 for s in size], dtype=torch.float64)
    radii = torch.tensor([0.3, 0.38, 0.34], dtype=torch.float64) * torch.tensor(patch, dtype=torch.float64)

    def classes_at(points: torch.Tensor) -> torch.Tensor:  # points (..., 3) in input voxels
        r = (((points - centre) / radii) ** 2).sum(-1)
        return (r <= 1).long() + (r <= 0.45).long()

    axes = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in size], indexing="ij")
    seg = classes_at(torch.stack(axes, -1)).to(torch.int16)[None, None].repeat(BATCH, 1, 1, 1, 1)
    image = seg.float()
    angle = math.radians(25)
    params = SpatialParams(
        rotate=torch.ones(BATCH, dtype=torch.bool),
        angles=torch.full((BATCH, 3), angle, dtype=torch.float64),
        scale=torch.ones(BATCH, dtype=torch.bool),
        scales=torch.full((BATCH, 3), 0.8, dtype=torch.float64),
        elastic=torch.zeros(BATCH, dtype=torch.bool),
        displacement=None,
        mirror=torch.zeros(BATCH, 3, dtype=torch.bool),
    )
    out_axes = torch.meshgrid(*[torch.arange(p, dtype=torch.float64) - (p - 1) / 2 for p in patch], indexing="ij")
    offsets = torch.stack(out_axes, -1)
    truth = classes_at(centre + offsets @ params.matrix[0].T)
    print(f"labels: 2 x {list(patch)} from {list(size)}, rotation 25 deg (all axes), scale 0.8")

    def spatial_ms(labels: list[torch.Tensor], mode: str) -> tuple[float, list[torch.Tensor]]:
        apply_spatial(image, labels, params, patch, has_ignore=True, label_interpolation=mode)
        start = time.perf_counter()
        for _ in range(args.iters):
            _, out = apply_spatial(image, labels, params, patch, has_ignore=True, label_interpolation=mode)
        return (time.perf_counter() - start) / args.iters * 1000, out

    image_only, _ = spatial_ms([], "nearest")
    print(f"{'mode':<8} {'label ms':>9} {'Dice c1':>8} {'Dice c2':>8} {'mean':>7}   (image alone: {image_only:.1f} ms)")
    for mode in ("nearest", "linear"):
        ms, (out,) = spatial_ms([seg], mode)
        ms -= image_only
        dice = [
            float(2 * ((out[0, 0] == c) & (truth == c)).sum() / ((out[0, 0] == c).sum() + (truth == c).sum())) for c in (1, 2)
        ]
        print(f"{mode:<8} {ms:>9.1f} {dice[0]:>8.4f} {dice[1]:>8.4f} {sum(dice) / 2:>7.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", help="python of the nnU-Net reference venv (benchmarks/.refenv/bin/python)")
    parser.add_argument("--labels", action="store_true", help="compare nearest vs linear label resampling")
    args = parser.parse_args()
    if args.labels:
        label_table(args)
    else:
        speed_table(args)


if __name__ == "__main__":
    main()
