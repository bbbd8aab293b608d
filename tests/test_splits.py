"""Cross-validation splits: seeded, balanced, patient groups never split across folds."""

from __future__ import annotations

import json

import pytest

from voxseg.errors import InputError
from voxseg.preprocessing.splits import case_groups, load_or_create_splits, make_splits

CASES = [f"pat{p:02d}_scan{s}" for p in range(12) for s in range(1 + p % 3)]


def _fold_of(splits):
    return {c: i for i, s in enumerate(splits) for c in s["val"]}


def test_five_seeded_balanced_folds_cover_every_case_once():
    splits = make_splits(CASES)
    assert len(splits) == 5 and splits == make_splits(CASES)
    assert sorted(c for s in splits for c in s["val"]) == sorted(CASES)
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"]) and len(s["train"]) + len(s["val"]) == len(CASES)
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 3
    assert make_splits(CASES, seed=1) != splits


@pytest.mark.parametrize("source", ["regex", "mapping"])
def test_groups_share_a_fold(source):
    if source == "regex":
        groups = case_groups(CASES, group_regex=r"^(pat\d+)_")
    else:
        groups = case_groups(CASES, groups={c: c.split("_")[0] for c in CASES})
    fold = _fold_of(make_splits(CASES, groups=groups))
    for c in CASES:
        for d in CASES:
            if c.split("_")[0] == d.split("_")[0]:
                assert fold[c] == fold[d]


def test_regex_must_match_every_case():
    with pytest.raises(InputError, match="does not match"):
        case_groups(CASES + ["other"], group_regex=r"^(pat\d+)_")


def test_tiny_dataset_gets_one_fold_per_group():
    assert len(make_splits(["a", "b", "c"])) == 3
    assert make_splits(["a"]) == [{"train": ["a"], "val": ["a"]}]


def test_existing_file_kept_and_user_file_validated(tmp_path):
    first = load_or_create_splits(tmp_path, CASES)
    custom = [{"train": CASES[1:], "val": CASES[:1]}]
    (tmp_path / "splits.json").write_text(json.dumps(custom))
    assert load_or_create_splits(tmp_path, CASES) == custom != first
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"train": ["nobody"], "val": []}]))
    with pytest.raises(InputError, match="unknown cases"):
        load_or_create_splits(tmp_path, CASES, user_file=bad)
    user = tmp_path / "user.json"
    user.write_text(json.dumps(first))
    assert load_or_create_splits(tmp_path, CASES, user_file=user) == first
    assert json.loads((tmp_path / "splits.json").read_text()) == first
