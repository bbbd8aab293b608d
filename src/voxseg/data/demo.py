"""Built-in synthetic CT-like demo data, in nnU-Net v2's raw format.

Each case is a body (soft tissue) in air holding an organ (label 1) that sometimes carries small,
rare lesions (label 2), with noise, a non-zero origin and an anisotropic spacing that varies per
case, so planning, resampling and foreground oversampling all have something real to do.
Deterministic for a seed: case i depends only on (seed, i).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError

AIR, TISSUE, ORGAN, LESION = -1000.0, 20.0, 90.0, 160.0


def _ellipsoid(grid: Sequence[np.ndarray], centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_case(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], lesion_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One image (HU) and label map; shapes are placed in millimetres so resampling matters.
    `lesion_scale` multiplies the lesions' radii."""
    extent = np.asarray(shape) * np.asarray(spacing)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij", sparse=True)
    body = _ellipsoid(grid, extent / 2, extent * rng.uniform(0.40, 0.47, len(shape)))
    organ_c = extent * rng.uniform(0.40, 0.60, len(shape))
    organ_r = extent * rng.uniform(0.20, 0.28, len(shape))
    organ = _ellipsoid(grid, organ_c, organ_r) & body
    label = np.zeros(shape, np.uint8)
    label[organ] = 1
    n_lesions = rng.choice([0, 1, 1, 2, 3])
    for _ in range(n_lesions):
        c = organ_c + organ_r * rng.uniform(-0.5, 0.5, len(shape))
        r = np.full(len(shape), rng.uniform(0.25, 0.40) * lesion_scale) * organ_r.min()
        label[_ellipsoid(grid, c, r) & organ] = 2
    image = np.full(shape, AIR, np.float32)
    image[body] = TISSUE
    image[label == 1] = ORGAN + rng.normal(0, 8)
    image[label == 2] = LESION + rng.normal(0, 8)
    image += rng.normal(0, 25, shape).astype(np.float32)
    return image.astype(np.int16), label


def _geometry(rng: np.random.Generator, dim: int, isotropic: bool = False) -> tuple[tuple[float, ...], Geometry]:
    inplane = float(rng.uniform(0.7, 1.0))
    slices = float(rng.uniform(2.0, 3.5))
    spacing = ((inplane if isotropic else slices), inplane, inplane)[-dim:]
    origin = tuple(float(v) for v in rng.uniform(-200, 200, dim))
    direction = tuple(np.eye(dim).ravel().tolist())
    return spacing, Geometry(spacing, origin, direction)


