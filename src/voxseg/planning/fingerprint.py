"""Dataset fingerprint: per-case geometry, foreground intensity statistics, class frequencies.

Memory is bounded: each case contributes a fixed number of randomly sampled foreground voxels per
channel (seeded by the case index), so statistics over thousands of cases cost a few MB. Cases are
read in parallel worker processes (one case per worker at a time). The result is cached as
``WORK/fingerprint.json`` and reused while the dataset's case list is unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxseg.data.crop import nonzero_bbox
from voxseg.data.io import read_case_images
from voxseg.data.spec import DatasetSpec, read_label
from voxseg.io_utils import atomic_write_json
from voxseg.parallel import map_cases

FINGERPRINT_FILE = "fingerprint.json"
SAMPLES_PER_CASE = 10_000


@dataclass
class CaseFingerprint:
    case_id: str
    shape: list[int]
    spacing: list[float]
    bbox: list[list[int]]
    shape_after_crop: list[int]
    class_voxel_counts: list[int]


@dataclass
class Fingerprint:
    dataset_name: str
    channel_names: list[str]
    num_classes: int
    cases: list[CaseFingerprint]
    channel_stats: list[dict]  # mean, std, median, p00_5, p99_5, min, max of sampled foreground
    class_voxel_counts: list[int]  # over the whole dataset, class 0..K-1 (IGNORE not counted)
    class_case_counts: list[int]  # cases in which each class occurs

    @property
    def spacings(self) -> np.ndarray:
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.int64)

    @property
    def median_kept_fraction(self) -> float:
        """Median fraction of the image volume left after crop-to-non-zero."""
        return float(np.median([math.prod(c.shape_after_crop) / math.prod(c.shape) for c in self.cases]))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Fingerprint:
        return cls(**{**d, "cases": [CaseFingerprint(**c) for c in d["cases"]]})


def _case_fingerprint(args: tuple[DatasetSpec, int]) -> tuple[CaseFingerprint, np.ndarray]:
    spec, index = args
    case = spec.training[index]
    image, geometry = read_case_images(case.images, spec.reader, n_channels=len(spec.channel_names))
    assert case.label is not None  # every training case names its label file
    seg, _ = read_label(case.label, spec)
    box = nonzero_bbox(image)
    counts = np.bincount(seg[seg >= 0].ravel().astype(np.int64), minlength=spec.num_classes)[: spec.num_classes]
    foreground = seg[0] > 0
    n_fg = int(foreground.sum())
    rng = np.random.default_rng(index)
    take = rng.choice(n_fg, size=min(n_fg, SAMPLES_PER_CASE), replace=False) if n_fg else np.zeros(0, np.int64)
    samples = image[:, foreground][:, np.sort(take)]
    fp = CaseFingerprint(
        case_id=case.case_id,
        shape=list(image.shape[1:]),
        spacing=[float(s) for s in geometry.spacing],
        bbox=box,
        shape_after_crop=[b - a for a, b in box],
        class_voxel_counts=[int(c) for c in counts],
    )
    return fp, samples.astype(np.float32)


def _channel_stats(samples: np.ndarray) -> dict:
    if samples.size == 0:  # no foreground anywhere: neutral statistics
        return {"mean": 0.0, "std": 1.0, "median": 0.0, "p00_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 0.0}
    s = samples.astype(np.float64)
    lo, med, hi = np.percentile(s, [0.5, 50.0, 99.5])
    return {
        "mean": float(s.mean()),
        "std": float(s.std()),
        "median": float(med),
        "p00_5": float(lo),
        "p99_5": float(hi),
        "min": float(s.min()),
        "max": float(s.max()),
    }


def compute_fingerprint(spec: DatasetSpec, workers: int | None = None, progress: bool = True) -> Fingerprint:
    results = map_cases(
        _case_fingerprint, [(spec, i) for i in range(len(spec.training))], workers, desc="fingerprint", progress=progress
    )
    cases = [r[0] for r in results]
    samples = np.concatenate([r[1] for r in results], axis=1)
    counts = np.array([c.class_voxel_counts for c in cases], dtype=np.int64)
    return Fingerprint(
        dataset_name=spec.name,
        channel_names=list(spec.channel_names),
        num_classes=spec.num_classes,
        cases=cases,
        channel_stats=[_channel_stats(samples[c]) for c in range(samples.shape[0])],
        class_voxel_counts=[int(v) for v in counts.sum(0)],
        class_case_counts=[int(v) for v in (counts > 0).sum(0)],
    )


def load_or_compute_fingerprint(
    spec: DatasetSpec, work_dir: str | Path, workers: int | None = None, progress: bool = True
) -> Fingerprint:
    """Reuse ``WORK/fingerprint.json`` when it describes the same cases, else recompute and cache it."""
    path = Path(work_dir) / FINGERPRINT_FILE
    if path.is_file():
        try:
            cached = Fingerprint.from_json(json.loads(path.read_text()))
            if [c.case_id for c in cached.cases] == spec.case_ids and cached.channel_names == list(spec.channel_names):
                return cached
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # stale or edited cache: recompute
    fp = compute_fingerprint(spec, workers, progress)
    atomic_write_json(path, fp.to_json())
    return fp
