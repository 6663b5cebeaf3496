"""Encoded images to uint8 batches within pixel budgets: per image, per request, and server-wide.

Before a pixel is decoded, every image's header is read (:func:`snowhub.data.images.image_header`): an image
over ``--max-image-pixels`` is refused (413) unless it is a JPEG that libjpeg can decode at 1/2, 1/4 or 1/8
scale to within it, still at least the size it is resized to next; a request whose images add up to more than
``--max-request-pixels`` is refused (413). The images are then decoded **one at a time**, each resized and
cropped to every image size the request needs before the next is decoded, and each decode first takes its
pixels from a server-wide :class:`PixelPool` of ``--max-request-pixels``: however many requests arrive at
once, no more than that many decoded pixels exist in the server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from snowhub.data.images import image_header, load_rgb_bytes
from snowhub.serving.http._errors import ServeError
from snowhub.serving.http.config import ServeConfig
from snowhub.serving.preprocessing import to_batch


class PixelPool:
    """Decoded pixels in flight in the whole server, at most `capacity`; a decode waits for its share."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` (capped at the capacity) of the pool for the block, waiting until they are free."""
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self._used + pixels <= self.capacity)
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()


def _check_bytes(files: Sequence[tuple[str, bytes]], config: ServeConfig) -> None:
    for name, data in files:
        if len(data) > config.max_image_bytes:
            raise ServeError(413, f"image {name} is {len(data)} bytes, over the limit of {config.max_image_bytes} "
                                  "bytes (--max-image-bytes)")


def decode_batches(files: Sequence[tuple[str, bytes]], sizes: Sequence[int], resize_ratio: float,
                   config: ServeConfig, pool: PixelPool) -> list[torch.Tensor]:
    """Each size's uint8 batch ``(n, 3, S, S)`` of the encoded images `files` (name, bytes), in `sizes` order:
    the images as ``snowhub predict`` reads, resizes and crops them (JPEGs over the per-image budget excepted).

    Raises:
        ServeError: 413 over ``--max-image-bytes`` or ``--max-request-pixels``.
        DataError: 400 for an image that does not decode; ImageBudgetError (413) over ``--max-image-pixels``.
    """
    _check_bytes(files, config)
    min_side = max(round(s * resize_ratio) for s in sizes)
    dims = [image_header(data, name, config.max_image_pixels, min_side) for name, data in files]
    total = sum(w * h for w, h in dims)
    if total > config.max_request_pixels:
        raise ServeError(413, f"the request's {len(files)} images decode to {total:,} pixels, over the limit of "
                              f"{config.max_request_pixels:,} per request (--max-request-pixels); split the request "
                              "or send smaller images")
    crops: list[list[np.ndarray]] = [[] for _ in sizes]
    for (name, data), (w, h) in zip(files, dims):
        with pool.hold(w * h):
            picture = load_rgb_bytes(data, name, config.max_image_pixels, min_side)
            for out, size in zip(crops, sizes):
                out.append(to_batch([picture], size, resize_ratio).numpy())
            del picture
    return [torch.from_numpy(np.concatenate(out)) for out in crops]
