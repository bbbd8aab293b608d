"""`Plan` <-> ``WORK/plans.json``: the typed view of the file users read and edit.

A neutral module: planning writes plans, preprocessing, training and inference read them, and none
of those stages has to import another to know the layout. Hand-written dataclasses rather than
pydantic: a dozen fields, no validation framework needed, and the JSON stays exactly the
documented layout (docs/architecture.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from voxseg.errors import NotFoundError, PlanError
from voxseg.io_utils import atomic_write_json

PLANS_FILE = "plans.json"
# An axis more than this much coarser than the finest is "anisotropic": planned and resampled apart.
ANISOTROPY_RATIO = 3.0
# nnU-Net's channel-name -> scheme mapping (case-insensitive); any other name means z-score.
NORMALIZATION_SCHEMES = ("ct", "zscore", "nonorm", "rescale_to_0_1", "rgb_to_0_1")


@dataclass
class Normalization:
    scheme: str  # one of NORMALIZATION_SCHEMES (nnU-Net's names, lower case)
    mean: float = 0.0
    std: float = 1.0
    lower: float | None = None  # CT clip window (dataset foreground 0.5 / 99.5 percentiles)
    upper: float | None = None
    use_nonzero_mask: bool = False

    def __post_init__(self) -> None:
        self.scheme = self.scheme.lower()
        if self.scheme not in NORMALIZATION_SCHEMES:
            raise PlanError(
                f"unknown normalization scheme {self.scheme!r}",
                fix=f"use one of {', '.join(NORMALIZATION_SCHEMES)} in plans.json",
            )


@dataclass
class ConfigurationPlan:
    dims: int
    spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    batch_dice: bool
    network: dict
    deep_supervision_scales: list[list[float]]
    memory: dict = field(default_factory=dict)
    # Cascade: the configuration whose segmentation enters as extra input channels (nnU-Net's
    # 3d_cascade_fullres -> 3d_lowres), and the reverse link on the low-resolution stage.
    previous_stage: str | None = None
    next_stage: str | None = None
    # Another configuration whose preprocessed store this one reads (the cascade reads 3d_fullres's).
    data_from: str | None = None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ConfigurationPlan:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class Plan:
    dataset_name: str
    dataset_path: str
    num_classes: int
    has_ignore: bool
    channel_names: list[str]
    transpose_forward: list[int]
    transpose_backward: list[int]
    normalization: list[Normalization]
    configurations: dict[str, ConfigurationPlan]
    class_names: list[str] = field(default_factory=list)  # index = label value
    # Region-based datasets (labels given as lists): the network predicts one sigmoid per region.
    regions: list[list[int]] | None = None
    region_names: list[str] | None = None
    regions_class_order: list[int] | None = None
    image_reader: str | None = None  # dataset.json's overwrite_image_reader_writer, for reading new images

    @property
    def is_region_based(self) -> bool:
        return bool(self.regions)

    @property
    def output_channels(self) -> int:
        """Network outputs: one per region for region-based plans, else one per class."""
        return len(self.regions) if self.regions else self.num_classes

    @property
    def output_names(self) -> list[str]:
        """Names of the foreground outputs (regions, or classes 1..K-1)."""
        if self.regions:
            return list(self.region_names or [str(r) for r in self.regions])
        names = self.class_names or [str(i) for i in range(self.num_classes)]
        return list(names[1:])

    def to_json(self) -> dict:
        d = asdict(self)
        d["configurations"] = {k: v.to_json() for k, v in self.configurations.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        return cls(
            dataset_name=d["dataset_name"],
            dataset_path=d.get("dataset_path", ""),
            num_classes=int(d["num_classes"]),
            has_ignore=bool(d["has_ignore"]),
            channel_names=list(d["channel_names"]),
            transpose_forward=list(d["transpose_forward"]),
            transpose_backward=list(d["transpose_backward"]),
            normalization=[Normalization(**n) for n in d["normalization"]],
            configurations={k: ConfigurationPlan.from_json(v) for k, v in d["configurations"].items()},
            class_names=list(d.get("class_names", [])),
            regions=[list(map(int, r)) for r in d["regions"]] if d.get("regions") else None,
            region_names=list(d["region_names"]) if d.get("region_names") else None,
            regions_class_order=list(map(int, d["regions_class_order"])) if d.get("regions_class_order") else None,
            image_reader=d.get("image_reader"),
        )

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlanError(
                f"configuration {name!r} is not planned (planned: {', '.join(self.configurations)})",
                fix=f"run `voxseg plan ... --configs {name}` or pick a planned configuration",
            )
        return self.configurations[name]

    def store_of(self, config_name: str) -> str:
        """The store folder (WORK/store/<name>) holding `config_name`'s preprocessed cases."""
        return self.configuration(config_name).data_from or config_name

    def save(self, work_dir: str | Path) -> Path:
        path = Path(work_dir) / PLANS_FILE
        atomic_write_json(path, self.to_json())
        return path


def is_anisotropic(spacing: Sequence[float]) -> bool:
    """True when the coarsest axis is more than 3x the finest: that axis is resampled on its own."""
    return max(spacing) / min(spacing) > ANISOTROPY_RATIO


def load_plans(work_dir: str | Path) -> Plan:
    path = Path(work_dir) / PLANS_FILE
    if not path.is_file():
        raise NotFoundError("no plans.json here", path=path, fix="run `voxseg plan DATASET_DIR -o WORK_DIR` first")
    try:
        return Plan.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"plans.json is malformed ({exc})", path=path, fix="re-run `voxseg plan` or fix the edit") from exc
