"""Build a network from a plan without any training context (nnU-Net's static builder, typed).

`NetworkSpec` is everything that decides a network's shape: the plan's topology, input channels
(image channels plus, for a cascade, one per class of the previous stage), output channels (classes,
or regions for region-based plans), the `model.` settings and the extra heads. Trainers build their
network from it, checkpoints store it, and the predictor rebuilds the same network from the
checkpoint alone, so inference never imports the training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from voxseg.model.config import HeadSettings, ModelSettings
from voxseg.model.registry import build_network
from voxseg.plans import Plan


@dataclass(frozen=True)
class NetworkSpec:
    network: dict  # the configuration's plans.json "network" entry
    in_channels: int
    out_channels: int
    model: ModelSettings = field(default_factory=ModelSettings)
    heads: tuple[HeadSettings, ...] = ()

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        config_name: str,
        model: ModelSettings | None = None,
        heads: tuple[HeadSettings, ...] | list[HeadSettings] = (),
    ) -> NetworkSpec:
        cfg = plan.configuration(config_name)
        # cascade: the previous stage's segmentation, one-hot over the foreground label values
        extra = plan.num_classes - 1 if cfg.previous_stage is not None else 0
        return cls(cfg.network, len(plan.channel_names) + extra, plan.output_channels, model or ModelSettings(), tuple(heads))

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "model": dataclasses.asdict(self.model),
            "heads": [dataclasses.asdict(h) for h in self.heads],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkSpec:
        return cls(
            d["network"],
            int(d["in_channels"]),
            int(d["out_channels"]),
            ModelSettings(**d.get("model", {})),
            tuple(HeadSettings(**h) for h in d.get("heads", [])),
        )


def build_from_spec(spec: NetworkSpec, *, deep_supervision: bool | None = None) -> nn.Module:
    """The network `spec` describes; ``deep_supervision`` overrides ``spec.model.deep_supervision``."""
    return build_network(
        spec.network,
        spec.in_channels,
        spec.out_channels,
        settings=spec.model,
        heads=spec.heads,
        deep_supervision=deep_supervision,
    )