def make_demo_dataset(
    out_dir: str | Path,
    *,
    cases: int = 20,
    seed: int = 0,
    ignore_fraction: float = 0.0,
    dim: int = 3,
    size_range: tuple[int, int] = (48, 96),
    test_cases: int = 0,
    regions: bool = False,
    partial_fraction: float = 0.0,
    lesion_scale: float = 1.0,
    isotropic: bool = False,
) -> Path:
    """Write a synthetic dataset (imagesTr/labelsTr, optional imagesTs/labelsTs) and return its path.

    `ignore_fraction` > 0 declares an ignore label and marks that fraction of each training case's
    slices (axis 0) as not annotated, the way sparse annotation looks in practice. `regions`
    declares the labels as nnU-Net regions (BraTS-style nesting): "whole" = organ + lesion,
    "lesion" = lesion, painted in that order. `partial_fraction` > 0 makes that fraction of the
    training cases annotate only the lesion (their organ voxels become background) and says so in
    dataset.json's ``annotated_classes``, as a dataset merged from two sources looks.
    `lesion_scale` multiplies the lesions' radii (`voxseg demo` uses 1.6, so a five-minute CPU run
    learns them; the benchmarks keep 1.0). `isotropic` gives every axis the in-plane spacing and
    `size_range` voxels (a thin-slice CT: the inference benchmarks' "110-130 voxels per axis").
    """
    if dim not in (2, 3):
        raise InputError(f"--dim must be 2 or 3, got {dim}", fix="use --dim 3 (volumes) or --dim 2 (images)")
    if not 0.0 <= partial_fraction <= 1.0:
        raise InputError(f"--partial-fraction must be in [0, 1], got {partial_fraction}", fix="e.g. --partial-fraction 0.5")
    if not 0.0 <= ignore_fraction < 1.0:
        raise InputError(f"--ignore-fraction must be in [0, 1), got {ignore_fraction}", fix="e.g. --ignore-fraction 0.3")
    lo, hi = size_range
    if not 8 <= lo <= hi:
        raise InputError(f"size range {size_range} is invalid", fix="use e.g. 48,96 (min >= 8, min <= max)")
    out = Path(out_dir)
    ending = ".nii.gz"
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    ignore_value = 3 if ignore_fraction > 0 else None
    annotated: dict[str, list[str]] = {}
    for i in range(cases + test_cases):
        rng = np.random.default_rng([seed, i])
        spacing, geometry = _geometry(rng, dim, isotropic)
        shape = tuple(int(v) for v in rng.integers(lo, hi + 1, dim))
        if dim == 3 and not isotropic:
            # Coarse slice axis: fewer slices, like a real CT series.
            shape = (max(lo // 2, int(shape[0] * spacing[1] / spacing[0] * 1.5)),) + shape[1:]
        image, label = make_case(rng, shape, spacing, lesion_scale)
        train = i < cases
        case_id = f"demo_{i:03d}"
        if train and ignore_value is not None:
            unannotated = rng.random(shape[0]) < ignore_fraction
            unannotated[rng.integers(shape[0])] = False  # at least one annotated slice
            label[unannotated] = ignore_value
        if train and i < round(partial_fraction * cases):
            label[label == 1] = 0
            annotated[case_id] = ["lesion"]
        img_dir, lab_dir = ("imagesTr", "labelsTr") if train else ("imagesTs", "labelsTs")
        write_image(out / img_dir / f"{case_id}_0000{ending}", image, geometry)
        write_image(out / lab_dir / f"{case_id}{ending}", label, geometry)
    labels: dict[str, object] = {"background": 0, "organ": 1, "lesion": 2}
    if regions:
        labels = {"background": 0, "whole": [1, 2], "lesion": [2]}
    if ignore_value is not None:
        labels["ignore"] = ignore_value
    meta = {
        "name": "VoxsegDemo",
        "description": f"voxseg synthetic CT-like demo data (seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": cases,
        "file_ending": ending,
    }
    if regions:
        meta["regions_class_order"] = [1, 2]
    if annotated:
        meta["annotated_classes"] = annotated
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def make_rgb_demo_dataset(
    out_dir: str | Path, *, cases: int = 20, test_cases: int = 0, seed: int = 0, size_range: tuple[int, int] = (96, 160)
) -> Path:
    """A 2D natural-image dataset in nnU-Net's format: RGB ``CASE_0000.png`` files (three channels
    in one file, ``channel_names`` R, G, B) and greyscale ``CASE.png`` label maps: a reddish organ
    (label 1) with greenish lesions (label 2) on a textured background. Deterministic for a seed.
    """
    from PIL import Image

    from voxseg.io_utils import atomic_path

    lo, hi = size_range
    if not 16 <= lo <= hi:
        raise InputError(f"size range {size_range} is invalid", fix="use e.g. 96,160 (min >= 16, min <= max)")
    out = Path(out_dir)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test_cases else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases + test_cases):
        rng = np.random.default_rng([seed, i, 2])
        shape = tuple(int(v) for v in rng.integers(lo, hi + 1, 2))
        _, label = make_case(rng, shape, (1.0, 1.0))
        colours = np.array([[90, 110, 100], [200, 70, 60], [70, 190, 80]], np.float32)  # background, organ, lesion
        rgb = colours[label] + rng.normal(0, 18, (*shape, 3)).astype(np.float32)
        rgb += 25 * np.sin(np.arange(shape[1]) / 7.0)[None, :, None]  # texture, so colour alone is not enough
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        train = i < cases
        img_dir, lab_dir = ("imagesTr", "labelsTr") if train else ("imagesTs", "labelsTs")
        for path, array in ((out / img_dir / f"rgb_{i:03d}_0000.png", rgb), (out / lab_dir / f"rgb_{i:03d}.png", label)):
            with atomic_path(path) as tmp:
                Image.fromarray(array).save(tmp)
    meta = {
        "name": "VoxsegDemoRGB",
        "description": f"voxseg synthetic 2D RGB demo data (seed {seed})",
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases,
        "file_ending": ".png",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
