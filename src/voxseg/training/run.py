"""Training one fold: resolve plan, fold, settings, device and run folder, then hand over to the loop.

Final validation (predicting the fold's validation cases with the predictor) is not training; it
lives in `voxseg.workflows.train`, which the `voxseg train` command runs.

Run folder: ``WORK/runs/<config>__<trainer>__<settings-hash or --name>/fold_N/`` holding
``settings.yaml``, ``run.json``, ``log.jsonl``, ``progress.png``, ``sampling_stats.json`` and the
checkpoints. Only rank 0 writes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from voxseg.device import resolve_device
from voxseg.distributed import init_distributed, shutdown_distributed
from voxseg.errors import CheckpointError, InputError
from voxseg.io_utils import atomic_write_json, atomic_write_text
from voxseg.planning.fingerprint import Fingerprint
from voxseg.plans import Plan, load_plans
from voxseg.preprocessing.preprocess import store_dir
from voxseg.preprocessing.splits import load_or_create_splits
from voxseg.preprocessing.store import Store
from voxseg.training.cascade import PREVIOUS, check_complete, find_previous_run, next_stage_files
from voxseg.training.loop import fit
from voxseg.training.settings import Settings
from voxseg.training.trainer import Trainer, TrainingContext, load_trainer


@dataclass(frozen=True)
class FoldCases:
    train: list[str]
    val: list[str]


def fold_cases(work_dir: Path, fold: str, available: list[str]) -> FoldCases:
    if fold == "all":
        return FoldCases(list(available), list(available))
    splits = load_or_create_splits(work_dir, available)
    try:
        k = int(fold)
        split = splits[k]
    except (ValueError, IndexError):
        raise InputError(
            f"fold '{fold}' does not exist ({len(splits)} folds in splits.json)",
            path=work_dir / "splits.json",
            fix=f"use 0..{len(splits) - 1} or all",
        ) from None
    missing = sorted((set(split["train"]) | set(split["val"])) - set(available))
    if missing:
        raise InputError(
            f"cases {missing[:5]} of the split are not preprocessed",
            path=work_dir,
            fix="run `voxseg preprocess` for this configuration",
        )
    return FoldCases(list(split["train"]), list(split["val"]))


def run_dir_for(work_dir: Path, config: str, trainer_name: str, settings: Settings, fold: str, name: str | None) -> Path:
    tag = name or settings.digest()
    return work_dir / "runs" / f"{config}__{trainer_name}__{tag}" / f"fold_{fold}"


def _output_counts(work_dir: Path, train_ids: list[str], plan: Plan) -> list[int]:
    """Voxels per output (class, or region) over the training cases, from the fingerprint."""
    fp = Fingerprint.from_json(json.loads((work_dir / "fingerprint.json").read_text()))
    counts = np.zeros(plan.num_classes, dtype=np.int64)
    wanted = set(train_ids)
    for case in fp.cases:
        if case.case_id in wanted:
            counts += np.asarray(case.class_voxel_counts[: plan.num_classes], dtype=np.int64)
    if plan.regions:
        return [int(sum(counts[v] for v in region if v < len(counts))) for region in plan.regions]
    return counts.tolist()


def _absolute_trainer_spec(spec: str) -> str:
    """A file-based trainer is recorded with an absolute path so predict finds it from anywhere."""
    where, _, cls = spec.rpartition(":")
    return f"{Path(where).resolve()}:{cls}" if where.endswith(".py") else spec


def train(
    work_dir: str | Path,
    config: str,
    fold: str,
    settings: Settings,
    *,
    trainer: str | type[Trainer] = "default",
    device: str = "auto",
    resume: bool = False,
    name: str | None = None,
    pretrained: str | Path | None = None,
    previous_stage: str | Path | None = None,
) -> Path:
    """Train one fold (or `all`); returns the run folder. `pretrained`: fine-tune from that
    checkpoint / fold / run folder (`voxseg.training.pretrained`)."""
    work_dir = Path(work_dir)
    plan = load_plans(work_dir)
    plan.configuration(config)  # clear error for an unknown configuration
    store = Store(store_dir(work_dir, config, plan))
    available = store.case_ids()
    previous_run = None
    if plan.configuration(config).previous_stage is not None:
        previous_run = find_previous_run(work_dir, plan, config, previous_stage)
        files = next_stage_files(previous_run)
        store = Store(store.root, overlays={PREVIOUS: files})
    if not available:
        raise InputError(
            f"no preprocessed cases for '{config}'", path=store.root, fix=f"run `voxseg preprocess {work_dir} --configs {config}`"
        )
    trainer_cls: type[Trainer] = trainer if isinstance(trainer, type) else load_trainer(trainer)
    trainer_spec = (
        f"{trainer.__module__}:{trainer.__qualname__}" if isinstance(trainer, type) else _absolute_trainer_spec(trainer)
    )
    dev = resolve_device(device)
    dist = init_distributed(dev.type)
    if dist.world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
    seed = settings.training.seed
    torch.manual_seed(seed + dist.rank)
    np.random.seed(seed + dist.rank)
    random.seed(seed + dist.rank)
    cases = fold_cases(work_dir, fold, available)
    if previous_run is not None:
        check_complete(store.overlays[PREVIOUS], cases.train + cases.val, previous_run, work_dir)
    run_dir = run_dir_for(work_dir, config, trainer_cls.name, settings, fold, name)
    if resume and not any((run_dir / n).is_file() for n in ("checkpoint_latest.pt", "checkpoint_best.pt")):
        raise CheckpointError(
            "nothing to resume: no checkpoint_latest.pt or checkpoint_best.pt", path=run_dir, fix="train without --resume first"
        )
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "settings.yaml", settings.to_yaml())
        atomic_write_json(
            run_dir / "run.json",
            {
                "work_dir": str(work_dir.resolve()),
                "config": config,
                "fold": fold,
                "trainer": trainer_spec,
                "pretrained": str(Path(pretrained).resolve()) if pretrained else None,
                "previous_stage": str(previous_run.resolve()) if previous_run else None,
                "train": cases.train,
                "val": cases.val,
            },
        )
    from voxseg.data.spec import load_dataset

    class_names = (
        load_dataset(plan.dataset_path).class_names
        if Path(plan.dataset_path).is_dir()
        else [str(i) for i in range(plan.num_classes)]
    )
    ctx = TrainingContext(
        plan=plan,
        config_name=config,
        settings=settings,
        store=store,
        train_ids=cases.train,
        val_ids=cases.val,
        run_dir=run_dir,
        device=dev,
        class_voxel_counts=_output_counts(work_dir, cases.train, plan),
        class_names=class_names,
        dist=dist,
        trainer_spec=trainer_spec,
        pretrained=Path(pretrained) if pretrained is not None and not resume else None,
        previous_stage=previous_run,
    )
    t = trainer_cls(ctx)
    try:
        t.setup()
        if dist.is_main:
            weights = t.class_weights()
            print(f"training {config} fold {fold} with trainer '{trainer_cls.name}' on {dev} -> {run_dir}")
            print(f"class weights: {weights if weights is not None else 'none'}")
            atomic_write_json(
                run_dir / "class_weights.json", {"class_weights": weights, "class_voxel_counts": ctx.class_voxel_counts}
            )
        fit(t, run_dir, resume=resume)
    finally:
        t.close()
        shutdown_distributed()
    return run_dir
