"""Typed settings for the segmentation loss (`loss.` group), validated when constructed.

Defaults reproduce nnU-Net: soft Dice (smooth 1e-5, no background, batch Dice as planned) + CE
1:1, no class weights, deep-supervision weights 1/2^i with the lowest resolution at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from voxseg.errors import SettingsError

FREQUENCY_WEIGHTINGS = ("inverse_frequency", "sqrt_inverse_frequency")
PARTIAL_LABELS = ("marginal", "marginal+exclusion", "off")


@dataclass
class LossSettings:
    """`loss.*` settings; region-based plans train sigmoid BCE + Dice per region, with ``ce_weight`` on the BCE."""

    dice_weight: float = field(default=1.0, metadata={"help": "weight of the soft Dice term"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the cross-entropy term (BCE for region-based plans)"})
    batch_dice: bool | None = field(
        default=None, metadata={"help": "Dice over the whole batch instead of per sample; null: the plan's choice"}
    )
    smooth: float = field(default=1e-5, metadata={"help": "smoothing added to the Dice numerator and denominator"})
    include_background: bool = field(default=False, metadata={"help": "count the background class in the Dice"})
    class_weights: list[float] | str | None = field(
        default=None,
        metadata={
            "help": "one weight per class (background included), inverse_frequency or sqrt_inverse_frequency "
            "(from the training set's class voxel counts); null: none"
        },
    )
    max_class_weight: float = field(
        default=10.0, metadata={"help": "cap on the ratio of the largest to the smallest frequency-derived class weight"}
    )
    weight_dice_classes: bool = field(
        default=False, metadata={"help": "also weight the per-class Dice average by the class weights"}
    )
    deep_supervision_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "one weight per output, full resolution first, normalised to sum 1; null: 1/2^i with the lowest resolution at 0"
        },
    )
    partial_labels: str = field(
        default="marginal",
        metadata={
            "help": "cases annotating only some classes (dataset.json annotated_classes): marginal (unannotated classes merged "
            "into background), marginal+exclusion (adds the exclusion loss) or off (every case fully annotated)"
        },
    )
    exclusion_weight: float = field(
        default=1.0, metadata={"help": "weight of the exclusion loss (partial_labels=marginal+exclusion)"}
    )

    def __post_init__(self) -> None:
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            raise SettingsError(
                f"loss.dice_weight={self.dice_weight}, loss.ce_weight={self.ce_weight}: both must be >= 0 and not both 0",
                fix="use e.g. loss.dice_weight=1 loss.ce_weight=1",
            )
        if self.smooth < 0:
            raise SettingsError("loss.smooth must be >= 0", fix="use the default 1e-5")
        if isinstance(self.class_weights, str) and self.class_weights not in FREQUENCY_WEIGHTINGS:
            raise SettingsError(
                f"loss.class_weights={self.class_weights!r} is unknown",
                fix="use inverse_frequency, sqrt_inverse_frequency or a list like [0.5, 1, 4]",
            )
        if self.max_class_weight < 1:
            raise SettingsError(
                f"loss.max_class_weight={self.max_class_weight} must be >= 1",
                fix="use e.g. loss.max_class_weight=10",
            )
        if self.partial_labels not in PARTIAL_LABELS:
            raise SettingsError(
                f"loss.partial_labels={self.partial_labels!r} is unknown",
                fix=f"use one of {', '.join(PARTIAL_LABELS)}",
            )
        if self.exclusion_weight < 0:
            raise SettingsError("loss.exclusion_weight must be >= 0", fix="use e.g. loss.exclusion_weight=1")
        ds = self.deep_supervision_weights
        if ds is not None and (any(w < 0 for w in ds) or sum(ds) <= 0):
            raise SettingsError(
                f"loss.deep_supervision_weights={ds}: weights must be >= 0 with a positive sum",
                fix="use e.g. [0.53, 0.27, 0.13, 0.07, 0]",
            )
