"""How many images a request may hold: checked before anything of it is decoded or queued.

Decoding lives in :mod:`snowhub.serving.http._decoding` (pixel budgets), OIP tensors in
:mod:`snowhub.serving.http._oip` and :mod:`snowhub.serving.http._body`.
"""

from __future__ import annotations

from snowhub.serving.http._errors import ServeError
from snowhub.serving.http.config import ServeConfig


def check_count(n: int, config: ServeConfig) -> None:
    """Raise 400 for no image, 413 for more than ``--max-images``."""
    if n == 0:
        raise ServeError(400, "the request holds no image; send at least one")
    if n > config.max_images:
        raise ServeError(413, f"{n} images in one request, the limit is {config.max_images} (--max-images); "
                              "split the request")
