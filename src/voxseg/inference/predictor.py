"""`voxseg predict`: raw images in, segmentations with the input's exact geometry out.

Per case: read -> preprocess exactly as in training -> sliding window (Gaussian, batched tiles and
mirror flips, mixed precision) for every fold/model -> softmax probabilities averaged -> resampled
back to the original spacing on the device -> argmax -> crop and transpose undone -> optional
post-processing rule -> atomic write. Reading/preprocessing of the next case and writing of the
previous one run in background threads while the device works on the current case (numpy, torch
and SimpleITK release the GIL in their heavy parts).
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from voxseg.data.io import Geometry, file_ending, read_case_images, write_image
from voxseg.data.spec import case_id_of
from voxseg.errors import CheckpointError, InputError, NotFoundError, VoxsegError
from voxseg.inference import ensemble
from voxseg.inference.postprocess import apply_postprocessing
from voxseg.inference.restore import restore_shape
from voxseg.inference.sliding_window import plan_accumulation, sliding_window
from voxseg.plans import Plan
from voxseg.preprocessing.preprocess import preprocess_case
from voxseg.training.checkpoint import load_checkpoint
from voxseg.training.settings import settings_from_dict
from voxseg.training.trainer import TrainingContext, autocast_dtype, load_trainer

CHECKPOINTS = ("final", "best", "latest")


@dataclass
class ModelGroup:
    """Networks (folds/runs) sharing one plan configuration, so a case is preprocessed once for all."""

    plan: Plan
    config_name: str
    networks: list[nn.Module] = field(default_factory=list)
    head_names: list[str] = field(default_factory=list)

    @property
    def config(self):
        return self.plan.configuration(self.config_name)


def fold_dirs(run_dir: Path, folds: Sequence[str] | None) -> list[Path]:
    """A fold folder itself, or the fold_* folders of a run folder (all, or the requested ones)."""
    if any((run_dir / f"checkpoint_{c}.pt").is_file() for c in CHECKPOINTS):
        return [run_dir]
    found = sorted(p for p in run_dir.glob("fold_*") if p.is_dir())
    if folds is not None:
        found = [run_dir / f"fold_{f}" for f in folds]
    if not found:
        raise CheckpointError("no trained folds found", path=run_dir, fix="pass a run folder holding fold_N/ with checkpoints (train first)")
    return found


def build_from_meta(meta: dict, device: torch.device) -> tuple[nn.Module, Plan, str, list[str]]:
    plan = Plan.from_json(meta["plan"])
    settings = settings_from_dict(meta["settings"])
    ctx = TrainingContext(plan, meta["config_name"], settings, None, [], [], Path("."), device, [], meta.get("class_names", []))
    network = load_trainer(meta["trainer"])(ctx).build_network()
    return network, plan, meta["config_name"], [h.name for h in settings.heads]


def load_models(run_dirs: Sequence[Path], folds: Sequence[str] | None, checkpoint: str, device: torch.device) -> list[ModelGroup]:
    groups: dict[tuple[str, str], ModelGroup] = {}
    for run_dir in run_dirs:
        for fold_dir in fold_dirs(Path(run_dir), folds):
            ckpt = load_checkpoint(fold_dir / f"checkpoint_{checkpoint}.pt", map_location="cpu")
            network, plan, config_name, heads = build_from_meta(ckpt["meta"], device)
            network.load_state_dict(ckpt["trainer"]["network"])
            network.to(device).eval()
            key = (json.dumps(ckpt["meta"]["plan"], sort_keys=True), config_name)
            group = groups.setdefault(key, ModelGroup(plan, config_name, head_names=heads))
            group.networks.append(network)
    return list(groups.values())


def load_postprocessing(run_dirs: Sequence[Path]) -> dict | None:
    """A rule saved by `voxseg find-postprocessing` beside a single run's folds."""
    rules = [Path(r) / "postprocessing.json" for r in run_dirs]
    if len(run_dirs) == 1 and rules[0].is_file():
        return json.loads(rules[0].read_text())
    return None


@dataclass
class CaseInput:
    case_id: str
    files: list[Path]


