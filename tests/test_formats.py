"""Every raw format nnU-Net reads: natural 2D images, TIFF 2D/3D with sidecars, reader overrides,
and truncated or corrupt files, which must be refused rather than read as zeros."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from voxseg.data.io import (
    Geometry,
    check_reader,
    label_file_ending,
    read_case_images,
    read_channels,
    read_image,
    write_image,
)
from voxseg.data.io.geometry import grid_geometry
from voxseg.errors import DatasetError, NotFoundError

RNG = np.random.default_rng(0)
FLAT = grid_geometry((1.0, 1.0))
COLOUR = {"L": (24, 32), "RGB": (24, 32, 3), "RGBA": (24, 32, 4)}


def _pixels(mode: str) -> np.ndarray:
    return RNG.integers(0, 256, COLOUR[mode], dtype=np.uint8)


@pytest.mark.parametrize(
    "ending, mode",
    [(e, m) for e in (".png", ".tif") for m in COLOUR] + [(".bmp", "L"), (".bmp", "RGB"), (".jpg", "L"), (".jpeg", "RGB")],
)
def test_natural_image_channels_are_its_colour_bands(tmp_path, ending, mode):
    pixels = _pixels(mode)
    if ending in (".jpg", ".jpeg"):  # smooth, so lossy compression keeps it close
        pixels = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[:, None], (32, *pixels.shape[1:]))[:24].copy()
    path = tmp_path / f"case_0000{ending}"
    if ending == ".tif":
        tifffile.imwrite(path, pixels, photometric="minisblack" if mode == "L" else "rgb")
    else:
        Image.fromarray(pixels, mode).save(path)
    array, geometry = read_channels(path)
    expected = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    assert array.shape == expected.shape
    if ending in (".jpg", ".jpeg"):
        assert np.abs(array.astype(float) - expected).mean() < 5  # lossy, but the same picture
    else:
        np.testing.assert_array_equal(array, expected)
    assert geometry == Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))


def test_palette_png_label_gives_indices_and_image_gives_colours(tmp_path):
    classes = np.zeros((20, 30), np.uint8)
    classes[5:9, 4:20], classes[12:, :] = 1, 2
    palette = Image.fromarray(classes, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "c.png")
    label, _ = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(label, classes)
    colours, _ = read_channels(tmp_path / "c.png")
    assert colours.shape == (3, 20, 30) and colours[0][classes == 1].min() == 255 and colours[2][classes == 2].min() == 255


def test_rgb_label_map_is_refused(tmp_path):
    Image.fromarray(_pixels("RGB")).save(tmp_path / "c.png")
    with pytest.raises(DatasetError, match="3 colour channels") as e:
        read_image(tmp_path / "c.png")
    assert "c.png" in str(e.value) and "greyscale" in e.value.fix


@pytest.mark.parametrize("ending, high", [(".png", 3), (".png", 1000), (".bmp", 200), (".tif", 70000)])
def test_label_maps_round_trip(tmp_path, ending, high):
    seg = RNG.integers(0, high + 1, (16, 24)).astype(np.int32)
    write_image(tmp_path / f"p{ending}", seg, FLAT)
    back, geometry = read_image(tmp_path / f"p{ending}")
    np.testing.assert_array_equal(back, seg)
    assert geometry == FLAT


def test_label_writes_that_would_lose_information_are_refused(tmp_path):
    seg = np.ones((8, 8), np.int16)
    with pytest.raises(ValueError, match="JPEG"):
        write_image(tmp_path / "p.jpg", seg, FLAT)
    with pytest.raises(ValueError, match="spacing"):
        write_image(tmp_path / "p.png", seg, grid_geometry((0.5, 1.0)))
    with pytest.raises(ValueError, match="do not fit"):
        write_image(tmp_path / "p.bmp", seg * 300, FLAT)
    assert list(tmp_path.iterdir()) == []
    assert label_file_ending(".jpg") == label_file_ending(".JPEG") == ".png" and label_file_ending(".nii.gz") == ".nii.gz"


def test_3d_tiff_round_trip_writes_spacing_sidecar(tmp_path):
    volume = RNG.integers(0, 4, (6, 10, 3)).astype(np.uint8)  # 3 voxels wide: must not turn into RGB
    write_image(tmp_path / "case.tif", volume, grid_geometry((3.0, 0.5, 0.25)))
    assert json.loads((tmp_path / "case.json").read_text()) == {"spacing": [3.0, 0.5, 0.25]}
    back, geometry = read_image(tmp_path / "case.tif")
    np.testing.assert_array_equal(back, volume)
    assert geometry == grid_geometry((3.0, 0.5, 0.25))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.json", "case.tif"]


def test_3d_tiff_image_channels_use_the_case_sidecar(tmp_path):
    stack = RNG.integers(0, 100, (5, 8, 9)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "case_0000.tif", stack)
    with pytest.raises(DatasetError, match=r"spacing file case\.json") as e:
        read_channels(tmp_path / "case_0000.tif")
    assert str(tmp_path / "case.json") in e.value.fix and "[z, y, x]" in e.value.fix
    (tmp_path / "case_0000.json").write_text('{"spacing": [2.0, 1.0, 0.5]}')  # nnU-Net would not read it
    with pytest.raises(DatasetError, match=r"spacing file case\.json") as e:
        read_channels(tmp_path / "case_0000.tif")
    assert e.value.fix == "rename case_0000.json to case.json"
    (tmp_path / "case_0000.json").unlink()
    (tmp_path / "case.json").write_text('{"spacing": [2.0, 1.0]}')
    with pytest.raises(DatasetError, match="3 positive numbers") as e:
        read_channels(tmp_path / "case_0000.tif")
    assert e.value.path == str(tmp_path / "case.json")
    (tmp_path / "case.json").write_text('{"spacing": [2.0, 1.0, 0.5]}')
    array, geometry = read_channels(tmp_path / "case_0000.tif")
    assert array.shape == (1, 5, 8, 9) and geometry.spacing == (2.0, 1.0, 0.5)


def test_tiff_structure_decides_2d_or_3d(tmp_path):
    rgb = _pixels("RGB")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    array, geometry = read_channels(tmp_path / "planar.tif")  # nnU-Net would call this a 3-slice volume
    np.testing.assert_array_equal(array, np.moveaxis(rgb, -1, 0))
    assert geometry.ndim == 2


def test_reader_overrides(tmp_path):
    tifffile.imwrite(tmp_path / "flat.tif", _pixels("L"))
    with pytest.raises(DatasetError, match="Tiff3DIO reads 3D"):
        read_image(tmp_path / "flat.tif", "Tiff3DIO")
    write_image(tmp_path / "v.tif", np.zeros((3, 4, 5), np.uint8), grid_geometry((1.0, 1.0, 1.0)))
    with pytest.raises(DatasetError, match="NaturalImage2DIO reads 2D"):
        read_image(tmp_path / "v.tif", "NaturalImage2DIO")
    source = tmp_path / "dataset.json"
    assert check_reader("None", ".png", source=source) is None and check_reader("Tiff3DIO", ".tif", source=source) == "Tiff3DIO"
    for name, phrase in [("NibabelIOWithReorient", "reorient"), ("SimpleITKIO", "cannot read '.png'"), ("MyIO", "unknown")]:
        with pytest.raises(DatasetError, match=phrase) as e:
            check_reader(name, ".png", source=source)
        assert e.value.path == str(source) and e.value.fix


def test_nibabel_reader_matches_simpleitk(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # nibabel stores (x, y, z)
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "a.nii.gz"))
    arr_nib, g_nib = read_image(tmp_path / "a.nii.gz", "NibabelIO")
    arr_itk, g_itk = read_image(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(arr_nib, arr_itk)
    assert not g_nib.differs_from(g_itk)


def _nifti_variants(tmp_path):
    """NIfTI files whose voxels are not their stored bytes, so the fast checksum cannot apply."""
    base = RNG.integers(-100, 100, (4, 5, 6)).astype(np.int16)
    scaled = nib.Nifti1Image(base, np.eye(4))
    scaled.header.set_slope_inter(2.0, -5.0)
    nib.save(scaled, str(tmp_path / "scaled.nii.gz"))
    with_nan = base.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(with_nan, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(base, np.eye(4)), str(tmp_path / "plain.nii"))
    raw = (tmp_path / "plain.nii").read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]))
    return ["scaled.nii.gz", "nan.nii.gz", "members.nii.gz"]


def test_nifti_reads_as_simpleitk_reads_it(tmp_path):
    for name in _nifti_variants(tmp_path):
        array, _ = read_image(tmp_path / name)
        np.testing.assert_array_equal(array, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name))))


def test_4d_file_holds_channels_and_vector_images_are_refused(tmp_path):
    channels = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels]), str(tmp_path / "c_0000.nii.gz"))
    array, geometry = read_case_images([tmp_path / "c_0000.nii.gz"], n_channels=2)
    np.testing.assert_array_equal(array, channels)
    assert geometry.ndim == 3
    with pytest.raises(DatasetError, match="2 channels"):
        read_image(tmp_path / "c_0000.nii.gz")
    sitk.WriteImage(sitk.Compose([sitk.GetImageFromArray(channels[0])] * 3), str(tmp_path / "v.nrrd"))
    with pytest.raises(DatasetError, match="3 components per voxel"):
        read_channels(tmp_path / "v.nrrd")


def _write(tmp_path, ending):
    """A small volume (or 2D picture) in `ending`; returns the file whose bytes hold the voxels."""
    if ending in (".png", ".jpg", ".bmp"):
        Image.fromarray(_pixels("RGB")).save(tmp_path / f"a{ending}")
        return tmp_path / f"a{ending}"
    volume = RNG.integers(-1000, 1000, (8, 20, 24)).astype(np.int16)
    origin = (0.0, 0.0, 0.0) if ending == ".tif" else (1.0, 2.0, 3.0)  # a TIFF stores spacing only
    write_image(tmp_path / f"a{ending}", volume, Geometry((2.0, 0.8, 0.7), origin, tuple(np.eye(3).ravel())))
    data = {".nhdr": "a.raw.gz", ".mhd": "a.zraw"}.get(ending, f"a{ending}")
    return tmp_path / data


@pytest.mark.parametrize("fraction", [1 / 3, 0.98])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".tif", ".png", ".jpg", ".bmp"])
def test_truncated_files_are_refused(tmp_path, ending, fraction):
    stored = _write(tmp_path, ending)
    data = stored.read_bytes()
    stored.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DatasetError, match="truncated or corrupt") as e:
        read_channels(tmp_path / f"a{ending}")
    assert e.value.path == str(tmp_path / f"a{ending}") and "re-copy" in e.value.fix


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_corrupt_compressed_data_is_refused(tmp_path, ending):
    stored = _write(tmp_path, ending)
    data = bytearray(stored.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    stored.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_channels(stored)


def test_real_scan_cut_short_is_refused(shared_data, tmp_path):
    source = shared_data / "pyradiomics" / "brain1_image.nrrd"
    array, _ = read_image(source)
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(sitk.ReadImage(str(source))))
    data = source.read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_image(tmp_path / "cut.nrrd")


@pytest.mark.parametrize("ending", [".nhdr", ".mhd"])
def test_detached_formats_are_written_whole_and_leave_no_scratch(tmp_path, ending):
    seg = RNG.integers(0, 3, (4, 5, 6)).astype(np.uint8)
    write_image(tmp_path / f"p{ending}", seg, grid_geometry((1.0, 2.0, 3.0)))
    np.testing.assert_array_equal(read_image(tmp_path / f"p{ending}")[0], seg)
    assert all(not p.name.startswith(".") for p in tmp_path.iterdir())


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(NotFoundError):
        read_image(tmp_path / "missing.png")
    (tmp_path / "x.dcm").write_bytes(b"")
    with pytest.raises(DatasetError, match="unsupported file ending"):
        read_image(tmp_path / "x.dcm")
    (tmp_path / "x.png").write_bytes(b"not a picture")
    with pytest.raises(DatasetError, match="cannot read image"):
        read_image(tmp_path / "x.png")
