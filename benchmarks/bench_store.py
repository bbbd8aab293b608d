"""Store format: memory-mapped .npy vs blosc2 (nnU-Net's) for random patch reads and disk size.

    python benchmarks/bench_store.py [--blosc2-python PATH] [--reads 200]

Writes one CT-like preprocessed case (float32 image [1,120,240,240] + int8 label) and reads random
[72,80,80] patches (image + label, copied into memory as the loader does). blosc2 is not a voxseg
dependency, so its side runs in another interpreter that has it (a throw-away venv:
``python -m venv /tmp/b && /tmp/b/bin/pip install blosc2``), passed with --blosc2-python; chunks and
blocks follow nnU-Net's choice (chunk = patch-sized, LZ4HC, level 8). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (120, 240, 240)
PATCH = (72, 80, 80)


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    from voxseg.data.demo import make_case

    image, label = make_case(rng, SHAPE, (2.0, 0.8, 0.8))
    image = ndimage.gaussian_filter(image.astype(np.float32), 0.7)
    return ((image - image.mean()) / image.std()).astype(np.float32)[None], label.astype(np.int8)[None]


def _corners(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(SHAPE, PATCH)) for _ in range(n)]


def _time_reads(open_fn, n: int) -> dict:
    image, seg = open_fn()
    times = []
    for c in _corners(n):
        sl = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(c, PATCH))
        t = time.perf_counter()
        np.array(image[sl]), np.array(seg[sl])
        times.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * float(np.median(times)), "p95_ms": 1e3 * float(np.percentile(times, 95))}


def npy_side(folder: Path, image: np.ndarray, seg: np.ndarray, n: int) -> dict:
    np.save(folder / "c.npy", image)
    np.save(folder / "c_seg.npy", seg)
    size = (folder / "c.npy").stat().st_size + (folder / "c_seg.npy").stat().st_size
    reads = _time_reads(lambda: (np.load(folder / "c.npy", mmap_mode="r"), np.load(folder / "c_seg.npy", mmap_mode="r")), n)
    t = time.perf_counter()
    np.array(np.load(folder / "c.npy", mmap_mode="r"))
    return {"format": "npy (mmap)", "disk_mb": size / 1e6, **reads, "full_read_ms": 1e3 * (time.perf_counter() - t)}


def blosc2_side(folder: Path, n: int) -> dict:
    import blosc2

    image, seg = np.load(folder / "c.npy"), np.load(folder / "c_seg.npy")
    cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 8}
    chunks = (1,) + PATCH
    blocks = (1, 8, 40, 40)
    blosc2.asarray(image, urlpath=str(folder / "c.b2nd"), chunks=chunks, blocks=blocks, cparams=cparams, mode="w")
    blosc2.asarray(seg, urlpath=str(folder / "c_seg.b2nd"), chunks=chunks, blocks=blocks, cparams=cparams, mode="w")
    size = (folder / "c.b2nd").stat().st_size + (folder / "c_seg.b2nd").stat().st_size
    opener = lambda: (blosc2.open(str(folder / "c.b2nd"), mmap_mode="r"), blosc2.open(str(folder / "c_seg.b2nd"), mmap_mode="r"))  # noqa: E731
    reads = _time_reads(opener, n)
    t = time.perf_counter()
    opener()[0][:]
    return {
        "format": f"blosc2 {blosc2.__version__} LZ4HC",
        "disk_mb": size / 1e6,
        **reads,
        "full_read_ms": 1e3 * (time.perf_counter() - t),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blosc2-python", type=Path, help="interpreter with blosc2 installed")
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--blosc2-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.blosc2_only:
        print(json.dumps(blosc2_side(args.blosc2_only, args.reads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, seg = _case(np.random.default_rng(0))
        rows = [npy_side(folder, image, seg, args.reads)]
        if args.blosc2_python:
            proc = subprocess.run(
                [str(args.blosc2_python), __file__, "--blosc2-only", str(folder), "--reads", str(args.reads)],
                capture_output=True,
                text=True,
            )
            rows.append(
                json.loads(proc.stdout.strip().splitlines()[-1])
                if proc.returncode == 0
                else {"format": "blosc2 (failed: " + proc.stderr.strip().splitlines()[-1][:60] + ")"}
            )
    print(f"case {list(SHAPE)} float32 + int8 label, {args.reads} random {list(PATCH)} patch reads (image + label)")
    print(f"{'format':<24} {'disk MB':>8} {'median ms':>10} {'p95 ms':>8} {'full read ms':>13}")
    for r in rows:
        print(
            f"{r['format']:<24} {r.get('disk_mb', float('nan')):8.1f} {r.get('median_ms', float('nan')):10.2f} "
            f"{r.get('p95_ms', float('nan')):8.2f} {r.get('full_read_ms', float('nan')):13.1f}"
        )


if __name__ == "__main__":
    main()
