"""Networks: output structure in 2D/3D, deep supervision, extra heads, registry, init, helpers."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

from voxseg.errors import PlanError, SettingsError
from voxseg.model import (
    HeadSettings,
    ModelSettings,
    build_network,
    count_parameters,
    feature_map_shapes,
    register_network,
)


def topology(dims: int, features=(4, 8, 16), n_conv=2) -> dict:
    n = len(features)
    return {
        "architecture": "plain_unet",
        "dims": dims,
        "features": list(features),
        "kernel_sizes": [[3] * dims] * n,
        "strides": [[1] * dims] + [[2] * dims] * (n - 1),
        "n_conv_per_stage": [n_conv] * n,
        "n_conv_per_stage_decoder": [1] * (n - 1),
    }


def shapes(outputs: dict) -> dict:
    return {key: [tuple(t.shape) for t in value] for key, value in outputs.items()}


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
@pytest.mark.parametrize("dims", [2, 3])
def test_output_shapes_with_deep_supervision_and_heads(architecture, dims):
    torch.manual_seed(0)
    heads = [
        HeadSettings("edge", "boundary", deep_supervision=True),
        HeadSettings("fg", "foreground", loss="ce"),
    ]
    net = build_network(topology(dims), 2, 3, settings=ModelSettings(architecture=architecture), heads=heads)
    patch = (16,) * dims
    out = net(torch.randn(2, 2, *patch))
    assert shapes(out) == {
        "seg": [(2, 3, *patch), (2, 3, *(8,) * dims)],
        "edge": [(2, 1, *patch), (2, 1, *(8,) * dims)],
        "fg": [(2, 2, *patch)],
    }
    net.deep_supervision = False
    assert shapes(net(torch.randn(1, 2, *patch))) == {
        "seg": [(1, 3, *patch)],
        "edge": [(1, 1, *patch)],
        "fg": [(1, 2, *patch)],
    }


def test_deep_supervision_off_keeps_the_same_parameters():
    with_ds = build_network(topology(2), 1, 2, deep_supervision=True)
    without = build_network(topology(2), 1, 2, settings=ModelSettings(deep_supervision=False))
    assert with_ds.state_dict().keys() == without.state_dict().keys()
    assert len(without(torch.randn(1, 1, 16, 16))["seg"]) == 1


def test_anisotropic_strides_and_kernels_in_3d():
    network = topology(3)
    network["kernel_sizes"] = [[1, 3, 3], [3, 3, 3], [3, 3, 3]]
    network["strides"] = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    out = build_network(network, 1, 2)(torch.randn(1, 1, 8, 16, 16))
    assert shapes(out)["seg"] == [(1, 2, 8, 16, 16), (1, 2, 8, 8, 8)]


@pytest.mark.parametrize("architecture", ["plain_unet", "resenc_unet"])
def test_forward_backward_reaches_every_parameter(architecture):
    torch.manual_seed(0)
    net = build_network(
        topology(3, features=(4, 8)),
        1,
        2,
        settings=ModelSettings(architecture=architecture, dropout=0.1),
        heads=[HeadSettings("edge", "boundary")],
    )
    out = net(torch.randn(2, 1, 8, 8, 8))
    sum(t.float().pow(2).mean() for value in out.values() for t in value).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_count_parameters_matches_hand_count():
    network = topology(2, features=(4, 8), n_conv=1)
    # enc0 conv 1->4 (36+4) + norm (8); enc1 conv 4->8 (288+8) + norm (16);
    # up 8->4 k2 (128+4); dec conv 8->4 (288+4) + norm (8); seg 1x1 4->2 (8+2)
    assert count_parameters(build_network(network, 1, 2)) == 48 + 312 + 132 + 300 + 10


def test_weight_init_is_kaiming_normal_with_zero_bias():
    torch.manual_seed(0)
    net = build_network(topology(3, features=(32, 64)), 1, 2)
    conv = net.encoder.stages[1][0][0]  # 32 -> 64, 3x3x3: 55,296 weights
    fan_in = 32 * 27
    expected = math.sqrt(2 / (1 + 1e-4)) / math.sqrt(fan_in)
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    assert torch.all(conv.bias == 0)


def test_resenc_blocks_start_with_zeroed_last_norm():
    net = build_network(topology(2), 1, 2, settings=ModelSettings(architecture="resenc_unet"))
    blocks = [m for m in net.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 6
    assert all(torch.all(b.conv2[-1].weight == 0) for b in blocks)


def test_norm_choice_and_autocast_bf16():
    net = build_network(topology(2), 1, 2, settings=ModelSettings(norm="batch"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    net = build_network(topology(3, features=(4, 8)), 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 1, 8, 8, 8))["seg"][0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward_under_fp16_autocast():
    net = build_network(topology(3), 1, 2).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(torch.randn(1, 1, 16, 16, 16, device="cuda"))
    assert out["seg"][0].shape == (1, 2, 16, 16, 16)


def test_registered_and_dotted_path_factories(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Tiny(torch.nn.Module):
                def __init__(self, cin, k, heads):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(cin, k, 1)
                    self.heads = heads

                def forward(self, x):
                    return {"seg": [self.conv(x)]}

            def tiny(network, in_channels, num_classes, *, settings, heads):
                return Tiny(in_channels, num_classes, heads)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    heads = [HeadSettings("edge", "boundary", deep_supervision=True)]
    net = build_network(topology(2), 3, 5, settings=ModelSettings(architecture="my_nets:tiny"), heads=heads)
    assert type(net).__name__ == "Tiny" and net.heads == {"edge": (1, True)}
    assert net(torch.randn(1, 3, 4, 4))["seg"][0].shape == (1, 5, 4, 4)

    @register_network("test_registered_tiny")
    def registered(network, in_channels, num_classes, *, settings, heads):
        return nn.Conv2d(in_channels, num_classes, 1)

    net = build_network({**topology(2), "architecture": "test_registered_tiny"}, 1, 2)
    assert isinstance(net, nn.Conv2d)


def test_bad_architecture_names_raise_settings_errors():
    with pytest.raises(SettingsError, match="plain_unet, resenc_unet"):
        build_network(topology(2), 1, 2, settings=ModelSettings(architecture="unet++"))
    with pytest.raises(SettingsError, match="cannot import"):
        build_network(topology(2), 1, 2, settings=ModelSettings(architecture="no_such_mod:f"))
    with pytest.raises(SettingsError, match=r"has no .nope."):
        build_network(topology(2), 1, 2, settings=ModelSettings(architecture="math:nope"))


def test_malformed_topology_raises_plan_error():
    network = topology(3)
    network["strides"] = network["strides"][:2]
    with pytest.raises(PlanError, match="strides has 2 entries for 3 stages"):
        build_network(network, 1, 2)
    with pytest.raises(PlanError, match="malformed"):
        build_network({"dims": 3}, 1, 2)


def test_head_settings_validation():
    with pytest.raises(SettingsError, match="target"):
        HeadSettings("x", "edges")
    with pytest.raises(SettingsError, match="channels=1"):
        HeadSettings("x", "foreground", loss="bce", channels=2)
    with pytest.raises(SettingsError, match="other than 'seg'"):
        HeadSettings("seg", "labels")
    with pytest.raises(SettingsError, match="unique"):
        build_network(topology(2), 1, 2, heads=[HeadSettings("a", "boundary")] * 2)
    with pytest.raises(SettingsError, match="channels is needed"):
        HeadSettings("x", "extra:vessels", loss="ce").out_channels(3)
    assert HeadSettings("x", "labels", loss="dice_ce").out_channels(4) == 4
    assert HeadSettings("x", "boundary", loss="ce").out_channels(4) == 2
    with pytest.raises(SettingsError, match=r"model\.norm"):
        ModelSettings(norm="layer")


def test_feature_map_shapes_follow_the_topology():
    network = topology(3)
    entries = feature_map_shapes(network, (16, 32, 32))
    net = build_network(network, 1, 2)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    assert len(entries) == len(convs)
    assert entries[0] == ("encoder.stages.0.0.0", (4, 16, 32, 32))
    bottleneck = [shape for name, shape in entries if name.startswith("encoder.stages.2")]
    assert bottleneck == [(16, 4, 8, 8)] * 2
    assert ("seg_layers.0", (2, 16, 32, 32)) in entries


def test_traces_as_one_graph_for_torch_compile():
    # fullgraph=True fails on any graph break; the eager backend keeps this check cheap on CPU
    net = build_network(topology(2, features=(4, 8)), 1, 2, heads=[HeadSettings("e", "boundary")])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = torch.randn(1, 1, 8, 8)
    expected = net(x)
    assert all(torch.allclose(compiled(x)[k][0], expected[k][0]) for k in expected)
