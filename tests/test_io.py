import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from voxseg.data.io import Geometry, read_case_images, read_image, write_image
from voxseg.errors import DatasetError, NotFoundError


@pytest.mark.parametrize("case", ["brain1", "breast1", "lung1"])
@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz", ".mha"])
def test_real_scan_roundtrip_keeps_array_and_geometry(shared_data, tmp_path, case, ending):
    for kind in ("image", "label"):
        src = shared_data / "pyradiomics" / f"{case}_{kind}.nrrd"
        array, geom = read_image(src)
        itk = sitk.ReadImage(str(src))
        # Our spacing is in array order (z, y, x): the reverse of ITK's.
        assert geom.spacing == pytest.approx(itk.GetSpacing()[::-1])
        assert array.shape == itk.GetSize()[::-1]
        out = tmp_path / f"{case}_{kind}{ending}"
        write_image(out, array, geom)
        back, geom2 = read_image(out)
        np.testing.assert_array_equal(back, array)
        assert back.dtype == array.dtype
        assert geom2.spacing == pytest.approx(geom.spacing, rel=1e-6)
        assert geom2.origin == pytest.approx(geom.origin, abs=1e-4)
        assert geom2.direction == pytest.approx(geom.direction, abs=1e-6)


def test_flipped_axis_direction_is_preserved(shared_data, tmp_path):
    _, geom = read_image(shared_data / "pyradiomics" / "brain1_image.nrrd")
    assert min(geom.direction) < 0, "brain scans carry a flipped axis per the data README"


def test_nibabel_fallback_reads_what_simpleitk_refuses(tmp_path):
    # A sheared affine: SimpleITK refuses non-orthonormal direction cosines, nibabel reads the file.
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(6, 5, 4)  # nibabel stores (x, y, z)
    affine = np.array([[0.8, 0.1, 0, 10.0], [0, 0.9, 0, -20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    array, geometry = read_image(path)
    np.testing.assert_array_equal(array, data.transpose(2, 1, 0))
    assert geometry.spacing == pytest.approx((2.5, np.hypot(0.1, 0.9), 0.8))  # column norms of the affine


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(NotFoundError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(DatasetError) as e:
        read_image(bad)
    assert "broken.nii.gz" in str(e.value)
    odd = tmp_path / "x.dcm"
    odd.write_bytes(b"")
    with pytest.raises(DatasetError, match="unsupported file ending"):
        read_image(odd)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    from voxseg.io_utils import atomic_path, atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_channels_must_share_a_grid(tmp_path):
    g = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(tmp_path / "c0.nii.gz", np.zeros((4, 4, 4), np.float32), g)
    write_image(tmp_path / "c1.nii.gz", np.ones((4, 4, 4), np.float32), g)
    write_image(tmp_path / "c2.nii.gz", np.ones((4, 4, 5), np.float32), g)
    img, geom = read_case_images([tmp_path / "c0.nii.gz", tmp_path / "c1.nii.gz"])
    assert img.shape == (2, 4, 4, 4) and img.dtype == np.float32 and geom == g
    with pytest.raises(DatasetError, match=r"c2\.nii\.gz"):
        read_case_images([tmp_path / "c0.nii.gz", tmp_path / "c2.nii.gz"])
