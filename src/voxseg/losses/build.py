"""The default trainer's loss: Dice+CE on ``seg`` plus one loss per extra head, all in one
MultiHeadLoss, each wrapped for deep supervision (a single level when it is off)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from torch import nn

from voxseg.errors import SettingsError
from voxseg.losses.compound import DiceCELoss
from voxseg.losses.config import LossSettings
from voxseg.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_weights
from voxseg.losses.dice import SoftDiceLoss
from voxseg.losses.multihead import MultiHeadLoss
from voxseg.losses.pointwise import BCELoss, CELoss, MSELoss
from voxseg.losses.regions import RegionDiceBCELoss
from voxseg.model.config import HeadSettings, check_head_names
from voxseg.model.outputs import OutputScheme


def _level_weights(settings: LossSettings, levels: int, min_weight: float = 0.0) -> list[float]:
    explicit = settings.deep_supervision_weights
    if explicit is not None and len(explicit) != levels:
        raise SettingsError(
            f"loss.deep_supervision_weights has {len(explicit)} values for {levels} outputs",
            fix=f"give {levels} weights (full resolution first) or leave it unset",
        )
    return [max(w, min_weight) for w in deep_supervision_weights(levels, explicit)]


class _DiceOptions(TypedDict):
    batch_dice: bool
    smooth: float
    include_background: bool


def _head_loss(head: HeadSettings, settings: LossSettings, batch_dice: bool) -> nn.Module:
    dice_options: _DiceOptions = {
        "batch_dice": batch_dice,
        "smooth": settings.smooth,
        "include_background": settings.include_background,
    }
    if head.loss == "dice_ce":
        return DiceCELoss(dice_weight=settings.dice_weight, ce_weight=settings.ce_weight, **dice_options)
    if head.loss == "dice":
        return SoftDiceLoss(**dice_options)
    return {"ce": CELoss, "bce": BCELoss, "mse": MSELoss}[head.loss]()


def build_loss(
    loss_settings: LossSettings,
    heads: Sequence[HeadSettings] = (),
    *,
    num_classes: int,
    class_weights: list[float] | None,
    ds_scales: Sequence[Sequence[float]] | None,
    batch_dice: bool,
    outputs: OutputScheme | None = None,
    min_level_weight: float = 0.0,
) -> MultiHeadLoss:
    """``class_weights``: already resolved (see ``resolve_class_weights``), applied to ``seg``, one
    per output channel (class, or region for region-based ``outputs``). ``ds_scales``: the plan's
    ``deep_supervision_scales`` when the network runs with deep supervision, else None.
    ``batch_dice``: the plan's, overridden by ``loss.batch_dice``. ``min_level_weight`` raises
    zero deep-supervision weights (DDP needs every output in the graph: nnU-Net uses 1e-6)."""
    check_head_names(heads)
    outputs = outputs or OutputScheme(num_classes)
    if class_weights is not None and len(class_weights) != outputs.channels:
        what = "regions" if outputs.region_based else "classes"
        raise SettingsError(
            f"{len(class_weights)} class weights for {outputs.channels} {what}",
            fix=f"give {outputs.channels} weights in loss.class_weights",
        )
    if loss_settings.batch_dice is not None:
        batch_dice = loss_settings.batch_dice
    levels = len(ds_scales) if ds_scales else 1
    seg: nn.Module
    if outputs.region_based:
        seg = RegionDiceBCELoss(
            outputs.regions,
            bce_weight=loss_settings.ce_weight,
            dice_weight=loss_settings.dice_weight,
            batch_dice=batch_dice,
            smooth=loss_settings.smooth,
            region_weights=class_weights,
            weight_dice_regions=loss_settings.weight_dice_classes,
        )
    else:
        seg = DiceCELoss(
            dice_weight=loss_settings.dice_weight,
            ce_weight=loss_settings.ce_weight,
            batch_dice=batch_dice,
            smooth=loss_settings.smooth,
            include_background=loss_settings.include_background,
            class_weights=class_weights,
            weight_dice_classes=loss_settings.weight_dice_classes,
            exclusion_weight=loss_settings.exclusion_weight if loss_settings.partial_labels == "marginal+exclusion" else 0.0,
        )
    losses: dict[str, tuple[nn.Module, float]] = {
        "seg": (DeepSupervisionLoss(seg, _level_weights(loss_settings, levels, min_level_weight)), 1.0)
    }
    for head in heads:
        head.out_channels(num_classes)
        weights = _level_weights(loss_settings, levels, min_level_weight) if head.deep_supervision else [1.0]
        losses[head.name] = (
            DeepSupervisionLoss(_head_loss(head, loss_settings, batch_dice), weights),
            head.weight,
        )
    return MultiHeadLoss(losses, {h.name: h.target for h in heads})
