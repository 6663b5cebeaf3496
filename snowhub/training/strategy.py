"""How many processes train: the strategy object :func:`snowhub.training.run_epochs` runs through.

As PyTorch Lightning's ``Strategy`` and Accelerate's ``Accelerator`` keep "how many processes" out of the
training loop, the loop here asks its strategy for the loaders, the wrapped model, the end of an epoch and
the evaluation, and never asks how many processes there are:

- :class:`SingleProcess`: this process alone (``snowhub add-task``, the benchmarks);
- :class:`snowhub.training._distributed.ProcessGroup`: one rank of a DistributedDataParallel training
  (``--nproc-per-node``, ``torchrun``), from :func:`snowhub.training.join_process_group`.

Both have the methods of :class:`TrainingStrategy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from torch import nn

from snowhub.data import make_loader
from snowhub.errors import ConfigError
from snowhub.evaluation import EvalResult, evaluate_forward
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.progress import Progress
from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training.config import TrainConfig

Samples = Sequence[tuple[Path, int]]
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpochLosses:
    """One epoch's training losses.

    Attributes:
        steps: each step's mean cross-entropy over its batch, nats (after :meth:`TrainingStrategy.end_epoch`:
            over the global batch).
        loss_sum: the sum of every image's cross-entropy, nats. images: how many images.
    """

    steps: list[float] = field(default_factory=list)
    loss_sum: float = 0.0
    images: int = 0

    def add(self, loss: float, images: int) -> None:
        """Count a step of `images` images whose mean cross-entropy was `loss` nats."""
        self.loss_sum += loss * images
        self.images += images
        self.steps.append(loss)

    @property
    def mean(self) -> float:
        """The epoch's mean cross-entropy per image, nats (0 without images)."""
        return self.loss_sum / max(1, self.images)


class PoolingNoiseSource(Protocol):
    """Where the channel pooling noise ``N(0, σ²)`` of each step comes from (SNOW section 2.2, Algorithm 1)."""

    def reseed(self, step: int) -> None:
        """Prepare the noise of global step `step` (0-based)."""

    def detach(self) -> None:
        """Give the channel pooling layers back torch's global RNG."""


class GlobalRngNoise:
    """One process's channel pooling noise: torch's global RNG (seeded by :func:`seed_everything`), nothing to do."""

    def reseed(self, step: int) -> None:
        pass

    def detach(self) -> None:
        pass


class TrainingStrategy(Protocol):
    """How many processes train, behind one interface (:class:`SingleProcess`, ``ProcessGroup``).

    Attributes:
        world_size: the number of processes training together. device: this process's device.
    """

    world_size: int
    device: torch.device

    @property
    def writes(self) -> bool:
        """Whether this process shows progress and writes to the hub (one process, or rank 0)."""

    def check(self, config: TrainConfig, cache_dir: Path | None) -> None:
        """Refuse options this strategy cannot train with. Raises ConfigError."""

    def per_rank_batch(self, batch_size: int) -> int:
        """This process's share of the global `batch_size`. Raises ConfigError unless it divides evenly."""

    def train_loader(self, samples: Samples, transform, batch_size: int, seed: int, num_workers: int) -> Iterable:
        """This process's shuffled training batches (``(uint8 images (B, 3, S, S), labels (B,))``)."""

    def val_loader(self, samples: Samples, transform, batch_size: int, seed: int, num_workers: int) -> Iterable:
        """This process's validation batches, in order."""

    def calibration_loader(self, samples: Samples, transform, batch_size: int, seed: int,
                           num_workers: int) -> Iterable:
        """Shuffled training images (evaluation transform) for the channel statistics, read once."""

    def calibrate(self, source: FrozenSource, delta: Delta, loader: Iterable, device: torch.device,
                  chunk: int | None = None) -> None:
        """:func:`calibrate_channel_pooling` of `delta` on `loader` (every process: the same statistics), the
        source on `chunk` images at a time when given."""

    def wrap(self, delta: Delta) -> nn.Module:
        """The module the training forward calls: `delta` itself, or a gradient-synchronising wrapper."""

    def pooling_noise(self, delta: Delta, seed: int, device: torch.device) -> PoolingNoiseSource:
        """The channel pooling noise of `delta`'s training steps."""

    def set_epoch(self, loader: Iterable, epoch: int) -> None:
        """Prepare `loader` (from :meth:`train_loader`) for `epoch` (1-based)."""

    def end_epoch(self, module: nn.Module, losses: EpochLosses, epoch: int) -> EpochLosses:
        """Finish `epoch` of `module` (what trains, unwrapped); return the losses of the global batches.
        Raises DistributedError if the processes' models differ."""

    def evaluate(self, forward: Forward, module: nn.Module, loader: Iterable, device: torch.device,
                 progress: Progress) -> EvalResult:
        """:func:`snowhub.evaluation.evaluate_forward` over every process's validation images."""

    def unwrap(self, delta: Delta) -> Delta:
        """The trained `delta` as one process would have made it."""


@dataclass
class SingleProcess:
    """The strategy of a training in this process alone, on `device`: plain loaders, the delta unwrapped,
    channel pooling noise from torch's global RNG, nothing to synchronise."""

    device: torch.device
    world_size: ClassVar[int] = 1

    @property
    def writes(self) -> bool:
        return True

    def check(self, config: TrainConfig, cache_dir: Path | None) -> None:
        if config.feature_cache and cache_dir is None:
            raise ConfigError("feature_cache needs a cache_dir")

    def per_rank_batch(self, batch_size: int) -> int:
        return batch_size

    def train_loader(self, samples: Samples, transform, batch_size: int, seed: int, num_workers: int) -> Iterable:
        return make_loader(samples, transform, batch_size, shuffle=True, seed=seed, num_workers=num_workers,
                           device=self.device, drop_last=True)

    def val_loader(self, samples: Samples, transform, batch_size: int, seed: int, num_workers: int) -> Iterable:
        return make_loader(samples, transform, batch_size, shuffle=False, seed=seed, num_workers=num_workers,
                           device=self.device)

    def calibration_loader(self, samples: Samples, transform, batch_size: int, seed: int,
                           num_workers: int) -> Iterable:
        # Read once: its workers would otherwise sit idle through the whole training.
        return make_loader(samples, transform, batch_size, shuffle=True, seed=seed, num_workers=num_workers,
                           device=self.device, persistent_workers=False)

    def calibrate(self, source: FrozenSource, delta: Delta, loader: Iterable, device: torch.device,
                  chunk: int | None = None) -> None:
        calibrate_channel_pooling(source, delta, loader, device, chunk=chunk)

    def wrap(self, delta: Delta) -> nn.Module:
        return delta

    def pooling_noise(self, delta: Delta, seed: int, device: torch.device) -> PoolingNoiseSource:
        return GlobalRngNoise()

    def set_epoch(self, loader: Iterable, epoch: int) -> None:
        pass

    def end_epoch(self, module: nn.Module, losses: EpochLosses, epoch: int) -> EpochLosses:
        return losses

    def evaluate(self, forward: Forward, module: nn.Module, loader: Iterable, device: torch.device,
                 progress: Progress) -> EvalResult:
        return evaluate_forward(forward, module, loader, device, progress)

    def unwrap(self, delta: Delta) -> Delta:
        return delta
