"""Read image files as 8-bit RGB, and a Dataset over (path, label) lists."""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError

from snowhub.errors import DataError, ImageBudgetError
from snowhub.faults import crash_point

# Pillow's 16/32-bit integer single-channel modes.
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

# The only decoders snowhub lets Pillow use. Pillow picks a decoder from the file's *content*, not its
# name, and some of its plugins run other programs (EPS runs Ghostscript on the file): a "cat.png" that is
# really PostScript must be refused, not executed.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "PPM", "TIFF", "WEBP", "TGA", "ICO")  # JPEG covers MPO


def load_rgb(path: Path | str) -> Image.Image:
    """Open ``path``, decode it completely and return an 8-bit ``"RGB"`` PIL image (H x W x 3 uint8).

    * Grey (``L``, ``1``), palette (``P``, transparency dropped), ``RGBA``/``LA`` (alpha dropped, no
      compositing -- the same pixels torchvision's loader gives) and ``CMYK`` go through Pillow's
      ``convert("RGB")``.
    * 16-bit grey (``I;16*``) is scaled to 8 bits by ``>> 8``; ``I`` (32-bit int, which older Pillow
      versions give for 16-bit PNGs) is clipped to 0..65535 and scaled the same way. A plain ``convert``
      would clip everything above 255 to white instead.
    * Animated GIF/WebP and multi-page TIFF: the first frame.
    * The EXIF orientation tag is applied, so camera photos come out upright.

    Only the formats in :data:`FORMATS` are decoded, whatever the file is called. Truncated files are an
    error (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off on purpose: a half-grey image would silently
    train the model on garbage), and so are images above Pillow's decompression-bomb threshold
    (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels), which Pillow itself would only warn about.

    Raises:
        DataError: ``cannot read image <path>: <reason>`` for a missing, zero-byte, truncated, huge or
            non-image file, one in another format, or one in a mode that cannot be converted.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                im.seek(0)  # first frame of animations / multi-page files
                im.load()
                image = _to_rgb8(_upright(im))
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError ...
        raise DataError(f"cannot read image {path}: {_reason(path, exc)}; replace or delete the file") from None
    crash_point("load-image")
    return image


def load_rgb_bytes(data: bytes, name: str, max_pixels: int | None = None, min_side: int | None = None) -> Image.Image:
    """:func:`load_rgb` for an image held in memory (an upload): the same decoders, conversions and checks.

    With `max_pixels`, nothing larger is ever decoded (see :func:`image_header`): the same pixels as
    :func:`load_rgb` when the image is within budget, a JPEG over it at a reduced scale, anything else refused.

    Raises:
        DataError: ``cannot read image <name>: <reason>`` for zero bytes, a truncated or huge image, or data
            that is not an image in one of :data:`FORMATS`. ImageBudgetError: over `max_pixels`.
    """
    with _opened(data, name) as im:
        if max_pixels is not None:
            _fit(im, name, max_pixels, min_side)
        im.load()
        return _to_rgb8(_upright(im))


def image_header(data: bytes, name: str, max_pixels: int, min_side: int | None = None) -> tuple[int, int]:
    """The ``(width, height)`` in pixels that :func:`load_rgb_bytes` would decode `data` to, read from the
    file's header alone (nothing is decoded).

    An image of at most `max_pixels` pixels is decoded whole. A JPEG over it is decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling through ``Image.draft``): the smallest scale that keeps both sides at least
    `min_side` px (the resize the image goes to next), if that brings it within `max_pixels`. Anything else
    over `max_pixels` is refused before a pixel is decoded.

    Raises:
        DataError: not an image (as :func:`load_rgb_bytes`). ImageBudgetError: over `max_pixels`.
    """
    with _opened(data, name) as im:
        return _fit(im, name, max_pixels, min_side)


@contextmanager
def _opened(data: bytes, name: str) -> Iterator[Image.Image]:
    """`data` opened as an image (first frame, nothing decoded yet); anything that goes wrong while the caller
    reads it, except a budget refusal, becomes ``DataError("cannot read image <name>: <reason>")`` as in
    :func:`load_rgb`."""
    if not data:
        raise DataError(f"cannot read image {name}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                im.seek(0)
                yield im
    except ImageBudgetError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image {name}: {_reason('', exc)}") from None


def _fit(im: Image.Image, name: str, max_pixels: int, min_side: int | None) -> tuple[int, int]:
    """Bring the opened, not yet decoded `im` within `max_pixels` by reduced decoding, or refuse it."""
    width, height = im.size
    if width * height > max_pixels and min_side is not None and im.format == "JPEG":
        im.draft(im.mode, (min_side, min_side))  # the largest DCT scale-down keeping both sides >= min_side
    if im.size[0] * im.size[1] > max_pixels:
        raise ImageBudgetError(f"image {name} is {width}x{height} = {width * height:,} pixels, over the limit of "
                               f"{max_pixels:,} decoded pixels per image (`max_image_pixels`); send it smaller")
    return im.size


def _reason(path: Path | str, exc: Exception) -> str:
    """A short, one-line reason that does not repeat the path."""
    if isinstance(exc, UnidentifiedImageError):
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
        return "file is empty (0 bytes)" if empty else f"not an image in a supported format ({', '.join(FORMATS)})"
    if isinstance(exc, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        return f"image is too large ({pixels.group(1) if pixels else 'over'} pixels, the limit is {Image.MAX_IMAGE_PIXELS})"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return exc.strerror  # e.g. "No such file or directory"
    return " ".join(str(exc).split()) or type(exc).__name__


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # A broken EXIF block should not make otherwise good pixels unreadable.
        return im


def _to_rgb8(im: Image.Image) -> Image.Image:
    if im.mode in _WIDE_GREY_MODES:
        arr = np.asarray(im)
        if im.mode == "I":
            arr = np.clip(arr, 0, 65535)
        grey = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        # Going through RGBA avoids Pillow's warning about byte-expressed palette transparency.
        im = im.convert("RGBA")
    return im.convert("RGB")


class ImageListDataset(torch.utils.data.Dataset):
    """A map-style Dataset over ``(image path, label)`` pairs.

    ``dataset[i]`` is ``(transform(load_rgb(path)), label)``; with ``transform=None`` the first element
    is the RGB PIL image. With the transforms in :mod:`snowhub.data.transforms` it is a ``(3, H, W)``
    uint8 tensor. Unreadable images raise :class:`snowhub.errors.DataError` when they are fetched.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable[[Image.Image], Any] | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, label
