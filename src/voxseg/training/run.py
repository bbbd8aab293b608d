"""`voxseg train`: resolve plan, fold, settings, device and run folder, then hand over to the loop.

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

from voxseg.errors import CheckpointError, InputError
from voxseg.io_utils import atomic_write_json, atomic_write_text
from voxseg.planning.fingerprint import Fingerprint
from voxseg.plans import load_plans
from voxseg.preprocessing.splits import load_or_create_splits
from voxseg.preprocessing.store import Store
from voxseg.training.distributed import init_distributed, shutdown_distributed
from voxseg.training.loop import fit
from voxseg.training.settings import Settings
from voxseg.training.trainer import Trainer, TrainingContext, load_trainer


def resolve_device(choice: str = "auto", local_rank: int = 0) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("--device cuda but no CUDA device is visible", fix="use --device cpu or install a CUDA build of torch")
        return torch.device("cuda", local_rank)
    if choice not in ("auto", "cpu"):
        raise InputError(f"unknown device '{choice}'", fix="use auto, cuda or cpu")
    return torch.device("cpu")


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
        raise InputError(f"fold '{fold}' does not exist ({len(splits)} folds in splits.json)", path=work_dir / "splits.json", fix=f"use 0..{len(splits) - 1} or all") from None
    missing = sorted((set(split["train"]) | set(split["val"])) - set(available))
    if missing:
        raise InputError(f"cases {missing[:5]} of the split are not preprocessed", path=work_dir, fix="run `voxseg preprocess` for this configuration")
    return FoldCases(list(split["train"]), list(split["val"]))


def run_dir_for(work_dir: Path, config: str, trainer_name: str, settings: Settings, fold: str, name: str | None) -> Path:
    tag = name or settings.digest()
    return work_dir / "runs" / f"{config}__{trainer_name}__{tag}" / f"fold_{fold}"


def _class_counts(work_dir: Path, train_ids: list[str], num_classes: int) -> list[int]:
    fp = Fingerprint.from_json(json.loads((work_dir / "fingerprint.json").read_text()))
    counts = np.zeros(num_classes, dtype=np.int64)
    wanted = set(train_ids)
    for case in fp.cases:
        if case.case_id in wanted:
            counts += np.asarray(case.class_voxel_counts[:num_classes], dtype=np.int64)
    return counts.tolist()


def final_validation(trainer: Trainer, out_dir: Path) -> dict:
    """Predict the fold's validation cases from the raw images with the predictor, then evaluate."""
    from voxseg.data.spec import load_dataset
    from voxseg.evaluation.evaluate import evaluate_folders
    from voxseg.inference.predictor import CaseInput, ModelGroup, Predictor

    ctx = trainer.ctx
    spec = load_dataset(ctx.plan.dataset_path)
    group = ModelGroup(ctx.plan, ctx.config_name, [trainer.network.eval()])
    cases = [CaseInput(cid, list(spec.case(cid).images)) for cid in ctx.val_ids]
    Predictor([group], ctx.device).predict_cases(cases, spec.file_ending, out_dir, save_probabilities=True, progress=False)
    summary = evaluate_folders(out_dir, spec.root / "labelsTr", spec.root / "dataset.json", output=out_dir / "summary.json", progress=False)
    print(f"final validation: foreground Dice {summary['foreground_mean'].get('Dice', float('nan')):.4f} on {len(cases)} cases -> {out_dir}")
    return summary


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
) -> Path:
    """Train one fold (or `all`); returns the run folder."""
    work_dir = Path(work_dir)
    plan = load_plans(work_dir)
    plan.configuration(config)  # clear error for an unknown configuration
    store = Store(work_dir / "store" / config)
    available = store.case_ids()
    if not available:
        raise InputError(f"no preprocessed cases for '{config}'", path=store.root, fix=f"run `voxseg preprocess {work_dir} --configs {config}`")
    trainer_cls: type[Trainer] = trainer if isinstance(trainer, type) else load_trainer(trainer)
    trainer_spec = f"{trainer.__module__}:{trainer.__qualname__}" if isinstance(trainer, type) else _absolute_trainer_spec(trainer)
    dev = resolve_device(device)
    dist = init_distributed(dev.type)
    if dist.world_size > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist.local_rank)
    seed = settings.training.seed
    torch.manual_seed(seed + dist.rank)
    np.random.seed(seed + dist.rank)
    random.seed(seed + dist.rank)
    cases = fold_cases(work_dir, fold, available)
    run_dir = run_dir_for(work_dir, config, trainer_cls.name, settings, fold, name)
    if resume and not (run_dir / "checkpoint_latest.pt").is_file():
        raise CheckpointError("nothing to resume: no checkpoint_latest.pt", path=run_dir, fix="train without --resume first")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "settings.yaml", settings.to_yaml())
        atomic_write_json(run_dir / "run.json", {"work_dir": str(work_dir.resolve()), "config": config, "fold": fold, "trainer": trainer_spec, "train": cases.train, "val": cases.val})
    from voxseg.data.spec import load_dataset

    class_names = load_dataset(plan.dataset_path).class_names if Path(plan.dataset_path).is_dir() else [str(i) for i in range(plan.num_classes)]
    ctx = TrainingContext(
        plan=plan,
        config_name=config,
        settings=settings,
        store=store,
        train_ids=cases.train,
        val_ids=cases.val,
        run_dir=run_dir,
        device=dev,
        class_voxel_counts=_class_counts(work_dir, cases.train, plan.num_classes),
        class_names=class_names,
        dist=dist,
        trainer_spec=trainer_spec,
    )
    t = trainer_cls(ctx)
    try:
        t.setup()
        if dist.is_main:
            weights = t.class_weights()
            print(f"training {config} fold {fold} with trainer '{trainer_cls.name}' on {dev} -> {run_dir}")
            print(f"class weights: {weights if weights is not None else 'none'}")
            atomic_write_json(run_dir / "class_weights.json", {"class_weights": weights, "class_voxel_counts": ctx.class_voxel_counts})
        fit(t, run_dir, resume=resume)
        if dist.is_main and settings.training.final_validation and fold != "all" and cases.val:
            final_validation(t, run_dir / "validation")
    finally:
        t.close()
        shutdown_distributed()
    return run_dir
