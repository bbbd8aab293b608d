"""nnU-Net network weights -> voxseg's U-Net state dict, one tensor to one tensor, or a refusal.

Our ``plain_unet`` / ``resenc_unet`` are built layer for layer like dynamic_network_architectures'
PlainConvUNet / ResidualEncoderUNet (see voxseg.model.unet), so the mapping is a renaming of module
paths derived from the topology alone; no tensor is reshaped or recomputed. nnU-Net's state dicts
hold every tensor under several names (``...convs.0.conv`` is also ``...convs.0.all_modules.0``;
the decoder keeps the whole encoder as ``decoder.encoder.*``); those aliases are skipped, every
other key must be used, and every one of ours must be found with the same shape. Anything else
means the trainer built another network than the plans describe, and the import is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from voxseg.errors import CheckpointError
from voxseg.model.unet import Topology

_ALIASES = (".all_modules.",)
_ALIAS_PREFIXES = ("decoder.encoder.",)


def module_pairs(network: dict) -> list[tuple[str, str]]:
    """(voxseg module path, nnU-Net module path) for every module that holds tensors.

    Example: ``module_pairs(plan_network)[0]`` -> ``("encoder.stages.0.0.0", "encoder.stages.0.0.convs.0.conv")``
    """
    topo = Topology.from_network(network)
    n, ones = topo.n_stages, (1,) * topo.dims
    pairs: list[tuple[str, str]] = []

    def conv_norm(ours: str, theirs: str) -> None:  # our conv block is Sequential(conv, norm[, act])
        pairs.extend([(f"{ours}.0", f"{theirs}.conv"), (f"{ours}.1", f"{theirs}.norm")])

    if network["architecture"] == "plain_unet":
        for s in range(n):
            for i in range(topo.n_conv_per_stage[s]):
                conv_norm(f"encoder.stages.{s}.{i}", f"encoder.stages.{s}.0.convs.{i}")
    else:
        conv_norm("encoder.stem", "encoder.stem.convs.0")
        cin = topo.features[0]
        for s in range(n):
            for b in range(topo.n_conv_per_stage[s]):
                ours, theirs = f"encoder.stages.{s}.{b}", f"encoder.stages.{s}.blocks.{b}"
                conv_norm(f"{ours}.conv1", f"{theirs}.conv1")
                conv_norm(f"{ours}.conv2", f"{theirs}.conv2")
                block_in, stride = (cin, topo.strides[s]) if b == 0 else (topo.features[s], ones)
                if block_in != topo.features[s]:  # projection shortcut, after an average pool when striding
                    j = int(tuple(stride) != ones)
                    pairs.extend(
                        [
                            (f"{ours}.shortcut.{j}", f"{theirs}.skip.{j}.conv"),
                            (f"{ours}.shortcut.{j + 1}", f"{theirs}.skip.{j}.norm"),
                        ]
                    )
            cin = topo.features[s]
    for d in range(n - 1):  # decoder stage d: d = 0 sits right above the bottleneck on both sides
        pairs.append((f"decoder.ups.{d}", f"decoder.transpconvs.{d}"))
        for i in range(topo.n_conv_per_stage_decoder[n - 2 - d]):
            conv_norm(f"decoder.stages.{d}.{i}", f"decoder.stages.{d}.convs.{i}")
        # our segmentation layers are indexed by resolution (0 = full), nnU-Net's by decoder stage
        pairs.append((f"seg_layers.{n - 2 - d}", f"decoder.seg_layers.{d}"))
    return pairs


def _is_alias(key: str) -> bool:
    return key.startswith(_ALIAS_PREFIXES) or any(a in key for a in _ALIASES)


def convert_state_dict(
    weights: dict[str, torch.Tensor],
    network: nn.Module,
    network_dict: dict,
    *,
    path: str | Path | None = None,
    what: str = "the plans' network",
) -> dict[str, torch.Tensor]:
    """nnU-Net's ``network_weights`` renamed onto ``network`` (built from ``network_dict``).

    Raises CheckpointError naming missing, unexpected and mis-shaped tensors (a few of each).
    """
    theirs_of = dict(module_pairs(network_dict))
    converted: dict[str, torch.Tensor] = {}
    missing, shapes = [], []
    for key, ours in network.state_dict().items():
        module, _, leaf = key.rpartition(".")
        source = f"{theirs_of[module]}.{leaf}" if module in theirs_of else None
        if source is None or source not in weights:
            missing.append(source or key)
        elif tuple(weights[source].shape) != tuple(ours.shape):
            shapes.append(f"{source} {tuple(weights[source].shape)} vs {tuple(ours.shape)}")
        else:
            converted[key] = weights[source].detach().clone()
    used = {f"{theirs_of[k.rpartition('.')[0]]}.{k.rpartition('.')[2]}" for k in converted}
    unexpected = sorted(k for k in weights if not _is_alias(k) and k not in used)
    if missing or shapes or unexpected:
        parts = [
            f"{len(v)} {name} (e.g. {', '.join(v[:3])})"
            for name, v in (("missing", missing), ("unexpected", unexpected), ("with other shapes", shapes))
            if v
        ]
        raise CheckpointError(
            f"checkpoint weights do not match {what}: {'; '.join(parts)}",
            path=path,
            fix="the trainer builds another network than its plans describe; predict this model with nnU-Net itself",
        )
    return converted


def uses_running_stats(weights: dict[str, torch.Tensor]) -> bool:
    """True when the norms carry running statistics: a BatchNorm network (e.g. nnUNetTrainerBN)."""
    return any(k.endswith("norm.running_mean") for k in weights)
