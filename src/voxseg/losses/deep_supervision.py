"""Deep supervision: one loss over the outputs of several decoder resolutions.

Default weights follow nnU-Net: 1/2^i for output i (full resolution first), the lowest
resolution 0, normalised to sum 1. Zero-weighted levels are skipped, not computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def deep_supervision_weights(num_outputs: int, weights: Sequence[float] | None = None) -> list[float]:
    """Normalised weights for ``num_outputs`` levels: ``weights`` if given, else 1/2^i."""
    if weights is None:
        weights = [1 / 2**i for i in range(num_outputs)]
        if num_outputs > 1:
            weights[-1] = 0.0
    if len(weights) != num_outputs or sum(weights) <= 0:
        raise ValueError(f"need {num_outputs} deep-supervision weights, positive sum: {weights}")
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """``forward(outputs, targets, sample_weights)``: the wrapped loss at every level, summed with
    the level weights, for every key the wrapped loss returns."""

    def __init__(self, loss: nn.Module, weights: Sequence[float]):
        super().__init__()
        self.loss = loss
        self.weights = list(weights)

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        sample_weights: torch.Tensor | None = None,
        **extra: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """``extra`` keyword arguments (e.g. ``annotated``) go to the wrapped loss unchanged."""
        extra = {k: v for k, v in extra.items() if v is not None}
        if len(outputs) != len(self.weights) or len(targets) < len(outputs):
            raise ValueError(f"{len(outputs)} outputs and {len(targets)} targets for {len(self.weights)} weights")
        total: dict[str, torch.Tensor] = {}
        for weight, output, target in zip(self.weights, outputs, targets):
            if weight == 0:
                continue
            for key, value in self.loss(output, target, sample_weights, **extra).items():
                total[key] = total[key] + weight * value if key in total else weight * value
        return total
