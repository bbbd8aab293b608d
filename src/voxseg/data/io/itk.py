"""Medical volumes (NIfTI, NRRD, MetaImage, GIPL) through SimpleITK, with nibabel for NIfTI.

SimpleITK is nnU-Net's default reader for these files (SimpleITKIO). nibabel reads NIfTI when a
dataset asks for nnU-Net's NibabelIO, and as the fallback for files SimpleITK refuses (it rejects
non-orthonormal direction cosines that scanners sometimes write); its RAS affine is converted to
ITK's LPS convention. Every file passes `integrity`'s truncation check on the way.

A 4D scalar file is read as nnU-Net's SimpleITKIO reads it: the fourth axis holds channels. Files
with several components per voxel (vector/RGB NRRD, MetaImage) are refused: nnU-Net takes their
component axis for a spatial one.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from voxseg.data.io import integrity
from voxseg.data.io.geometry import Geometry
from voxseg.errors import DatasetError
from voxseg.io_utils import atomic_path

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl")
_DETACHED = (".nhdr", ".mhd")  # a header file plus a data file written beside it


def read(path: Path, ending: str, *, nibabel: bool = False) -> tuple[np.ndarray, Geometry]:
    """(C, *S) array and geometry; `nibabel` reads NIfTI as nnU-Net's NibabelIO."""
    payload = integrity.nifti_payload(path) if ending in NIFTI_ENDINGS else None
    if nibabel:
        assert payload is not None, "the nibabel backend reads NIfTI only"
        return _read_nibabel(path, payload)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if payload is None:  # NIfTI headers we parse ourselves; the others' voxel count comes from ITK
        try:
            reader.ReadImageInformation()
        except RuntimeError as itk_error:
            raise integrity.cannot_read(path, _last_line(itk_error)) from None
        payload = _other_payload(path, ending, reader)
    compare = integrity.check_stored(payload)
    try:
        image = reader.Execute()
    except RuntimeError as itk_error:
        if ending in NIFTI_ENDINGS:
            return _read_nibabel(path, payload)
        if payload.encoding not in ("raw", "text"):
            integrity.decode_all(payload)  # a damaged stream is the better explanation
        raise integrity.cannot_read(path, _last_line(itk_error)) from None
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise DatasetError(
            f"image has {components} components per voxel",
            path=path,
            fix="store each channel as its own file CASE_0000, CASE_0001, ...",
        )
    array = sitk.GetArrayFromImage(image)
    if compare:
        integrity.check_array(payload, array)
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    return _channels_first(path, array, spacing, origin, direction)


def _other_payload(path: Path, ending: str, reader: sitk.ImageFileReader) -> integrity.Payload:
    component_bytes = _component_bytes(reader.GetPixelID())
    nbytes = int(np.prod(reader.GetSize())) * reader.GetNumberOfComponents() * component_bytes
    if ending in (".nrrd", ".nhdr"):
        return integrity.nrrd_payload(path, nbytes, component_bytes)
    if ending in (".mha", ".mhd"):
        return integrity.meta_payload(path, nbytes, component_bytes)
    return integrity.gipl_payload(path, nbytes)


def _component_bytes(pixel_id: int) -> int:
    # e.g. "16-bit signed integer", "vector of 32-bit float"
    bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(pixel_id))
    return int(bits.group(1)) // 8 if bits else 1


def _channels_first(path: Path, array: np.ndarray, spacing, origin, direction) -> tuple[np.ndarray, Geometry]:
    ndim = array.ndim
    if not np.isrealobj(array):
        raise DatasetError(
            "complex-valued voxels are not supported", path=path, fix="store magnitude (or real and imaginary parts) as channels"
        )
    if ndim in (2, 3):
        return array[None], Geometry(tuple(spacing)[::-1], tuple(origin), tuple(direction))
    if ndim == 4:
        d = np.asarray(direction, dtype=float).reshape(4, 4)
        if not (np.allclose(d[3, :3], 0) and np.allclose(d[:3, 3], 0)):
            raise DatasetError(
                "4D image whose fourth axis is rotated into space",
                path=path,
                fix="store each channel as its own 3D file CASE_0000, CASE_0001, ...",
            )
        return array, Geometry(tuple(spacing[:3])[::-1], tuple(origin[:3]), tuple(d[:3, :3].ravel().tolist()))
    raise DatasetError(f"{ndim}D image", path=path, fix="images must be 2D or 3D (4D: channels along the fourth axis)")


def _read_nibabel(path: Path, payload: integrity.Payload) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    if payload.encoding == "gzip":
        data = integrity.decoded_bytes(payload)  # decompressed once, checked, then parsed from memory
    else:
        integrity.check_stored(payload)
    try:
        if payload.encoding == "gzip":
            cls = nib.Nifti1Image if data[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") else nib.Nifti2Image
            img = cls.from_bytes(data)
        else:
            img = nib.load(str(path))  # type: ignore[assignment]  # typed FileBasedImage; a NIfTI loads as Nifti1/2Image
        array = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for files it cannot make sense of
        raise integrity.cannot_read(path, f"nibabel: {e}") from None
    spatial = min(array.ndim, 3)
    zooms = np.asarray(img.header.get_zooms()[:spatial], dtype=float)
    # RAS (nibabel) -> LPS (ITK): flip the first two physical axes.
    flip = np.diag([-1.0, -1.0, 1.0])[:spatial, :spatial]
    rotation = flip @ img.affine[:spatial, :spatial] / zooms
    origin = flip @ img.affine[:spatial, 3]
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    spacing = np.concatenate([zooms, np.ones(array.ndim - spatial)])  # channel axis: spacing unused
    direction = np.eye(array.ndim)
    direction[:spatial, :spatial] = rotation
    origin = np.concatenate([origin, np.zeros(array.ndim - spatial)])
    return _channels_first(path, array, tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist()))


def write(path: Path, ending: str, array: np.ndarray, geometry: Geometry) -> None:
    """Write with SimpleITK (compressed where the format allows), atomically."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    if ending in _DETACHED:
        _write_detached(path, image)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def _write_detached(path: Path, image: sitk.Image) -> None:
    """.nhdr/.mhd name their data file inside the header, so both are written under their final
    names in a scratch folder; the data file is moved in first and the header last, through
    `atomic_path`, so a header never points at a missing or half-written data file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as scratch, atomic_path(path) as tmp:
        sitk.WriteImage(image, os.path.join(scratch, path.name), useCompression=True)
        for f in Path(scratch).iterdir():
            os.replace(f, tmp if f.name == path.name else path.parent / f.name)


def _last_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1][:200] if text else "unreadable"
