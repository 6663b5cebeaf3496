"""Requests to tensors: uploads and OIP ``BYTES`` decoded like ``snowhub predict``, ``UINT8`` tensors checked.

Every check runs before a request is queued, so a bad request is refused alone (400, or 413 for too much)
and never reaches a batch.
"""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np
import torch
from PIL import Image

from snowhub.data import load_rgb_bytes
from snowhub.serving.http._errors import ServeError
from snowhub.serving.http.config import ServeConfig


def check_count(n: int, config: ServeConfig) -> None:
    """Raise 400 for no image, 413 for more than ``--max-images``."""
    if n == 0:
        raise ServeError(400, "the request holds no image; send at least one")
    if n > config.max_images:
        raise ServeError(413, f"{n} images in one request, the limit is {config.max_images} (--max-images); "
                              "split the request")


def decode(data: bytes, name: str, config: ServeConfig) -> Image.Image:
    """One encoded image (an upload, an OIP ``BYTES`` element) as RGB, exactly as ``snowhub predict`` reads files.

    Raises:
        ServeError: 413 over ``--max-image-bytes``; 400 for zero bytes, a truncated file or not an image.
    """
    if len(data) > config.max_image_bytes:
        raise ServeError(413, f"image {name} is {len(data)} bytes, over the limit of {config.max_image_bytes} "
                              "bytes (--max-image-bytes)")
    return load_rgb_bytes(data, name)  # DataError → 400


def base64_images(data: object, shape: object, config: ServeConfig) -> list[bytes]:
    """The encoded images of an OIP ``BYTES`` input (shape ``[B]`` or ``[B, 1]``, base64 strings)."""
    if not isinstance(data, list) or not all(isinstance(d, str) for d in _flat(data)):
        raise ServeError(400, "a BYTES input's data must be a list of base64-encoded image files")
    flat = list(_flat(data))
    if not isinstance(shape, list) or not shape or math.prod(shape) != len(flat) \
            or (len(shape) == 2 and shape[1] != 1) or len(shape) > 2:
        raise ServeError(400, f"a BYTES input's shape must be [B] or [B, 1] with B = {len(flat)} data elements, "
                              f"got {shape}")
    check_count(len(flat), config)
    out = []
    for i, text in enumerate(flat):
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ServeError(400, f"BYTES element {i} is not valid base64") from None
    return out


def uint8_tensor(data: object, shape: object, size: int, config: ServeConfig) -> torch.Tensor:
    """An OIP ``UINT8`` input as uint8 ``(B, 3, size, size)`` (data flat in row-major order, or nested).

    Raises:
        ServeError: 400 for a shape that is not ``[B, 3, size, size]``, data that does not fill it or holds
            values outside 0..255; 413 for more than ``--max-images`` images.
    """
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ServeError(400, f"a UINT8 input's shape must be [B, 3, {size}, {size}], got {shape}")
    check_count(shape[0], config)
    if shape[1:] != [3, size, size]:
        raise ServeError(400, f"this task takes images of shape [B, 3, {size}, {size}] (RGB, {size} px), got {shape}")
    try:
        array = np.asarray(data)
    except ValueError:  # ragged nesting
        raise ServeError(400, "a UINT8 input's data must be a flat (or regularly nested) list of integers") from None
    if array.size != math.prod(shape):
        raise ServeError(400, f"shape {shape} needs {math.prod(shape)} values, the data holds {array.size}")
    if array.dtype.kind not in "iu":
        raise ServeError(400, f"a UINT8 input's data must be integers 0..255, got {array.dtype.name} values")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ServeError(400, "a UINT8 input's data must be integers 0..255")
    return torch.from_numpy(array.astype(np.uint8).reshape(shape))


def _flat(data):
    for d in data:
        if isinstance(d, list):
            yield from _flat(d)
        else:
            yield d
