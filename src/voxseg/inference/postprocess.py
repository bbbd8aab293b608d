"""Largest-connected-component post-processing, kept only where cross-validation says it helps.

Same decision as nnU-Net: first try keeping the largest component of all foreground together, then
of each class (or, for region-based models, each region) separately, and keep a step only if it raises mean Dice on the cross-validation
predictions. Unlike nnU-Net, every candidate is scored in ONE pass over the cases (each case is
read once, its variants scored, then dropped), because removing components of class c changes only
class c's Dice; so the search needs no second copy of the predictions in memory.
The rule is plain JSON (`postprocessing.json`) so a person can read and edit it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cc3d
import numpy as np

from voxseg.data.labels import IGNORE
from voxseg.errors import InputError
from voxseg.evaluation.evaluate import iter_case_pairs, load_label_setup
from voxseg.evaluation.metrics import label_key, nanmean, region_metrics
from voxseg.io_utils import atomic_write_json

RULE_FILE = "postprocessing.json"
# Dice must improve by more than this to adopt a step: ties and float noise keep predictions as is.
_MIN_GAIN = 1e-6


def keep_largest_component(seg: np.ndarray, labels: int | Sequence[int], background: int = 0) -> np.ndarray:
    """Copy of `seg` where voxels of `labels` (treated as one object) outside its largest
    26-connected (8 in 2D) component are set to `background`."""
    values = [labels] if isinstance(labels, (int, np.integer)) else list(labels)
    mask = np.isin(seg, values)
    out = seg.copy()
    if not mask.any():
        return out
    spatial = mask[0] if mask.ndim == 4 else mask  # (1, *S) label maps by contract
    components = cc3d.connected_components(spatial, connectivity=26 if spatial.ndim == 3 else 8).reshape(mask.shape)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[mask & (components != sizes.argmax())] = background
    return out


def apply_postprocessing(seg: np.ndarray, rule: dict) -> np.ndarray:
    """Apply a rule from `find_postprocessing` (or postprocessing.json) to a label map."""
    if rule.get("keep_largest_foreground"):
        seg = keep_largest_component(seg, rule["foreground_labels"])
    for group in rule.get("keep_largest_per_class", []):
        seg = keep_largest_component(seg, group)
    return seg


Group = int | Sequence[int]


def find_postprocessing(cases: Iterable[tuple[np.ndarray, np.ndarray]], groups: Sequence[Group]) -> dict:
    """Decide the rule from (prediction, reference) label-map pairs (references may hold IGNORE).

    `groups` are the evaluated outputs: foreground labels (ints), or regions (lists of label
    values, each kept or pruned as one object, as nnU-Net does for region-based models). Scores
    four variants of every case at once: as predicted, with the largest foreground component, and
    each of those with per-group largest components.
    """
    groups = [int(g) if isinstance(g, (int, np.integer)) else [int(v) for v in g] for g in groups]
    keys = [label_key(g) for g in groups]
    fg = sorted({v for g in groups for v in ([g] if isinstance(g, int) else g)})
    scores: dict[str, list[dict[str, float]]] = {"none": [], "fg": [], "none+pc": [], "fg+pc": []}
    n_cases = 0
    for pred, ref in cases:
        pred, ref = np.asarray(pred), np.asarray(ref).reshape(np.shape(pred))
        valid = ref != IGNORE
        variants = {"none": pred, "fg": keep_largest_component(pred, fg)}
        for start in ("none", "fg"):
            pc = variants[start]
            for group in groups:
                pc = keep_largest_component(pc, group)
            variants[f"{start}+pc"] = pc
        for name, seg in variants.items():
            scores[name].append(
                {
                    k: region_metrics(np.isin(seg, g), np.isin(ref, g), valid, (), metrics=("dice",))["Dice"]
                    for k, g in zip(keys, groups)
                }
            )
        n_cases += 1
    if not n_cases:
        raise InputError("no cases to decide post-processing on", fix="pass cross-validation predictions and references")

    def mean_dice(variant: str) -> dict[str, float]:
        return {k: nanmean([c[k] for c in scores[variant]]) for k in keys}

    base = mean_dice("none")
    with_fg = mean_dice("fg")
    use_fg = nanmean(list(with_fg.values())) > nanmean(list(base.values())) + _MIN_GAIN
    chosen = "fg" if use_fg else "none"
    before, after_pc = mean_dice(chosen), mean_dice(f"{chosen}+pc")
    per_group = [g for g, k in zip(groups, keys) if after_pc[k] > before[k] + _MIN_GAIN]
    chosen_keys = {label_key(g) for g in per_group}
    final = {k: (after_pc if k in chosen_keys else before)[k] for k in keys}
    return {
        "keep_largest_foreground": bool(use_fg),
        "keep_largest_per_class": per_group,
        "foreground_labels": fg,
        "num_cases": n_cases,
        "dice_before": base,
        "dice_after": final,
        "mean_dice_before": nanmean(list(base.values())),
        "mean_dice_after": nanmean(list(final.values())),
    }


def save_rule(rule: dict, folder: str | Path) -> Path:
    path = Path(folder) / RULE_FILE
    atomic_write_json(path, rule)
    return path


def find_postprocessing_folders(
    pred_dir: str | Path, ref_dir: str | Path, dataset_json: str | Path, *, save_to: str | Path | None = None
) -> dict:
    """`find_postprocessing` on cross-validation predictions and reference label files on disk."""
    setup = load_label_setup(dataset_json)
    rule = find_postprocessing(((p, r) for _, p, r, _ in iter_case_pairs(pred_dir, ref_dir, setup)), setup.eval_labels)
    if save_to is not None:
        save_rule(rule, save_to)
    return rule
