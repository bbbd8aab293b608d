"""The one typed settings object: defaults < `--settings FILE.yaml` < repeated `--set key=value`.

Each stage owns its group's dataclass (`sampling.`, `augmentation.`, `loss.`, `model.`, `heads:`,
`logging.`); this module nests them, converts YAML/CLI values to the declared types, and turns every
unknown key or bad value into a SettingsError naming the key and the closest valid one. Every field
carries its meaning as `metadata={"help": ...}`: `voxseg settings` and docs/settings.md show it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from voxseg.augment.config import AugmentationSettings
from voxseg.errors import NotFoundError, SettingsError
from voxseg.losses.config import LossSettings
from voxseg.model.config import HeadSettings, ModelSettings, check_head_names
from voxseg.sampling.config import SamplingSettings
from voxseg.training.tracking import LoggingSettings

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_LR = 1e-2
# Fine-tuning starts from weights that already segment: nnU-Net's 1e-2 would first undo much of
# that, so the default drops tenfold (set training.lr to override).
FINE_TUNE_LR = 1e-3
COMPILE = ("auto", "on", "off")


@dataclass
class TrainingSettings:
    """`training.*`: nnU-Net's schedule and optimiser by default."""

    epochs: int = field(default=1000, metadata={"help": "epochs to train"})
    iterations_per_epoch: int = field(default=250, metadata={"help": "training steps per epoch"})
    val_iterations: int = field(
        default=50, metadata={"help": "validation batches per epoch (pseudo-Dice, validation loss); 0: none"}
    )
    batch_size: int | None = field(default=None, metadata={"help": "global batch size, split over DDP ranks; null: the plan's"})
    lr: float | None = field(
        default=None, metadata={"help": "initial learning rate; null: 1e-2 (nnU-Net), or 1e-3 when fine-tuning (--pretrained)"}
    )
    momentum: float = field(default=0.99, metadata={"help": "SGD momentum"})
    nesterov: bool = field(default=True, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=3e-5, metadata={"help": "SGD weight decay"})
    poly_exponent: float = field(
        default=0.9, metadata={"help": "after the warm-up the learning rate decays as (1 - epoch / epochs) ^ poly_exponent"}
    )
    grad_clip: float = field(default=12.0, metadata={"help": "gradient norm clipped to this every step"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 where the hardware computes it natively: GPUs with bf16, CPUs with AVX512-BF16/AMX; "
            "fp16 on other GPUs; else fp32), bf16, fp16 or fp32"
        },
    )
    compile: str = field(default="auto", metadata={"help": "torch.compile the network: auto (on for CUDA, else off), on or off"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, sampling and augmentation"})
    checkpoint_every: int | None = field(
        default=None,
        metadata={
            "help": "also keep checkpoint_epoch_N.pt every N epochs (checkpoint_latest.pt is written every epoch); null: none"
        },
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after this many epochs without a better EMA pseudo-Dice; null: never"}
    )
    warmup_epochs: int = field(
        default=0, metadata={"help": "linear learning-rate warm-up over the first N epochs, then poly decay"}
    )
    freeze_encoder_epochs: int = field(
        default=0, metadata={"help": "train only decoder and heads for the first N epochs (fine-tuning)"}
    )
    final_validation: bool = field(
        default=True, metadata={"help": "predict the fold's validation cases with the predictor after training"}
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SettingsError(f"training.precision={self.precision!r} is unknown", fix=f"use one of {', '.join(PRECISIONS)}")
        if self.compile not in COMPILE:
            raise SettingsError(f"training.compile={self.compile!r} is unknown", fix=f"use one of {', '.join(COMPILE)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise SettingsError("training.checkpoint_every must be >= 1 or null", fix="e.g. --set training.checkpoint_every=50")
        for name in ("epochs", "iterations_per_epoch"):
            if getattr(self, name) < 1:
                raise SettingsError(f"training.{name} must be >= 1", fix=f"e.g. --set training.{name}=10")
        if self.val_iterations < 0:
            raise SettingsError("training.val_iterations must be >= 0", fix="use 0 to skip validation batches")
        if self.batch_size is not None and self.batch_size < 1:
            raise SettingsError("training.batch_size must be >= 1", fix="drop it to use the plan's batch size")
        if self.lr is not None and self.lr <= 0:
            raise SettingsError("training.lr must be > 0", fix="use e.g. 1e-2, or null for the default")
        for name in ("warmup_epochs", "freeze_encoder_epochs"):
            if getattr(self, name) < 0:
                raise SettingsError(f"training.{name} must be >= 0", fix=f"e.g. --set training.{name}=5")

    def learning_rate(self, fine_tuning: bool) -> float:
        """The initial learning rate: `lr`, or the default for training from scratch / fine-tuning."""
        if self.lr is not None:
            return self.lr
        return FINE_TUNE_LR if fine_tuning else DEFAULT_LR


@dataclass
class Settings:
    """Every settings group; a field's `help` describes the group, `page` names its docs page."""

    training: TrainingSettings = field(
        default_factory=TrainingSettings,
        metadata={"help": "schedule, optimiser, precision and checkpoints (nnU-Net's by default)", "page": "training.md"},
    )
    sampling: SamplingSettings = field(
        default_factory=SamplingSettings,
        metadata={"help": "which cases and patches each batch holds, and the loader's workers", "page": "sampling.md"},
    )
    augmentation: AugmentationSettings = field(
        default_factory=AugmentationSettings,
        metadata={
            "help": "every transform's probability and range; `preset` (default, light, none) is applied first, "
            "the other keys refine it",
            "page": "augmentation.md",
        },
    )
    loss: LossSettings = field(
        default_factory=LossSettings,
        metadata={"help": "Dice + CE weights, class weights, deep supervision, partial labels", "page": "losses.md"},
    )
    model: ModelSettings = field(
        default_factory=ModelSettings, metadata={"help": "the network built from the plan's topology", "page": "losses.md"}
    )
    heads: list[HeadSettings] = field(
        default_factory=list,
        metadata={"help": "extra output heads, each with its own target, loss and weight", "page": "multi-output.md"},
    )
    logging: LoggingSettings = field(
        default_factory=LoggingSettings,
        metadata={"help": "experiment tracking: TensorBoard, MLflow, Weights & Biases (rank 0 only)", "page": "training.md"},
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def digest(self) -> str:
        # Tracking does not change what is trained: a run keeps its folder (and --resume finds it) with or without it.
        trained = {k: v for k, v in self.to_dict().items() if k != "logging"}
        return hashlib.sha1(json.dumps(_plain(trained), sort_keys=True).encode()).hexdigest()[:8]


def _plain(obj: Any) -> Any:
    """Tuples -> lists so YAML and JSON stay plain and round-trip."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(options)}"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one value against a type hint; ints are accepted where floats are declared."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SettingsError as e:
                errors.append(e)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where} must be a list, got {value!r}", fix=f"e.g. --set {where}=[1,2,3]")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"{where} must be a mapping, got {value!r}", fix=f"e.g. --set {where}={{1: 0.5, 2: 0.5}}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(hint, type) and not isinstance(value, hint)) or (hint is int and isinstance(value, bool)):
        raise SettingsError(f"{where} must be {hint.__name__}, got {value!r}", fix=f"set {where} to a {hint.__name__}")
    return value


def _build(cls: type, values: Any, where: str) -> Any:
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise SettingsError(f"{where} must be a mapping, got {values!r}", fix=f"write {where}: followed by key: value lines")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise SettingsError(
                f"unknown setting '{where}.{key}'" if where else f"unknown setting group '{key}'", fix=_suggest(str(key), names)
            )
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SettingsError(f"{where}: {e}", fix="see docs/settings.md") from None


def _augmentation_base(values: dict) -> AugmentationSettings:
    """`augmentation.preset` picks the starting point; the other augmentation keys refine it."""
    values = dict(values)
    preset = values.pop("preset", "default")
    try:
        base = AugmentationSettings.from_preset(preset)
    except (KeyError, ValueError):
        raise SettingsError(f"augmentation.preset={preset!r} is unknown", fix="use default, light or none") from None
    merged = {**dataclasses.asdict(base), **values}
    return _build(AugmentationSettings, merged, "augmentation")


def settings_from_dict(data: dict | None) -> Settings:
    data = dict(data or {})
    groups = [f.name for f in dataclasses.fields(Settings)]
    for key in data:
        if key not in groups:
            raise SettingsError(f"unknown setting group '{key}'", fix=_suggest(key, groups))
    kwargs: dict[str, Any] = {}
    for name in ("training", "sampling", "loss", "model", "logging"):
        if name in data:
            kwargs[name] = _build(typing.get_type_hints(Settings)[name], data[name] or {}, name)
    if "augmentation" in data:
        kwargs["augmentation"] = _augmentation_base(data["augmentation"] or {})
    if "heads" in data:
        heads = data["heads"] or []
        if isinstance(heads, dict):  # `heads: {boundary: {target: boundary, ...}}` is accepted too
            heads = [{"name": k, **v} for k, v in heads.items()]
        kwargs["heads"] = [_build(HeadSettings, h, f"heads[{i}]") for i, h in enumerate(heads)]
        check_head_names(kwargs["heads"])
    return Settings(**kwargs)


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where on/off/yes/no are booleans, so `training.compile=on` (a
    string setting) would arrive as True; here, as in YAML 1.2, only true/false are booleans."""


_BOOL = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.epochs=10' -> (['training', 'epochs'], 10); the value is parsed as YAML."""
    if "=" not in text:
        raise SettingsError(f"--set {text!r} is not key=value", fix="e.g. --set training.epochs=10")
    key, raw = text.split("=", 1)
    try:
        value = _yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_settings(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise NotFoundError("settings file not found", fix="pass an existing YAML file to --settings")
        try:
            data = _yaml(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SettingsError(f"{path}: invalid YAML ({str(e).splitlines()[0]})", fix="fix the YAML syntax") from None
        if not isinstance(data, dict):
            raise SettingsError(f"{path}: top level must be a mapping of groups", fix="start with e.g. 'training:'")
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SettingsError(f"--set {text}: '{k}' is not a group", fix="use group.key=value")
        node[keys[-1]] = value
    return settings_from_dict(data)
