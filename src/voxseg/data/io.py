"""Image IO with geometry: one small interface over SimpleITK, with nibabel as the NIfTI fallback.

Arrays come back in numpy order ((z, y, x) for 3D) and ``Geometry.spacing`` follows that order, so
no later stage ever has to remember ITK's reversed axis convention. Origin and direction stay in
ITK's physical order because they are only ever handed back to the writer.

nibabel is the fallback for NIfTI files SimpleITK refuses (it rejects non-orthonormal direction
cosines that scanners sometimes write); its RAS affine is converted to ITK's LPS convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from voxseg.errors import DatasetError, NotFoundError
from voxseg.io_utils import atomic_path

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    spacing: tuple[float, ...]  # array order
    origin: tuple[float, ...]  # ITK physical order
    direction: tuple[float, ...]  # ITK flat row-major

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def to_json(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(tuple(map(float, d["spacing"])), tuple(map(float, d["origin"])), tuple(map(float, d["direction"])))

    def differs_from(self, other: "Geometry", tol: float = 1e-4) -> list[str]:
        """Names of the geometry fields that disagree beyond a relative tolerance."""
        bad = []
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(a).max(initial=0)))):
                bad.append(name)
        return bad


def file_ending(path: str | Path) -> str:
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return "".join(Path(path).suffixes[-1:])


def _check_supported(path: Path) -> None:
    if file_ending(path) not in SUPPORTED_ENDINGS:
        raise DatasetError(
            f"unsupported file ending '{file_ending(path)}'",
            path=path,
            fix=f"convert it to one of {', '.join(SUPPORTED_ENDINGS)}",
        )


def _read_nibabel(path: Path) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    affine = img.affine
    ndim = data.ndim
    zooms = np.asarray(img.header.get_zooms()[:ndim], dtype=float)
    # RAS (nibabel) -> LPS (ITK): flip the first two physical axes.
    flip = np.diag([-1.0, -1.0, 1.0])[:ndim, :ndim]
    rot = flip @ affine[:ndim, :ndim] / zooms
    origin = flip @ affine[:ndim, 3]
    geometry = Geometry(tuple(zooms[::-1]), tuple(origin), tuple(rot.ravel()))
    return np.ascontiguousarray(data.transpose(tuple(range(ndim))[::-1])), geometry


def read_image(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one single-channel image; raise DatasetError naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("file not found", path=path, fix="check the file name and the dataset's file_ending")
    _check_supported(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as itk_error:
        if file_ending(path) in (".nii", ".nii.gz"):
            try:
                return _read_nibabel(path)
            except Exception:
                pass
        first_line = str(itk_error).strip().splitlines()[-1][:200] if str(itk_error).strip() else "unreadable"
        raise DatasetError(f"cannot read image ({first_line})", path=path, fix="re-export the file; check it opens in a viewer") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"image has {img.GetNumberOfComponentsPerPixel()} components per voxel",
            path=path,
            fix="store each channel as its own file CASE_0000, CASE_0001, ...",
        )
    array = sitk.GetArrayFromImage(img)
    geometry = Geometry(tuple(img.GetSpacing())[::-1], tuple(img.GetOrigin()), tuple(img.GetDirection()))
    return array, geometry


def count_non_finite(path: str | Path, array: np.ndarray) -> int:
    """NaN/Inf voxels of a file already read into `array`.

    ITK's NIfTI reader silently turns NaN into 0, so float NIfTI files are re-checked with nibabel.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    if file_ending(path) in (".nii", ".nii.gz"):
        import nibabel as nib

        array = np.asanyarray(nib.load(str(path)).dataobj)
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write `array` (numpy order) with `geometry`, atomically, in the format of the file ending."""
    path = Path(path)
    _check_supported(path)
    if array.ndim != geometry.ndim:
        raise ValueError(f"array has {array.ndim} dims but geometry {geometry.ndim}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def read_case_images(paths: Sequence[str | Path]) -> tuple[np.ndarray, Geometry]:
    """Read all channels of a case into one float32 (C, *S) array; channels must share a grid."""
    arrays, geometry = [], None
    for p in paths:
        array, g = read_image(p)
        if geometry is None:
            geometry, shape = g, array.shape
        elif array.shape != shape or g.differs_from(geometry):
            raise DatasetError(
                f"channel grid differs from {Path(paths[0]).name} (shape {array.shape} vs {shape})",
                path=p,
                fix="resample all channels of a case onto the same grid",
            )
        arrays.append(array.astype(np.float32, copy=False))
    return np.stack(arrays), geometry
