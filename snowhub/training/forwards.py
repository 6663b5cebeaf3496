"""The training forward of a delta and the batches it reads (SNOW, section 3.1): images through the frozen
source and the delta every step, or the source's taps read back from a feature cache.

- plain: ``task_logits(source, model, images)`` (a DDP-wrapped delta must see its wrapper called);
- staged (one process, low memory on, or ``--source-precision bfloat16``): :class:`StagedForward`, stage by
  stage, each tap freed once pooled, the source in chunks and/or under bfloat16 autocast, each delta stage
  recomputed in backward (the same logits and gradients up to float rounding, less memory);
  :func:`choose_low_memory` decides ``--low-memory auto`` from the size of the source's taps;
- cached (``--cache-features``): the source ran once over the unaugmented images; each step reads their
  taps from the cache (:mod:`snowhub.training.feature_cache`) and runs the delta only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from snowhub.errors import ConfigError
from snowhub.malloc import return_freed_blocks
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.models.staged import StagedForward, source_autocast_dtype
from snowhub.progress import Progress
from snowhub.training.config import TrainConfig
from snowhub.training.feature_cache import FeatureCache, build_feature_cache

# --low-memory runs the frozen source on this many images at a time (ResNet-50, 224 px, batch 64 on this CPU:
# 1,567 against 1,904 MiB, and 13.0 against 9.8 images/s; benchmarks/results/paper-cpu-20261202-042116).
LOW_MEMORY_SOURCE_CHUNK = 16
# --low-memory auto: on when the source's taps for one batch (float32) reach this many MiB (docs/benchmarks.md,
# "Low memory by default": where the staged forward stopped costing speed on this CPU).
LOW_MEMORY_AUTO_MIB = 64.0


@dataclass(frozen=True)
class LowMemoryChoice:
    """Whether a training runs the low-memory forward, as asked (``auto``/``on``/``off``) and why.

    Attributes:
        on: the staged forward with recomputation runs. asked: ``RunOptions.low_memory``. reason: one line.
        malloc: what the C allocator did under it (:func:`snowhub.malloc.return_freed_blocks`), when on.
    """

    on: bool
    asked: str
    reason: str
    malloc: str | None = None

    def to_dict(self) -> dict:
        """As recorded with the task: ``low_memory`` (bool, what ran), ``low_memory_asked``, ``low_memory_reason``
        and, when on, ``low_memory_malloc``."""
        out = {"low_memory": self.on, "low_memory_asked": self.asked, "low_memory_reason": self.reason}
        return out | ({"low_memory_malloc": self.malloc} if self.malloc is not None else {})

    def describe(self) -> str:
        """One line for the user, e.g. ``low memory: on (auto: the source's taps are 282 MiB …); malloc: …``."""
        line = f"low memory: {'on' if self.on else 'off'} ({self.asked}: {self.reason})"
        return line + (f"; malloc: {self.malloc}" if self.malloc is not None else "")


def outside_the_steps(choice: LowMemoryChoice, device: torch.device) -> tuple[LowMemoryChoice, int | None]:
    """What a low-memory training does beside its staged forward: the number of images the source's other
    passes (calibration, validation) run on at a time, and on a CPU, malloc returning freed blocks to the OS
    (:func:`snowhub.malloc.return_freed_blocks`, recorded in the choice). ``(choice, None)`` when it is off."""
    if not choice.on:
        return choice, None
    if device.type == "cpu":  # CPU tensors come from the C allocator
        choice = replace(choice, malloc=return_freed_blocks())
    return choice, LOW_MEMORY_SOURCE_CHUNK


def taps_mib(source: FrozenSource, image_size: int, batch_size: int) -> float:
    """MiB of the source's taps for one batch of `batch_size` images of `image_size` px, in float32: what the
    plain forward keeps alive for the delta's backward and the low-memory one frees tap by tap."""
    values = sum(t.channels * math.ceil(image_size / t.stride) ** 2 for t in source.taps)
    return values * 4 * batch_size / (1 << 20)


def choose_low_memory(config: TrainConfig, source: FrozenSource, image_size: int, one_process: bool) -> LowMemoryChoice:
    """Resolve ``config.run.low_memory`` for a training of `source` at `image_size` px (`one_process`: False
    for a rank of a DDP training, which runs the plain forward)."""
    asked = config.run.low_memory
    if config.feature_cache or not one_process:
        why = "a feature cache runs no source per step" if config.feature_cache else "one process only"
        return LowMemoryChoice(False, asked, why)
    if asked != "auto":
        return LowMemoryChoice(asked == "on", asked, "asked")
    mib, batch = taps_mib(source, image_size, config.batch_size), config.batch_size
    on = mib >= LOW_MEMORY_AUTO_MIB
    return LowMemoryChoice(on, asked, f"the source's taps are {mib:,.0f} MiB per batch of {batch} at {image_size} px, "
                                      f"{'at least' if on else 'under'} {LOW_MEMORY_AUTO_MIB:g} MiB")


@dataclass
class TrainingInputs:
    """What each training step reads and runs.

    Attributes:
        batches: an epoch of ``(inputs, labels (B,))``; inputs are uint8 images ``(B, 3, S, S)``, or cached
            image indices ``(B,)``.
        forward: inputs → logits ``(B, classes)``, gradients flowing into the delta.
        cache_seconds: time spent filling the feature cache, s (0 without one).
    """

    batches: Iterable
    forward: Callable[[torch.Tensor], torch.Tensor]
    cache_seconds: float = 0.0


def source_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The source's training autocast dtype for ``source_precision`` (None: float32).

    Raises:
        ConfigError: bfloat16 on a device without bfloat16 arithmetic.
    """
    if precision == "float32":
        return None
    dtype = source_autocast_dtype(device)
    if dtype is None:
        raise ConfigError(f"`source_precision` bfloat16 needs bfloat16 arithmetic, which {device} lacks (a CUDA GPU "
                          "of compute capability 8.0+, or a CPU with AVX-512 BF16 or AMX): use float32")
    return dtype


def live_forward(source: FrozenSource, delta: Delta, model: nn.Module, dtype: torch.dtype | None,
                 low_memory: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of uint8 images ``(B, 3, S, S)`` → logits: staged when asked for and `model` is the delta
    itself (not a DDP wrapper, which must see its own forward called), else ``task_logits``. With
    `low_memory`, each delta stage is recomputed in backward from its inputs, kept in the source's training
    dtype (bfloat16 with a bfloat16 source, else float32: bit for bit the plain forward's arithmetic)."""
    if (low_memory or dtype is not None) and model is delta:
        return StagedForward(source, delta, dtype, recompute=low_memory,
                             source_chunk=LOW_MEMORY_SOURCE_CHUNK if low_memory else None, checkpoint="stage",
                             saved_dtype=dtype)
    return lambda images: task_logits(source, model, images)


def eval_forward(source: FrozenSource, delta: Delta, chunk: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The validation forward of uint8 images ``(B, 3, S, S)`` → logits ``(B, classes)``: ``task_logits``, on
    `chunk` images at a time when given (the low-memory path, so a whole batch's source activations are never
    alive at once; each image's logits the same up to float rounding)."""
    if chunk is None:
        return lambda images: task_logits(source, delta, images)
    return lambda images: torch.cat([task_logits(source, delta, part) for part in images.split(chunk)])


@contextmanager
def cached_inputs(source: FrozenSource, delta: Delta, samples: Sequence[tuple[Path, int]], transform,
                  config: TrainConfig, device: torch.device, workers: int, cache_dir: Path,
                  progress: Progress) -> Iterator[TrainingInputs]:
    """Run the frozen source once over `samples` (unaugmented: `transform` is the evaluation transform) into
    a feature cache in `cache_dir` (``config.run.cache_limit_gib`` at most), and train on it: batches of
    cached image indices, the forward running the delta alone. The cache's files are deleted when the
    ``with`` block ends, however it ends.

    Raises:
        ConfigError: the cache would pass its limit or the free disk. OSError: it could not be written.
    """
    start = time.perf_counter()
    with build_feature_cache(source, samples, transform, config.batch_size, cache_dir,
                             round(config.run.cache_limit_gib * (1 << 30)), device, workers, progress) as cache:
        yield TrainingInputs(CachedBatches(cache, config.batch_size, config.seed),
                             lambda idx: delta(*_cached_inputs(source, cache, idx, device)),
                             time.perf_counter() - start)


class CachedBatches:
    """A feature cache's epochs as a loader: ``len`` batches of ``(indices (B,), labels (B,))``, reshuffled
    each pass from `seed`."""

    def __init__(self, cache: FeatureCache, batch_size: int, seed: int):
        self.cache, self.batch_size = cache, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.cache.steps(self.batch_size)

    def __iter__(self):
        return self.cache.batches(self.batch_size, self.generator)


def _cached_inputs(source: FrozenSource, cache: FeatureCache, idx: torch.Tensor, device: torch.device):
    images, taps = cache.read(idx.cpu(), device)
    return source.normalizer(images), taps
