"""Batch loading: seeded DataLoaders of uint8 image batches, and iteration that keeps DataError one line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from snowhub.data.images import ImageListDataset
from snowhub.errors import DataError


def make_loader(samples: Sequence[tuple[Path, int]], transform, batch_size: int, *, shuffle: bool,
                seed: int, num_workers: int, device: torch.device, drop_last: bool = False,
                persistent_workers: bool | None = None) -> DataLoader:
    """A DataLoader of ``(uint8 images (B, 3, S, S), labels (B,))``, seeded for reproducible order.

    Args:
        samples: ``(image path, class index)`` pairs.
        transform: RGB PIL image → uint8 ``(3, S, S)`` (:func:`snowhub.data.eval_transform` or
            :func:`snowhub.data.train_transform`).
        batch_size: images per batch. shuffle: reshuffle every epoch, from `seed`.
        num_workers: worker processes (0 = in this process). device: pins host memory when it is CUDA.
        drop_last: drop a final partial batch when there is at least one full one (training: a batch of
            one image cannot be batch-normalised).
        persistent_workers: keep the worker processes between passes (default: whenever there are
            workers). Otherwise every epoch and every validation pass starts them again, inside the timed
            training; pass False for a loader read once (its workers would idle until it is dropped).

    With workers, the order and augmentation are seeded and reproducible; persistent workers draw their
    next epoch's random numbers on from where the last epoch stopped (a re-started worker is seeded anew),
    so from the second epoch on the batches differ from those of non-persistent workers.

    Images are read lazily: an unreadable one raises DataError while iterating (see :func:`iterate`).
    """
    generator = torch.Generator().manual_seed(seed)
    persistent = num_workers > 0 if persistent_workers is None else persistent_workers and num_workers > 0
    return DataLoader(
        ImageListDataset(list(samples), transform), batch_size=batch_size, shuffle=shuffle,
        num_workers=num_workers, generator=generator, pin_memory=device.type == "cuda",
        persistent_workers=persistent, drop_last=drop_last and len(samples) > batch_size,
    )


def iterate(loader: Iterable) -> Iterator:
    """Iterate `loader`, turning a DataError raised inside a worker process back into its one-line message.

    Raises:
        DataError: an image cannot be read (the worker's message, without its traceback).
    """
    try:
        yield from loader
    except DataError as exc:
        message = str(exc)
        if "Original Traceback" in message:  # re-raised by DataLoader with the worker's traceback inside
            last = message.strip().splitlines()[-1]
            message = last.split("DataError: ", 1)[-1]
        raise DataError(message) from None
