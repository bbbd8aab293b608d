"""Write a small synthetic segmentation dataset in nnU-Net's raw layout.

Used by ``setup_reference.sh`` to verify the reference environment, and by the benchmarks as a
stand-in when ``voxseg.data.demo`` is not importable. It runs with the reference python too, so
it uses only numpy and SimpleITK (both nnU-Net dependencies), not voxseg.

    python synthetic_dataset.py OUT_DIR [--cases 20] [--test 0] [--size 48 96] [--seed 0]

Each case: a blurred noisy body (class 0 around it), one ellipsoid "organ" (1) and a smaller
"lesion" (2) inside it, random shape per axis in ``--size``, anisotropic spacing (z coarser).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def make_case(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, tuple]:
    shape = tuple(int(s) for s in rng.integers(size[0], size[1] + 1, 3))
    shp = np.array(shape, float)
    body = _ellipsoid(shape, shp / 2, shp * 0.45)
    organ_c = shp * rng.uniform(0.4, 0.6, 3)
    organ = _ellipsoid(shape, organ_c, shp * rng.uniform(0.15, 0.25, 3)) & body
    lesion = _ellipsoid(shape, organ_c + rng.normal(0, 1, 3), shp * rng.uniform(0.04, 0.08, 3)) & organ
    seg = np.zeros(shape, np.uint8)
    seg[organ] = 1
    seg[lesion] = 2
    image = np.where(body, 40.0, -1000.0) + 60.0 * organ + 80.0 * lesion
    image = image + rng.normal(0, 20.0, shape)
    spacing_xyz = (float(rng.uniform(0.7, 0.9)),) * 2 + (float(rng.uniform(2.0, 3.0)),)
    return image.astype(np.float32), seg, spacing_xyz


def _write(array: np.ndarray, spacing_xyz: tuple, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing_xyz)
    sitk.WriteImage(img, str(path), True)


def write_dataset(out: Path, cases: int, test: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if test else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases + test):
        image, seg, spacing = make_case(rng, size)
        split = "Tr" if i < cases else "Ts"
        _write(image, spacing, out / f"images{split}" / f"case_{i:03d}_0000.nii.gz")
        _write(seg, spacing, out / f"labels{split}" / f"case_{i:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": out.name,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--test", type=int, default=0, help="held-out cases in imagesTs/labelsTs")
    ap.add_argument("--size", type=int, nargs=2, default=(48, 96))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_dataset(a.out, a.cases, a.test, tuple(a.size), a.seed)
    print(json.dumps({"dataset": str(a.out), "cases": a.cases, "test": a.test}))


if __name__ == "__main__":
    main()
