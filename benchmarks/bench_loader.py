"""Loader throughput: patches/s of voxseg's PatchLoader vs nnU-Net's nnUNetDataLoader.

    .venv/bin/python benchmarks/bench_loader.py [--work DIR] [--raw DATASET] [--patch 72 80 80]
        [--batch 2] [--workers 2] [--batches 60] [--quick] [--reference PYTHON]

Ours, two numbers on the same store:
  patches_per_s_crop  crop + collate only (the loader's own work), `--workers` processes
  patches_per_s       the same plus the default augmentation as training on a CPU runs it
                      (`augmentation.where: auto` -> "loader": voxseg.augment.pipeline.Augmenter
                      inside the same `--workers` processes, one thread each), i.e. what
                      nnU-Net's number also includes.
The crop-only loader delivers `Augmenter.input_size()` (the enlarged patch the default
augmentation needs); the augmenting one delivers the final patch. nnU-Net's side (benchmarks/reference/loader.py in the reference venv) runs
nnUNetDataLoader + its default training transforms in `--workers` processes; "n/a" when that venv
is missing. On a 2-core machine nnU-Net does 43-46 patches/s.

Data: the voxseg store at WORK/store/3d_fullres when an earlier stage left one, else a synthetic
store of CT-sized preprocessed cases written to WORK (the loader only sees arrays, so their content
matters only through the foreground locations).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, format_table, header, reference_python, run_reference_script

from voxseg.preprocessing.store import Store, write_case
from voxseg.sampling.case_sampler import CaseSampler
from voxseg.sampling.config import SamplingSettings
from voxseg.sampling.loader import PatchLoader

SYNTHETIC_SHAPE = (160, 224, 224)


def synthetic_store(root: Path, cases: int = 6, shape: tuple[int, ...] = SYNTHETIC_SHAPE) -> Store:
    """CT-sized cases: a noisy body with an ellipsoid organ (1) holding a small lesion (2)."""
    store = Store(root)
    if len(store.case_ids()) >= cases:
        return store
    for i in range(cases):
        rng = np.random.default_rng(i)
        grids = np.ogrid[tuple(slice(0, s) for s in shape)]
        centre = np.array(shape) * rng.uniform(0.35, 0.65, 3)
        dist = sum(((g - c) / (0.15 * s)) ** 2 for g, c, s in zip(grids, centre, shape))
        seg = np.where(dist <= 1, 1, 0).astype(np.int8)
        seg[dist <= 0.05] = 2
        image = rng.standard_normal((1, *shape), dtype=np.float32) + seg
        locations = {}
        for k in (1, 2):
            coords = np.argwhere(seg == k).astype(np.int32)
            keep = rng.choice(len(coords), size=min(10_000, len(coords)), replace=False)
            locations[str(k)] = coords[np.sort(keep)]
        counts = {str(k): int((seg == k).sum()) for k in (1, 2)}
        write_case(root, f"bench_{i:03d}", image, seg[None], {"class_voxel_counts": counts}, locations)
    return store


def _store(work: Path) -> Store:
    existing = Store(work / "store" / "3d_fullres")
    return existing if existing.case_ids() else synthetic_store(work / "bench_loader_store")


def _input_size(patch: tuple[int, ...]) -> tuple[tuple[int, ...], object | None]:
    try:
        from voxseg.augment.config import AugmentationSettings
        from voxseg.augment.pipeline import Augmenter
    except ImportError:
        return patch, None
    augmenter = Augmenter(AugmentationSettings(), patch, has_ignore=False, seed=0)
    return augmenter.input_size(), augmenter


def _time(loader: PatchLoader, batches: int, warmup: int) -> float:
    for _ in islice(loader, warmup):
        pass
    start = time.perf_counter()
    for _ in islice(loader, batches):
        pass
    return batches * loader.batch_size / (time.perf_counter() - start)


def run_ours(
    work: Path | None = None, patch=(72, 80, 80), batch: int = 2, workers: int = 2, iterations: int = 60, quick: bool = False, **_
) -> dict:
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    patch = tuple(patch)
    batches = 15 if quick else iterations
    store = _store(work)
    input_size, augmenter = _input_size(patch)
    settings = SamplingSettings(workers=workers)

    def make(augment: bool) -> PatchLoader:
        sampler = CaseSampler(store.case_ids())
        return PatchLoader(
            store,
            sampler,
            patch_size=patch,
            input_size=input_size,
            batch_size=batch,
            settings=settings,
            seed=0,
            pin_memory=False,
            augmenter=augmenter if augment else None,
        )

    with make(False) as loader:
        crop = _time(loader, batches, warmup=5)
    augmented = None
    if augmenter is not None:
        with make(True) as loader:
            augmented = _time(loader, batches, warmup=4)
    return {"patches_per_s_crop": crop, "patches_per_s": augmented, "input_size": "x".join(map(str, input_size))}


def run_reference(
    python,
    raw: Path | None = None,
    work: Path | None = None,
    patch=(72, 80, 80),
    batch: int = 2,
    workers: int = 2,
    iterations: int = 60,
    quick: bool = False,
    **_,
) -> dict:
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="bench_loader_ref_"))
    if raw is None:
        raw = _demo_raw(work)
    result = run_reference_script(
        python,
        "loader.py",
        raw,
        work,
        "--patch",
        *patch,
        "--batch",
        batch,
        "--workers",
        workers,
        "--batches",
        15 if quick else iterations,
    )
    # nnU-Net's loader output is already augmented to the final patch: no enlarged input to report.
    return {"patches_per_s_crop": None, "patches_per_s": result["patches_per_s"], "input_size": None}


def _demo_raw(work: Path) -> Path:
    from voxseg.data.demo import make_demo_dataset

    raw = work / "raw" / "Dataset901_VoxsegDemo"
    if not (raw / "dataset.json").is_file():
        make_demo_dataset(raw, cases=8)  # default sizes: nnU-Net plans a stride that divides 72x80x80
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--raw", type=Path, default=None, help="nnU-Net raw dataset for the reference side")
    ap.add_argument("--patch", type=int, nargs="+", default=[72, 80, 80])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reference", type=Path, default=reference_python())
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    kw = dict(work=work, patch=tuple(a.patch), batch=a.batch, workers=a.workers, iterations=a.batches, quick=a.quick)
    ours = run_ours(**kw)
    theirs = {}
    if a.reference is not None and Path(a.reference).exists():
        theirs = run_reference(a.reference, raw=a.raw, **{**kw, "work": work / "nnunet"})
    rows = [
        Row("loader", key, ours.get(key), theirs.get(key, "n/a")) for key in ("patches_per_s_crop", "patches_per_s", "input_size")
    ]
    print(format_table(rows, header("cpu", a.reference if theirs else None)))
    ref = theirs.get("patches_per_s")
    if ref:
        print(
            f"\ncrop + collate vs nnU-Net's full pipeline: {ours['patches_per_s_crop'] / ref:.1f}x (goal 10x); "
            f"with CPU augmentation: {(ours['patches_per_s'] or 0) / ref:.1f}x (goal 2x)"
        )


if __name__ == "__main__":
    main()
