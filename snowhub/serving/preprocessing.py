"""From decoded pictures to the uint8 batches every runtime takes, the one way both ``predict`` and the HTTP
server do it: each task's eval transform (resize the shorter side, centre crop), tasks grouped by image size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

import numpy as np
import torch
from PIL import Image

from snowhub.data import eval_resize_crop


class _Sized(Protocol):
    image_size: int


T = TypeVar("T", bound=_Sized)


def group_by_size(tasks: Iterable[T]) -> dict[int, list[T]]:
    """`tasks` grouped by the image size (px) they are served at, smallest size first, each group in the
    given order: one source pass per group (SNOW, section 3.2)."""
    groups: dict[int, list[T]] = defaultdict(list)
    for task in tasks:
        groups[task.image_size].append(task)
    return dict(sorted(groups.items()))


def to_batch(pictures: Sequence[Image.Image], size: int, resize_ratio: float) -> torch.Tensor:
    """uint8 ``(n, 3, size, size)``: each RGB picture through the eval transform at `size` px, bit-identical to
    :func:`~snowhub.data.eval_transform` (``tests/test_serve.py`` compares them).

    Built with PIL and NumPy only, and handed over without a copy: the server runs this in worker threads,
    where a torch operation large enough to go parallel (a 224 px image is) starts a second OpenMP thread
    team; while it lived the batcher's forward passes ran ~3x slower on 2 cores.

    Raises:
        ConfigError: `size` is not a positive integer, or `resize_ratio` is below 1.
    """
    crop = eval_resize_crop(size, resize_ratio)
    pixels = np.stack([np.asarray(crop(p), dtype=np.uint8) for p in pictures])  # (n, size, size, 3)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
