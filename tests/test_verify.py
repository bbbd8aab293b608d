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

    _rewrite(
        root / "labelsTr/demo_002.nii.gz", lambda a, g: (a, Geometry(tuple(s * 1.5 for s in g.spacing), g.origin, g.direction))
    )
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
    lines = [line for line in out.splitlines() if phrase in line]
    assert lines, f"no line mentions {phrase!r}:\n{out}"
    assert any(filename in line and "(fix:" in line for line in lines), out
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


# ---------------------------------------------------------------- other formats and dataset-level problems


def natural_dataset(root: Path, ending: str = ".png", cases: int = 3, rgb: bool = True) -> Path:
    """Road-segmentation-like: one RGB CASE_0000 file per case, 0/1 greyscale PNG labels."""
    from PIL import Image

    from voxseg.data.io import label_file_ending

    rng = np.random.default_rng(3)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for i in range(cases):
        image = rng.integers(0, 256, (16, 20, 3) if rgb else (16, 20), dtype=np.uint8)
        Image.fromarray(image).save(root / "imagesTr" / f"c{i}_0000{ending}")
        label = np.zeros((16, 20), np.uint8)
        label[4:8, 5:12] = 1
        Image.fromarray(label).save(root / "labelsTr" / f"c{i}{label_file_ending(ending)}")
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"}
    (root / "dataset.json").write_text(
        json.dumps(
            {"channel_names": channels, "labels": {"background": 0, "road": 1}, "numTraining": cases, "file_ending": ending}
        )
    )
    return root


def tiff_dataset(root: Path, cases: int = 2) -> Path:
    """3D TIFF stacks with nnU-Net's spacing sidecars: imagesTr/CASE.json and labelsTr/CASE.json."""
    import tifffile

    rng = np.random.default_rng(4)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
    for i in range(cases):
        tifffile.imwrite(root / "imagesTr" / f"c{i}_0000.tif", rng.integers(0, 500, (6, 12, 14)).astype(np.uint16))
        tifffile.imwrite(root / "labelsTr" / f"c{i}.tif", (rng.random((6, 12, 14)) > 0.7).astype(np.uint8))
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / f"c{i}.json").write_text('{"spacing": [3.0, 0.5, 0.5]}')
    (root / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "EM"}, "labels": {"background": 0, "cell": 1}, "numTraining": cases, "file_ending": ".tif"}
        )
    )
    return root


def volume_dataset(root: Path, ending: str, cases: int = 2) -> Path:
    from voxseg.data.io import Geometry

    geometry = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    rng = np.random.default_rng(5)
    for i in range(cases):
        write_image(root / f"imagesTr/c{i}_0000{ending}", rng.normal(size=(6, 16, 16)).astype(np.float32), geometry)
        write_image(root / f"labelsTr/c{i}{ending}", (rng.random((6, 16, 16)) > 0.5).astype(np.uint8), geometry)
    (root / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1}, "numTraining": cases, "file_ending": ending}
        )
    )
    return root


def _lines(root: Path) -> list[str]:
    return [str(p) for p in verify_dataset(root, workers=1, progress=False)]


@pytest.mark.parametrize(
    "make",
    [natural_dataset, lambda r: natural_dataset(r, ".jpg"), lambda r: natural_dataset(r, ".bmp", rgb=False), tiff_dataset],
    ids=["png", "jpg", "bmp", "tif3d"],
)
def test_other_formats_verify_clean(tmp_path, make):
    root = make(tmp_path / "ds")
    assert _lines(root) == []


def test_rgb_case_is_one_file_with_three_channels(tmp_path):
    from voxseg.data.io import read_case_images
    from voxseg.data.spec import load_dataset

    spec = load_dataset(natural_dataset(tmp_path / "ds", ".jpg"))
    case = spec.training[0]
    assert [p.name for p in case.images] == ["c0_0000.jpg"] and case.label.name == "c0.png"
    image, geometry = read_case_images(case.images, spec.reader, n_channels=len(spec.channel_names))
    assert image.shape == (3, 16, 20) and geometry.spacing == (1.0, 1.0)


def _only_line(root: Path, phrase: str, filename: str) -> str:
    lines = _lines(root)
    hits = [line for line in lines if phrase in line]
    assert len(hits) == 1 and filename in hits[0] and "(fix:" in hits[0], "\n".join(lines)
    return hits[0]