def discover_cases(input_dir: Path, n_channels: int) -> tuple[list[CaseInput], str]:
    if not input_dir.is_dir():
        raise NotFoundError("input folder not found", path=input_dir, fix="pass a folder of CASE_0000<ending> images")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    endings = {file_ending(p) for p in files if case_id_of(p, file_ending(p))}
    if not endings:
        raise InputError("no images named CASE_0000<ending> found", path=input_dir, fix="name images like nnU-Net: CASE_0000.nii.gz")
    if len(endings) > 1:
        raise InputError(f"mixed file endings {sorted(endings)}", path=input_dir, fix="keep one format per folder")
    ending = endings.pop()
    by_case: dict[str, dict[int, Path]] = {}
    for p in files:
        parsed = case_id_of(p, ending)
        if parsed:
            by_case.setdefault(parsed[0], {})[parsed[1]] = p
    cases = [CaseInput(cid, [ch.get(c, input_dir / f"{cid}_{c:04d}{ending}") for c in range(n_channels)]) for cid, ch in sorted(by_case.items())]
    return cases, ending


CPU_FORWARD_VOXELS = 2**16


class Predictor:
    def __init__(
        self,
        groups: list[ModelGroup],
        device: torch.device,
        *,
        tta: bool = True,
        step: float = 0.5,
        tile_batch: int | None = None,
        postprocessing: dict | None = None,
    ):
        if not groups:
            raise CheckpointError("no models to predict with", fix="pass at least one trained run folder with -m")
        self.groups, self.device = groups, device
        self.tta, self.step = tta, step
        self.tile_batch = tile_batch or (4 if device.type == "cuda" else 1)
        self.postprocessing = postprocessing
        self.precision = autocast_dtype("auto", device)
        self.num_classes = groups[0].plan.num_classes
        if any(g.plan.num_classes != self.num_classes for g in groups):
            raise InputError("the models predict different numbers of classes", fix="ensemble only models of the same dataset")

    @property
    def n_channels(self) -> int:
        return len(self.groups[0].plan.channel_names)

    def preprocess(self, images: np.ndarray, geometry: Geometry) -> list[tuple[np.ndarray, dict]]:
        return [preprocess_case(images, geometry, g.plan, g.config_name)[::2] for g in self.groups]

    def _forward_batch(self, patch: Sequence[int]) -> int | None:
        """Inputs per network call: all tiles x flips on a GPU; on a CPU about 2^16 voxels.

        A CPU runs the network fastest on small batches (measured per input, 2 cores: 40x80x80
        1.03 s alone vs 1.29 s in a batch of 8; 32x64x64 0.49 vs 0.75 s; but 16x40x40 0.21 s
        alone vs 0.09 s in pairs), so the mirror copies of a tile go through one or a few at a time.
        """
        if self.device.type != "cpu":
            return None
        return max(1, CPU_FORWARD_VOXELS // math.prod(patch))

    def _window(self, net: nn.Module, image: torch.Tensor, patch: Sequence[int], head: str, channels: int) -> torch.Tensor:
        mirror = tuple(range(len(patch))) if self.tta else ()

        def fn(x: torch.Tensor) -> torch.Tensor:
            return net(x)[head][0]

        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        where = plan_accumulation(tuple(image.shape[1:]), channels, self.device, free, patch_size=patch)
        return sliding_window(
            fn, image, patch, channels, step=self.step, mirror_axes=mirror, tile_batch=self.tile_batch,
            forward_batch=self._forward_batch(patch),
            accumulate_device="cpu" if where == "cpu" else None, precision=self.precision, slabs=where == "slabs",
        )

    def _group_output(self, group: ModelGroup, image: np.ndarray, head: str, channels: int, activation) -> torch.Tensor:
        """Mean over the group's networks of activation(logits), at preprocessed resolution."""
        cfg = group.config
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        total = None
        for net in group.networks:
            if cfg.dims == 2 and x.ndim == 4:  # 2D configuration on a 3D volume: slice by slice along axis 0
                out = torch.stack([self._window(net, x[:, z], cfg.patch_size, head, channels) for z in range(x.shape[1])], dim=1)
            else:
                out = self._window(net, x, cfg.patch_size, head, channels)
            # Stays where sliding_window accumulated it (the CPU when the device could not hold it).
            out = activation(out)
            total = out if total is None else total + out
        return total / len(group.networks)

    def predict_probabilities(self, prepared: list[tuple[np.ndarray, dict]]) -> torch.Tensor:
        """Class probabilities (K, *original shape) on the device, averaged over every model."""
        probs = None
        for group, (image, props) in zip(self.groups, prepared):
            p = self._group_output(group, image, "seg", self.num_classes, lambda t: torch.softmax(t, 0))
            p = restore_shape(p, props, fill_background=True)
            probs = p if probs is None else probs + p.to(probs.device)
        return probs / len(self.groups)

    def predict_heads(self, prepared: list[tuple[np.ndarray, dict]]) -> dict[str, np.ndarray]:
        """Extra heads of the first model group: argmax for class heads, >0.5 for single-channel heads."""
        group, (image, props) = self.groups[0], prepared[0]
        out = {}
        for name in group.head_names:
            channels = _head_channels(group.networks[0], name, image, group.config.patch_size, self.device)
            act = torch.sigmoid if channels == 1 else (lambda t: torch.softmax(t, 0))
            p = restore_shape(self._group_output(group, image, name, channels, act), props, fill_background=channels > 1)
            out[name] = (p[0] > 0.5).to(torch.uint8).cpu().numpy() if channels == 1 else p.argmax(0).to(torch.uint8).cpu().numpy()
        return out

    def segment(self, probs: torch.Tensor) -> np.ndarray:
        seg = probs.argmax(0).to(torch.uint8).cpu().numpy()
        return apply_postprocessing(seg, self.postprocessing) if self.postprocessing else seg

    def predict_folder(self, input_dir: Path, output_dir: Path, **kwargs) -> list[str]:
        cases, ending = discover_cases(Path(input_dir), self.n_channels)
        return self.predict_cases(cases, ending, output_dir, **kwargs)

    def predict_cases(
        self, cases: list[CaseInput], ending: str, output_dir: Path, *, save_probabilities: bool = False, heads: bool = False, progress: bool = True
    ) -> list[str]:
        """Predict every case; a case that fails to read is reported and skipped. Returns failures."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        failed: list[str] = []

        def load(case: CaseInput):
            images, geometry = read_case_images(case.files)
            return self.preprocess(images, geometry), geometry

        def write(case_id: str, seg: np.ndarray, geometry: Geometry, probs: np.ndarray | None, head_segs: dict) -> None:
            write_image(output_dir / f"{case_id}{ending}", seg, geometry)
            if probs is not None:
                ensemble.save_probabilities(output_dir / f"{case_id}.npz", probs, geometry)
            for name, hseg in head_segs.items():
                write_image(output_dir / f"{case_id}_{name}{ending}", hseg, geometry)

        with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as writer:
            pending: Future | None = reader.submit(load, cases[0]) if cases else None
            writes: list[Future] = []
            for i, case in enumerate(tqdm(cases, desc="predict", unit="case", disable=not progress)):
                current = pending
                pending = reader.submit(load, cases[i + 1]) if i + 1 < len(cases) else None
                try:
                    prepared, geometry = current.result()
                except VoxsegError as e:
                    print(f"skipped {case.case_id}: {e.one_line()}", file=sys.stderr)
                    failed.append(case.case_id)
                    continue
                probs = self.predict_probabilities(prepared)
                seg = self.segment(probs)
                head_segs = self.predict_heads(prepared) if heads else {}
                writes.append(writer.submit(write, case.case_id, seg, geometry, probs.cpu().numpy() if save_probabilities else None, head_segs))
            for w in writes:
                w.result()
        return failed


def _head_channels(net: nn.Module, name: str, image: np.ndarray, patch: Sequence[int], device: torch.device) -> int:
    with torch.inference_mode():
        x = torch.zeros((1, image.shape[0], *patch), device=device)
        return int(net(x)[name][0].shape[1])


def predict(
    run_dirs: Iterable[str | Path],
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    tta: bool = True,
    step: float = 0.5,
    tile_batch: int | None = None,
    device: str = "auto",
    save_probabilities: bool = False,
    heads: bool = False,
    progress: bool = True,
) -> list[str]:
    from voxseg.training.run import resolve_device

    if checkpoint not in CHECKPOINTS:
        raise InputError(f"unknown checkpoint '{checkpoint}'", fix=f"use one of {', '.join(CHECKPOINTS)}")
    run_dirs = [Path(r) for r in run_dirs]
    dev = resolve_device(device)
    groups = load_models(run_dirs, folds, checkpoint, dev)
    predictor = Predictor(groups, dev, tta=tta, step=step, tile_batch=tile_batch, postprocessing=load_postprocessing(run_dirs))
    return predictor.predict_folder(Path(input_dir), Path(output_dir), save_probabilities=save_probabilities, heads=heads, progress=progress)
