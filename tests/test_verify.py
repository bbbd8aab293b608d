import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from voxseg.cli.main import main
from voxseg.data.io import read_image, write_image
from voxseg.data.verify import verify_dataset


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ds(demo_dataset, tmp_path) -> Path:
    return Path(shutil.copytree(demo_dataset, tmp_path / "ds"))


def _edit_json(root: Path, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (root / "dataset.json").write_text(json.dumps(meta))


def _rewrite(path: Path, fn):
    array, geom = read_image(path)
    array, geom = fn(array, geom)
    path.unlink()
    write_image(path, array, geom)


def break_missing_channel(root):
    # With one channel, a case without its image is a label without images; the fix names the file.
    (root / "imagesTr/demo_000_0000.nii.gz").unlink()
    return "demo_000_0000.nii.gz", "label has no images"


def break_missing_second_channel(root):
    _edit_json(root, channel_names={"0": "CT", "1": "PET"})
    for case in ("demo_000", "demo_001", "demo_002"):
        shutil.copy(root / f"imagesTr/{case}_0000.nii.gz", root / f"imagesTr/{case}_0001.nii.gz")
    return "demo_003_0001.nii.gz", "channel file missing"


def break_bad_json(root):
    (root / "dataset.json").write_text('{"labels": {')
    return "dataset.json", "invalid JSON"


def break_missing_key(root):
    _edit_json(root, channel_names=None)
    return "dataset.json", "channel_names"


def break_undeclared_label(root):
    _rewrite(root / "labelsTr/demo_001.nii.gz", lambda a, g: (np.where(a == 1, 5, a).astype(a.dtype), g))
    return "demo_001.nii.gz", "[5] are not declared"


def break_spacing(root):
    from voxseg.data.io import Geometry

    _rewrite(root / "labelsTr/demo_002.nii.gz", lambda a, g: (a, Geometry(tuple(s * 1.5 for s in g.spacing), g.origin, g.direction)))
    return "demo_002.nii.gz", "spacing"


def break_shape(root):
    _rewrite(root / "labelsTr/demo_002.nii.gz", lambda a, g: (a[:, :-1], g))
    return "demo_002.nii.gz", "shape"


def break_nan(root):
    _rewrite(root / "imagesTr/demo_003_0000.nii.gz", lambda a, g: (np.where(a > 50, np.nan, a.astype(np.float32)), g))
    return "demo_003_0000.nii.gz", "NaN/Inf"


def break_orphan_label(root):
    shutil.copy(root / "labelsTr/demo_000.nii.gz", root / "labelsTr/extra_case.nii.gz")
    return "extra_case.nii.gz", "label has no images"


def break_file_ending(root):
    array, geom = read_image(root / "imagesTr/demo_001_0000.nii.gz")
    write_image(root / "imagesTr/demo_001_0000.nii", array, geom)
    return "demo_001_0000.nii", "file ending"


def break_unreadable(root):
    (root / "imagesTr/demo_002_0000.nii.gz").write_bytes(b"garbage")
    return "demo_002_0000.nii.gz", "cannot read"


def break_ignore_collision(root):
    _edit_json(root, labels={"background": 0, "organ": 1, "lesion": 2, "ignore": 2})
    return "dataset.json", "collides with class 'lesion'"


def break_dimensionality(root):
    for p in (root / "imagesTr/demo_003_0000.nii.gz", root / "labelsTr/demo_003.nii.gz"):
        from voxseg.data.io import Geometry

        _rewrite(p, lambda a, g: (a[a.shape[0] // 2], Geometry(g.spacing[1:], g.origin[:2], (1.0, 0.0, 0.0, 1.0))))
    return "demo_003_0000.nii.gz", "2D image in a dataset of 3D"


def break_num_training(root):
    _edit_json(root, numTraining=9)
    return "dataset.json", "numTraining is 9"


BREAKERS = [v for k, v in dict(globals()).items() if k.startswith("break_")]


def test_clean_dataset_passes_and_is_untouched(ds, capsys):
    before = snapshot(ds)
    assert main(["verify", str(ds), "-j", "2"]) == 0
    assert "OK" in capsys.readouterr().out
    assert snapshot(ds) == before


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[6:])
def test_each_broken_variant_is_reported(ds, breaker, capsys):
    filename, phrase = breaker(ds)
    before = snapshot(ds)
    assert main(["verify", str(ds), "-j", "1"]) == 1
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if phrase in l]
    assert lines, f"no line mentions {phrase!r}:\n{out}"
    assert any(filename in l and "(fix:" in l for l in lines), out
    assert snapshot(ds) == before, "verify must never write into the dataset folder"


def test_all_problems_reported_not_just_the_first(ds):
    break_missing_second_channel(ds)
    break_nan(ds)
    break_orphan_label(ds)
    problems = verify_dataset(ds, workers=1, progress=False)
    text = "\n".join(map(str, problems))
    assert "channel file missing" in text and "NaN/Inf" in text and "label has no images" in text


def test_missing_folder_is_one_line_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and "Traceback" not in err
