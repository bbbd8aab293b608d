"""Experiment tracking (`logging.` settings): each epoch's log record and a few validation overlays,
mirrored into TensorBoard, MLflow or Weights & Biases.

``log.jsonl`` and ``progress.png`` stay the run's own record; a tracker only copies them into a
viewer. The three libraries sit behind one small interface (`Tracker`: ``log_scalars``,
``log_images``, ``close``) and stay optional: a backend asked for whose package is not installed is
one SettingsError naming the install command, raised on every rank before the first epoch. Only
rank 0 opens trackers. Each library writes its own files (TensorBoard through torch's
``SummaryWriter``); nothing here writes an event format by hand.

Overlays (image slice | reference | prediction, the report's `case_figure`) come from the epoch's
last validation batch, run once more through the network in evaluation mode every
``logging.images_every`` epochs: one extra forward pass of one batch, and the trainer's
``validation_step`` stays a hook that returns only its numbers.

Example::

    voxseg train WORK 3d_fullres 0 --set logging.tensorboard=true
    tensorboard --logdir WORK/runs
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from voxseg.errors import SettingsError

if TYPE_CHECKING:
    from voxseg.sampling.batch import Batch
    from voxseg.training.trainer import Trainer


@dataclass
class LoggingSettings:
    """`logging.*`: experiment trackers, each off by default."""

    tensorboard: bool = field(
        default=False,
        metadata={
            "help": "write scalars and validation overlays to fold_N/tensorboard/ (needs: pip install 'voxseg[tensorboard]')"
        },
    )
    mlflow: bool = field(default=False, metadata={"help": "log to MLflow (needs: pip install mlflow)"})
    wandb: bool = field(default=False, metadata={"help": "log to Weights & Biases (needs: pip install wandb, and wandb login)"})
    project: str | None = field(default=None, metadata={"help": "MLflow experiment / W&B project; null: the dataset's name"})
    run_name: str | None = field(default=None, metadata={"help": "MLflow / W&B run name; null: <run folder>/fold_N"})
    tracking_uri: str | None = field(
        default=None, metadata={"help": "MLflow tracking URI (a server or a local folder); null: MLflow's own default"}
    )
    images_every: int = field(
        default=10, metadata={"help": "log validation overlays (image slice, reference, prediction) every N epochs; 0: never"}
    )
    images: int = field(default=2, metadata={"help": "overlays per image epoch, from the last validation batch"})

    def __post_init__(self) -> None:
        if self.images_every < 0:
            raise SettingsError(f"logging.images_every={self.images_every} must be >= 0", fix="use 0 for no images, or e.g. 10")
        if self.images < 1:
            raise SettingsError(
                f"logging.images={self.images} must be >= 1", fix="use e.g. logging.images=2, or logging.images_every=0"
            )


class Tracker(Protocol):
    """One tracking backend. `step` is the epoch; images are (H, W, 3) uint8 RGB arrays."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackedRun:
    """What a backend is opened with."""

    run_dir: Path  # the fold folder
    project: str
    run_name: str
    config: dict  # the resolved settings
    start_step: int = 0  # the first epoch this process trains (> 0 when resuming)


