"""Ensembling: average class probabilities of several folds or configurations.

Folds of one configuration are averaged inside the predictor (`average_probabilities` on logits
in memory). Different configurations (e.g. 2d + 3d_fullres) are combined afterwards from the
probability files `voxseg predict --save-probabilities` writes, one `CASE.npz` per case with:
  probabilities  float16/float32 (K, *S) in the original image grid (softmax, or sigmoid for regions)
  spacing, origin, direction  float64 arrays, the Geometry fields (so a segmentation can be written
                              without the source image)
Averaging probabilities, not logits, is nnU-Net's choice too: models with sharper logits would
otherwise dominate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError
from voxseg.io_utils import atomic_path


def to_probabilities(logits: torch.Tensor, regions: bool = False) -> torch.Tensor:
    """Softmax over classes (axis 0), or independent sigmoids for region-based training."""
    return torch.sigmoid(logits.float()) if regions else torch.softmax(logits.float(), dim=0)


def average_probabilities(logits: Sequence[torch.Tensor], regions: bool = False) -> torch.Tensor:
    """Mean probability of several models' logits (K, *S), accumulated one model at a time."""
    if not logits:
        raise ValueError("nothing to ensemble")
    total = to_probabilities(logits[0], regions)
    for item in logits[1:]:
        total += to_probabilities(item.to(total.device), regions)
    return total / len(logits)


def probabilities_to_segmentation(probabilities: np.ndarray | torch.Tensor, regions_class_order: Sequence[int] | None = None) -> np.ndarray:
    """Argmax over classes; for regions, each region above 0.5 paints its label in the given order."""
    p = torch.as_tensor(probabilities)
    if regions_class_order is None:
        return p.argmax(0).to(torch.int16).cpu().numpy()
    seg = torch.zeros(p.shape[1:], dtype=torch.int16)
    for region, label in enumerate(regions_class_order):
        seg[p[region] > 0.5] = label
    return seg.numpy()


def save_probabilities(path: str | Path, probabilities: np.ndarray, geometry: Geometry) -> None:
    """Write CASE.npz (float16 to halve the disk use; averaging happens in float32)."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, probabilities=np.asarray(probabilities, dtype=np.float16),
                            spacing=np.asarray(geometry.spacing), origin=np.asarray(geometry.origin),
                            direction=np.asarray(geometry.direction))


def load_probabilities(path: str | Path) -> tuple[np.ndarray, Geometry]:
    path = Path(path)
    try:
        with np.load(path) as data:
            probs = data["probabilities"].astype(np.float32)
            geometry = Geometry(*(tuple(float(v) for v in data[k]) for k in ("spacing", "origin", "direction")))
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"not a voxseg probability file ({e})", path=path,
                         fix="predict with --save-probabilities to write CASE.npz files") from None
    return probs, geometry


def ensemble_files(npz_files: Sequence[str | Path], out: str | Path, *, regions_class_order: Sequence[int] | None = None,
                   save_probabilities_to: str | Path | None = None) -> np.ndarray:
    """Average the probability files of one case and write the segmentation `out` (its suffix picks
    the format, e.g. CASE.nii.gz); optionally also the averaged probabilities. Returns the seg."""
    if not npz_files:
        raise InputError("no probability files to ensemble", path=out, fix="pass at least one CASE.npz")
    total, geometry = load_probabilities(npz_files[0])
    for path in npz_files[1:]:
        probs, g = load_probabilities(path)
        if probs.shape != total.shape or g.differs_from(geometry):
            raise InputError(f"grid or class count {probs.shape} differs from {npz_files[0]} {total.shape}", path=path,
                             fix="ensemble predictions of the same cases and dataset only")
        total += probs
    total /= len(npz_files)
    seg = probabilities_to_segmentation(total, regions_class_order)
    write_image(out, seg.astype(np.uint8 if seg.max(initial=0) < 256 else np.int16), geometry)
    if save_probabilities_to is not None:
        save_probabilities(save_probabilities_to, total, geometry)
    return seg


def ensemble_folders(folders: Sequence[str | Path], out_dir: str | Path, file_ending: str, *,
                     regions_class_order: Sequence[int] | None = None, save_probabilities: bool = False) -> list[Path]:
    """`ensemble_files` for every case present (as CASE.npz) in all folders; returns written files."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise InputError("ensembling needs at least two prediction folders", fix="pass two or more folders")
    per_folder = [{p.stem for p in f.glob("*.npz")} for f in folders]
    cases = sorted(set.intersection(*per_folder))
    if not cases:
        raise InputError("no CASE.npz present in every folder", path=folders[0],
                         fix="predict each configuration with --save-probabilities")
    out_dir = Path(out_dir)
    written = []
    for case in cases:
        target = out_dir / f"{case}{file_ending}"
        ensemble_files([f / f"{case}.npz" for f in folders], target, regions_class_order=regions_class_order,
                       save_probabilities_to=out_dir / f"{case}.npz" if save_probabilities else None)
        written.append(target)
    return written
