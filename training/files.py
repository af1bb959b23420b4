"""Reading training files as the runtime reads them.

A network learns the pixel values it is shown; the runtime's command line
(``unet-rt segment``) later shows it the values *it* reads from the same
kind of file. Where tifffile or Pillow read a file otherwise, the network
was trained on other values than it is used on, without a word:

- a MinIsWhite TIFF (0 is white) is read by tifffile as stored and by the
  runtime as displayed (inverted): a model trained on such files found
  nothing in them on the command line (IoU 0.005 against 0.915). Images
  are read as displayed here too; labels as stored (their values are ids,
  and ImageJ saves its binary masks so);
- a 16-bit colour or grey+alpha PNG is read by Pillow as 8 bits (a file
  of 1564 grey levels trained as 8), by the runtime in 16: refused, with
  the advice to save it as TIFF;
- a palette (indexed) PNG image is read by Pillow as its indices, by the
  runtime as the palette's colours (RGB): images are read as RGB here, and
  label files keep their indices (a class mask saved with a palette);
- a 1-bit PNG is read by Pillow as 0/1, by the runtime as 0/255 (as libpng
  expands it).

A file that cannot be read raises ``ValueError`` naming it (an empty or
cut-short TIFF said "not a TIFF file: header=b''" and no name).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_labels"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")

PathLike = Union[str, os.PathLike]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR): grey, RGB, palette, grey+alpha, RGBA.
_PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
_TIFF_MIN_IS_WHITE = 0


class _Refused(ValueError):
    """A file refused here, its message naming it (the readers' own errors,
    tifffile's among them a ``ValueError``, are said with the file's name)."""


def read_image(path: PathLike) -> np.ndarray:
    """The pixels of an image file (TIFF or PNG) as the runtime's command
    line reads them: ``(H, W)`` or ``(H, W, C)`` (TIFF pages stacked as
    tifffile reads them), dtype kept.

    >>> import tempfile, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "inverted.tif"
    >>> tifffile.imwrite(path, np.array([[0, 200]], np.uint8), photometric="miniswhite")
    >>> read_image(path).tolist()  # as displayed: 0 is white
    [[255, 55]]
    """
    return _read(Path(path), labels=False)


def read_labels(path: PathLike) -> np.ndarray:
    """The values of a label file (TIFF or PNG) as stored: ids, not
    brightness (a palette PNG's indices, a MinIsWhite TIFF's stored values)."""
    return _read(Path(path), labels=True)


def _read(path: Path, labels: bool) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise _Refused(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.is_file():
        raise _Refused(f"{path.absolute()}: no such file" if not path.exists() else f"{path.absolute()}: not a file")
    try:
        if suffix == ".png":
            return _read_png(path, labels)
        return _read_tiff(path, labels)
    except _Refused:
        raise
    except Exception as e:  # noqa: BLE001 - the readers' own errors, said with the file's name
        raise ValueError(f"{path}: cannot be read as {'PNG' if suffix == '.png' else 'TIFF'} "
                         f"({type(e).__name__}: {e})") from None


def _read_tiff(path: Path, labels: bool) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        array = np.asarray(tif.asarray())
        page = tif.pages[0]
        min_is_white = int(page.photometric) == _TIFF_MIN_IS_WHITE
        bits = int(page.bitspersample)
    if not min_is_white or labels:
        return array
    return _as_displayed(array, bits)


def _as_displayed(array: np.ndarray, bits: int) -> np.ndarray:
    """A MinIsWhite page's stored values as displayed, by the runtime's
    TIFF decoder's rule: unsigned samples of ``bits`` become
    ``2**bits - 1 - value``, floats ``1 - value`` (the decoder takes them to
    run from 0 to 1), signed integers stay as stored."""
    if array.dtype == np.bool_:
        return ~array
    if array.dtype.kind == "u":
        top = (1 << bits) - 1 if bits < 8 * array.dtype.itemsize else np.iinfo(array.dtype).max
        return (array.dtype.type(top) - array).astype(array.dtype)
    if array.dtype.kind == "f":
        return (array.dtype.type(1) - array).astype(array.dtype)
    return array


def _read_png(path: Path, labels: bool) -> np.ndarray:
    from PIL import Image

    with open(path, "rb") as f:
        header = f.read(33)
    if len(header) < 33 or not header.startswith(_PNG_SIGNATURE) or header[12:16] != b"IHDR":
        raise _Refused(f"{path}: not a PNG file (its first bytes are not a PNG signature and header)")
    depth, colour = struct.unpack(">BB", header[24:26])
    if depth == 16 and colour in (2, 4, 6):
        raise _Refused(
            f"{path}: a 16-bit {_PNG_COLOUR_TYPES[colour]} PNG, which Pillow (the training's reader) reads as 8 bits "
            "where the runtime reads 16: save it as TIFF (tifffile.imwrite(new, image))"
        )
    with Image.open(path) as im:
        if im.mode == "P" and not labels:
            # The runtime reads a palette's colours (its transparency dropped).
            return np.asarray(im.convert("RGB"))
        array = np.asarray(im)
    if array.dtype == np.bool_ and not labels:
        # 1-bit: the runtime reads white as 255, as libpng expands it.
        return array.astype(np.uint8) * np.uint8(255)
    return array
