"""`Plan` <-> ``WORK/plans.json``: the typed view of the file users read and edit.

Hand-written dataclasses rather than pydantic: a dozen fields, no validation framework needed, and
the JSON stays exactly the documented layout (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from voxseg.errors import PlanError
from voxseg.io_utils import atomic_write_json

PLANS_FILE = "plans.json"


@dataclass
class Normalization:
    scheme: str                    # "ct" or "zscore"
    mean: float = 0.0
    std: float = 1.0
    lower: float | None = None     # CT clip window (dataset foreground 0.5 / 99.5 percentiles)
    upper: float | None = None
    use_nonzero_mask: bool = False


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

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ConfigurationPlan":
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

    def to_json(self) -> dict:
        d = asdict(self)
        d["configurations"] = {k: v.to_json() for k, v in self.configurations.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
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
        )

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlanError(
                f"configuration {name!r} is not planned (planned: {', '.join(self.configurations)})",
                fix=f"run `voxseg plan ... --configs {name}` or pick a planned configuration",
            )
        return self.configurations[name]

    def save(self, work_dir: str | Path) -> Path:
        path = Path(work_dir) / PLANS_FILE
        atomic_write_json(path, self.to_json())
        return path


def load_plans(work_dir: str | Path) -> Plan:
    path = Path(work_dir) / PLANS_FILE
    if not path.is_file():
        raise PlanError("no plans.json here", path=path, fix="run `voxseg plan DATASET_DIR -o WORK_DIR` first")
    try:
        return Plan.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PlanError(f"plans.json is malformed ({exc})", path=path, fix="re-run `voxseg plan` or fix the edit") from exc
