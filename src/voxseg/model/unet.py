"""Our own compact U-Net in two families: ``plain_unet`` and ``resenc_unet``.

Why hand-written instead of dynamic-network-architectures (nnU-Net's network package): voxseg
needs extra output heads on the shared decoder features and a forward that returns *every* output
(all heads, all deep-supervision levels) as a dict; that package returns only the segmentation
outputs and would need subclassing plus copied forward logic. The semantics follow nnU-Net so its
plans and results transfer:

- ``plain_unet`` (PlainConvUNet): stages of conv -> [dropout] -> InstanceNorm(affine, eps 1e-5) ->
  LeakyReLU(0.01); the first conv of a stage downsamples by its stride; the decoder upsamples with a
  transposed conv (kernel = stride), concatenates the skip and runs its convs; a 1x1 conv per
  decoder stage gives the deep-supervision outputs.
- ``resenc_unet`` (ResidualEncoderUNet): a one-conv stem, then per stage ``n_conv_per_stage[s]``
  residual basic blocks (two convs; the shortcut average-pools then 1x1-projects when shape
  changes), the last norm of each block zero-initialised; same decoder.

Weights are initialised like nnU-Net (kaiming normal, a=1e-2, zero bias). Every segmentation
layer is built even when deep supervision is off, so one checkpoint serves both modes; flip
``net.deep_supervision`` to change what forward returns (inference uses False).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from voxseg.errors import PlanError
from voxseg.model.config import ModelSettings


@dataclass(frozen=True)
class Topology:
    """The plan's ``network`` dict, checked: one entry per stage in every list."""

    dims: int
    features: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @classmethod
    def from_network(cls, network: dict) -> Topology:
        fix = "re-run `voxseg plan` or correct the configuration's `network` entry in plans.json"
        try:
            topo = cls(
                dims=int(network["dims"]),
                features=tuple(int(f) for f in network["features"]),
                kernel_sizes=tuple(tuple(int(k) for k in ks) for ks in network["kernel_sizes"]),
                strides=tuple(tuple(int(s) for s in st) for st in network["strides"]),
                n_conv_per_stage=tuple(int(n) for n in network["n_conv_per_stage"]),
                n_conv_per_stage_decoder=tuple(int(n) for n in network["n_conv_per_stage_decoder"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlanError(f"network topology is malformed ({err!r})", fix=fix) from err
        n = topo.n_stages
        problems = []
        if topo.dims not in (2, 3):
            problems.append(f"dims={topo.dims} (must be 2 or 3)")
        if n < 2:
            problems.append("fewer than 2 stages")
        for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
            value = getattr(topo, key)
            if len(value) != n:
                problems.append(f"{key} has {len(value)} entries for {n} stages")
        if len(topo.n_conv_per_stage_decoder) != n - 1:
            problems.append(f"n_conv_per_stage_decoder needs {n - 1} entries")
        if any(len(k) != topo.dims for k in topo.kernel_sizes + topo.strides):
            problems.append(f"kernel_sizes/strides entries must have {topo.dims} values")
        if problems:
            raise PlanError("network topology is inconsistent: " + "; ".join(problems), fix=fix)
        return topo


@dataclass(frozen=True)
class _Ops:
    """The dimension-specific layer classes plus the norm/dropout choice."""

    dims: int
    norm: str
    dropout: float

    def conv(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], bias: bool = True) -> nn.Module:
        cls: Callable[..., nn.Module] = nn.Conv3d if self.dims == 3 else nn.Conv2d  # tuples of length dims
        padding = tuple(k // 2 for k in kernel)
        return cls(cin, cout, tuple(kernel), tuple(stride), padding=padding, bias=bias)

    def conv_transpose(self, cin: int, cout: int, stride: Sequence[int]) -> nn.Module:
        cls: Callable[..., nn.Module] = nn.ConvTranspose3d if self.dims == 3 else nn.ConvTranspose2d
        return cls(cin, cout, tuple(stride), tuple(stride))

    def norm_layer(self, channels: int) -> nn.Module:
        cls: Callable[..., nn.Module]
        if self.norm == "batch":
            cls = nn.BatchNorm3d if self.dims == 3 else nn.BatchNorm2d
            return cls(channels, eps=1e-5)
        cls = nn.InstanceNorm3d if self.dims == 3 else nn.InstanceNorm2d
        return cls(channels, eps=1e-5, affine=True)

    def conv_block(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], act: bool = True) -> nn.Sequential:
        layers = [self.conv(cin, cout, kernel, stride)]
        if self.dropout > 0:
            layers.append((nn.Dropout3d if self.dims == 3 else nn.Dropout2d)(self.dropout))
        layers.append(self.norm_layer(cout))
        if act:
            layers.append(nn.LeakyReLU(1e-2, inplace=True))
        return nn.Sequential(*layers)

    def pointwise(self, cin: int, cout: int, bias: bool = True) -> nn.Module:
        return self.conv(cin, cout, (1,) * self.dims, (1,) * self.dims, bias)


class PlainEncoder(nn.Module):
    def __init__(self, in_channels: int, topo: Topology, ops: _Ops):
        super().__init__()
        stages = []
        cin = in_channels
        for s in range(topo.n_stages):
            blocks = [
                ops.conv_block(
                    cin if i == 0 else topo.features[s],
                    topo.features[s],
                    topo.kernel_sizes[s],
                    topo.strides[s] if i == 0 else (1,) * topo.dims,
                )
                for i in range(topo.n_conv_per_stage[s])
            ]
            stages.append(nn.Sequential(*blocks))
            cin = topo.features[s]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualBlock(nn.Module):
    """Two convs plus shortcut (ResNet-D: average-pool before the 1x1 projection when striding)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], ops: _Ops):
        super().__init__()
        self.conv1 = ops.conv_block(cin, cout, kernel, stride)
        self.conv2 = ops.conv_block(cout, cout, kernel, (1,) * ops.dims, act=False)
        shortcut: list[nn.Module] = []
        if any(s != 1 for s in stride):
            pool: Callable[..., nn.Module] = nn.AvgPool3d if ops.dims == 3 else nn.AvgPool2d
            shortcut.append(pool(tuple(stride), tuple(stride)))
        if cin != cout:
            # no bias: the norm right after it has its own shift (as in nnU-Net's ResEnc)
            shortcut += [ops.pointwise(cin, cout, bias=False), ops.norm_layer(cout)]
        self.shortcut = nn.Sequential(*shortcut)
        self.act = nn.LeakyReLU(1e-2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResidualEncoder(nn.Module):
    def __init__(self, in_channels: int, topo: Topology, ops: _Ops):
        super().__init__()
        ones = (1,) * topo.dims
        self.stem = ops.conv_block(in_channels, topo.features[0], topo.kernel_sizes[0], ones)
        stages = []
        cin = topo.features[0]
        for s in range(topo.n_stages):
            blocks = [
                ResidualBlock(
                    cin if i == 0 else topo.features[s],
                    topo.features[s],
                    topo.kernel_sizes[s],
                    topo.strides[s] if i == 0 else ones,
                    ops,
                )
                for i in range(topo.n_conv_per_stage[s])
            ]
            stages.append(nn.Sequential(*blocks))
            cin = topo.features[s]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Upsample, concatenate the skip, convolve; returns the features of every decoder stage,
    highest resolution first."""

    def __init__(self, topo: Topology, ops: _Ops):
        super().__init__()
        ups, stages = [], []
        for d in range(topo.n_stages - 1):
            below, here = topo.n_stages - 1 - d, topo.n_stages - 2 - d
            ups.append(ops.conv_transpose(topo.features[below], topo.features[here], topo.strides[below]))
            blocks = [
                ops.conv_block(
                    2 * topo.features[here] if i == 0 else topo.features[here],
                    topo.features[here],
                    topo.kernel_sizes[here],
                    (1,) * topo.dims,
                )
                for i in range(topo.n_conv_per_stage_decoder[here])
            ]
            stages.append(nn.Sequential(*blocks))
        self.ups = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x = skips[-1]
        features = []
        for d, (up, stage) in enumerate(zip(self.ups, self.stages)):
            x = stage(torch.cat((up(x), skips[-(d + 2)]), dim=1))
            features.append(x)
        return features[::-1]


class UNet(nn.Module):
    """Encoder + decoder + 1x1 output heads; forward returns ``dict[str, list[Tensor]]``.

    ``"seg"`` holds the full-resolution logits first, then (with ``deep_supervision``) one output
    per lower decoder stage; every extra head gets its own key, with lower resolutions only if it
    was built with ``deep_supervision`` and the network's flag is on.
    """

    def __init__(
        self,
        encoder: nn.Module,
        topo: Topology,
        ops: _Ops,
        num_classes: int,
        *,
        deep_supervision: bool,
        heads: dict[str, tuple[int, bool]] | None = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = Decoder(topo, ops)
        self.deep_supervision = deep_supervision
        levels = range(topo.n_stages - 1)
        decoder_features = [topo.features[i] for i in levels]
        self.seg_layers = nn.ModuleList(ops.pointwise(f, num_classes) for f in decoder_features)
        self.head_layers = nn.ModuleDict()
        for name, (channels, head_ds) in (heads or {}).items():
            used = decoder_features if head_ds else decoder_features[:1]
            self.head_layers[name] = nn.ModuleList(ops.pointwise(f, channels) for f in used)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        features = self.decoder(self.encoder(x))
        n = len(features) if self.deep_supervision else 1
        outputs = {"seg": [layer(f) for layer, f in zip(self.seg_layers[:n], features)]}
        for name, layers in self.head_layers.items():
            layers = cast(nn.ModuleList, layers)  # ModuleDict's items are typed Module; __init__ puts ModuleLists here
            outputs[name] = [layer(f) for layer, f in zip(layers[:n], features)]
        return outputs


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _zero_last_norm(net: UNet) -> None:
    """Residual blocks start as identity-plus-shortcut, as nnU-Net's ResEnc does."""
    for block in net.modules():
        if isinstance(block, ResidualBlock):
            weight = getattr(block.conv2[-1], "weight", None)
            if weight is not None:
                nn.init.zeros_(weight)


def _build(
    encoder_cls: type[nn.Module],
    network: dict,
    in_channels: int,
    num_classes: int,
    settings: ModelSettings,
    heads: dict[str, tuple[int, bool]],
) -> UNet:
    topo = Topology.from_network(network)
    ops = _Ops(topo.dims, settings.norm, settings.dropout)
    return UNet(
        encoder_cls(in_channels, topo, ops),
        topo,
        ops,
        num_classes,
        deep_supervision=settings.deep_supervision,
        heads=heads,
    )


def plain_unet(
    network: dict,
    in_channels: int,
    num_classes: int,
    *,
    settings: ModelSettings,
    heads: dict[str, tuple[int, bool]],
) -> UNet:
    return _build(PlainEncoder, network, in_channels, num_classes, settings, heads)


def resenc_unet(
    network: dict,
    in_channels: int,
    num_classes: int,
    *,
    settings: ModelSettings,
    heads: dict[str, tuple[int, bool]],
) -> UNet:
    """``n_conv_per_stage[s]`` counts residual blocks (two convs each) in stage s."""
    net = _build(ResidualEncoder, network, in_channels, num_classes, settings, heads)
    _zero_last_norm(net)
    return net
