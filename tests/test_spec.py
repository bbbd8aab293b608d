import json
import re
import shutil

import numpy as np
import pytest

from voxseg.data.labels import IGNORE
from voxseg.data.spec import load_dataset, read_label
from voxseg.errors import DatasetError


def test_demo_dataset_spec(demo_dataset):
    spec = load_dataset(demo_dataset)
    assert spec.channel_names == ("CT",)
    assert spec.num_classes == 3 and spec.class_names == ["background", "organ", "lesion"]
    assert spec.case_ids == ["demo_000", "demo_001", "demo_002", "demo_003"]
    assert len(spec.test) == 2 and spec.test[0].label is None
    assert spec.training[0].images[0].name == "demo_000_0000.nii.gz"


@pytest.mark.parametrize("ignore", [3, -1, 255])
def test_any_ignore_value_maps_to_the_sentinel(demo_dataset_ignore, tmp_path, ignore):
    root = shutil.copytree(demo_dataset_ignore, tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["ignore"] = ignore
    (root / "dataset.json").write_text(json.dumps(meta))
    from voxseg.data.io import read_image, write_image

    path = root / "labelsTr/demo_000.nii.gz"
    raw, geom = read_image(path)
    raw = raw.astype(np.int16)
    raw[raw == 3] = ignore
    write_image(path, raw, geom)
    spec = load_dataset(root)
    assert spec.ignore_value == ignore and spec.num_classes == 3
    seg, _ = read_label(path, spec)
    assert seg.shape == (1, *raw.shape)
    assert set(np.unique(seg)) <= {IGNORE, 0, 1, 2}
    np.testing.assert_array_equal(seg[0] == IGNORE, raw == ignore)


def test_explicit_dataset_listing(demo_dataset, tmp_path):
    root = shutil.copytree(demo_dataset, tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text())
    meta["dataset"] = {"a": {"images": ["imagesTr/demo_001_0000.nii.gz"], "label": "labelsTr/demo_001.nii.gz"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    assert spec.case_ids == ["a"] and spec.training[0].label.name == "demo_001.nii.gz"


@pytest.mark.parametrize(
    "change, phrase",
    [
        ({"labels": {"background": 0, "a": 2}}, "consecutive"),
        ({"labels": {"organ": 1}}, "background"),
        ({"file_ending": "nii.gz"}, "file_ending"),
        ({"channel_names": {"1": "CT"}}, "channel_names"),
        ({"labels": {"background": 0, "a": "x"}}, "labels.a"),
    ],
)
def test_schema_errors_name_the_key(demo_dataset, tmp_path, change, phrase):
    root = shutil.copytree(demo_dataset, tmp_path / "ds")
    meta = {**json.loads((root / "dataset.json").read_text()), **change}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=phrase) as e:
        load_dataset(root)
    assert "dataset.json" in str(e.value) and e.value.fix


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"labels": {"background": 0, "organ": 1, "organ": 2}', "organ"),
        ('{"file_ending": ".nii.gz", "file_ending": ".nrrd"', "file_ending"),
    ],
)
def test_duplicate_keys_anywhere_are_an_error(demo_dataset, tmp_path, text, key):
    root = shutil.copytree(demo_dataset, tmp_path / "ds")
    original = (root / "dataset.json").read_text()
    (root / "dataset.json").write_text(text + ", " + original.lstrip()[1:])
    with pytest.raises(DatasetError, match=f"duplicate key '{key}'") as e:
        load_dataset(root)
    assert e.value.path.endswith("dataset.json") and re.search(r"appears on lines? 1\b", str(e.value))


def test_explicit_listing_resolves_paths_as_nnunet(demo_dataset, tmp_path, monkeypatch):
    root = tmp_path / "listing_only"
    root.mkdir()
    shutil.copytree(demo_dataset, tmp_path / "source")
    meta = json.loads((demo_dataset / "dataset.json").read_text())
    monkeypatch.setenv("VOXSEG_TEST_SOURCE", str(tmp_path / "source"))
    meta["dataset"] = {
        "rel": {"images": ["../source/imagesTr/demo_000_0000.nii.gz"], "label": "../source/labelsTr/demo_000.nii.gz"},
        "var": {
            "images": ["$VOXSEG_TEST_SOURCE/imagesTr/demo_001_0000.nii.gz"],
            "label": "$VOXSEG_TEST_SOURCE/labelsTr/demo_001.nii.gz",
        },
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)  # no imagesTr/ at all: the listing is the dataset
    assert spec.listed and spec.case_ids == ["rel", "var"]
    assert spec.training[0].images == (tmp_path / "source/imagesTr/demo_000_0000.nii.gz",)
    assert spec.training[1].label == tmp_path / "source/labelsTr/demo_001.nii.gz"
    for bad, phrase in [([], "'dataset' must map"), ({"a": {"images": ["x.nii.gz"]}}, "dataset.a.label")]:
        (root / "dataset.json").write_text(json.dumps({**meta, "dataset": bad}))
        with pytest.raises(DatasetError, match=phrase):
            load_dataset(root)


def test_case_files_are_found_not_derived_from_channel_names(demo_dataset, tmp_path):
    root = shutil.copytree(demo_dataset, tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "R", "1": "G", "2": "B"}  # as for one RGB file per case
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    assert [p.name for p in spec.training[0].images] == ["demo_000_0000.nii.gz"]


def test_unsupported_file_ending_is_one_error(demo_dataset, tmp_path):
    root = shutil.copytree(demo_dataset, tmp_path / "ds")
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".dcm"}))
    with pytest.raises(DatasetError, match=r"'\.dcm' is not a supported format"):
        load_dataset(root)
