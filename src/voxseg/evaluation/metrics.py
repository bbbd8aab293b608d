"""Segmentation metrics per label or region: overlap counts, Dice, IoU, HD95 and surface Dice (NSD).

nnU-Net reports only overlap metrics; users ask for boundary metrics (its issue 2302), so HD95 and
NSD are computed here in millimetres from the voxel spacing. Hand-written rather than taken from a
metrics library (MONAI, surface-distance) to avoid a heavy dependency and to crop to the bounding
box of prediction | reference before any distance transform, which makes 256^3 volumes with small
structures fast.

Conventions (documented in docs/evaluation.md):
- voxels whose reference is `IGNORE` are excluded from every metric (prediction and reference);
- Dice and IoU are NaN when prediction and reference are both empty (nothing to get right);
- HD95 is NaN when either is empty (a distance to nothing is undefined; n_pred / n_ref tell why);
- NSD is NaN when both are empty and 0 when exactly one is;
- surfaces are voxel sets (mask minus its face-connected erosion); HD95 is the larger of the two
  directed 95th percentiles of surface-to-surface distances; NSD is the fraction of both surfaces'
  voxels lying within `nsd_tolerance` mm of the other surface.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from voxseg.data.labels import IGNORE

ALL_METRICS = ("dice", "iou", "hd95", "nsd")
# Keys as nnU-Net's summary.json writes them, so existing tooling reads our files.
_KEY = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "nsd": "NSD"}


def label_key(label: int | Sequence[int]) -> str:
    """summary.json key of a label (`"1"`) or region (`"(1, 2)"`), as nnU-Net writes them."""
    if isinstance(label, (int, np.integer)):
        return str(int(label))
    values = tuple(int(v) for v in label)
    return str(values[0]) if len(values) == 1 else str(values)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    coords = [np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    return tuple(slice(max(c[0] - margin, 0), min(c[-1] + 1 + margin, n)) for c, n in zip(coords, mask.shape))


def _surface(mask: np.ndarray) -> np.ndarray:
    # Outside the image counts as background (border_value=0), so masks touching the border close.
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and back.

    Both masks must be non-empty. Works on the bounding box of pred | ref plus one voxel, which holds
    every surface voxel, so the distances equal those computed on the full volume.
    """
    box = _bbox(pred | ref, margin=1)
    p_surf, r_surf = _surface(pred[box]), _surface(ref[box])
    sampling = tuple(float(s) for s in spacing)
    to_ref = ndimage.distance_transform_edt(~r_surf, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~p_surf, sampling=sampling)
    return to_ref[p_surf], to_pred[r_surf]


def hd95(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def nsd(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray, tolerance: float) -> float:
    close = np.count_nonzero(pred_to_ref <= tolerance) + np.count_nonzero(ref_to_pred <= tolerance)
    return float(close / (pred_to_ref.size + ref_to_pred.size))


def region_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    valid: np.ndarray | None,
    spacing: Sequence[float],
    *,
    metrics: Iterable[str] = ALL_METRICS,
    nsd_tolerance: float = 1.0,
) -> dict[str, float]:
    """Metrics of one binary prediction mask against one binary reference mask.

    `valid` (or None for all voxels) marks the voxels that count; masks are restricted to it.
    """
    metrics = set(metrics)
    if valid is not None:
        pred, ref = pred & valid, ref & valid
    n_valid = pred.size if valid is None else int(np.count_nonzero(valid))
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    out: dict[str, float] = {"TP": tp, "FP": fp, "FN": fn, "TN": n_valid - tp - fp - fn, "n_pred": n_pred, "n_ref": n_ref}
    if "dice" in metrics:
        out["Dice"] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")
    if "iou" in metrics:
        out["IoU"] = tp / (tp + fp + fn) if (tp + fp + fn) else float("nan")
    if metrics & {"hd95", "nsd"}:
        if n_pred and n_ref:
            d_pr, d_rp = surface_distances(pred, ref, spacing)
            if "hd95" in metrics:
                out["HD95"] = hd95(d_pr, d_rp)
            if "nsd" in metrics:
                out["NSD"] = nsd(d_pr, d_rp, nsd_tolerance)
        else:
            if "hd95" in metrics:
                out["HD95"] = float("nan")
            if "nsd" in metrics:
                out["NSD"] = float("nan") if not (n_pred or n_ref) else 0.0
    return out


def compute_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int | Sequence[int]],
    spacing: Sequence[float],
    *,
    metrics: Iterable[str] = ALL_METRICS,
    nsd_tolerance: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Metrics for each label (int) or region (tuple of labels) of one case, keyed by `label_key`.

    `pred` and `ref` are integer label maps of equal shape (a leading channel axis of 1 is
    dropped); reference voxels equal to `IGNORE` are excluded everywhere.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
    pred, ref = _squeeze(pred, len(spacing)), _squeeze(ref, len(spacing))
    if pred.shape != ref.shape or ref.ndim != len(spacing):
        raise ValueError(f"prediction {pred.shape}, reference {ref.shape} and spacing {tuple(spacing)} disagree")
    ignored = ref == IGNORE
    valid = ~ignored if ignored.any() else None
    result = {}
    for label in labels:
        values = [label] if isinstance(label, (int, np.integer)) else list(label)
        result[label_key(label)] = region_metrics(
            np.isin(pred, values), np.isin(ref, values), valid, spacing, metrics=metrics, nsd_tolerance=nsd_tolerance
        )
    return result


def _squeeze(a: np.ndarray, ndim: int) -> np.ndarray:
    """Drop the channel axis of a (1, *S) label map; the spacing says how many axes are spatial."""
    a = np.asarray(a)
    return a[0] if a.ndim == ndim + 1 and a.shape[0] == 1 else a


def mean_metrics(per_case: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """nanmean over cases of every metric of every label (NaN when all cases are NaN)."""
    keys = {k: None for case in per_case for k in case}
    out = {}
    for key in keys:
        names = {m: None for case in per_case if key in case for m in case[key]}
        out[key] = {m: nanmean([case[key][m] for case in per_case if key in case and m in case[key]]) for m in names}
    return out


def foreground_mean(means: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over labels of the per-label means (nnU-Net's `foreground_mean`)."""
    names = {m: None for v in means.values() for m in v}
    return {m: nanmean([v[m] for v in means.values() if m in v]) for m in names}


def nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without numpy's warning) when every value is NaN or none are given."""
    a = np.asarray(values, dtype=float)
    return float(np.nanmean(a)) if a.size and not np.isnan(a).all() else float("nan")
