"""The sum over output heads, keeping every part for logging.

Each head has a deep-supervision-aware loss (called with lists, full resolution first), a weight,
and a target spec (``labels``, ``foreground``, ``boundary``, ``extra:NAME``) that is derived per
level from the label pyramid, so a boundary target at half resolution comes from the
half-resolution label map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from voxseg.losses.targets import derive_target


class MultiHeadLoss(nn.Module):
    """``forward(outputs, targets, sample_weights)`` -> ``{"loss": sum_h w_h * loss_h,
    "<head>/<part>": ...}`` with every part each head's loss returns (e.g. ``seg/ce``).

    ``outputs``: the network's ``dict[str, list[Tensor]]``. ``targets``: ``{"labels": [label map
    per level], NAME: [extra map per level]}``, full resolution first; a head with fewer outputs
    uses the first levels.
    """

    def __init__(
        self,
        head_losses: Mapping[str, tuple[nn.Module, float]],
        head_targets: Mapping[str, str] | None = None,
    ):
        super().__init__()
        self.losses = nn.ModuleDict({name: loss for name, (loss, _) in head_losses.items()})
        self.weights = {name: float(weight) for name, (_, weight) in head_losses.items()}
        self.targets = {name: (head_targets or {}).get(name, "labels") for name in head_losses}

    def forward(
        self,
        outputs: Mapping[str, Sequence[torch.Tensor]],
        targets: Mapping[str, Sequence[torch.Tensor]],
        sample_weights: torch.Tensor | None = None,
        annotated: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``annotated`` ((B, outputs) bool, partial labels) goes to the ``seg`` head's loss only."""
        labels = targets["labels"]
        extra_names = [k for k in targets if k != "labels"]
        parts: dict[str, torch.Tensor] = {}
        total = None
        for name, loss in self.losses.items():
            levels = len(outputs[name])
            head_targets = [
                derive_target(
                    self.targets[name],
                    labels[i],
                    {k: targets[k][i] for k in extra_names if i < len(targets[k])},
                )
                for i in range(levels)
            ]
            result = loss(outputs[name], head_targets, sample_weights, annotated=annotated if name == "seg" else None)
            parts.update({f"{name}/{key}": value for key, value in result.items()})
            weighted = self.weights[name] * result["loss"]
            total = weighted if total is None else total + weighted
        assert total is not None, "MultiHeadLoss needs at least one head"
        return {"loss": total, **parts}
