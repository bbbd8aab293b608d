"""Cross-validation folds in ``WORK/splits.json`` (nnU-Net's layout: a list of {"train", "val"}).

Cases of one patient must share a fold, or validation scores leak (nnU-Net issue 1871). Groups come
from dataset.json's ``groups`` mapping or from a regular expression on the case id (its first
capture group, or the whole match). Groups are shuffled with a fixed seed and handed, largest first,
to the fold holding the fewest cases, so folds stay balanced. Fewer groups than folds gives one fold
per group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxseg.errors import InputError
from voxseg.io_utils import atomic_write_json

SPLITS_FILE = "splits.json"


def case_groups(case_ids: Sequence[str], groups: dict[str, str] | None = None, group_regex: str | None = None) -> dict[str, str]:
    """Group id per case: regex first (when given), then the dataset's mapping, else the case itself."""
    out = {}
    pattern = re.compile(group_regex) if group_regex else None
    for cid in case_ids:
        if pattern is not None:
            m = pattern.search(cid)
            if m is None:
                raise InputError(
                    f"--group-regex {group_regex!r} does not match case {cid!r}",
                    fix="use a pattern every case id matches, e.g. '^(patient\\d+)_'",
                )
            out[cid] = m.group(1) if m.groups() else m.group(0)
        else:
            out[cid] = (groups or {}).get(cid, cid)
    return out


def make_splits(
    case_ids: Sequence[str], n_folds: int = 5, seed: int = 12345, groups: dict[str, str] | None = None
) -> list[dict[str, list[str]]]:
    groups = groups or {c: c for c in case_ids}
    members: dict[str, list[str]] = {}
    for cid in sorted(case_ids):
        members.setdefault(groups.get(cid, cid), []).append(cid)
    if len(members) == 1:  # nothing to hold out: train and validate on everything (nnU-Net does too)
        return [{"train": sorted(case_ids), "val": sorted(case_ids)}]
    n_folds = min(n_folds, len(members))  # tiny datasets: one group per fold
    names = sorted(members)
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    shuffled.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for g in shuffled:
        smallest = min(range(n_folds), key=lambda f: (len(folds[f]), f))
        folds[smallest].extend(members[g])
    all_ids = sorted(case_ids)
    return [{"train": [c for c in all_ids if c not in set(val)], "val": sorted(val)} for val in map(set, folds)]


def _validate(splits: object, case_ids: Sequence[str], path: Path) -> list[dict[str, list[str]]]:
    known = set(case_ids)
    if not isinstance(splits, list) or not splits or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise InputError(
            'splits must be a list of {"train": [...], "val": [...]}', path=path, fix="follow nnU-Net's splits_final.json layout"
        )
    for i, s in enumerate(splits):
        unknown = sorted((set(s["train"]) | set(s["val"])) - known)
        if unknown:
            raise InputError(f"fold {i} names unknown cases {unknown[:5]}", path=path, fix="use training case ids")
        if set(s["train"]) & set(s["val"]):
            raise InputError(f"fold {i} has cases in both train and val", path=path, fix="make train and val disjoint")
    return splits


def load_or_create_splits(
    work_dir: str | Path,
    case_ids: Sequence[str],
    *,
    groups: dict[str, str] | None = None,
    group_regex: str | None = None,
    user_file: str | Path | None = None,
    n_folds: int = 5,
    seed: int = 12345,
) -> list[dict[str, list[str]]]:
    """User file (copied in) > existing WORK/splits.json (kept) > new seeded, grouped folds."""
    path = Path(work_dir) / SPLITS_FILE
    source = Path(user_file) if user_file is not None else (path if path.is_file() else None)
    if source is not None:
        try:
            splits = _validate(json.loads(source.read_text()), case_ids, source)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read splits ({exc})", path=source, fix="give a JSON list of folds") from exc
    else:
        splits = make_splits(case_ids, n_folds, seed, case_groups(case_ids, groups, group_regex))
    if source != path:
        atomic_write_json(path, splits)
    return splits
