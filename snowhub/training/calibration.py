"""Channel pooling calibration: fixed per-channel statistics of the frozen source, measured before training."""

from __future__ import annotations

from collections.abc import Callable

import torch

from snowhub.data import iterate
from snowhub.errors import DataError
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource


@torch.no_grad()
def calibrate_channel_pooling(source: FrozenSource, delta: Delta, loader, device: torch.device,
                              max_images: int = 512, reduce: Callable[[list[torch.Tensor]], None] | None = None,
                              chunk: int | None = None) -> None:
    """Measure each tap's per-channel mean/std on up to `max_images` training images and store them in
    `delta`'s channel pooling modules (:meth:`ChannelPooling.calibrate`: mean and std ``(N_i,)`` per tap).

    `loader` yields ``(uint8 images (B, 3, S, S), labels (B,))``; whole batches are used, so slightly more
    than `max_images` may be measured. The source is frozen, so these are constants of (source, data); see
    :class:`ChannelPooling`.

    `chunk` (the low-memory path) runs the source on that many images of a batch at a time, so its
    activations for a whole batch are never alive at once; the sums are the same up to float rounding.

    `reduce` (a multi-process training) sums tensors in place over every rank: each rank measures its own
    shard (its `max_images` is its share), and the per-channel sums and the image count are summed before
    the statistics are formed, so every rank stores the same statistics.

    Raises:
        DataError: the loader yields no images, or an image cannot be read.
    """
    sums = sq = None
    n = 0
    for images, _ in iterate(loader):
        for part in images.split(chunk or len(images)):
            taps, _ = source(source.normalizer(part.to(device)))
            stats = [(t.float().mean(dim=(0, 2, 3)) * len(t), t.float().pow(2).mean(dim=(0, 2, 3)) * len(t))
                     for t in taps]
            del taps
            sums = [s for s, _ in stats] if sums is None else [a + s for a, (s, _) in zip(sums, stats)]
            sq = [q for _, q in stats] if sq is None else [a + q for a, (_, q) in zip(sq, stats)]
        n += len(images)
        if n >= max_images:
            break
    if reduce is not None:
        count = torch.tensor([float(n)], device=device)
        if sums is None:  # a rank with an empty shard still takes part in the sum
            sums = [torch.zeros(p.channels, device=device) for p in delta.pools]
            sq = [torch.zeros(p.channels, device=device) for p in delta.pools]
        reduce([*sums, *sq, count])
        n = int(count.item())
    if n == 0:
        raise DataError("there are no training images to measure the source's channel statistics on")
    for pool, s, q in zip(delta.pools, sums, sq):
        mean = s / n
        pool.calibrate(mean.cpu(), (q / n - mean.pow(2)).clamp_min(0).sqrt().cpu())
