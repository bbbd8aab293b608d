"""Choose spacing, patch, batch and network per configuration under a GPU memory budget in bytes.

nnU-Net's search, with its element-count heuristic replaced by ``memory.estimate_training_memory``:
start from a 256^3 (3D) / 2048^2 (2D) patch shaped like the spacing-scaled median image, clip it to
the median shape, shrink the axis that most exceeds the median image (one divisor step at a time)
until batch 2 fits the budget, then take the largest batch that fits, capped so one batch holds at
most 5% of the dataset's voxels (and never below 2). User overrides are checked against the same
model; an override that cannot fit raises PlanError naming what would.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxseg.data.spec import DatasetSpec
from voxseg.errors import DatasetError, PlanError
from voxseg.io_utils import atomic_write_text
from voxseg.planning.fingerprint import Fingerprint, load_or_compute_fingerprint
from voxseg.planning.memory import estimate_training_memory
from voxseg.planning.normalization import plan_normalization
from voxseg.planning.spacing import median_shape_at, target_spacing, transpose_for
from voxseg.planning.topology import (
    deep_supervision_scales,
    network_dict,
    pooling_topology,
)
from voxseg.plans import ConfigurationPlan, Plan, load_plans

CONFIGS = ("2d", "3d_fullres", "3d_lowres")
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
MIN_BATCH = 2
MAX_DATASET_FRACTION = 0.05
LOWRES_MIN_COVERAGE = 0.25
LOWRES_SPACING_STEP = 1.03
GB = 1e9


@dataclass(frozen=True)
class PlannerOptions:
    gpu_memory_gb: float = 8.0
    configs: tuple[str, ...] = CONFIGS
    patch_size: tuple[int, ...] | None = None  # 3 values: 3D configurations, 2 values: 2d
    batch_size: int | None = None
    spacing: tuple[float, ...] | None = None  # dataset array order; 2d uses the in-plane part
    architecture: str = "plain_unet"
    precision_bytes: int = 2  # bf16 autocast
    normalization: dict[int, str] | None = None  # channel -> scheme, overrides the channel names
    like: str | None = None  # another WORK folder whose configurations (topology) to reuse

    @property
    def budget_bytes(self) -> float:
        return self.gpu_memory_gb * GB


@dataclass(frozen=True)
class _Problem:
    spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    dataset_voxels: float
    in_channels: int
    num_classes: int
    options: PlannerOptions = field(default_factory=PlannerOptions)


def _estimate(pb: _Problem, network: dict, patch: Sequence[int], batch: int) -> int:
    return estimate_training_memory(
        network, patch, batch, pb.in_channels, pb.num_classes, precision_bytes=pb.options.precision_bytes
    ).total_bytes


def initial_patch(spacing: Sequence[float], median_shape: Sequence[int]) -> list[int]:
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    dims = len(spacing)
    patch = inv * (INITIAL_PATCH_VOXELS[dims] / np.prod(inv)) ** (1.0 / dims)
    return [int(min(round(p), m)) for p, m in zip(patch, median_shape)]


def fit_patch(pb: _Problem) -> list[int]:
    """Largest patch (nnU-Net's shrinking order) whose batch-2 estimate fits the budget."""
    patch = list(pooling_topology(pb.spacing, initial_patch(pb.spacing, pb.median_shape)).patch_size)
    while True:
        topo = pooling_topology(pb.spacing, patch)
        patch = list(topo.patch_size)
        if _estimate(pb, network_dict(topo, pb.options.architecture), patch, MIN_BATCH) <= pb.options.budget_bytes:
            return patch
        axis = int(np.argmax(np.asarray(patch) / np.asarray(pb.median_shape)))
        trial = list(patch)
        trial[axis] -= topo.divisor[axis]
        step = pooling_topology(pb.spacing, trial).divisor[axis] if trial[axis] > 0 else topo.divisor[axis]
        patch[axis] -= step
        if patch[axis] < 4:
            raise PlanError(
                f"no patch fits {pb.options.gpu_memory_gb:g} GB at batch {MIN_BATCH}",
                fix="raise --gpu-memory (at least 2 GB for a 3D U-Net)",
            )


def largest_batch(pb: _Problem, network: dict, patch: Sequence[int]) -> int:
    """Largest batch whose estimate fits (0 if even batch 1 does not); bisection, the estimate is monotone."""
    lo, hi = 0, 1
    while _estimate(pb, network, patch, hi) <= pb.options.budget_bytes and hi < 1 << 16:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _estimate(pb, network, patch, mid) <= pb.options.budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def plan_configuration(pb: _Problem, dims: int, *, batch_dice: bool) -> ConfigurationPlan:
    opts = pb.options
    patch_override = opts.patch_size if opts.patch_size is not None and len(opts.patch_size) == dims else None
    if patch_override is not None:
        topo = pooling_topology(pb.spacing, patch_override)
        if tuple(topo.patch_size) != tuple(patch_override):
            raise PlanError(
                f"patch size {list(patch_override)} is not divisible by the network's total stride {list(topo.divisor)}",
                fix=f"use --patch-size {','.join(map(str, topo.patch_size))}",
            )
        patch = list(patch_override)
    else:
        patch = fit_patch(pb)
        topo = pooling_topology(pb.spacing, patch)
    network = network_dict(topo, opts.architecture)
    fits = largest_batch(pb, network, patch)
    if opts.batch_size is not None:
        batch = opts.batch_size
    else:
        cap = round(pb.dataset_voxels * MAX_DATASET_FRACTION / math.prod(patch))
        batch = max(min(fits, cap), MIN_BATCH)
    if batch > fits:
        auto = fit_patch(pb)
        need = _estimate(pb, network, patch, batch)
        raise PlanError(
            f"{dims}D patch {patch} at batch {batch} needs {need / GB:.1f} GB, over the {opts.gpu_memory_gb:g} GB budget",
            fix=(f"use batch {fits} with this patch, " if fits >= 1 else "")
            + f"or patch {','.join(map(str, auto))} at batch {MIN_BATCH}, or raise --gpu-memory",
        )
    est = estimate_training_memory(network, patch, batch, pb.in_channels, pb.num_classes, precision_bytes=opts.precision_bytes)
    return ConfigurationPlan(
        dims=dims,
        spacing=[float(s) for s in pb.spacing],
        median_shape=[int(s) for s in pb.median_shape],
        patch_size=[int(p) for p in patch],
        batch_size=int(batch),
        batch_dice=batch_dice,
        network=network,
        deep_supervision_scales=deep_supervision_scales(network["strides"]),
        memory={
            "budget_bytes": opts.budget_bytes,
            "estimate_bytes": est.total_bytes,
            "precision": {2: "bf16", 4: "fp32"}.get(opts.precision_bytes, str(opts.precision_bytes)),
            "breakdown": est.breakdown,
        },
    )


def _plan_lowres(pb: _Problem, fullres: ConfigurationPlan) -> ConfigurationPlan | None:
    """Coarser spacing until the patch covers >= 25% of the median image (nnU-Net's 1.03 steps)."""
    full_spacing = np.asarray(fullres.spacing)
    full_median = np.asarray(fullres.median_shape, dtype=np.float64)
    spacing = full_spacing.copy()
    plan = fullres
    while math.prod(plan.patch_size) / np.prod(full_median * full_spacing / spacing) < LOWRES_MIN_COVERAGE:
        finer = spacing.max() / spacing > 2  # bring the fine axes up first on anisotropic data
        spacing = spacing * np.where(finer, LOWRES_SPACING_STEP, 1.0) if finer.any() else spacing * LOWRES_SPACING_STEP
        median = tuple(int(round(v)) for v in full_median * full_spacing / spacing)
        sub = _Problem(tuple(float(s) for s in spacing), median, pb.dataset_voxels, pb.in_channels, pb.num_classes, pb.options)
        plan = plan_configuration(sub, 3, batch_dice=False)
    return None if plan.patch_size == fullres.patch_size and plan.spacing == fullres.spacing else plan


def plan_dataset(spec: DatasetSpec, fingerprint: Fingerprint, options: PlannerOptions = PlannerOptions()) -> Plan:
    unknown = [c for c in options.configs if c not in CONFIGS]
    if unknown:
        raise PlanError(f"unknown configuration(s) {unknown}", fix=f"choose from {', '.join(CONFIGS)}")
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_after_crop
    ndim = spacings.shape[1]
    if options.spacing is not None and len(options.spacing) != ndim:
        raise PlanError(
            f"--spacing needs {ndim} values for this {ndim}D dataset", fix="e.g. --spacing " + ",".join(["1.0"] * ndim)
        )
    spacing = tuple(options.spacing) if options.spacing is not None else target_spacing(spacings, shapes)
    forward, backward = transpose_for(spacing) if ndim == 3 else (list(range(ndim)), list(range(ndim)))
    spacing_t = tuple(spacing[a] for a in forward)
    median_t = tuple(median_shape_at(spacings, shapes, spacing)[a] for a in forward)
    dataset_voxels = float(np.prod(median_t, dtype=np.float64)) * len(fingerprint.cases)
    base = _Problem(spacing_t, median_t, dataset_voxels, len(spec.channel_names), spec.num_classes, options)

    configs: dict[str, ConfigurationPlan] = {}
    if "2d" in options.configs:
        inplane = _Problem(spacing_t[-2:], median_t[-2:], dataset_voxels, base.in_channels, base.num_classes, options)
        configs["2d"] = plan_configuration(inplane, 2, batch_dice=True)
    if ndim == 3 and ({"3d_fullres", "3d_lowres"} & set(options.configs)):
        fullres = plan_configuration(base, 3, batch_dice=False)
        lowres = _plan_lowres(base, fullres) if options.patch_size is None else None
        # nnU-Net: batch Dice for fullres only when a cascade exists (large images), else per sample.
        fullres = dataclasses.replace(fullres, batch_dice=lowres is not None)
        if "3d_fullres" in options.configs:
            configs["3d_fullres"] = fullres
        if "3d_lowres" in options.configs and lowres is not None:
            configs["3d_lowres"] = lowres
        if {"3d_fullres", "3d_lowres"} <= set(options.configs) and lowres is not None:
            # nnU-Net's cascade: the full-resolution network refines the low-resolution segmentation,
            # reading the 3d_fullres store plus the low-resolution stage's out-of-fold predictions.
            configs["3d_lowres"] = dataclasses.replace(lowres, next_stage="3d_cascade_fullres")
            configs["3d_cascade_fullres"] = dataclasses.replace(fullres, previous_stage="3d_lowres", data_from="3d_fullres")
    if not configs:
        raise PlanError(f"none of {list(options.configs)} applies to this {ndim}D dataset", fix="use --configs 2d")
    return Plan(
        dataset_name=spec.name,
        dataset_path=str(spec.root),
        num_classes=spec.num_classes,
        has_ignore=spec.ignore_value is not None,
        channel_names=list(spec.channel_names),
        transpose_forward=forward,
        transpose_backward=backward,
        normalization=plan_normalization(
            spec.channel_names, fingerprint.channel_stats, fingerprint.median_kept_fraction, options.normalization
        ),
        configurations=configs,
        class_names=spec.class_names,
        regions=[list(r) for r in spec.regions.values()] if spec.regions else None,
        region_names=list(spec.regions) if spec.regions else None,
        regions_class_order=list(spec.regions_class_order) if spec.regions_class_order else None,
        image_reader=spec.reader,
    )


def plan_like(spec: DatasetSpec, fingerprint: Fingerprint, other: Plan) -> Plan:
    """Another plan's configurations (spacing, patch, batch, topology, transpose, normalisation
    schemes) for this dataset, as nnU-Net's move_plans_between_datasets: so a model trained with
    `other` can be fine-tuned here. CT statistics come from this dataset's fingerprint."""
    if len(other.channel_names) != len(spec.channel_names):
        raise PlanError(
            f"--like plan has {len(other.channel_names)} channels, this dataset {len(spec.channel_names)}",
            fix="fine-tune only between datasets with the same channels, or plan without --like",
        )
    dims = len(fingerprint.spacings[0])
    if any(c.dims == 3 for c in other.configurations.values()) and dims != 3:
        raise PlanError(f"--like plan is 3D but this dataset is {dims}D", fix="plan without --like")
    normalization = []
    for norm, st in zip(other.normalization, fingerprint.channel_stats):
        if norm.scheme == "ct":
            norm = dataclasses.replace(norm, mean=st["mean"], std=st["std"], lower=st["p00_5"], upper=st["p99_5"])
        normalization.append(dataclasses.replace(norm))
    return Plan(
        dataset_name=spec.name,
        dataset_path=str(spec.root),
        num_classes=spec.num_classes,
        has_ignore=spec.ignore_value is not None,
        channel_names=list(spec.channel_names),
        transpose_forward=list(other.transpose_forward),
        transpose_backward=list(other.transpose_backward),
        normalization=normalization,
        configurations={k: ConfigurationPlan.from_json(v.to_json()) for k, v in other.configurations.items()},
        class_names=spec.class_names,
        regions=[list(r) for r in spec.regions.values()] if spec.regions else None,
        region_names=list(spec.regions) if spec.regions else None,
        regions_class_order=list(spec.regions_class_order) if spec.regions_class_order else None,
        image_reader=spec.reader,
    )


def plan_and_save(
    dataset_dir: str | Path,
    work_dir: str | Path,
    options: PlannerOptions = PlannerOptions(),
    *,
    workers: int | None = None,
    progress: bool = True,
) -> Plan:
    """`voxseg plan`: verify, fingerprint (cached), plan, write plans.json and a copy of dataset.json."""
    from voxseg.data.spec import load_dataset
    from voxseg.data.verify import verify_dataset

    problems = verify_dataset(dataset_dir, workers=workers, progress=progress)
    if problems:  # each printed once, then an error line that does not repeat any of them
        for p in problems:
            print(p, file=sys.stderr)
        n = len(problems)
        raise DatasetError(
            f"{n} problem{'s' if n > 1 else ''} in the dataset, listed above",
            path=dataset_dir,
            fix=f"fix them and plan again; `voxseg verify {dataset_dir}` checks without planning",
        )
    spec = load_dataset(dataset_dir)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = load_or_compute_fingerprint(spec, work, workers, progress)
    plan = plan_like(spec, fingerprint, load_plans(options.like)) if options.like else plan_dataset(spec, fingerprint, options)
    plan.save(work)
    atomic_write_text(work / "dataset.json", (spec.root / "dataset.json").read_text())
    return plan
