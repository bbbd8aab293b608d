"""Evaluate a folder of predictions against reference label files: summary.json + a flat CSV.

summary.json keeps nnU-Net's layout (`metric_per_case` with `prediction_file`, `reference_file`,
`metrics` per label key; `mean` per label; `foreground_mean`) so scripts written for nnU-Net read
it unchanged; we add `case_id`, `label_names`, the settings used, and HD95 / NSD. NaN is written as
the JSON token `NaN`, as nnU-Net does (Python's json reads it). The CSV has one row per
case x label for spreadsheets and pandas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxseg.data.io import Geometry, label_file_ending, read_image
from voxseg.data.spec import map_label_values, parse_labels, read_dataset_json
from voxseg.errors import InputError, NotFoundError
from voxseg.evaluation.metrics import (
    ALL_METRICS,
    compute_metrics,
    foreground_mean,
    label_key,
    mean_metrics,
)
from voxseg.io_utils import atomic_write_json, atomic_write_text
from voxseg.parallel import map_cases

CSV_COLUMNS = ("case_id", "label", "name", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "Dice", "IoU", "HD95", "NSD")


@dataclass(frozen=True)
class LabelSetup:
    """What evaluation needs from dataset.json (it does not need the images, so no DatasetSpec)."""

    file_ending: str  # of label and prediction files: label_file_ending(dataset file_ending)
    ignore_value: int | None
    eval_labels: tuple[int | tuple[int, ...], ...]  # foreground labels, or the regions
    names: dict[str, str]  # label_key -> class or region name
    # Partial labels: case id -> label keys its reference does not annotate (dataset.json's
    # annotated_classes); their metrics are NaN for that case, never 0.
    unannotated: dict[str, frozenset[str]] = field(default_factory=dict)


def load_label_setup(dataset_json: str | Path) -> LabelSetup:
    """Read labels, regions, ignore value and file ending from a dataset.json (file or its folder)."""
    path = Path(dataset_json)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise NotFoundError("dataset.json not found", path=path, fix="pass -d DATASET_FOLDER/dataset.json")
    meta = read_dataset_json(path.parent)
    labels, ignore, regions = parse_labels(path.parent, meta.get("labels"))
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError("key 'file_ending' missing", path=path, fix='add "file_ending": ".nii.gz"')
    groups: dict[str, int | tuple[int, ...]]
    if regions:
        groups = {name: tuple(v) for name, v in regions.items()}
    else:
        groups = {name: v for name, v in labels.items() if v != 0}
    ordered = sorted(groups.items(), key=lambda kv: (kv[1],) if isinstance(kv[1], int) else kv[1])
    annotated = meta.get("annotated_classes") or {}
    unannotated = {
        str(case): frozenset(label_key(v) for name, v in ordered if name not in names)
        for case, names in annotated.items()
        if isinstance(names, list)
    }
    return LabelSetup(
        file_ending=label_file_ending(ending),
        ignore_value=ignore,
        eval_labels=tuple(v for _, v in ordered),
        names={label_key(v): name for name, v in ordered},
        unannotated=unannotated,
    )


def match_cases(pred_dir: str | Path, ref_dir: str | Path, file_ending: str) -> list[tuple[str, Path, Path]]:
    """(case_id, prediction, reference) for every prediction file; each needs a reference."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for folder, what in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise NotFoundError(f"{what} folder not found", path=folder, fix=f"pass the folder holding the {what} files")
    preds = sorted(p for p in pred_dir.iterdir() if p.name.endswith(file_ending) and not p.name.startswith("."))
    if not preds:
        raise InputError(
            f"no prediction files ending in {file_ending}", path=pred_dir, fix="check the folder and the dataset's file_ending"
        )
    pairs = []
    for p in preds:
        ref = ref_dir / p.name
        if not ref.is_file():
            raise InputError(
                "prediction has no reference file of the same name",
                path=p,
                fix=f"put {p.name} in {ref_dir} or remove the prediction",
            )
        pairs.append((p.name[: -len(file_ending)], p, ref))
    return pairs


