"""voxseg.model: networks built by name from a plan's `network` topology."""

from voxseg.model.config import HeadSettings, ModelSettings
from voxseg.model.registry import (
    build_network,
    count_parameters,
    feature_map_shapes,
)
from voxseg.registry import list_networks, register_network

__all__ = [
    "HeadSettings",
    "ModelSettings",
    "build_network",
    "count_parameters",
    "feature_map_shapes",
    "list_networks",
    "register_network",
]
