"""The trainer: a small class whose steps are overridable hooks.

Subclass and override one hook to change one thing (a weighted CE in `build_loss`, a two-output
`compute_loss`); everything else — splits, data, logging, checkpointing, the epoch loop — lives
outside this class (`voxseg.training.loop`, `voxseg.training.run`). Trainers load by registered
name, by ``package.module:Class`` or by ``path/to/file.py:Class``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from voxseg.augment.cascade import cascade_inputs
from voxseg.augment.pipeline import Augmenter, downsample_targets
from voxseg.data.labels import IGNORE
from voxseg.device import autocast_dtype
from voxseg.distributed import DistInfo
from voxseg.errors import InputError, SettingsError
from voxseg.losses.build import build_loss
from voxseg.losses.class_weights import resolve_class_weights
from voxseg.losses.regions import per_sample_loss
from voxseg.model.build import NetworkSpec, build_from_spec
from voxseg.model.outputs import OutputScheme
from voxseg.plans import ConfigurationPlan, Plan
from voxseg.preprocessing.store import Store
from voxseg.registry import TRAINERS
from voxseg.sampling.batch import Batch
from voxseg.sampling.case_sampler import CaseSampler
from voxseg.sampling.loader import PatchLoader
from voxseg.training.cascade import PREVIOUS
from voxseg.training.pretrained import transfer_weights
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
    class_voxel_counts: list[int]  # per output channel (class, or region) over the training cases
    class_names: list[str]
    dist: DistInfo = field(default_factory=DistInfo)
    trainer_spec: str = "default"  # how to load the trainer class again (predictor, resume)
    pretrained: Path | None = None  # a checkpoint / fold / run folder to fine-tune from
    previous_stage: Path | None = None  # cascade: the previous stage's run folder

    @property
    def config(self) -> ConfigurationPlan:
        return self.plan.configuration(self.config_name)

    @property
    def in_channels(self) -> int:
        return len(self.plan.channel_names)

    @property
    def outputs(self) -> OutputScheme:
        return OutputScheme.from_plan(self.plan)


@dataclass
class TrainBatch:
    """A batch on the device after augmentation: what `compute_loss` sees."""

    image: Tensor
    targets: dict[str, list[Tensor]]  # "labels" and each extra label map: pyramids, full resolution first
    weights: Tensor | None  # per-sample importance weights when sampling.correct_bias is on
    case_ids: list[str]
    annotated: Tensor | None = None  # (B, outputs) bool for partially annotated batches, else None


@dataclass
class StepResult:
    """What `train_step` returns: the logged loss parts and, for adaptive case sampling, one loss
    per sample (the loop feeds the case sampler, so an override cannot silently turn it off)."""

    parts: dict[str, float]
    sample_losses: list[float] | None = None


@dataclass
class ValidationResult:
    """What `validation_step` returns: loss parts and per-output TP/FP/FN counts, shape (F, 3)."""

    parts: dict[str, float]
    tp_fp_fn: np.ndarray


class Trainer:
    """nnU-Net's training recipe as small hooks. Attributes are built in `setup()` in hook order."""

    name = "default"

    def __init__(self, ctx: TrainingContext):
        self.ctx = ctx
        self.settings = ctx.settings
        self.device = ctx.device
        self.amp_dtype = autocast_dtype(self.settings.training.precision, self.device)
        self.batch_size = self.settings.training.batch_size or ctx.config.batch_size
        self.epoch = 0  # set by the loop before each epoch
        # Random corruption of a cascade's previous-stage input; its own stream so resume is exact.
        self.cascade_generator = torch.Generator().manual_seed(self.settings.training.seed * 1000 + ctx.dist.rank + 17)

    def setup(self) -> None:
        self.network = type(self).build_network_architecture(self.network_spec())
        if self.ctx.pretrained is not None:
            report = transfer_weights(self.network, self.ctx.plan, self.ctx.pretrained)
            if self.ctx.dist.is_main:
                print("\n".join(report.lines()))
        self.network.to(self.device)
        self.train_network = self._wrap(self.network)
        self.loss = self.build_loss()
        self.optimizer = self.build_optimizer(self.network)
        self.lr_schedule = self.build_lr_schedule(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.augmenter = self.build_augmentation()
        self.case_sampler, self.loader = self.build_sampler()
        self.val_loader = self._build_val_loader()

    # -- hooks -------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, spec: NetworkSpec) -> nn.Module:
        """The network for `spec` (topology, channels, `model.` settings, heads); forward returns
        {"seg": [outputs...], head: [...]}. A classmethod, so the predictor rebuilds an overriding
        trainer's network from the checkpoint without a training context."""
        return build_from_spec(spec)

    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.from_plan(self.ctx.plan, self.ctx.config_name, self.settings.model, self.settings.heads)

    def class_weights(self) -> list[float] | None:
        weights = resolve_class_weights(
            self.settings.loss.class_weights, self.ctx.class_voxel_counts, self.settings.loss.max_class_weight
        )
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
            outputs=self.ctx.outputs,
            # DDP all-reduces every parameter's gradient each step: an output left out of the loss
            # (weight 0) would leave its head without one, so under DDP it gets nnU-Net's 1e-6.
            min_level_weight=1e-6 if self.ctx.dist.world_size > 1 else 0.0,
        ).to(self.device)

    def build_optimizer(self, network: nn.Module) -> torch.optim.Optimizer:
        t = self.settings.training
        lr = t.learning_rate(fine_tuning=self.ctx.pretrained is not None)
        return torch.optim.SGD(network.parameters(), lr=lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay)

    def build_lr_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Poly decay per epoch, (1 - epoch / epochs) ** 0.9 as in nnU-Net, after an optional linear
        warm-up ((e + 1) / (warmup + 1) in epoch e); stepped once per epoch."""
        t = self.settings.training
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_factor(epoch, t.epochs, t.poly_exponent, t.warmup_epochs)
        )

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
        loader = self.patch_loader(
            sampler, s, self.augmenter, seed=self.settings.training.seed, pin_memory=self.device.type == "cuda"
        )
        return sampler, loader

    def compute_loss(self, outputs: dict[str, list[Tensor]], batch: TrainBatch) -> dict[str, Tensor]:
        """Total loss under "loss" plus every part to log (e.g. "seg/ce", "seg/dice")."""
        # Only partially annotated batches pass `annotated`, so users' own loss callables keep working.
        partial = {} if batch.annotated is None else {"annotated": batch.annotated}
        return self.loss(outputs, batch.targets, batch.weights, **partial)

    def train_step(self, batch: Batch) -> StepResult:
        """Augment on the device, forward, loss, backward, clip, step; returns the logged parts
        (and per-sample losses when sampling.adaptive is on)."""
        tb = self.prepare(batch, self.augmenter)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.train_network(tb.image)
            parts = self.compute_loss(outputs, tb)
        self.scaler.scale(parts["loss"]).backward()
        if self.epoch < self.settings.training.freeze_encoder_epochs:
            for p in self.encoder_parameters():
                p.grad = None  # SGD skips them: no step, no weight decay, no momentum
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        losses = (
            per_sample_loss(outputs["seg"][0], tb.targets["labels"][0], self.ctx.outputs)
            if self.settings.sampling.adaptive
            else None
        )
        return StepResult({k: float(v.detach()) for k, v in parts.items()}, losses)

    @torch.no_grad()
    def validation_step(self, batch: Batch) -> ValidationResult:
        """Loss parts and per-output TP/FP/FN of the full-resolution output (ignore voxels and
        classes a case does not annotate excluded)."""
        assert self.val_augmenter is not None, "validation runs only with a validation loader"
        tb = self.prepare(batch, self.val_augmenter)
        with self._autocast():
            outputs = self.network(tb.image)
            parts = self.compute_loss(outputs, tb)
        scheme = self.ctx.outputs
        target = tb.targets["labels"][0]
        valid = target != IGNORE
        pred = scheme.predicted_masks(outputs["seg"][0].float()) & valid
        ref = scheme.foreground_masks(target) & valid
        if tb.annotated is not None:
            counted = tb.annotated[:, scheme.foreground].reshape(*pred.shape[:2], *([1] * (pred.ndim - 2)))
            pred, ref = pred & counted, ref & counted
        axes = (0, *range(2, pred.ndim))
        tp = (pred & ref).sum(axes)
        stats = torch.stack([tp, pred.sum(axes) - tp, ref.sum(axes) - tp], dim=1)
        return ValidationResult({k: float(v) for k, v in parts.items()}, stats.double().cpu().numpy())

    def encoder_parameters(self) -> list[nn.Parameter]:
        """What training.freeze_encoder_epochs freezes: the network's `encoder` submodule."""
        encoder = getattr(self.network, "encoder", None)
        if not isinstance(encoder, nn.Module):
            raise SettingsError(
                f"training.freeze_encoder_epochs needs a network with an `encoder` submodule ({type(self.network).__name__} has none)",
                fix="set training.freeze_encoder_epochs=0 or give the network an encoder attribute",
            )
        return list(encoder.parameters())

    def selection_metric(self, record: dict[str, Any]) -> float | None:
        """The number whose EMA picks checkpoint_best (higher is better); None: not this epoch."""
        return record.get("val/mean_dice")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """Called on every rank after validation with the epoch's log line; add keys to log more."""

    # -- plumbing used by the hooks ----------------------------------------------------------------
    def prepare(self, batch: Batch, augmenter: Augmenter) -> TrainBatch:
        dev = self.device
        image = batch.image.to(dev, non_blocking=True)
        names = list(batch.extra)
        labels = [batch.seg.to(dev, non_blocking=True)] + [batch.extra[n].to(dev, non_blocking=True) for n in names]
        if not batch.augmented:
            image, labels = augmenter(image, labels)
        extra = dict(zip(names, labels[1:]))
        previous = extra.pop(PREVIOUS, None)
        if previous is not None:  # cascade: the previous stage's segmentation as one-hot input channels
            corruption = self.cascade_generator if augmenter is self.augmenter else None
            image = cascade_inputs(image, previous, self.ctx.plan.num_classes, corruption)
        scales = (
            self.ctx.config.deep_supervision_scales if self.settings.model.deep_supervision else [[1.0] * self.ctx.config.dims]
        )
        targets = {"labels": downsample_targets(labels[0], scales)}
        targets.update({n: downsample_targets(lab, scales) for n, lab in extra.items()})
        weights = batch.weights.to(dev) if self.settings.sampling.correct_bias else None
        annotated = None
        if batch.annotated is not None and self.settings.loss.partial_labels != "off":
            annotated = batch.annotated.to(dev, non_blocking=True)
        return TrainBatch(image, targets, weights, list(batch.case_ids), annotated)

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
            net = torch.compile(net)  # type: ignore[assignment]  # an OptimizedModule for a module; the stub says Callable
        if self.ctx.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Without deep supervision the lower-resolution heads (built for checkpoint compatibility)
            # get no gradient; DDP must then look for unused parameters each step.
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=ids, find_unused_parameters=not self.settings.model.deep_supervision
            )
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
        # A classmethod read from a class is a bound method (it has __func__); mypy types it as a plain callable.
        overrides_builder = type(self).build_network_architecture.__func__ is not Trainer.build_network_architecture.__func__  # type: ignore[attr-defined]
        return {
            "plan": self.ctx.plan.to_json(),
            "config_name": self.ctx.config_name,
            "network_spec": self.network_spec().to_json(),
            "builder": self.ctx.trainer_spec if overrides_builder else None,
            "mirror_axes": list(self.augmenter.mirror_axes) if self.settings.augmentation.mirror_p > 0 else [],
            "settings": self.settings.to_dict(),
            "trainer": self.ctx.trainer_spec,
            "class_names": self.ctx.class_names,
            "previous_stage": None
            if self.ctx.previous_stage is None
            else {"run_dir": str(self.ctx.previous_stage.resolve()), "config": self.ctx.config.previous_stage},
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
            "cascade_generator": self.cascade_generator.get_state(),
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
        if "cascade_generator" in state:
            self.cascade_generator.set_state(state["cascade_generator"])

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


def lr_factor(epoch: int, epochs: int, exponent: float, warmup: int = 0) -> float:
    """Learning-rate multiplier of epoch `epoch`: linear warm-up, then nnU-Net's poly decay."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    return (1 - min(epoch, epochs - 1) / epochs) ** exponent


def load_trainer(spec: str) -> type[Trainer]:
    """A registered name, `package.module:Class`, or `path/to/file.py:Class`."""
    cls = TRAINERS.get(spec)
    if not (isinstance(cls, type) and issubclass(cls, Trainer)):
        raise InputError(f"'{spec}' is not a Trainer subclass", fix="subclass voxseg.training.trainer.Trainer")
    if cls.name == Trainer.name and cls is not Trainer:
        cls.name = cls.__name__
    return cls
