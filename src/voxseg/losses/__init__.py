"""voxseg.losses: ignore-aware segmentation and head losses that return their parts as dicts."""

from voxseg.losses.build import build_loss
from voxseg.losses.class_weights import resolve_class_weights
from voxseg.losses.compound import DiceCELoss
from voxseg.losses.config import LossSettings
from voxseg.losses.deep_supervision import DeepSupervisionLoss, deep_supervision_weights
from voxseg.losses.dice import SoftDiceLoss
from voxseg.losses.multihead import MultiHeadLoss
from voxseg.losses.pointwise import BCELoss, CELoss, MSELoss
from voxseg.losses.targets import boundary, derive_target, foreground

__all__ = [
    "BCELoss",
    "CELoss",
    "DeepSupervisionLoss",
    "DiceCELoss",
    "LossSettings",
    "MSELoss",
    "MultiHeadLoss",
    "SoftDiceLoss",
    "boundary",
    "build_loss",
    "deep_supervision_weights",
    "derive_target",
    "foreground",
    "resolve_class_weights",
]
