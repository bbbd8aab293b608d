"""Image IO with geometry: every nnU-Net v2 raw format, read with the meaning nnU-Net gives it.

Arrays come back in numpy order ((z, y, x) for 3D, (y, x) for 2D) with `Geometry.spacing` in that
order. The reader follows the file ending, as nnU-Net picks it:

    .nii.gz .nii .nrrd .nhdr .mha .mhd .gipl   SimpleITK (nibabel for NIfTI on request)  -> itk.py
    .png .bmp .jpg .jpeg                        Pillow, 2D, one channel per colour band   -> natural.py
    .tif .tiff                                  tifffile, 2D image or 3D volume + sidecar -> tiff.py

dataset.json's ``overwrite_image_reader_writer`` may name one of nnU-Net's readers; `check_reader`
accepts the ones whose meaning we reproduce and refuses the rest with one line. Every read checks
the file is complete (see integrity.py, natural.py, tiff.py): a truncated or corrupt file is a
DatasetError, never zeros.

A file may hold several channels (RGB, a 4D volume), so a case's channels are the concatenation of
its files' channels (`read_case_images`); label maps are single-channel (`read_image`). JPEG cannot
hold labels: `label_file_ending` says which ending label maps and predictions of a dataset use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from voxseg.data.io import itk, natural, tiff
from voxseg.data.io.geometry import Geometry
from voxseg.errors import DatasetError, NotFoundError

__all__ = [
    "Geometry",
    "SUPPORTED_ENDINGS",
    "READER_NAMES",
    "file_ending",
    "label_file_ending",
    "check_reader",
    "read_channels",
    "read_image",
    "read_case_images",
    "write_image",
    "count_non_finite",
]

SUPPORTED_ENDINGS = itk.ITK_ENDINGS + natural.NATURAL_ENDINGS + tiff.TIFF_ENDINGS
READER_NAMES = ("SimpleITKIO", "NibabelIO", "NaturalImage2DIO", "Tiff3DIO")  # nnU-Net readers we reproduce
_REORIENTING = ("NibabelIOWithReorient", "SimpleITKIOWithReorient")
_JPEG = (".jpg", ".jpeg")


def file_ending(path: str | Path) -> str:
    """The supported ending of `path` (lower case), else its last suffix."""
    name = Path(path).name.lower()
    for ending in SUPPORTED_ENDINGS:
        if name.endswith(ending):
            return ending
    return "".join(Path(path).suffixes[-1:])


def label_file_ending(ending: str) -> str:
    """Ending of a dataset's label maps and predictions: its file_ending, except lossy JPEG -> .png.

    Every stage that names a label or prediction file uses this (labelsTr/CASE<this>, predictions).
    """
    return ".png" if ending.lower() in _JPEG else ending


def _backend(reader: str | None, ending: str) -> str | None:
    """How files with `ending` are read under `reader`; None when that pairing is unsupported."""
    if reader is None:
        return "itk" if ending in itk.ITK_ENDINGS else "natural" if ending in natural.NATURAL_ENDINGS else "tiff"
    if reader == "SimpleITKIO":
        return "itk" if ending in itk.ITK_ENDINGS else None
    if reader == "NibabelIO":
        return "nibabel" if ending in itk.NIFTI_ENDINGS else None
    if reader == "NaturalImage2DIO":
        return "natural" if ending in natural.NATURAL_ENDINGS else "tiff2d" if ending in tiff.TIFF_ENDINGS else None
    return "tiff3d" if ending in tiff.TIFF_ENDINGS else None  # Tiff3DIO


def check_reader(reader: object, ending: str, *, source: Path) -> str | None:
    """Validate dataset.json's overwrite_image_reader_writer for files ending in `ending`.

    Returns the reader name, or None to pick by file ending ("None" and absent mean the same, as in
    nnU-Net). nnU-Net falls back to guessing on an unknown name; we refuse it, naming `source`.
    """
    if reader is None or reader == "None":
        return None
    key = "overwrite_image_reader_writer"
    if reader in _REORIENTING:
        raise DatasetError(
            f"{key} '{reader}' (reorient every image to RAS) is not supported",
            path=source,
            fix="reorient the files once (e.g. nibabel.as_closest_canonical) and remove the key; "
            "voxseg keeps each file's voxel order and geometry",
        )
    if reader not in READER_NAMES:
        raise DatasetError(
            f"unknown {key} {reader!r}",
            path=source,
            fix=f"use one of {', '.join(READER_NAMES)}, or remove the key to choose by file_ending",
        )
    if _backend(reader, ending.lower()) is None:
        raise DatasetError(
            f"{key} '{reader}' cannot read '{ending}' files",
            path=source,
            fix=f"remove the key: voxseg picks the reader for '{ending}' as nnU-Net does",
        )
    return reader


def _open(path: str | Path, reader: str | None) -> tuple[Path, str, str]:
    path = Path(path)
    ending = file_ending(path)
    if not path.is_file():
        raise NotFoundError("file not found", path=path, fix="check the file name and the dataset's file_ending")
    if ending not in SUPPORTED_ENDINGS:
        raise DatasetError(
            f"unsupported file ending '{ending}'", path=path, fix=f"convert it to one of {', '.join(SUPPORTED_ENDINGS)}"
        )
    reader = check_reader(reader, ending, source=path)
    backend = _backend(reader, ending)
    assert backend is not None, "check_reader refuses a reader without a backend for the ending"
    return path, ending, backend


def _read(path: str | Path, reader: str | None, *, label: bool) -> tuple[np.ndarray, Geometry]:
    path, ending, backend = _open(path, reader)
    if backend in ("itk", "nibabel"):
        return itk.read(path, ending, nibabel=backend == "nibabel")
    if backend == "natural":
        return natural.read(path, palette_indices=label)
    mode = {"tiff": tiff.AUTO, "tiff2d": tiff.FORCE_2D, "tiff3d": tiff.FORCE_3D}[backend]
    return tiff.read(path, ending, mode, image=not label)


def read_channels(path: str | Path, reader: str | None = None) -> tuple[np.ndarray, Geometry]:
    """One image file as (C, *S), C = the channels it holds (RGB png: 3; 4D NIfTI: its 4th axis)."""
    return _read(path, reader, label=False)


def read_image(path: str | Path, reader: str | None = None) -> tuple[np.ndarray, Geometry]:
    """One single-channel file (a label map, a prediction) as (*S); a palette PNG gives its indices.

    Raises DatasetError naming the file if it cannot be read, is incomplete, or holds several channels.
    """
    array, geometry = _read(path, reader, label=True)
    if array.shape[0] != 1:
        if file_ending(path) in natural.NATURAL_ENDINGS + tiff.TIFF_ENDINGS:
            raise DatasetError(
                f"label map has {array.shape[0]} colour channels; it must hold one class index per pixel",
                path=path,
                fix="save it as a greyscale (or palette) PNG whose pixel values are the class values 0..K-1",
            )
        raise DatasetError(
            f"file holds {array.shape[0]} channels where one is expected",
            path=path,
            fix="save label maps as single-channel files",
        )
    return array[0], geometry


def read_case_images(
    paths: Sequence[str | Path], reader: str | None = None, n_channels: int | None = None
) -> tuple[np.ndarray, Geometry]:
    """All channels of a case as one float32 (C, *S) array: each file's channels, files in order.

    Files must share one grid. With `n_channels` (len(channel_names)) the total must match.
    """
    if not paths:
        raise DatasetError("case has no image files", fix="add its images (CASE_0000<ending>, ...)")
    arrays, geometry, shape = [], None, None
    for p in paths:
        array, g = read_channels(p, reader)
        if geometry is None:
            geometry, shape = g, array.shape[1:]
        elif array.shape[1:] != shape or g.differs_from(geometry):
            raise DatasetError(
                f"channel grid differs from {Path(paths[0]).name} (shape {array.shape[1:]} vs {shape})",
                path=p,
                fix="resample all channels of a case onto the same grid",
            )
        arrays.append(array)
    total = sum(a.shape[0] for a in arrays)
    if n_channels is not None and total != n_channels:
        raise DatasetError(
            f"the case's files hold {total} channels but channel_names lists {n_channels}",
            path=paths[0],
            fix="make channel_names list every channel of the files (an RGB file holds 3)",
        )
    assert geometry is not None  # paths is not empty
    return np.concatenate(arrays, axis=0, dtype=np.float32), geometry


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry) -> None:
    """Write a single-channel `array` (numpy order) with `geometry`, atomically, as the ending says.

    .png/.bmp take 2D integer label maps (8-bit; 16-bit PNG when needed) with the natural-image
    geometry; .tif 2D, or 3D with its spacing sidecar; JPEG is refused (lossy).
    """
    path = Path(path)
    ending = file_ending(path)
    if ending not in SUPPORTED_ENDINGS:
        raise DatasetError(f"unsupported file ending '{ending}'", path=path, fix=f"use one of {', '.join(SUPPORTED_ENDINGS)}")
    if array.ndim != geometry.ndim:
        raise ValueError(f"array has {array.ndim} dims but geometry {geometry.ndim}")
    if ending in itk.ITK_ENDINGS:
        itk.write(path, ending, array, geometry)
    elif ending in natural.NATURAL_ENDINGS:
        natural.write(path, ending, array, geometry)
    else:
        tiff.write(path, ending, array, geometry)


def count_non_finite(path: str | Path, array: np.ndarray) -> int:
    """NaN/Inf voxels of a file already read into `array`.

    ITK's NIfTI reader silently turns NaN into 0, so float NIfTI files are re-checked with nibabel.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    if file_ending(path) in itk.NIFTI_ENDINGS:
        import nibabel as nib

        array = np.asanyarray(nib.load(str(path)).dataobj)  # type: ignore[attr-defined]  # typed FileBasedImage; a NIfTI loads as Nifti1/2Image
    return int(array.size - np.count_nonzero(np.isfinite(array)))
