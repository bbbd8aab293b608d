"""The one typed settings object: defaults < `--settings FILE.yaml` < repeated `--set key=value`.

Each stage owns its group's dataclass (`sampling.`, `augmentation.`, `loss.`, `model.`, `heads:`);
this module nests them, converts YAML/CLI values to the declared types, and turns every unknown
key or bad value into a SettingsError naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from voxseg.augment.config import AugmentationSettings
from voxseg.errors import NotFoundError, SettingsError
from voxseg.losses.config import LossSettings
from voxseg.model.config import HeadSettings, ModelSettings, check_head_names
from voxseg.sampling.config import SamplingSettings

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_LR = 1e-2
# Fine-tuning starts from weights that already segment: nnU-Net's 1e-2 would first undo much of
# that, so the default drops tenfold (set training.lr to override).
FINE_TUNE_LR = 1e-3
COMPILE = ("auto", "on", "off")


@dataclass
class TrainingSettings:
    """`training.*`: nnU-Net's schedule and optimiser by default."""

    epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations: int = 50
    batch_size: Optional[int] = None  # None: the plan's batch size
    lr: Optional[float] = None  # None: 1e-2 (nnU-Net), or 1e-3 when fine-tuning (--pretrained)
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    precision: str = "auto"  # auto = bf16 where the device supports it, else fp32 on CPU
    compile: str = "auto"  # auto = on for CUDA, off for CPU
    seed: int = 0
    checkpoint_every: Optional[int] = None  # also keep checkpoint_epoch_N.pt every N epochs (latest is every epoch)
    early_stopping_patience: Optional[int] = None  # epochs without a better EMA pseudo-Dice
    warmup_epochs: int = 0  # linear learning-rate warm-up over the first N epochs, then poly decay
    freeze_encoder_epochs: int = 0  # train only decoder and heads for the first N epochs (fine-tuning)
    final_validation: bool = True  # predict the fold's validation cases with the predictor at the end

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
    training: TrainingSettings = field(default_factory=TrainingSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    heads: list[HeadSettings] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(_plain(self.to_dict()), sort_keys=True).encode()).hexdigest()[:8]


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
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
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
            raise SettingsError(f"unknown setting '{where}.{key}'" if where else f"unknown setting group '{key}'", fix=_suggest(str(key), names))
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
    for name in ("training", "sampling", "loss", "model"):
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


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.epochs=10' -> (['training', 'epochs'], 10); the value is parsed as YAML."""
    if "=" not in text:
        raise SettingsError(f"--set {text!r} is not key=value", fix="e.g. --set training.epochs=10")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
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
            data = yaml.safe_load(path.read_text()) or {}
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
