"""2D natural images (.png, .bmp, .jpg/.jpeg) through Pillow, with nnU-Net's NaturalImage2DIO meaning.

One file holds all its colour components: greyscale is 1 channel, grey+alpha 2, RGB 3, RGBA 4, and
dataset.json's channel_names lists them ({"0": "R", "1": "G", "2": "B"} for one CASE_0000.png).
There is no spacing in these formats as nnU-Net reads them: spacing (1, 1), origin (0, 0), identity.

Palette ("P") files: as an image, the palette colours are the data (RGB or RGBA, as nnU-Net's
reader gives); as a label map, the palette indices are the classes (nnU-Net would read the colours
and get a 3-channel label map). Files Pillow cannot decode completely are refused: Pillow raises for
truncated PNG/JPEG/BMP data, and a PNG is first verified chunk by chunk (CRCs, end chunk present).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from voxseg.data.io.geometry import Geometry, grid_geometry, is_grid_geometry
from voxseg.data.io.integrity import cannot_read, truncated
from voxseg.errors import DatasetError
from voxseg.io_utils import atomic_path

NATURAL_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg")
NATURAL_GEOMETRY: Geometry = grid_geometry((1.0, 1.0))
_ONE_BAND = ("1", "L", "P", "I", "F")
_BANDS = {"LA": 2, "RGB": 3, "RGBA": 4}
_EXIF_ORIENTATION = 0x0112


def read(path: Path, *, palette_indices: bool) -> tuple[np.ndarray, Geometry]:
    """(C, y, x) array; `palette_indices` keeps a palette file's indices (label maps)."""
    try:
        if path.name.lower().endswith(".png"):
            with Image.open(path) as image:
                image.verify()  # every chunk's CRC, and the end chunk; load() checks neither
        with Image.open(path) as image:
            _refuse_ambiguous(path, image)
            if image.mode in ("P", "PA") and not palette_indices:
                image = image.convert("RGBA" if _palette_has_alpha(image) else "RGB")
            image.load()
            array = np.array(image)  # a writable copy, like every other reader's
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise cannot_read(path, "not an image Pillow knows") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(
            f"too large for Pillow's decompression-bomb guard ({e})", path=path, fix="split it into tiles or store it as TIFF"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise truncated(path, str(e)) from None
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    return (array[None] if array.ndim == 2 else np.ascontiguousarray(np.moveaxis(array, -1, 0))), NATURAL_GEOMETRY


def _refuse_ambiguous(path: Path, image: Image.Image) -> None:
    """Files whose pixels nnU-Net would read in a way nobody means."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise DatasetError(f"image has {frames} frames", path=path, fix="save one frame per file")
    mode = image.mode
    if mode not in _ONE_BAND and mode not in _BANDS and mode != "PA" and not mode.startswith("I;16"):
        raise DatasetError(
            f"colour mode {mode} is not supported",
            path=path,
            fix="convert it to greyscale or RGB (e.g. PIL Image.convert('RGB')) and save as PNG",
        )
    orientation = image.getexif().get(_EXIF_ORIENTATION)
    if orientation not in (None, 0, 1):
        # Viewers show the image rotated/flipped; nnU-Net and voxseg read the stored pixels, so a
        # label drawn on the displayed image would not line up.
        raise DatasetError(
            f"EXIF orientation {orientation}: viewers show this image rotated or flipped",
            path=path,
            fix="apply the rotation to the pixels (PIL ImageOps.exif_transpose) and save without the tag",
        )


def _palette_has_alpha(image: Image.Image) -> bool:
    return image.mode == "PA" or "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")


def write(path: Path, ending: str, array: np.ndarray, geometry: Geometry) -> None:
    """Write a 2D label map as 8-bit (16-bit PNG when values need it) greyscale, atomically."""
    if ending in (".jpg", ".jpeg"):
        raise ValueError(f"{path}: JPEG is lossy and cannot hold label maps; write .png (see label_file_ending)")
    if array.ndim != 2 or not is_grid_geometry(geometry, (1.0, 1.0)):
        raise ValueError(
            f"{path}: {ending} holds 2D images without spacing, origin or rotation; got {array.ndim}D with {geometry}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{path}: {ending} label maps need integer values, got {array.dtype}")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    limit = 65535 if ending == ".png" else 255
    if low < 0 or high > limit:
        raise ValueError(f"{path}: values {low}..{high} do not fit {ending} (0..{limit})")
    pixels = array.astype(np.uint8 if high <= 255 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG" if ending == ".png" else "BMP")
