"""An opt-in cache of the frozen source's taps for training without random augmentation (issue 15).

The source is frozen (SNOW, section 3.1), so for an unaugmented image its taps are the same in every
epoch. :func:`build_feature_cache` computes them once, before the first epoch, and writes them to
memory-mapped ``.npy`` files (float16) in a directory the caller owns (the hub's ``staging/``); every
epoch then trains the delta on batches read back from those files, without running the source. A training
step becomes the delta's forward and backward alone.

What it costs, and why it is opt-in:

* **no augmentation**: each training image is seen through the serving view (``eval_transform``: resize,
  centre crop), never a random crop or flip, which generalises less well on small data;
* **float16 taps**: the delta trains on the taps rounded to float16 (relative error ≤ 2⁻¹¹) and is served on
  the float32 source, so the result differs slightly from an uncached training on the same views;
* **disk**: ``images × (3·S² + 2·Σ_taps C·h·w)`` bytes (ResNet-50 at 224 px: 4.6 MiB per image; EfficientNet-
  Lite0 at 64 px: 66 KiB). It is checked against a limit and the free space before anything is written.

The files are written sequentially with ordinary writes (a full disk is an ``OSError``, not a crash of a
memory-mapped page) and deleted when the cache is closed, whether training succeeded or not; a killed
process leaves them in ``staging/``, whose leftovers the next command that opens the hub removes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from snowhub.data import iterate, make_loader
from snowhub.errors import ConfigError, DataError
from snowhub.faults import crash_point
from snowhub.models.frozen import FrozenSource
from snowhub.progress import Progress

_GIB = 1 << 30
_HEADROOM = 256 << 20  # leave this much disk free besides the cache: the task's own files come next


class FeatureCache:
    """The uint8 images and float16 source taps of every training image, memory-mapped (read-only).

    Use :func:`build_feature_cache` to make one; close it (or use it as a context manager) to delete its files.

    Attributes:
        images: ``(N, 3, S, S)`` uint8, the unaugmented training images (the delta's stem reads them).
        taps: per tap, ``(N, C_i, h_i, w_i)`` float16.
        labels: ``(N,)`` int64 class indices.
        paths: the files, deleted by :meth:`close`.
        nbytes: their total size, bytes.
    """

    def __init__(self, images: np.ndarray, taps: list[np.ndarray], labels: torch.Tensor, paths: list[Path]):
        self.images, self.taps, self.labels, self.paths = images, taps, labels, paths
        self.nbytes = sum(p.stat().st_size for p in paths)

    def __len__(self) -> int:
        return len(self.labels)

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Delete the cache's files (idempotent); the arrays must not be used afterwards."""
        self.images, self.taps = np.empty((0,), np.uint8), []
        for path in self.paths:
            path.unlink(missing_ok=True)

    def steps(self, batch_size: int) -> int:
        """Batches per epoch of :meth:`batches` (the last partial batch dropped, as the trainer does)."""
        return len(self) // batch_size if len(self) > batch_size else 1

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch in a random order drawn from `generator`: ``(indices (B,), labels (B,))`` per batch.

        Pass the indices to :meth:`read`. Each batch's indices are sorted (the files are read in order;
        a batch's loss and gradients do not depend on the order of its images).
        """
        order = torch.randperm(len(self), generator=generator)
        for i in range(self.steps(batch_size)):
            idx = order[i * batch_size:(i + 1) * batch_size].sort().values
            yield idx, self.labels[idx]

    def read(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """uint8 images ``(B, 3, S, S)`` and float32 taps ``(B, C_i, h_i, w_i)`` of the cached images `idx`
        ``(B,)``, on `device` (float16 over the bus, widened there)."""
        rows = idx.numpy()
        images = torch.from_numpy(self.images[rows]).to(device, non_blocking=True)
        taps = [torch.from_numpy(t[rows]).to(device, non_blocking=True).float() for t in self.taps]
        return images, taps


def _write_header(f, shape: tuple[int, ...], dtype: np.dtype) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})


@torch.no_grad()
def build_feature_cache(source: FrozenSource, samples: Sequence[tuple[Path, int]], transform, batch_size: int,
                        directory: Path, limit_bytes: int, device: torch.device, num_workers: int,
                        progress: Progress) -> FeatureCache:
    """Run the source once over `samples` (through `transform`, no randomness) and cache what a delta reads.

    Args:
        source: the frozen source, on `device`.
        samples: ``(image path, class index)`` pairs, cached in this order.
        transform: RGB PIL image → uint8 ``(3, S, S)``; a deterministic one (``eval_transform``).
        batch_size: images per source forward.
        directory: where the files go (it must exist); the caller removes leftovers of a killed process.
        limit_bytes: refuse to cache more than this many bytes.
        device: where the source runs. num_workers: DataLoader workers. progress: one phase, steps = batches.

    Returns:
        the :class:`FeatureCache`, its files complete and memory-mapped.

    Raises:
        ConfigError: the cache would exceed `limit_bytes`, or the free space of `directory`.
        DataError: there are no samples, or an image cannot be read.
        OSError: a write failed (disk full, permissions); the files written so far are deleted.
    """
    if not samples:
        raise DataError("there are no training images to cache")
    n = len(samples)
    loader = make_loader(samples, transform, batch_size, shuffle=False, seed=0, num_workers=num_workers,
                         device=device, persistent_workers=False)
    prefix = directory / f"features-{os.urandom(6).hex()}"
    paths: list[Path] = []
    files: list = []
    labels = torch.empty(n, dtype=torch.int64)
    written = 0
    progress.start("caching source features", len(loader))
    try:
        for images, batch_labels in iterate(loader):
            taps, _ = source(source.normalizer(images.to(device)))
            arrays = [images.numpy()] + [t.to(torch.float16).cpu().numpy() for t in taps]
            if not files:  # the first batch tells the shapes: check the size, then open the files
                _check_size(n, arrays, limit_bytes, directory)
                _open_files(prefix, n, arrays, paths, files)
            for f, a in zip(files, arrays):
                f.write(np.ascontiguousarray(a).data)
            labels[written:written + len(batch_labels)] = batch_labels
            written += len(batch_labels)
            progress.advance(1)
            crash_point("train-step")  # a caching step counts as a step
        for f in files:
            f.flush()
            f.close()
        arrays = [np.load(p, mmap_mode="r") for p in paths]
    except BaseException:
        for f in files:
            f.close()
        for p in paths:
            p.unlink(missing_ok=True)
        raise
    finally:
        progress.finish()
    return FeatureCache(arrays[0], arrays[1:], labels, paths)


def _open_files(prefix: Path, n: int, first: list[np.ndarray], paths: list[Path], files: list) -> None:
    """Create the ``.npy`` file of the images and of each tap for `n` rows shaped like `first`'s, appending each
    to `paths` and `files` as soon as it exists (so a failure part-way deletes what was created)."""
    for i, a in enumerate(first):
        paths.append(Path(f"{prefix}.{'images' if i == 0 else f'tap{i - 1}'}.npy"))
        files.append(open(paths[-1], "xb"))
        _write_header(files[-1], (n, *a.shape[1:]), a.dtype)


def _check_size(n: int, first: list[np.ndarray], limit_bytes: int, directory: Path) -> None:
    per_image = sum(a[0].nbytes for a in first)
    total = n * per_image
    free = shutil.disk_usage(directory).free
    what = f"the feature cache needs {total / _GIB:.2f} GiB ({n:,} images × {per_image / 1024:,.0f} KiB)"
    if total > limit_bytes:
        raise ConfigError(f"{what}, over `cache_limit_gib` {limit_bytes / _GIB:g} GiB: raise the limit or train "
                          "without `feature_cache`")
    if total + _HEADROOM > free:
        raise ConfigError(f"{what}, but {directory} has only {free / _GIB:.2f} GiB free: free some disk space "
                          "or train without `feature_cache`")
