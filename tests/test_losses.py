"""Losses: CE/Dice semantics, ignore masking, class and sample weights, deep supervision, heads."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from voxseg.data.labels import IGNORE
from voxseg.errors import SettingsError
from voxseg.losses import (
    BCELoss,
    CELoss,
    DeepSupervisionLoss,
    DiceCELoss,
    LossSettings,
    MSELoss,
    MultiHeadLoss,
    SoftDiceLoss,
    boundary,
    build_loss,
    deep_supervision_weights,
    foreground,
    resolve_class_weights,
)
from voxseg.model import HeadSettings


def batch(k=3, shape=(6, 7, 5), b=2, ignore_fraction=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, *shape, generator=gen)
    target = torch.randint(0, k, (b, 1, *shape), generator=gen)
    target[torch.rand(target.shape, generator=gen) < ignore_fraction] = IGNORE
    return logits, target.to(torch.int16)


def probs_as_logits(probs):
    """Logits whose softmax is exactly ``probs`` (up to rounding)."""
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float()


# --- cross-entropy -------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [0.2, 1.0, 3.5]])
def test_ce_equals_torch_cross_entropy(weights):
    logits, target = batch()
    ours = CELoss(weights)(logits, target)["loss"]
    w = None if weights is None else torch.tensor(weights)
    reference = F.cross_entropy(logits, target[:, 0].long(), weight=w, ignore_index=IGNORE)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)


def test_everything_ignored_gives_zero_not_nan():
    logits, target = batch()
    target[:] = IGNORE
    for loss in (DiceCELoss(class_weights=[1, 2, 3]), BCELoss(), MSELoss()):
        out = loss(logits[:, :1] if not isinstance(loss, DiceCELoss) else logits, target)
        assert out["loss"].item() == 0.0


# --- ignore masking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, channels",
    [
        (DiceCELoss(batch_dice=True, class_weights=[1, 2, 3], weight_dice_classes=True), 3),
        (DiceCELoss(batch_dice=False, include_background=True), 3),
        (BCELoss(), 1),
        (MSELoss(), 1),
    ],
)
def test_logits_under_ignore_change_neither_loss_nor_gradient(loss, channels):
    logits, target = batch(k=3)
    logits = logits[:, :channels]
    ignored = (target == IGNORE).expand_as(logits)
    changed = torch.where(ignored, logits * 7 + 3, logits)

    def loss_and_grad(x):
        x = x.clone().requires_grad_(True)
        value = loss(x, target)["loss"]
        value.backward()
        return value.detach(), x.grad

    value_a, grad_a = loss_and_grad(logits)
    value_b, grad_b = loss_and_grad(changed)
    torch.testing.assert_close(value_a, value_b)
    torch.testing.assert_close(grad_a, grad_b)
    assert torch.all(grad_a[ignored] == 0)


# --- Dice on hand-computed cases -----------------------------------------------------------------


def test_dice_hand_computed_with_and_without_background():
    foreground_probs = [0.9, 0.2, 0.6, 0.1]
    probs = [[1 - p for p in foreground_probs], foreground_probs]
    logits = probs_as_logits(probs)[None, :, None, :]  # (1, 2, 1, 4)
    target = torch.tensor([1, 0, 1, 0]).reshape(1, 1, 1, 4)
    s = 1e-5
    fg = (2 * 1.5 + s) / (1.8 + 2 + s)
    bg = (2 * 1.7 + s) / (2.2 + 2 + s)
    assert SoftDiceLoss()(logits, target)["loss"].item() == pytest.approx(1 - fg, rel=1e-5)
    with_bg = SoftDiceLoss(include_background=True)(logits, target)["loss"].item()
    assert with_bg == pytest.approx(1 - (fg + bg) / 2, rel=1e-5)
    weighted = SoftDiceLoss(include_background=True, class_weights=[1.0, 3.0])(logits, target)
    assert weighted["loss"].item() == pytest.approx(1 - (bg + 3 * fg) / 4, rel=1e-5)


def test_smooth_makes_an_absent_and_unpredicted_class_perfect():
    probs = torch.tensor([[0.7, 0.4], [0.3, 0.6], [0.0, 0.0]])
    logits = torch.log(probs)[None, :, None, :]  # class 2 has probability exactly 0
    target = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    class1 = (2 * 0.6 + 1.0) / (0.9 + 1 + 1.0)
    loss = SoftDiceLoss(smooth=1.0)(logits, target)["loss"].item()
    assert loss == pytest.approx(1 - (class1 + 1.0) / 2, rel=1e-5)


def test_batch_dice_pools_samples_per_sample_dice_averages_them():
    a, b = [0.9, 0.2, 0.6, 0.1], [0.5, 0.5, 0.5, 0.5]
    logits = torch.stack([probs_as_logits([[1 - p for p in x], x]) for x in (a, b)])[:, :, None]
    target = torch.tensor([[1, 0, 1, 0], [1, 1, 1, 0]]).reshape(2, 1, 1, 4)
    dice_a, dice_b = 3.0 / 3.8, 3.0 / 5.0
    pooled = (3.0 + 3.0) / (3.8 + 5.0)
    per_sample = SoftDiceLoss(smooth=0.0)(logits, target)["loss"].item()
    pooled_loss = SoftDiceLoss(smooth=0.0, batch_dice=True)(logits, target)["loss"].item()
    assert per_sample == pytest.approx(1 - (dice_a + dice_b) / 2, rel=1e-5)
    assert pooled_loss == pytest.approx(1 - pooled, rel=1e-5)


# --- per-sample importance weights ---------------------------------------------------------------


@pytest.mark.parametrize("batch_dice", [False, True])
def test_sample_weights_scale_and_select_samples(batch_dice):
    logits, target = batch(ignore_fraction=0.0)
    loss = DiceCELoss(batch_dice=batch_dice, smooth=0.0)
    plain = loss(logits, target)
    scaled = loss(logits, target, torch.tensor([3.0, 3.0]))
    for key in ("loss", "ce", "dice"):
        torch.testing.assert_close(scaled[key], 3 * plain[key])
    # a zero weight removes sample 1; weight 2 on sample 0 of 2 gives sample 0's loss alone
    only_first = loss(logits, target, torch.tensor([2.0, 0.0]))
    alone = loss(logits[:1], target[:1])
    for key in ("loss", "ce", "dice"):
        torch.testing.assert_close(only_first[key], alone[key])


# --- class weights -------------------------------------------------------------------------------


def test_class_weights_from_frequency():
    counts = [900, 90, 10]
    inverse = resolve_class_weights("inverse_frequency", counts, max_weight=10.0)
    raw = [1000 / 900, 1000 / 90, 1000 / 90]  # 100 capped to 10x the smallest
    assert inverse == pytest.approx([w / (sum(raw) / 3) for w in raw])
    root = resolve_class_weights("sqrt_inverse_frequency", counts, max_weight=10.0)
    raw = [math.sqrt(1000 / n) for n in counts]  # ratio 9.5: below the cap
    assert root == pytest.approx([w / (sum(raw) / 3) for w in raw])
    for weights in (inverse, root):
        assert sum(weights) / 3 == pytest.approx(1.0)
        assert max(weights) / min(weights) <= 10.0 + 1e-9
    absent = resolve_class_weights("inverse_frequency", [50, 50, 0], max_weight=4.0)
    assert absent == pytest.approx([0.5, 0.5, 2.0])
    assert resolve_class_weights(None, counts) is None
    assert resolve_class_weights([1, 2, 3], counts) == [1.0, 2.0, 3.0]


def test_class_weight_settings_errors():
    with pytest.raises(SettingsError, match="2 values for 3 classes"):
        resolve_class_weights([1.0, 2.0], [5, 5, 5])
    with pytest.raises(SettingsError, match="class_weights"):
        LossSettings(class_weights="inverse")
    with pytest.raises(SettingsError, match="max_class_weight"):
        LossSettings(max_class_weight=0.5)


# --- deep supervision and heads ------------------------------------------------------------------


def test_default_deep_supervision_weights():
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2, [1.0, 1.0]) == [0.5, 0.5]


def test_deep_supervision_loss_is_the_weighted_sum_and_skips_zero_levels():
    levels = [batch(shape=(8, 8), seed=i) for i in range(3)]
    outputs = [logits for logits, _ in levels]
    targets = [target for _, target in levels]
    outputs[2] = torch.full_like(outputs[2], float("nan"))  # weight 0: must not be evaluated
    inner = DiceCELoss()
    weights = deep_supervision_weights(3)
    result = DeepSupervisionLoss(inner, weights)(outputs, targets)
    parts = [inner(o, t) for o, t in zip(outputs[:2], targets[:2])]
    for key in ("loss", "ce", "dice"):
        expected = weights[0] * parts[0][key] + weights[1] * parts[1][key]
        torch.testing.assert_close(result[key], expected)


def test_multihead_total_is_the_weighted_sum_with_every_part():
    logits, labels = batch(shape=(8, 8))
    edge_logits = torch.randn(2, 1, 8, 8)
    seg_loss = DeepSupervisionLoss(DiceCELoss(), [1.0])
    edge_loss = DeepSupervisionLoss(BCELoss(), [1.0])
    loss = MultiHeadLoss({"seg": (seg_loss, 1.0), "edge": (edge_loss, 0.3)}, {"edge": "boundary"})
    out = loss({"seg": [logits], "edge": [edge_logits]}, {"labels": [labels]})
    assert set(out) == {"loss", "seg/loss", "seg/ce", "seg/dice", "edge/loss"}
    torch.testing.assert_close(out["loss"], out["seg/loss"] + 0.3 * out["edge/loss"])
    expected_edge = BCELoss()(edge_logits, boundary(labels))["loss"]
    torch.testing.assert_close(out["edge/loss"], expected_edge)


def test_build_loss_with_deep_supervision_and_extra_heads():
    torch.manual_seed(0)
    heads = [
        HeadSettings("edge", "boundary", deep_supervision=True, weight=0.5),
        HeadSettings("vessels", "extra:vessels", loss="ce", channels=2),
    ]
    settings = LossSettings(class_weights=[0.5, 1.0, 2.0], batch_dice=False)
    loss = build_loss(
        settings,
        heads,
        num_classes=3,
        class_weights=[0.5, 1.0, 2.0],
        ds_scales=[[1, 1], [0.5, 0.5], [0.25, 0.25]],
        batch_dice=True,
    )
    labels = [batch(shape=(s, s), seed=s)[1] for s in (16, 8, 4)]
    extra = [(lab > 0).to(torch.int16) for lab in labels]
    outputs = {
        "seg": [torch.randn(2, 3, s, s, requires_grad=True) for s in (16, 8, 4)],
        "edge": [torch.randn(2, 1, s, s) for s in (16, 8, 4)],
        "vessels": [torch.randn(2, 2, 16, 16)],
    }
    out = loss(outputs, {"labels": labels, "vessels": extra})
    assert {"seg/ce", "seg/dice", "edge/loss", "vessels/loss"} <= set(out)
    torch.testing.assert_close(out["loss"], out["seg/loss"] + 0.5 * out["edge/loss"] + out["vessels/loss"])
    out["loss"].backward()
    assert outputs["seg"][2].grad is None or torch.all(outputs["seg"][2].grad == 0)
    seg = loss.losses["seg"]
    assert seg.loss.dice.batch_dice is False  # loss.batch_dice overrides the plan
    assert seg.weights == pytest.approx([2 / 3, 1 / 3, 0.0])
    with pytest.raises(SettingsError, match="2 values for 3 outputs"):
        build_loss(
            LossSettings(deep_supervision_weights=[1, 1]),
            num_classes=3,
            class_weights=None,
            ds_scales=[[1], [0.5], [0.25]],
            batch_dice=True,
        )


# --- derived targets -----------------------------------------------------------------------------


def test_foreground_and_boundary_targets_keep_ignore():
    labels = torch.tensor(
        [[0, 0, 0, 0, 0], [0, 2, 2, 0, IGNORE], [0, 2, 2, 0, IGNORE], [1, 1, 1, 1, 1]], dtype=torch.int16
    ).reshape(1, 1, 4, 5)
    fg = foreground(labels)[0, 0]
    assert fg.tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 0, -1], [0, 1, 1, 0, -1], [1, 1, 1, 1, 1]]
    edge = boundary(labels)[0, 0]
    assert edge.tolist() == [
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, -1],
        [1, 1, 1, 1, -1],
        [1, 1, 1, 1, 1],
    ]
    volume = torch.zeros(1, 1, 5, 5, 5, dtype=torch.int16)
    volume[0, 0, 1:4, 1:4, 1:4] = 1
    edge3d = boundary(volume)[0, 0]
    assert edge3d[2, 2, 2] == 0 and edge3d[1, 1, 1] == 1 and edge3d[0, 0, 0] == 1
    assert edge3d.sum() == 5**3 - 1  # every voxel touches the other class except the centre


def test_losses_stay_float32_under_autocast():
    logits, target = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DiceCELoss()(logits.bfloat16(), target)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


# --- the docs' examples run ---------------------------------------------------------------------


@pytest.mark.parametrize("page", ["losses.md", "multi-output.md"])
def test_docs_python_examples_run(page, capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, page, "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out
    if page == "losses.md":
        assert "[0.143, 1.429, 1.429]" in printed and "[0.533, 0.267, 0.133, 0.067, 0.0]" in printed
    else:
        assert "'edge': [(2, 1, 64, 64), (2, 1, 32, 32)]" in printed
        assert "['edge/loss', 'loss', 'seg/ce', 'seg/dice', 'seg/loss']" in printed
