"""Largest-component post-processing and its cross-validation decision, on hand-made blobs."""

from __future__ import annotations

import numpy as np
import pytest

from voxseg.data.labels import IGNORE
from voxseg.inference.postprocess import (
    apply_postprocessing,
    find_postprocessing,
    keep_largest_component,
)


def blobs():
    seg = np.zeros((12, 16, 16), np.int16)
    seg[1:6, 1:8, 1:8] = 1  # big class-1 blob
    seg[9:11, 12:14, 12:14] = 1  # small class-1 speck
    seg[1:6, 9:15, 9:15] = 2  # class 2 blob, separate from class 1
    seg[10, 1, 1] = 2  # class 2 speck
    return seg


def test_keep_largest_per_label_and_for_a_group():
    seg = blobs()
    one = keep_largest_component(seg, 1)
    assert (one[9:11, 12:14, 12:14] == 0).all() and (one[1:6, 1:8, 1:8] == 1).all()
    assert one[10, 1, 1] == 2  # other labels untouched
    # As a group, the class-2 blob (180 voxels) is smaller than the class-1 blob (245): only it survives.
    group = keep_largest_component(seg, (1, 2))
    assert set(np.unique(group)) == {0, 1} and (group == 1).sum() == 5 * 7 * 7
    assert (seg == blobs()).all(), "input must not be modified"


def test_diagonal_neighbours_are_connected_and_channel_axis_is_accepted():
    seg = np.zeros((1, 6, 6, 6), np.int16)
    seg[0, 1, 1, 1] = seg[0, 2, 2, 2] = 1  # touching by a corner: one component (26-connectivity)
    seg[0, 5, 5, 5] = 1
    out = keep_largest_component(seg, 1)
    assert out.shape == seg.shape and out[0, 1, 1, 1] == out[0, 2, 2, 2] == 1 and out[0, 5, 5, 5] == 0
    flat = np.zeros((8, 8), np.int16)
    flat[0, 0] = flat[1, 1] = flat[5, 5] = 1
    assert keep_largest_component(flat, 1).sum() == 2


def test_rule_adopts_foreground_step_when_specks_are_false_positives():
    ref = blobs()
    ref[9:11, 12:14, 12:14] = 0
    ref[10, 1, 1] = 0
    rule = find_postprocessing([(blobs(), ref), (blobs(), ref)], [1, 2])
    # Foreground-level LCC would delete the whole class-2 blob, so it must be rejected ...
    assert rule["keep_largest_foreground"] is False
    # ... while per-class LCC removes exactly the specks.
    assert rule["keep_largest_per_class"] == [1, 2]
    assert rule["mean_dice_after"] == pytest.approx(1.0) and rule["mean_dice_before"] < 1
    assert (apply_postprocessing(blobs(), rule) == ref).all()


def test_rule_keeps_predictions_when_specks_are_real():
    seg = blobs()
    rule = find_postprocessing([(seg, seg)], [1, 2])
    assert rule["keep_largest_foreground"] is False and rule["keep_largest_per_class"] == []
    assert (apply_postprocessing(seg, rule) == seg).all()


def test_foreground_step_and_ignore_in_reference():
    ref = np.zeros((10, 10, 10), np.int16)
    ref[2:8, 2:8, 2:8] = 1
    pred = ref.copy()
    pred[0, 0, 0] = 1
    pred[9, 9, 9] = 2  # stray voxel of a class absent from this reference
    rule = find_postprocessing([(pred, ref)], [1, 2])
    assert rule["keep_largest_foreground"] is True
    assert (apply_postprocessing(pred, rule) == ref).all()
    # A speck inside unannotated voxels costs nothing, so removing it gains nothing: not adopted.
    ref_ignore = ref.copy()
    ref_ignore[0] = IGNORE
    speck = ref.copy()
    speck[0, 0, 0] = 1
    assert find_postprocessing([(speck, ref_ignore)], [1])["keep_largest_foreground"] is False
