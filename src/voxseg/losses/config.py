"""Typed settings for the segmentation loss (`loss.` group), validated when constructed.

Defaults reproduce nnU-Net: soft Dice (smooth 1e-5, no background, batch Dice as planned) + CE
1:1, no class weights, deep-supervision weights 1/2^i with the lowest resolution at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxseg.errors import SettingsError

FREQUENCY_WEIGHTINGS = ("inverse_frequency", "sqrt_inverse_frequency")
PARTIAL_LABELS = ("marginal", "marginal+exclusion", "off")


@dataclass
class LossSettings:
    """`loss.*` settings.

    ``batch_dice`` None takes the plan's choice. ``class_weights``: a list (one weight per class,
    background included), ``inverse_frequency`` / ``sqrt_inverse_frequency`` (from the training
    set's class voxel counts), or None. ``max_class_weight`` caps the ratio of the largest to the
    smallest frequency-derived weight. ``weight_dice_classes`` also weights the per-class Dice
    average. ``deep_supervision_weights`` (one per output, full resolution first) are normalised
    to sum 1; None gives 1/2^i with the lowest resolution at 0. ``partial_labels``: how cases
    that annotate only some classes (dataset.json ``annotated_classes``) are trained: ``marginal``
    (default), ``marginal+exclusion`` (adds ``exclusion_weight`` x the exclusion loss) or ``off``.
    Region-based plans train sigmoid BCE + Dice per region; ``ce_weight`` then weights the BCE.
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool | None = None
    smooth: float = 1e-5
    include_background: bool = False
    class_weights: list[float] | str | None = None
    max_class_weight: float = 10.0
    weight_dice_classes: bool = False
    deep_supervision_weights: list[float] | None = None
    # Datasets with `annotated_classes`: marginal loss (unannotated classes merged into background),
    # optionally with the exclusion loss; "off" treats every case as fully annotated.
    partial_labels: str = "marginal"
    exclusion_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.dice_weight < 0 or self.ce_weight < 0 or self.dice_weight + self.ce_weight == 0:
            raise SettingsError(
                f"loss.dice_weight={self.dice_weight}, loss.ce_weight={self.ce_weight}: both must "
                "be >= 0 and not both 0",
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