def read_pair(case_id: str, pred_path: Path, ref_path: Path, setup: LabelSetup) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Prediction and reference (ignore value mapped to IGNORE) on one checked grid."""
    pred, pred_geometry = read_image(pred_path)
    ref, ref_geometry = read_image(ref_path)
    bad = [] if pred.shape == ref.shape else ["shape"]
    bad += ref_geometry.differs_from(pred_geometry) if not bad else []
    if bad:
        raise InputError(
            f"case {case_id}: prediction {'/'.join(bad)} differs from the reference "
            f"(shape {pred.shape} vs {ref.shape}, spacing {pred_geometry.spacing} vs {ref_geometry.spacing})",
            path=pred_path,
            fix="predict on the original images (voxseg predict writes their geometry) or resample the prediction",
        )
    return pred.astype(np.int16, copy=False), map_label_values(ref, setup.ignore_value), ref_geometry


def iter_case_pairs(pred_dir, ref_dir, setup: LabelSetup) -> Iterator[tuple[str, np.ndarray, np.ndarray, Geometry]]:
    for case_id, p, r in match_cases(pred_dir, ref_dir, setup.file_ending):
        yield (case_id, *read_pair(case_id, p, r, setup))


def evaluate_case(
    case_id: str, pred_path: Path, ref_path: Path, setup: LabelSetup, metrics: Sequence[str], nsd_tolerance: float
) -> dict:
    pred, ref, geometry = read_pair(case_id, pred_path, ref_path, setup)
    values = compute_metrics(pred, ref, setup.eval_labels, geometry.spacing, metrics=metrics, nsd_tolerance=nsd_tolerance)
    for key in setup.unannotated.get(case_id, ()):
        values[key] = {m: float("nan") for m in values[key]}
    return {
        "case_id": case_id,
        "prediction_file": str(pred_path.resolve()),
        "reference_file": str(ref_path.resolve()),
        "metrics": values,
    }


def _evaluate_job(job: tuple) -> dict:
    return evaluate_case(*job)


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    dataset_json: str | Path,
    *,
    output: str | Path | None = None,
    metrics: Sequence[str] = ALL_METRICS,
    nsd_tolerance: float = 1.0,
    num_workers: int = 1,
    progress: bool = True,
) -> dict:
    """Evaluate every prediction in `pred_dir`; write `output` (default PRED_DIR/summary.json) and
    the CSV beside it (same name, .csv); return the summary."""
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise InputError(f"unknown metrics {sorted(unknown)}", fix=f"choose from {','.join(ALL_METRICS)}")
    if nsd_tolerance < 0:
        raise InputError(f"NSD tolerance {nsd_tolerance} mm is negative", fix="pass a tolerance >= 0 in millimetres")
    setup = load_label_setup(dataset_json)
    jobs = [(cid, p, r, setup, tuple(metrics), nsd_tolerance) for cid, p, r in match_cases(pred_dir, ref_dir, setup.file_ending)]
    per_case = map_cases(_evaluate_job, jobs, num_workers, desc="evaluate", progress=progress)
    means = mean_metrics([c["metrics"] for c in per_case])
    summary = {
        "foreground_mean": foreground_mean(means),
        "mean": means,
        "metric_per_case": per_case,
        "label_names": setup.names,
        "settings": {
            "metrics": list(metrics),
            "nsd_tolerance_mm": nsd_tolerance,
            "ignore_value": setup.ignore_value,
            "prediction_dir": str(Path(pred_dir).resolve()),
            "reference_dir": str(Path(ref_dir).resolve()),
        },
    }
    output = Path(output) if output is not None else Path(pred_dir) / "summary.json"
    atomic_write_json(output, summary)
    atomic_write_text(output.with_suffix(".csv"), summary_csv(summary))
    return summary


def summary_csv(summary: dict) -> str:
    """One row per case x label; empty cells for metrics that were not computed."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    names = summary.get("label_names", {})
    for case in summary["metric_per_case"]:
        for key, values in case["metrics"].items():
            writer.writerow(
                {
                    "case_id": case.get("case_id", Path(case["reference_file"]).name),
                    "label": key,
                    "name": names.get(key, ""),
                    **values,
                }
            )
    return buffer.getvalue()
