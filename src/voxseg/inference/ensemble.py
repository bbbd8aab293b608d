"""Ensembling: average probabilities of several folds or configurations.

Folds of one configuration are averaged inside the predictor. Different configurations (e.g. 2d +
3d_fullres) are combined afterwards from the probability files `voxseg predict --save-probabilities`
writes, one `CASE.npz` per case with:
  probabilities  float16 (C, *S) in the original image grid: softmax per class, or one sigmoid per
                 region for region-based models
  spacing, origin, direction  float64 arrays, the Geometry fields (so a segmentation can be written
                              without the source image)
  regions_class_order  int array, only for region-based models: how a segmentation is painted
Averaging probabilities, not logits, is nnU-Net's choice too: models with sharper logits would
otherwise dominate. Files to be averaged must agree on shape, geometry and decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from voxseg.data.io import Geometry, write_image
from voxseg.errors import InputError
from voxseg.inference.postprocess import apply_postprocessing
from voxseg.io_utils import atomic_path
from voxseg.model.outputs import OutputScheme


def decoding(channels: int, regions_class_order: Sequence[int] | None) -> OutputScheme:
    """The OutputScheme needed to turn saved probabilities into a label map."""
    if not regions_class_order:
        return OutputScheme(channels)
    # Region membership is not needed to decode, only the order each region paints its label in.
    return OutputScheme(
        max(regions_class_order) + 1, tuple((int(v),) for v in regions_class_order), tuple(int(v) for v in regions_class_order)
    )


def probabilities_to_segmentation(
    probabilities: np.ndarray | torch.Tensor, regions_class_order: Sequence[int] | None = None
) -> np.ndarray:
    """Argmax over classes; for regions, each region above 0.5 paints its label in the given order."""
    p = torch.as_tensor(probabilities)
    return decoding(p.shape[0], regions_class_order).segmentation(p).cpu().numpy()


def save_probabilities(
    path: str | Path, probabilities: np.ndarray, geometry: Geometry, regions_class_order: Sequence[int] | None = None
) -> None:
    """Write CASE.npz (float16 to halve the disk use; averaging happens in float32)."""
    extra = {} if not regions_class_order else {"regions_class_order": np.asarray(regions_class_order, dtype=np.int32)}
    with atomic_path(path) as tmp:
        np.savez_compressed(
            tmp,
            probabilities=np.asarray(probabilities, dtype=np.float16),
            spacing=np.asarray(geometry.spacing),
            origin=np.asarray(geometry.origin),
            direction=np.asarray(geometry.direction),
            allow_pickle=False,
            **extra,
        )


def load_probabilities(path: str | Path) -> tuple[np.ndarray, Geometry, tuple[int, ...] | None]:
    """(probabilities float32, geometry, regions_class_order or None) of a CASE.npz."""
    path = Path(path)
    try:
        with np.load(path) as data:
            probs = data["probabilities"].astype(np.float32)
            geometry = Geometry(*(tuple(float(v) for v in data[k]) for k in ("spacing", "origin", "direction")))
            order = tuple(int(v) for v in data["regions_class_order"]) if "regions_class_order" in data.files else None
    except (OSError, KeyError, ValueError) as e:
        raise InputError(
            f"not a voxseg probability file ({e})", path=path, fix="predict with --save-probabilities to write CASE.npz files"
        ) from None
    return probs, geometry, order


def ensemble_files(
    npz_files: Sequence[str | Path],
    out: str | Path,
    *,
    save_probabilities_to: str | Path | None = None,
    postprocessing: dict | None = None,
) -> np.ndarray:
    """Average the probability files of one case and write the segmentation `out` (its suffix picks
    the format, e.g. CASE.nii.gz), post-processed by a `find_postprocessing` rule when given;
    optionally also the averaged probabilities. Returns the seg."""
    if not npz_files:
        raise InputError("no probability files to ensemble", path=out, fix="pass at least one CASE.npz")
    total, geometry, order = load_probabilities(npz_files[0])
    for path in npz_files[1:]:
        probs, g, o = load_probabilities(path)
        if probs.shape != total.shape or g.differs_from(geometry):
            raise InputError(
                f"grid or class count {probs.shape} differs from {npz_files[0]} {total.shape}",
                path=path,
                fix="ensemble predictions of the same cases and dataset only",
            )
        if o != order:
            raise InputError(
                f"decoding differs from {npz_files[0]} (regions_class_order {o} vs {order})",
                path=path,
                fix="ensemble models trained on the same labels or regions only",
            )
        total += probs
    total /= len(npz_files)
    seg = probabilities_to_segmentation(total, order)
    if postprocessing is not None:
        seg = apply_postprocessing(seg, postprocessing)
    write_image(out, seg.astype(np.uint8 if seg.max(initial=0) < 256 else np.int16), geometry)
    if save_probabilities_to is not None:
        save_probabilities(save_probabilities_to, total, geometry, order)
    return seg


def ensemble_folders(
    folders: Sequence[str | Path],
    out_dir: str | Path,
    file_ending: str,
    *,
    save_probabilities: bool = False,
    postprocessing: dict | None = None,
) -> list[Path]:
    """`ensemble_files` for every case present (as CASE.npz) in all folders; returns written files."""
    dirs = [Path(f) for f in folders]
    if len(dirs) < 2:
        raise InputError("ensembling needs at least two prediction folders", fix="pass two or more folders")
    per_folder = [{p.stem for p in f.glob("*.npz")} for f in dirs]
    cases = sorted(set.intersection(*per_folder))
    if not cases:
        raise InputError(
            "no CASE.npz present in every folder", path=dirs[0], fix="predict each configuration with --save-probabilities"
        )
    out_dir = Path(out_dir)
    written = []
    for case in cases:
        target = out_dir / f"{case}{file_ending}"
        ensemble_files(
            [f / f"{case}.npz" for f in dirs],
            target,
            save_probabilities_to=out_dir / f"{case}.npz" if save_probabilities else None,
            postprocessing=postprocessing,
        )
        written.append(target)
    return written
