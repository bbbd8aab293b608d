"""TIFF (.tif/.tiff) through tifffile: a 2D natural image, or a 3D volume with a spacing sidecar.

Which of the two a file is follows the file's own structure (tifffile's axes), not its array shape:
2 spatial axes (YX, or YXS/SYX with S colour samples) make a 2D natural image read as nnU-Net's
NaturalImage2DIO reads it (C = samples, spacing 1); 3 axes without samples (a stack of pages: ZYX,
QYX, IYX, an ImageJ CYX) make a 3D volume read as nnU-Net's Tiff3DIO reads it; anything else is
refused. nnU-Net instead tries the 2D reader first and calls any (a, b, 3|4) array RGB, so a stack
only 3 or 4 voxels wide becomes a colour image, and a planar RGB file (SYX) a 3-slice volume.
dataset.json's overwrite_image_reader_writer forces one reading: "Tiff3DIO" takes the array exactly
as tifffile returns it and requires 3 axes (nnU-Net's meaning, even for a file tagged RGB);
"NaturalImage2DIO" requires a 2D image.

Spacing of a volume comes from a JSON sidecar, named as nnU-Net's Tiff3DIO looks for it: the file
name without the ending and without the channel suffix, so imagesTr/CASE_0000.tif -> imagesTr/CASE.json
and labelsTr/CASE.tif -> labelsTr/CASE.json, holding {"spacing": [z, y, x]} in array order (the
order tifffile returns the axes: pages first). nnU-Net silently assumes (1, 1, 1) without it; voxseg
refuses. The volume has origin 0 and identity direction.

Truncation: tifffile stops at a page offset past the end of the file and returns the pages before
it without an error (measured: a cut 20-page zlib stack came back as one 64x64 page), so the page
chain and every page's data segments are checked against the file size first; damaged compressed
segments make the codec raise.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import tifffile

from voxseg.data.io.geometry import Geometry, grid_geometry, is_grid_geometry
from voxseg.data.io.integrity import cannot_read, truncated
from voxseg.data.io.natural import NATURAL_GEOMETRY
from voxseg.data.io.strict_json import load_strict
from voxseg.errors import DatasetError
from voxseg.io_utils import atomic_path

TIFF_ENDINGS = (".tif", ".tiff")
AUTO, FORCE_2D, FORCE_3D = "auto", "2d", "3d"
_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


def read(path: Path, ending: str, mode: str = AUTO, *, image: bool = True) -> tuple[np.ndarray, Geometry]:
    """(C, *S) array and geometry; `mode` forces 2D or 3D reading (see module docstring); `image`
    says which spacing file a volume has (an image channel's or a label map's)."""
    size = path.stat().st_size
    _check_page_chain(path, size)
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
                    raise truncated(path, f"page data runs past the end of the {size}-byte file")
            series = tif.series[0]
            axes, array = series.axes, series.asarray()
    except DatasetError:
        raise
    except tifffile.TiffFileError as e:
        raise cannot_read(path, str(e)) from None
    except Exception as e:  # codecs raise their own types for damaged segments
        raise truncated(path, f"{type(e).__name__}: {e}") from None
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if mode == FORCE_3D:
        if array.ndim != 3:
            raise DatasetError(
                f"Tiff3DIO reads 3D stacks; this TIFF is {array.ndim}D (axes {axes})",
                path=path,
                fix="remove overwrite_image_reader_writer to read 2D TIFFs as natural images",
            )
        return array[None], volume_geometry(path, ending, image=image)
    if array.ndim == 2:
        return array[None], NATURAL_GEOMETRY
    if array.ndim == 3 and "S" in axes:
        return np.ascontiguousarray(np.moveaxis(array, axes.index("S"), 0)), NATURAL_GEOMETRY
    if mode == FORCE_2D:
        raise DatasetError(
            f"NaturalImage2DIO reads 2D images; this TIFF is a {array.ndim}D stack (axes {axes})",
            path=path,
            fix="remove overwrite_image_reader_writer to read it as a 3D volume",
        )
    if array.ndim == 3:
        return array[None], volume_geometry(path, ending, image=image)
    raise DatasetError(
        f"{array.ndim}D TIFF (axes {axes})", path=path, fix="save one 2D image or one 3D stack per file, one file per channel"
    )


def _check_page_chain(path: Path, size: int) -> None:
    """Every page directory (IFD) must lie inside the file; tifffile drops the rest silently."""
    with open(path, "rb") as f:
        head = f.read(16)
        if head[:2] not in (b"II", b"MM") or len(head) < 8:
            raise cannot_read(path, "not a TIFF file")
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:
            count_fmt, offset_fmt, entry, offset = "H", "I", 12, struct.unpack(order + "I", head[4:8])[0]
        elif version == 43 and len(head) == 16:
            count_fmt, offset_fmt, entry, offset = "Q", "Q", 20, struct.unpack(order + "Q", head[8:16])[0]
        else:
            raise cannot_read(path, "not a TIFF file")
        count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise truncated(path, "its page chain loops")
            seen.add(offset)
            if offset + count_size > size:
                raise truncated(path, f"page {len(seen)} starts at byte {offset}, past the end of the {size}-byte file")
            f.seek(offset)
            n = struct.unpack(order + count_fmt, f.read(count_size))[0]
            next_at = offset + count_size + n * entry
            if next_at + offset_size > size:
                raise truncated(path, f"page {len(seen)} runs past the end of the {size}-byte file")
            f.seek(next_at)
            offset = struct.unpack(order + offset_fmt, f.read(offset_size))[0]


def sidecar(path: Path, ending: str, *, image: bool) -> Path:
    """The spacing file nnU-Net's Tiff3DIO reads: CASE.json for an image CASE_0000.tif (channel
    suffix dropped) and for a label map CASE.tif."""
    stem = path.name[: -len(ending)]
    if image and _CHANNEL_SUFFIX.search(stem):
        stem = stem[:-5]
    return path.with_name(stem + ".json")


def volume_geometry(path: Path, ending: str, *, image: bool) -> Geometry:
    expected = sidecar(path, ending, image=image)
    example = '{"spacing": [z, y, x]} (voxel size in array order: pages first)'
    if not expected.is_file():
        # A per-file name (CASE_0000.json) is a common mistake; nnU-Net would ignore it and use 1, 1, 1.
        misnamed = path.with_name(path.name[: -len(ending)] + ".json")
        hint = (
            f"rename {misnamed.name} to {expected.name}"
            if misnamed != expected and misnamed.is_file()
            else f"write {example} to {expected}"
        )
        raise DatasetError(f"3D TIFF without its spacing file {expected.name}", path=path, fix=hint)
    meta = load_strict(expected, fix=f"write {example}")
    spacing = meta.get("spacing") if isinstance(meta, dict) else None
    if not (
        isinstance(spacing, list)
        and len(spacing) == 3
        and all(isinstance(s, (int, float)) and not isinstance(s, bool) and np.isfinite(s) and s > 0 for s in spacing)
    ):
        raise DatasetError(f"'spacing' must list 3 positive numbers, got {spacing!r}", path=expected, fix=f"write {example}")
    return grid_geometry(tuple(float(s) for s in spacing))


def write(path: Path, ending: str, array: np.ndarray, geometry: Geometry) -> None:
    """2D: a greyscale TIFF. 3D: a page stack plus its spacing sidecar, sidecar moved in first, so
    a TIFF never appears without its spacing."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.int64:
        array = array.astype(np.int32)
    if (
        array.ndim not in (2, 3)
        or not is_grid_geometry(geometry)
        or (array.ndim == 2 and not is_grid_geometry(geometry, (1.0, 1.0)))
    ):
        raise ValueError(
            f"{path}: TIFF holds 2D images without geometry or 3D volumes with only a spacing; got {array.ndim}D with {geometry}"
        )
    if array.ndim == 2:
        with atomic_path(path) as tmp:
            _write_pages(tmp, array)
        return
    with atomic_path(path) as tmp_tif:
        _write_pages(tmp_tif, array)
        with atomic_path(sidecar(path, ending, image=False)) as tmp_json:
            tmp_json.write_text(json.dumps({"spacing": list(geometry.spacing)}) + "\n")


def _write_pages(path: Path, array: np.ndarray) -> None:
    # minisblack: without it tifffile tags a stack 3 or 4 voxels wide as RGB.
    tifffile.imwrite(path, np.ascontiguousarray(array), photometric="minisblack", compression="zlib")