def test_rgb_label_map_is_reported(tmp_path):
    from PIL import Image

    root = natural_dataset(tmp_path / "ds")
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(root / "labelsTr/c1.png")
    _only_line(root, "3 colour channels", "c1.png")


def test_channel_count_mismatch_is_one_line(tmp_path):
    root = natural_dataset(tmp_path / "ds")
    _edit_json(root, channel_names={"0": "grey"})
    line = _only_line(root, "hold 3 channels but channel_names lists 1", "c0_0000.png")
    assert "also 2 more" in line and len(_lines(root)) == 1


def test_jpeg_label_is_reported(tmp_path):
    from PIL import Image

    root = natural_dataset(tmp_path / "ds", ".jpg")
    (root / "labelsTr/c2.png").unlink()
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / "labelsTr/c2.jpg")
    _only_line(root, "label map is a JPEG", "c2.jpg")


def test_mask_saved_as_0_255_gets_the_hint(tmp_path):
    from PIL import Image

    root = natural_dataset(tmp_path / "ds")
    Image.fromarray(np.where(np.arange(320).reshape(16, 20) % 7 == 0, 255, 0).astype(np.uint8)).save(root / "labelsTr/c0.png")
    assert "0/255" in _only_line(root, "[255] are not declared", "c0.png")


def test_missing_tiff_sidecar_is_reported(tmp_path):
    root = tiff_dataset(tmp_path / "ds")
    (root / "imagesTr/c1.json").unlink()
    line = _only_line(root, "without its spacing file", "c1_0000.tif")
    assert "imagesTr/c1.json" in line


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".png"])
def test_truncated_file_is_reported(tmp_path, ending):
    root = natural_dataset(tmp_path / "ds") if ending == ".png" else volume_dataset(tmp_path / "ds", ending)
    victim = root / ("imagesTr/c1_0000.png" if ending == ".png" else f"labelsTr/c1{ending}")
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    _only_line(root, "truncated or corrupt", victim.name)


def test_empty_images_folder_is_one_line(ds):
    for p in (ds / "imagesTr").iterdir():
        p.unlink()
    assert len(_lines(ds)) == 1 and "imagesTr" in _lines(ds)[0]


def test_wrong_file_ending_for_the_whole_folder_is_one_line(ds):
    for p in (ds / "imagesTr").iterdir():
        p.rename(p.with_name(p.name.replace(".nii.gz", ".mha")))
    (line,) = _lines(ds)
    assert "no files ending in '.nii.gz' but 4 ending in '.mha'" in line and "set file_ending to '.mha'" in line


def test_missing_labels_folder_is_one_line(ds):
    shutil.rmtree(ds / "labelsTr")
    (line,) = _lines(ds)
    assert "labelsTr/ not found" in line


def test_explicit_dataset_list_ignores_unlisted_files(ds):
    listing = {
        f"case{i}": {"images": [f"imagesTr/demo_00{i}_0000.nii.gz"], "label": f"labelsTr/demo_00{i}.nii.gz"} for i in (1, 2)
    }
    _edit_json(ds, dataset=listing, numTraining=2)
    (ds / "imagesTr/notes.txt").write_text("not an image")
    shutil.copy(ds / "labelsTr/demo_000.nii.gz", ds / "labelsTr/orphan.nii.gz")
    (ds / "imagesTr/demo_000_0000.nii.gz").unlink()  # unlisted: its label is no longer an orphan problem
    assert _lines(ds) == []
    listing["case3"] = {"images": ["imagesTr/nope_0000.nii.gz"], "label": "labelsTr/demo_003.nii.gz"}
    _edit_json(ds, dataset=listing, numTraining=3)
    _only_line(ds, "is missing", "nope_0000.nii.gz")


def test_dataset_json_problems_are_one_line(ds):
    (ds / "dataset.json").write_text(
        (ds / "dataset.json").read_text().replace('"labels"', '"labels": {"background": 0}, "labels"', 1)
    )
    (line,) = _lines(ds)
    assert "duplicate key 'labels'" in line
    meta = json.loads((ds / "dataset.json").read_text().replace('"labels": {"background": 0}, ', "", 1))
    (ds / "dataset.json").write_text(json.dumps({**meta, "overwrite_image_reader_writer": "NibabelIOWithReorient"}))
    (line,) = _lines(ds)
    assert "reorient" in line and "dataset.json" in line
