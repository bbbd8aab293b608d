"""The trainer: a small class whose steps are overridable hooks.

Subclass and override one hook to change one thing (a weighted CE in `build_loss`, a two-output
`compute_loss`); everything else — splits, data, logging, checkpointing, the epoch loop — lives
outside this class (`voxseg.training.loop`, `voxseg.training.run`). Trainers load by registered
name, by ``package.module:Class`` or by ``path/to/file.py:Class``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxseg.augment.pipeline import Augmenter, downsample_targets
from voxseg.data.labels import IGNORE
from voxseg.errors import InputError, NotFoundError, SettingsError
from voxseg.losses.build import build_loss
from voxseg.losses.class_weights import resolve_class_weights
from voxseg.model.registry import build_network
from voxseg.plans import ConfigurationPlan, Plan
from voxseg.preprocessing.store import Store
from voxseg.sampling.case_sampler import CaseSampler
from voxseg.sampling.loader import Batch, PatchLoader
from voxseg.training.distributed import DistInfo
from voxseg.training.settings import Settings


@dataclass
class TrainingContext:
    """Everything a trainer needs, prepared by `voxseg.training.run` (no globals, explicit paths)."""

    plan: Plan
    config_name: str
    settings: Settings
    store: Store
    train_ids: list[str]
    val_ids: list[str]
    run_dir: Path
    device: torch.device
    class_voxel_counts: list[int]
    class_names: list[str]
    dist: DistInfo = field(default_factory=DistInfo)
    trainer_spec: str = "default"  # how to load the trainer class again (predictor, resume)

    @property
    def config(self) -> ConfigurationPlan:
        return self.plan.configuration(self.config_name)

    @property
    def in_channels(self) -> int:
        return len(self.plan.channel_names)


@dataclass
class TrainBatch:
    """A batch on the device after augmentation: what `compute_loss` sees."""

    image: Tensor
    targets: dict[str, list[Tensor]]  # "labels" and each extra label map: pyramids, full resolution first
    weights: Tensor | None  # per-sample importance weights when sampling.correct_bias is on
    case_ids: list[str]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "auto":
        # bf16 needs no loss scaling; CPU autocast for 3D convs is slower than fp32, so auto stays fp32 there.
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Trainer:
    """nnU-Net's training recipe as small hooks. Attributes are built in `setup()` in hook order."""

    name = "default"

    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx
        self.settings = ctx.settings
        self.device = ctx.device
        self.amp_dtype = autocast_dtype(self.settings.training.precision, self.device)
        self.batch_size = self.settings.training.batch_size or ctx.config.batch_size

    def setup(self) -> None:
        self.network = self.build_network().to(self.device)
        self.train_network = self._wrap(self.network)
        self.loss = self.build_loss()
        self.optimizer = self.build_optimizer(self.network)
        self.lr_schedule = self.build_lr_schedule(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.augmenter = self.build_augmentation()
        self.case_sampler, self.loader = self.build_sampler()
        self.val_loader = self._build_val_loader()

    # -- hooks -------------------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """The network for the plan's topology; forward returns {"seg": [outputs...], head: [...]}."""
        cfg = self.ctx.config
        return build_network(
            cfg.network, self.ctx.in_channels, self.ctx.plan.num_classes, settings=self.settings.model, heads=self.settings.heads
        )

    def class_weights(self) -> list[float] | None:
        weights = resolve_class_weights(self.settings.loss.class_weights, self.ctx.class_voxel_counts, self.settings.loss.max_class_weight)
        return None if weights is None else [float(w) for w in weights]

    def build_loss(self) -> Callable[..., dict[str, Tensor]]:
        """Dice + CE on the main head (class weights, ignore label), one loss per extra head, summed."""
        cfg = self.ctx.config
        ds = cfg.deep_supervision_scales if self.settings.model.deep_supervision else None
        return build_loss(
            self.settings.loss,
            self.settings.heads,
            num_classes=self.ctx.plan.num_classes,
            class_weights=self.class_weights(),
            ds_scales=ds,
            batch_dice=cfg.batch_dice,
        ).to(self.device)

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        t = self.settings.training
        return torch.optim.SGD(network.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay)

    def build_lr_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Poly decay per epoch, (1 - epoch / epochs) ** 0.9 as in nnU-Net; stepped once per epoch."""
        t = self.settings.training
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: (1 - min(epoch, t.epochs - 1) / t.epochs) ** t.poly_exponent)

    def build_augmentation(self) -> Augmenter:
        """Batched augmentation on the training device (the CPU when training on the CPU)."""
        return Augmenter(
            self.settings.augmentation,
            tuple(self.ctx.config.patch_size),
            has_ignore=self.ctx.plan.has_ignore,
            seed=self.settings.training.seed * 1000 + self.ctx.dist.rank,
            in_plane_only=_anisotropic(self.ctx.config),
        )

    def build_sampler(self) -> tuple[CaseSampler, PatchLoader]:
        """Case sampler (uniform / weighted / adaptive) and the patch loader over the training cases."""
        s = self.settings.sampling
        sampler = CaseSampler.from_settings(s, self.ctx.store, self.ctx.train_ids)
        loader = self.patch_loader(sampler, s, self.augmenter, seed=self.settings.training.seed, pin_memory=self.device.type == "cuda")
        return sampler, loader

    def compute_loss(self, outputs: dict[str, list[Tensor]], batch: TrainBatch) -> dict[str, Tensor]:
        """Total loss under "loss" plus every part to log (e.g. "seg/ce", "seg/dice")."""
        return self.loss(outputs, batch.targets, batch.weights)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """Augment on the device, forward, loss, backward, clip, step; returns the logged parts."""
        tb = self.prepare(batch, self.augmenter)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.train_network(tb.image)
            parts = self.compute_loss(outputs, tb)
        self.scaler.scale(parts["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.settings.sampling.adaptive:
            self.case_sampler.update(tb.case_ids, _per_sample_ce(outputs["seg"][0], tb.targets["labels"][0]))
        return {k: float(v.detach()) for k, v in parts.items()}

    @torch.no_grad()
    def validation_step(self, batch: Batch) -> dict[str, Any]:
        """Loss parts and per-class TP/FP/FN of the full-resolution output (ignore voxels excluded)."""
        tb = self.prepare(batch, self.val_augmenter)
        with self._autocast():
            outputs = self.network(tb.image)
            parts = self.compute_loss(outputs, tb)
        logits, target = outputs["seg"][0].float(), tb.targets["labels"][0][:, 0]
        pred = logits.argmax(1)
        valid = target != IGNORE
        stats = []
        for c in range(1, logits.shape[1]):
            p, t = (pred == c) & valid, (target == c) & valid
            stats.append([(p & t).sum().item(), (p & ~t).sum().item(), (~p & t).sum().item()])
        return {"parts": {k: float(v) for k, v in parts.items()}, "tp_fp_fn": np.asarray(stats, dtype=np.float64)}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called on every rank after validation with the epoch's log line; add keys to log more."""
        reduce = self.ctx.dist.all_reduce_sum if self.ctx.dist.world_size > 1 else None
        self.case_sampler.end_epoch(reduce=reduce)

    # -- plumbing used by the hooks ----------------------------------------------------------------
    def prepare(self, batch: Batch, augmenter: Augmenter) -> TrainBatch:
        dev = self.device
        image = batch.image.to(dev, non_blocking=True)
        names = list(batch.extra)
        labels = [batch.seg.to(dev, non_blocking=True)] + [batch.extra[n].to(dev, non_blocking=True) for n in names]
        if not batch.augmented:
            image, labels = augmenter(image, labels)
        scales = self.ctx.config.deep_supervision_scales if self.settings.model.deep_supervision else [[1.0] * self.ctx.config.dims]
        targets = {"labels": downsample_targets(labels[0], scales)}
        targets.update({n: downsample_targets(lab, scales) for n, lab in zip(names, labels[1:])})
        weights = batch.weights.to(dev) if self.settings.sampling.correct_bias else None
        return TrainBatch(image, targets, weights, list(batch.case_ids))

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def local_batch_size(self) -> int:
        """This process's share of the global batch (the global batch over DDP ranks)."""
        world = self.ctx.dist.world_size
        if self.batch_size % world:
            raise SettingsError(
                f"batch size {self.batch_size} does not split over {world} processes",
                fix=f"use --set training.batch_size={math.ceil(self.batch_size / world) * world}",
            )
        return self.batch_size // world

    def _wrap(self, network: nn.Module) -> nn.Module:
        t = self.settings.training
        net = network
        if t.compile == "on" or (t.compile == "auto" and self.device.type == "cuda"):
            net = torch.compile(net)
        if self.ctx.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # static_graph: the lowest deep-supervision output has loss weight 0 and is never used;
            # the set of unused parameters is fixed, so DDP need not search for it every step.
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids, static_graph=True)
        return net

    def _build_val_loader(self) -> PatchLoader | None:
        if not self.ctx.val_ids or self.settings.training.val_iterations == 0:
            self.val_augmenter = None
            return None
        from voxseg.augment.config import AugmentationSettings

        self.val_augmenter = Augmenter(
            AugmentationSettings.from_preset("none"),
            tuple(self.ctx.config.patch_size),
            has_ignore=self.ctx.plan.has_ignore,
            seed=0,
        )
        s = dataclasses.replace(self.settings.sampling, case_weights="uniform", adaptive=False, correct_bias=False, workers=0)
        sampler = CaseSampler.from_settings(s, self.ctx.store, self.ctx.val_ids)
        return self.patch_loader(sampler, s, self.val_augmenter, seed=self.settings.training.seed + 1, pin_memory=False)

    def augment_in_loader(self) -> bool:
        """augmentation.where: "auto" augments in the loader workers when training on a CPU."""
        where = self.settings.augmentation.where
        return where == "loader" or (where == "auto" and self.device.type == "cpu")

    def patch_loader(self, sampler: CaseSampler, settings, augmenter: Augmenter, *, seed: int, pin_memory: bool) -> PatchLoader:
        """A loader over this run's store: enlarged patches for `augmenter` to augment on the
        device, or batches it already augmented in the loader (`augment_in_loader`)."""
        return PatchLoader(
            self.ctx.store,
            sampler,
            patch_size=self.ctx.config.patch_size,
            batch_size=self.local_batch_size(),
            input_size=augmenter.input_size(),
            has_ignore=self.ctx.plan.has_ignore,
            settings=settings,
            seed=seed,
            rank=self.ctx.dist.rank,
            world_size=self.ctx.dist.world_size,
            pin_memory=pin_memory,
            augmenter=augmenter if self.augment_in_loader() else None,
        )

    def ctx_meta(self) -> dict[str, Any]:
        """What a predictor needs to rebuild this network without the store or the run folder."""
        return {
            "plan": self.ctx.plan.to_json(),
            "config_name": self.ctx.config_name,
            "settings": self.settings.to_dict(),
            "trainer": self.ctx.trainer_spec,
            "class_names": self.ctx.class_names,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "val_loader": self.val_loader.state_dict() if self.val_loader else None,
            "case_sampler": self.case_sampler.state_dict(),
            "augmenter": self.augmenter.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.scaler.load_state_dict(state["scaler"])
        self.case_sampler.load_state_dict(state["case_sampler"])
        self.loader.load_state_dict(state["loader"])
        if self.val_loader and state.get("val_loader"):
            self.val_loader.load_state_dict(state["val_loader"])
        self.augmenter.load_state_dict(state["augmenter"])

    def close(self) -> None:
        for loader in (getattr(self, "loader", None), getattr(self, "val_loader", None)):
            if loader is not None:
                loader.close()


def _anisotropic(cfg: ConfigurationPlan) -> bool:
    """nnU-Net rotates in-plane only when the patch is much thinner along one axis (2D-like)."""
    if cfg.dims == 2:
        return False
    p = np.asarray(cfg.patch_size, dtype=float)
    return bool(p.max() / p.min() > 3)


def _per_sample_ce(logits: Tensor, target: Tensor) -> list[float]:
    """Mean CE per sample (ignore excluded): the signal adaptive case sampling follows."""
    with torch.no_grad():
        t = target[:, 0].long()
        ce = F.cross_entropy(logits.float(), t.clamp_min(0), reduction="none")
        valid = (t != IGNORE).float()
        per = (ce * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
    return per.tolist()


# -- registry ----------------------------------------------------------------------------------
TRAINERS: dict[str, type[Trainer]] = {"default": Trainer}


def register_trainer(name: str) -> Callable[[type[Trainer]], type[Trainer]]:
    def decorate(cls: type[Trainer]) -> type[Trainer]:
        TRAINERS[name] = cls
        cls.name = name
        return cls

    return decorate


def load_trainer(spec: str) -> type[Trainer]:
    """A registered name, `package.module:Class`, or `path/to/file.py:Class`."""
    if spec in TRAINERS:
        return TRAINERS[spec]
    if ":" not in spec:
        raise InputError(f"unknown trainer '{spec}'", fix=f"use one of {', '.join(TRAINERS)}, package.module:Class or file.py:Class")
    where, cls_name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise NotFoundError("trainer file not found", path=path, fix="pass path/to/file.py:ClassName")
        name = f"voxseg_user_trainer_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise InputError(f"cannot import trainer module '{where}' ({e})", fix="check the module is on PYTHONPATH") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise InputError(f"'{cls_name}' in {where} is not a Trainer subclass", path=where, fix="subclass voxseg.training.trainer.Trainer")
    if cls.name == "default" or cls.name == Trainer.name:
        cls.name = cls_name
    return cls