class TensorBoardTracker:
    """Event files in ``run_dir/tensorboard/``; a resumed run drops the events of the epochs it redoes."""

    def __init__(self, log_dir: Path, *, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @classmethod
    def open(cls, settings: LoggingSettings, run: TrackedRun) -> TensorBoardTracker:
        return cls(run.run_dir / "tensorboard", purge_step=run.start_step or None)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for key, image in images.items():
            self.writer.add_image(key, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """Metrics per epoch, the settings as ``settings.json`` and overlays as PNG artifacts of one MLflow run."""

    def __init__(self, settings: LoggingSettings, run: TrackedRun):
        import mlflow

        self.mlflow = mlflow
        if settings.tracking_uri:
            mlflow.set_tracking_uri(settings.tracking_uri)
        mlflow.set_experiment(run.project)
        mlflow.start_run(run_name=run.run_name, nested=mlflow.active_run() is not None)
        mlflow.log_dict(run.config, "settings.json")

    @classmethod
    def open(cls, settings: LoggingSettings, run: TrackedRun) -> MLflowTracker:
        return cls(settings, run)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        # MLflow refuses metric names with other characters (class names may have them).
        self.mlflow.log_metrics({re.sub(r"[^\w\-. /]", "_", k): v for k, v in scalars.items()}, step=step)

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for key, image in images.items():
            self.mlflow.log_image(image, artifact_file=f"{key}/epoch_{step:04d}.png")

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    """One W&B run (its local files under ``run_dir/wandb/``), the settings as its config."""

    def __init__(self, settings: LoggingSettings, run: TrackedRun):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=run.project, name=run.run_name, dir=str(run.run_dir), config=run.config)

    @classmethod
    def open(cls, settings: LoggingSettings, run: TrackedRun) -> WandbTracker:
        return cls(settings, run)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        self.run.log({key: self.wandb.Image(image) for key, image in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class Backend:
    package: str  # the module that must be importable
    install: str  # how to get it
    open: Callable[[LoggingSettings, TrackedRun], Tracker]


# Keyed by the `logging.` switch that turns each one on.
BACKENDS: dict[str, Backend] = {
    "tensorboard": Backend("tensorboard", "pip install 'voxseg[tensorboard]'", TensorBoardTracker.open),
    "mlflow": Backend("mlflow", "pip install mlflow", MLflowTracker.open),
    "wandb": Backend("wandb", "pip install wandb", WandbTracker.open),
}


def requested_backends(settings: LoggingSettings) -> list[str]:
    """The backends switched on, after checking each one's package is installed.

    Args:
        settings: the `logging.` group.

    Example:
        >>> requested_backends(LoggingSettings())
        []
    """
    names = [name for name in BACKENDS if getattr(settings, name)]
    for name in names:
        backend = BACKENDS[name]
        if importlib.util.find_spec(backend.package) is None:
            raise SettingsError(
                f"logging.{name}=true needs the '{backend.package}' package, which is not installed",
                fix=f"{backend.install}, or set logging.{name}=false",
            )
    return names


def scalars_of(record: Mapping[str, Any]) -> dict[str, float]:
    """Every number of an epoch's log record except the epoch itself (None and flags left out).

    Example:
        >>> scalars_of({"epoch": 3, "lr": 0.01, "val/dice/lesion": None, "train/loss": 0.5})
        {'lr': 0.01, 'train/loss': 0.5}
    """
    return {
        k: float(v)
        for k, v in record.items()
        if k != "epoch" and isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
    }


@torch.no_grad()
def overlay_images(trainer: Trainer, batch: Batch, count: int) -> dict[str, np.ndarray]:
    """Image | reference | prediction of the first `count` samples of a validation batch, as RGB
    arrays keyed ``val/overlay/<i>``; 3D patches show their most telling axis-0 slice.

    Args:
        trainer: a set-up trainer (its network is run in evaluation mode as it is).
        batch: a batch of the validation loader.
        count: how many samples to draw.
    """
    from PIL import Image

    from voxseg.evaluation.report.figures import case_figure

    assert trainer.val_augmenter is not None, "validation batches come with the validation augmenter"
    tb = trainer.prepare(batch, trainer.val_augmenter)
    logits = trainer.network(tb.image)["seg"][0].float()
    scheme = trainer.ctx.outputs
    pred = scheme.segmentation(scheme.probabilities(logits, dim=1), dim=1).cpu().numpy()
    ref = tb.targets["labels"][0][:, 0].cpu().numpy()
    image = tb.image[:, 0].float().cpu().numpy()
    spacing = trainer.ctx.config.spacing
    out = {}
    for i in range(min(count, len(pred))):
        png = base64.b64decode(case_figure(image[i], ref[i], pred[i], spacing).split(",", 1)[1])
        out[f"val/overlay/{i}"] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return out


class Tracking:
    """The open trackers of one run and when to draw overlays: all the epoch loop talks to.

    Example (what `voxseg.training.loop.fit` does)::

        tracking = start_tracking(trainer, run_dir, start_step=first_epoch)   # None when off
        record.update(_validate(trainer, tracking.on_last_batch(epoch) if tracking else None))
        if tracking:
            tracking.log_epoch(epoch, record)
    """

    def __init__(self, trainer: Trainer, trackers: list[Tracker], settings: LoggingSettings):
        self.trainer, self.trackers, self.settings = trainer, trackers, settings
        self._images: dict[str, np.ndarray] = {}

    def on_last_batch(self, epoch: int) -> Callable[[Batch], None] | None:
        """On an image epoch, what to call with the epoch's last validation batch; else None."""
        every = self.settings.images_every
        if every == 0 or (epoch + 1) % every:
            return None
        return lambda batch: self._images.update(overlay_images(self.trainer, batch, self.settings.images))

    def log_epoch(self, epoch: int, record: Mapping[str, Any]) -> None:
        scalars = scalars_of(record)
        for tracker in self.trackers:
            tracker.log_scalars(epoch, scalars)
            if self._images:
                tracker.log_images(epoch, self._images)
        self._images = {}

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def start_tracking(trainer: Trainer, run_dir: Path, *, start_step: int = 0) -> Tracking | None:
    """Check the requested backends' packages on every rank; open them on rank 0.

    Returns None when no backend is switched on, and on ranks other than 0.

    Args:
        trainer: the set-up trainer (settings, plan, rank).
        run_dir: the fold folder.
        start_step: the first epoch this process trains (> 0 when resuming).
    """
    settings = trainer.settings.logging
    names = requested_backends(settings)
    if not names or not trainer.ctx.dist.is_main:
        return None
    run = TrackedRun(
        run_dir,
        settings.project or trainer.ctx.plan.dataset_name,
        settings.run_name or f"{run_dir.parent.name}/{run_dir.name}",
        trainer.settings.to_dict(),
        start_step,
    )
    return Tracking(trainer, [BACKENDS[name].open(settings, run) for name in names], settings)
