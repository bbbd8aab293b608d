"""Preprocess cases for a planned configuration: transpose -> crop -> normalise -> resample.

`preprocess_case` is the single-case entry the predictor reuses for test images;
`restore_channels` / `restore_labels` undo it (resample back, un-crop, transpose back) using only the
returned properties. `preprocess_dataset` writes every training case into ``WORK/store/<config>/``
through `store.write_case` (atomic, properties last), skipping cases already written with the same
plan, so an interrupted run resumes where it stopped.

Label handling differs from nnU-Net in one place: voxels outside the non-zero mask stay background
instead of becoming -1, because -1 is our ignore sentinel; nnU-Net turns its -1 back into background
before the loss anyway, so training sees the same targets.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxseg.data.crop import crop, filled_nonzero_mask, nonzero_bbox, uncrop
from voxseg.data.io import Geometry, read_case_images
from voxseg.data.spec import DatasetSpec, load_dataset, read_label
from voxseg.errors import DatasetError, InputError
from voxseg.io_utils import remove_temp_files
from voxseg.parallel import map_cases
from voxseg.plans import Plan, load_plans
from voxseg.preprocessing.locations import case_seed, class_locations, output_groups
from voxseg.preprocessing.normalize import normalize_channels
from voxseg.preprocessing.resample import (
    coarse_axis_for,
    resample_channels,
    resample_labels,
)
from voxseg.preprocessing.splits import load_or_create_splits
from voxseg.preprocessing.store import Store, label_dtype, write_case

FLAT_AXIS_SPACING = 999.0  # 2D images get a singleton slice axis, as nnU-Net does


def target_spacing_for(plan: Plan, config_name: str, spacing: Sequence[float]) -> list[float]:
    """The configuration's spacing for a case; 2D configurations keep the case's own slice spacing."""
    cfg = plan.configuration(config_name)
    return [float(spacing[0])] + list(cfg.spacing) if cfg.dims == 2 else list(cfg.spacing)


def preprocess_arrays(
    images: np.ndarray, geometry: Geometry, plan: Plan, config_name: str, labels: Sequence[np.ndarray] = ()
) -> tuple[np.ndarray, list[np.ndarray], dict]:
    """Like `preprocess_case` for any number of label maps on the image grid (main + extra)."""
    original_shape = list(images.shape[1:])
    added_axis = images.ndim == 3
    spacing = list(geometry.spacing)
    if added_axis:
        images = images[:, None]
        labels = [lab[:, None] for lab in labels]
        spacing = [FLAT_AXIS_SPACING] + spacing
        forward = [0, 1, 2]
    else:
        forward = list(plan.transpose_forward)
    axes = [0] + [a + 1 for a in forward]
    images = np.ascontiguousarray(images.transpose(axes), dtype=np.float32)
    labels = [lab.transpose(axes) for lab in labels]
    spacing = [spacing[a] for a in forward]
    shape_before_crop = list(images.shape[1:])

    box = nonzero_bbox(images)
    images = np.array(crop(images, box), dtype=np.float32)  # own copy: normalised in place
    labels = [crop(lab, box) for lab in labels]
    shape_after_crop = list(images.shape[1:])
    mask = filled_nonzero_mask(images) if any(n.use_nonzero_mask for n in plan.normalization) else None
    normalize_channels(images, plan.normalization, mask)

    target = target_spacing_for(plan, config_name, spacing)
    # nnU-Net's order of operations (spacing ratio first): the two differ by a voxel in rare cases
    new_shape = [max(1, int(round(sp / t * s))) for s, sp, t in zip(shape_after_crop, spacing, target)]
    nearest_axis = coarse_axis_for(spacing, target)
    images = resample_channels(images, new_shape, order=3, nearest_axis=nearest_axis)
    dtype = label_dtype(plan.num_classes)
    labels = [
        resample_labels(np.asarray(lab, dtype=np.int16), new_shape, nearest_axis=nearest_axis).astype(dtype) for lab in labels
    ]
    properties = {
        "original_shape": original_shape,
        "geometry": geometry.to_json(),
        "added_axis": added_axis,
        "transpose_forward": forward,
        "transpose_backward": [int(i) for i in np.argsort(forward)],
        "shape_before_crop": shape_before_crop,
        "bbox": box,
        "shape_after_crop": shape_after_crop,
        "original_spacing": spacing,
        "spacing": target,
        "nearest_axis": nearest_axis,
        "shape_after_resample": new_shape,
    }
    return images, labels, properties


def preprocess_case(
    images: np.ndarray, geometry: Geometry, plan: Plan, config_name: str, seg: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(C, *S) float image (+ optional (1, *S) label map) -> preprocessed arrays and properties."""
    image, labels, props = preprocess_arrays(images, geometry, plan, config_name, [] if seg is None else [seg])
    return image, (labels[0] if labels else None), props


def labels_to_store_grid(seg: np.ndarray, properties: dict) -> np.ndarray:
    """A (1, *original) label map (e.g. a previous cascade stage's prediction) onto the grid of the
    preprocessed case `properties` describe: transposed, cropped and resampled as its labels were."""
    if properties["added_axis"]:
        seg = seg[:, None]
    seg = seg.transpose([0] + [a + 1 for a in properties["transpose_forward"]])
    seg = crop(seg, properties["bbox"])
    return resample_labels(
        np.asarray(seg, dtype=np.int16), properties["shape_after_resample"], nearest_axis=properties["nearest_axis"]
    )


