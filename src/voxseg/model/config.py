"""Typed settings for the network (`model.` group) and its extra output heads (`heads:` list).

Plain dataclasses validated in ``__post_init__`` so a typo in a YAML file or a ``--set`` override
fails at load time with a SettingsError that names the setting, instead of deep inside training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from voxseg.errors import SettingsError

NORMS = ("instance", "batch")
HEAD_LOSSES = ("dice_ce", "ce", "dice", "bce", "mse")
BINARY_TARGETS = ("foreground", "boundary")


@dataclass
class ModelSettings:
    """`model.*`: which network to build from the plan's `network` topology, and how.

    ``architecture`` None keeps the plan's ``network["architecture"]`` so a ResEnc plan is not
    silently overridden by a default.
    """

    architecture: str | None = field(
        default=None,
        metadata={"help": "plain_unet, resenc_unet, another registered name or package.module:factory; null: the plan's"},
    )
    deep_supervision: bool = field(default=True, metadata={"help": "train on the outputs of every decoder resolution"})
    norm: str = field(default="instance", metadata={"help": "normalisation layers: instance (affine, eps 1e-5) or batch"})
    dropout: float = field(default=0.0, metadata={"help": "channel dropout probability after every convolution"})

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise SettingsError(
                f"model.norm={self.norm!r} is not one of {', '.join(NORMS)}",
                fix=f"set model.norm to one of {', '.join(NORMS)}",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise SettingsError(f"model.dropout={self.dropout} must be in [0, 1)", fix="use e.g. model.dropout=0.1")


@dataclass
class HeadSettings:
    """One extra output head: a 1x1 conv on the decoder features, with its own target and loss."""

    name: str = field(metadata={"help": "key of the output and prefix of its logged parts; an identifier other than seg"})
    target: str = field(metadata={"help": "labels, foreground, boundary or extra:NAME (the map from labelsTr_NAME/)"})
    loss: str = field(default="bce", metadata={"help": "bce, mse, ce, dice or dice_ce"})
    channels: int | None = field(
        default=None,
        metadata={
            "help": "output channels; null: 1 for bce/mse, 2 for a class loss on a binary target, the number of classes on labels"
        },
    )
    weight: float = field(default=1.0, metadata={"help": "the head's factor in the total loss"})
    deep_supervision: bool = field(
        default=False, metadata={"help": "also supervise the lower decoder resolutions (only when model.deep_supervision is on)"}
    )

    def __post_init__(self) -> None:
        where = f"heads.{self.name}"
        if not self.name.isidentifier() or self.name == "seg":
            raise SettingsError(
                f"head name {self.name!r} must be a Python identifier other than 'seg'",
                fix="name heads like 'boundary' or 'fg_aux'",
            )
        if self.target not in ("labels", *BINARY_TARGETS) and not (
            self.target.startswith("extra:") and len(self.target) > len("extra:")
        ):
            raise SettingsError(
                f"{where}.target={self.target!r} is unknown",
                fix="use labels, foreground, boundary or extra:NAME (for labelsTr_NAME/)",
            )
        if self.loss not in HEAD_LOSSES:
            raise SettingsError(f"{where}.loss={self.loss!r} is unknown", fix=f"use one of {', '.join(HEAD_LOSSES)}")
        if self.loss in ("bce", "mse") and self.channels not in (None, 1):
            raise SettingsError(
                f"{where}: loss {self.loss} needs channels=1, got {self.channels}",
                fix="drop heads.channels or use loss ce/dice/dice_ce for several classes",
            )
        if self.loss not in ("bce", "mse") and self.channels is not None and self.channels < 2:
            raise SettingsError(
                f"{where}: loss {self.loss} needs channels >= 2, got {self.channels}",
                fix="use loss bce for a single-channel binary head",
            )
        if self.target in BINARY_TARGETS and self.channels not in (None, 1, 2):
            raise SettingsError(
                f"{where}: target {self.target} is binary, channels must be 1 or 2",
                fix="drop heads.channels",
            )
        if self.weight < 0:
            raise SettingsError(f"{where}.weight must be >= 0", fix="use e.g. weight: 0.5")

    def out_channels(self, num_classes: int) -> int:
        if self.channels is not None:
            return self.channels
        if self.loss in ("bce", "mse"):
            return 1
        if self.target in BINARY_TARGETS:
            return 2
        if self.target == "labels":
            return num_classes
        raise SettingsError(
            f"heads.{self.name}: channels is needed for loss {self.loss} on {self.target}",
            fix="set heads.channels to the number of classes in that label map",
        )


def check_head_names(heads: Sequence[HeadSettings]) -> None:
    names = [h.name for h in heads]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SettingsError(
            f"head names must be unique, repeated: {', '.join(duplicates)}",
            fix="give every entry under heads: its own name",
        )
