"""Networks by name (through `voxseg.registry.NETWORKS`): the built-in U-Nets, users' registered
factories, or a dotted path.

A factory is ``factory(network: dict, in_channels, num_classes, *, settings: ModelSettings,
heads: dict[str, tuple[int, bool]]) -> nn.Module``, where ``heads`` maps each extra head's name to
(output channels, deep supervision). Its forward must return ``dict[str, list[Tensor]]`` as
``voxseg.model.unet.UNet`` does, so the trainer, losses and predictor never special-case it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from voxseg.errors import SettingsError
from voxseg.model.config import HeadSettings, ModelSettings, check_head_names
from voxseg.registry import NETWORKS

NetworkFactory = Callable[..., nn.Module]


def resolve_network(name: str) -> NetworkFactory:
    factory = NETWORKS.get(name)
    if not callable(factory):
        raise SettingsError(
            f"model.architecture={name!r} is not a callable network factory",
            fix="point it at f(network, in_channels, num_classes, *, settings, heads)",
        )
    return factory


def build_network(
    network: dict,
    in_channels: int,
    num_classes: int,
    *,
    settings: ModelSettings | None = None,
    heads: Sequence[HeadSettings] = (),
    deep_supervision: bool | None = None,
) -> nn.Module:
    """Build the network for a plan configuration's ``network`` dict.

    ``deep_supervision`` (when not None) overrides ``settings.deep_supervision``.
    """
    settings = settings or ModelSettings()
    if deep_supervision is not None:
        settings = dataclasses.replace(settings, deep_supervision=deep_supervision)
    check_head_names(heads)
    factory = resolve_network(settings.architecture or network.get("architecture", "plain_unet"))
    head_spec = {h.name: (h.out_channels(num_classes), h.deep_supervision) for h in heads}
    return factory(network, in_channels, num_classes, settings=settings, heads=head_spec)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def feature_map_shapes(
    network: dict,
    patch_size: Sequence[int],
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    settings: ModelSettings | None = None,
) -> list[tuple[str, tuple[int, ...]]]:
    """(layer name, (channels, *spatial)) of every conv output for one sample of ``patch_size``.

    Runs the real network on the meta device (no memory, no compute), so it is exact for any
    registered architecture, including users' own; the memory model sums these to calibrate.
    """
    with torch.device("meta"):
        net = build_network(network, in_channels, num_classes, settings=settings)
        x = torch.empty(1, in_channels, *patch_size)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for name, module in net.named_modules():
        if isinstance(module, convs):
            module.register_forward_hook(lambda _m, _i, out, name=name: shapes.append((name, tuple(out.shape[1:]))))
    with torch.no_grad():
        net(x)
    return shapes