def _back_to_original(array: np.ndarray, properties: dict, fill) -> np.ndarray:
    full = uncrop(array, properties["bbox"], properties["shape_before_crop"], fill)
    full = full.transpose([0] + [a + 1 for a in properties["transpose_backward"]])
    return full[:, 0] if properties["added_axis"] else full


def restore_channels(array: np.ndarray, properties: dict, *, order: int = 1, fill: float | Sequence[float] = 0.0) -> np.ndarray:
    """Float (C, *preprocessed) (e.g. logits or probabilities) -> (C, *original_shape).

    `fill` (scalar or per channel) is written outside the crop box, e.g. background probability 1.
    """
    resampled = resample_channels(array, properties["shape_after_crop"], order=order, nearest_axis=properties["nearest_axis"])
    return np.ascontiguousarray(_back_to_original(resampled, properties, fill))


def restore_labels(seg: np.ndarray, properties: dict) -> np.ndarray:
    """Integer (1, *preprocessed) label map -> (1, *original_shape), background outside the crop."""
    resampled = resample_labels(seg, properties["shape_after_crop"], nearest_axis=properties["nearest_axis"])
    return np.ascontiguousarray(_back_to_original(resampled, properties, 0))


def plan_key(plan: Plan, config_name: str) -> str:
    """Hash of everything in the plan that changes stored arrays; a stored case with another key is redone."""
    cfg = plan.configuration(config_name)
    relevant = {
        "spacing": cfg.spacing,
        "dims": cfg.dims,
        "transpose": plan.transpose_forward,
        "normalization": [vars(n) for n in plan.normalization],
        "num_classes": plan.num_classes,
        "regions": plan.regions,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _one_case(args: tuple[DatasetSpec, Plan, str, int, Path]) -> str:
    spec, plan, config_name, index, out_root = args
    case = spec.training[index]
    images, geometry = read_case_images(case.images, spec.reader, n_channels=len(spec.channel_names))
    assert case.label is not None  # every training case names its label file
    seg, _ = read_label(case.label, spec)
    extra_names = sorted(spec.extra_label_dirs)
    extra = [read_label(spec.extra_label(n, case.case_id), spec)[0] for n in extra_names]
    try:
        image, labels, props = preprocess_arrays(images, geometry, plan, config_name, [seg, *extra])
    except DatasetError as e:  # normalisation refuses values, without knowing the file
        raise DatasetError(e.message, path=e.path or case.images[0], fix=e.fix) from None
    seg_pp = labels[0]
    counts = np.bincount(seg_pp[seg_pp >= 0].ravel().astype(np.int64), minlength=plan.num_classes)
    props["class_voxel_counts"] = [int(c) for c in counts[: plan.num_classes]]
    groups = output_groups(plan.num_classes, plan.regions)
    props["output_voxel_counts"] = {k: int(sum(counts[v] for v in values if v < len(counts))) for k, values in groups.items()}
    props["plan_key"] = plan_key(plan, config_name)
    annotated = spec.annotated_outputs(case.case_id)
    if annotated is not None:
        props["annotated_outputs"] = annotated
        # Never force a patch onto an output the case does not annotate (verify keeps such labels out).
        offset = 0 if plan.regions else 1
        groups = {k: v for k, v in groups.items() if annotated[int(k) - 1 + offset]}
    locations = class_locations(seg_pp, groups, plan.has_ignore, case_seed(case.case_id))
    write_case(out_root, case.case_id, image, seg_pp, props, locations, dict(zip(extra_names, labels[1:])))
    return case.case_id


def _is_current(store: Store, case_id: str, key: str) -> bool:
    """A finished case written with this plan; a damaged CASE.json is redone, not trusted."""
    if not store.has_case(case_id):
        return False
    try:
        return store.properties(case_id).get("plan_key") == key
    except InputError:
        return False


def store_dir(work_dir: str | Path, config_name: str, plan: Plan | None = None) -> Path:
    """WORK/store/<name>: the configuration's own store, or the one it shares (`data_from`)."""
    return Path(work_dir) / "store" / (plan.store_of(config_name) if plan is not None else config_name)


def preprocess_dataset(
    work_dir: str | Path,
    configs: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    group_regex: str | None = None,
    splits_file: str | Path | None = None,
) -> dict[str, int]:
    """Preprocess every training case for each configuration; returns cases written per configuration."""
    plan = load_plans(work_dir)
    spec = load_dataset(plan.dataset_path)
    jobs, written = [], {}
    # Configurations sharing another's store (the cascade) need that one preprocessed, once.
    names = dict.fromkeys(plan.store_of(n) for n in (configs or list(plan.configurations)))
    for name in names:
        plan.configuration(name)  # unknown name -> PlanError naming the planned ones
        root = store_dir(work_dir, name)
        root.mkdir(parents=True, exist_ok=True)
        remove_temp_files(root)
        store, key = Store(root), plan_key(plan, name)
        todo = [i for i, c in enumerate(spec.training) if overwrite or not _is_current(store, c.case_id, key)]
        jobs += [(spec, plan, name, i, root) for i in todo]
        written[name] = len(todo)
    # One pool for all configurations: worker start-up is paid once.
    map_cases(_one_case, jobs, workers, desc="preprocess", progress=progress)
    load_or_create_splits(work_dir, spec.case_ids, groups=spec.groups, group_regex=group_regex, user_file=splits_file)
    return written
