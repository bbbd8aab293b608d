"""Planner arithmetic: spacing rule, topology, memory monotonicity, batch caps, overrides."""

from __future__ import annotations

import math

import pytest

from voxseg.errors import PlanError
from voxseg.model.registry import build_network
from voxseg.model.registry import count_parameters as count_module_parameters
from voxseg.planning.memory import count_parameters, estimate_training_memory
from voxseg.planning.planner import PlannerOptions, _Problem, plan_configuration
from voxseg.planning.spacing import median_shape_at, target_spacing, transpose_for
from voxseg.planning.topology import (
    deep_supervision_scales,
    network_dict,
    pooling_topology,
)


def test_spacing_is_median_without_anisotropy():
    spacings = [[1.0, 0.8, 0.8], [1.5, 0.7, 0.7], [2.0, 0.9, 0.9]]
    shapes = [[100, 200, 200]] * 3
    assert target_spacing(spacings, shapes) == pytest.approx((1.5, 0.8, 0.8))


def test_anisotropic_axis_uses_10th_percentile():
    spacings = [[s, 0.7, 0.7] for s in (1.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    shapes = [[40, 512, 512]] * 10
    z = target_spacing(spacings, shapes)[0]
    assert z == pytest.approx(4.6)  # 10th percentile of {1, 5 x 9}, far below the median 5
    # coarse but not short (as many voxels as in-plane): keep the median
    assert target_spacing(spacings, [[512, 512, 512]] * 10)[0] == pytest.approx(5.0)


def test_anisotropic_axis_never_finer_than_in_plane():
    spacings = [[0.1, 0.7, 0.7]] + [[5.0, 0.7, 0.7]] * 9
    assert target_spacing(spacings, [[40, 512, 512]] * 10)[0] >= 0.7


def test_transpose_puts_coarsest_axis_first_and_median_shape():
    fwd, bwd = transpose_for([0.8, 3.0, 0.8])
    assert fwd == [1, 0, 2] and [fwd[i] for i in bwd] == [0, 1, 2]
    assert median_shape_at([[2.0, 1.0]], [[10, 20]], [1.0, 1.0]) == (20, 20)


def test_pooling_stops_at_4_voxels_and_kernel_1_on_coarse_axis():
    topo = pooling_topology((4.0, 1.0, 1.0), (20, 160, 160))
    sizes = list(topo.patch_size)
    for stride in topo.strides:
        sizes = [s // st for s, st in zip(sizes, stride)]
    assert all(s >= 4 for s in sizes)
    assert topo.strides[1] == (1, 2, 2)  # z waits until in-plane spacing catches up
    assert topo.kernel_sizes[0] == (1, 3, 3)  # z is 4x coarser: kernel 1
    assert topo.kernel_sizes[-1] == (3, 3, 3)
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.divisor))
    assert topo.divisor == tuple(math.prod(s[a] for s in topo.strides) for a in range(3))


def test_network_dict_features_capped_and_builds():
    topo = pooling_topology((1.0, 1.0, 1.0), (128, 128, 128))
    net = network_dict(topo)
    assert net["features"][:3] == [32, 64, 128] and max(net["features"]) == 320
    assert len(deep_supervision_scales(net["strides"])) == topo.num_stages - 1
    small = network_dict(pooling_topology((1.0, 1.0, 1.0), (16, 16, 16)))
    model = build_network(small, 2, 3, deep_supervision=True)
    assert count_parameters(small, 2, 3) == count_module_parameters(model)


def _problem(gb: float, **overrides) -> _Problem:
    return _Problem(
        (1.0, 0.8, 0.8), (200, 512, 512), 200 * 512 * 512 * 100.0, 1, 3, PlannerOptions(gpu_memory_gb=gb, **overrides)
    )


def test_patch_and_batch_monotone_in_budget_and_fit():
    prev_voxels, prev_batch = 0, 0
    for gb in (3, 6, 12, 24):
        cfg = plan_configuration(_problem(gb), 3, batch_dice=True)
        voxels = math.prod(cfg.patch_size)
        assert voxels >= prev_voxels and cfg.batch_size >= 2
        assert cfg.memory["estimate_bytes"] <= gb * 1e9
        prev_voxels = voxels
    for gb in (4, 8, 16):  # 2D: patch clipped to the image, batch grows with the budget
        cfg = plan_configuration(
            _Problem((0.8, 0.8), (256, 256), 1e12, 1, 3, PlannerOptions(gpu_memory_gb=gb)), 2, batch_dice=True
        )
        assert cfg.patch_size == [256, 256] and cfg.batch_size > prev_batch
        prev_batch = cfg.batch_size


def test_estimate_monotone_in_batch_and_patch():
    net = network_dict(pooling_topology((1.0, 1.0, 1.0), (64, 64, 64)))
    a = estimate_training_memory(net, (64, 64, 64), 2, 1, 3).total_bytes
    assert estimate_training_memory(net, (64, 64, 64), 3, 1, 3).total_bytes > a
    assert estimate_training_memory(net, (64, 64, 128), 2, 1, 3).total_bytes > a
    assert estimate_training_memory(net, (64, 64, 64), 2, 1, 3, precision_bytes=4).total_bytes > a


def test_five_percent_cap_on_batch():
    tiny_dataset = _Problem((1.0, 1.0), (64, 64), 64 * 64 * 3 * 10.0, 1, 3, PlannerOptions(gpu_memory_gb=8))
    cfg = plan_configuration(tiny_dataset, 2, batch_dice=True)
    assert cfg.batch_size == max(2, round(64 * 64 * 3 * 10 * 0.05 / (64 * 64)))


def test_overrides_and_their_errors():
    cfg = plan_configuration(_problem(8, patch_size=(32, 64, 64), batch_size=3), 3, batch_dice=True)
    assert cfg.patch_size == [32, 64, 64] and cfg.batch_size == 3
    with pytest.raises(PlanError, match="divisible") as e:
        plan_configuration(_problem(8, patch_size=(30, 64, 64)), 3, batch_dice=True)
    assert "32,64,64" in e.value.fix
    with pytest.raises(PlanError, match="over the 2 GB budget") as e:
        plan_configuration(_problem(2, patch_size=(128, 256, 256)), 3, batch_dice=True)
    assert "patch" in e.value.fix
    with pytest.raises(PlanError, match="batch 500"):
        plan_configuration(_problem(8, batch_size=500), 3, batch_dice=True)
