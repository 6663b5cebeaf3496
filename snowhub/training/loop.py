"""The training loop of one task's delta and channel pooling scores against the frozen source (SNOW, section
3.1): :func:`train_delta` and what it returns, :class:`TrainResult`."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from snowhub.data import DatasetSplit, eval_transform, iterate, make_loader, train_transform
from snowhub.device import default_num_workers
from snowhub.errors import ConfigError
from snowhub.faults import crash_point
from snowhub.evaluation import EvalResult, evaluate
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.models.staged import StagedForward, source_autocast_dtype
from snowhub.progress import Progress, SilentProgress
from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training.config import TrainConfig
from snowhub.training.feature_cache import FeatureCache, build_feature_cache
from snowhub.training.optim import SGDSteps, delta_param_groups

# --low-memory runs the frozen source on this many images at a time (ResNet-50, 224 px, batch 64 on this CPU:
# 1,567 against 1,904 MiB, and 13.0 against 9.8 images/s; benchmarks/results/paper-cpu-20261202-042116).
LOW_MEMORY_SOURCE_CHUNK = 16

if TYPE_CHECKING:
    from snowhub.training._distributed import ProcessGroup


@dataclass
class TrainResult:
    """What training produced.

    Attributes:
        delta: the trained delta, channel pooling frozen, on the CPU, eval mode.
        cp_indices: tap name → the K source channels it subscribes to.
        val: accuracy on the validation images after the last epoch.
        train_seconds: wall time of the training steps (excludes evaluation), s.
        images_per_s: training throughput, images/s.
        history: per-epoch dicts (epoch, train_loss, val_top1, val_top5, val_loss, seconds).
        image_size: resolution used, pixels.
        device: the device trained on.
        step_losses: each step's mean cross-entropy over the (global) batch, nats.
        processes: how many processes trained it (1, or the world size of a DDP training).
        cache_seconds: time spent filling the feature cache, s (included in `train_seconds`; 0 without it).
    """

    delta: Delta
    cp_indices: dict[str, list[int]]
    val: EvalResult
    train_seconds: float
    images_per_s: float
    image_size: int
    device: str
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    processes: int = 1
    cache_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CPU and every CUDA device) with `seed`: data order,
    augmentation, initialisation and channel pooling noise all draw from them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_delta(source: FrozenSource, split: DatasetSplit, config: TrainConfig, device: torch.device,
                progress: Progress | None = None, group: ProcessGroup | None = None,
                on_step: Callable[[int, Delta], None] | None = None, cache_dir: Path | None = None) -> TrainResult:
    """Train a new delta for the classes of `split` on `device`.

    With `group` (:func:`snowhub.training.join_process_group`) this process is one rank of a
    DistributedDataParallel training: it trains on its shard with batch ``config.batch_size / world size``,
    the gradients averaged over the ranks, so every rank ends with the same delta (see
    :mod:`snowhub.training._distributed`); every rank must call this with the same arguments.

    Args:
        source: the frozen source (moved to `device` by the caller).
        split: training and validation images.
        config: hyper-parameters; validated here.
        device: where to train (``config.run.device`` resolved by the caller); AMP is used on CUDA.
        progress: receives one phase per epoch (steps = batches) and one per evaluation.
        group: this rank's process group, or None to train in this process alone.
        on_step: called after every optimiser step with the step number (from 1) and the delta.
        cache_dir: where ``config.feature_cache`` writes its files (the hub's ``staging/``); they are deleted
            before this returns or raises. Required with ``feature_cache``.

    Returns:
        TrainResult with the delta on the CPU, channel pooling frozen.

    Raises:
        ConfigError: an option is out of range.
        DataError: an image cannot be read.
        DistributedError: the ranks' deltas differ (checked after every epoch).
        OSError: the feature cache could not be written (its partial files are deleted).
    """
    config.validate()
    if group is not None:
        config.check_single_process()
    elif config.feature_cache and cache_dir is None:
        raise ConfigError("feature_cache needs a cache_dir")
    progress = progress or SilentProgress()
    seed_everything(config.seed)
    size = config.image_size or source.spec.image_size
    workers = default_num_workers(device) if config.run.num_workers is None else config.run.num_workers
    arch = config.delta
    shape = DeltaShape.from_ratios(source.spec.block, source.taps, arch.width_divisor, arch.k_ratio,
                                   len(split.class_names), arch.noise_var, arch.head_k_ratio)
    delta = Delta(shape).to(device)
    evaluation = eval_transform(size, source.spec.eval_resize_ratio)  # the recipe the hub serves with
    augmentation = train_transform(size, config.hflip)
    if group is None:
        train_loader = None if config.feature_cache else make_loader(  # a cache makes its own batches, below
            split.train, augmentation, config.batch_size, shuffle=True, seed=config.seed, num_workers=workers,
            device=device, drop_last=True)
        val_loader = make_loader(split.val, evaluation, config.batch_size, shuffle=False,
                                 seed=config.seed, num_workers=workers, device=device)
        # Read once: its workers would otherwise sit idle through the whole training.
        calib_loader = make_loader(split.train, evaluation, config.batch_size, shuffle=True,
                                   seed=config.seed + 1, num_workers=workers, device=device, persistent_workers=False)
    else:
        batch = group.per_rank_batch(config.batch_size)
        train_loader = group.train_loader(split.train, augmentation, batch, config.seed, workers)
        val_loader = make_loader(group.shard(split.val), evaluation, batch, shuffle=False, seed=config.seed,
                                 num_workers=workers, device=device)
        calib_loader = group.calibration_loader(split.train, evaluation, batch, config.seed + 1, workers)
    progress.start("measuring source statistics", None)
    if group is None:
        calibrate_channel_pooling(source, delta, calib_loader, device)
    else:
        calibrate_channel_pooling(source, delta, calib_loader, device, max_images=group.share(512),
                                  reduce=group.all_reduce_sum)
    progress.finish()
    model = delta if group is None else group.wrap(delta)  # DDP: the delta only, never the source
    noise = None if group is None else group.pooling_noise(delta, config.seed, device)
    # --low-memory, one process: stage by stage, each tap freed once pooled, the source in chunks (the same logits
    # and gradients up to float rounding, less memory, one more delta forward per step; snowhub.models.staged).
    # DDP must see its wrapper called, so it keeps task_logits.
    # --source-precision bfloat16, one process: the same staged forward with the source under bfloat16 autocast.
    dtype = _source_dtype(config.source_precision, device)
    if (config.run.low_memory or dtype is not None) and model is delta:
        forward = StagedForward(source, delta, dtype, recompute=config.run.low_memory,
                                source_chunk=LOW_MEMORY_SOURCE_CHUNK if config.run.low_memory else None)
    else:
        forward = lambda x: task_logits(source, model, x)  # noqa: E731
    if not config.feature_cache:
        return _train(source, config, device, progress, group, on_step, delta, model, forward, train_loader,
                      val_loader, noise, 0.0)
    start = time.perf_counter()
    with build_feature_cache(source, split.train, evaluation, config.batch_size, cache_dir,
                             round(config.run.cache_limit_gib * (1 << 30)), device, workers, progress) as cache:
        cache_seconds = time.perf_counter() - start
        forward = lambda idx: delta(*_cached_inputs(source, cache, idx, device))  # noqa: E731
        return _train(source, config, device, progress, group, on_step, delta, model, forward,
                      _CachedBatches(cache, config.batch_size, config.seed), val_loader, noise, cache_seconds)


def _source_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The source's training autocast dtype for ``--source-precision`` (None: float32)."""
    if precision == "float32":
        return None
    dtype = source_autocast_dtype(device)
    if dtype is None:
        raise ConfigError(f"--source-precision bfloat16 needs bfloat16 arithmetic, which {device} lacks (a CUDA GPU "
                          "of compute capability 8.0+, or a CPU with AVX-512 BF16 or AMX): use float32")
    return dtype


class _CachedBatches:
    """A feature cache's epochs as a loader: ``len`` batches of ``(indices, labels)``, reshuffled each pass."""

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


def _train(source, config, device, progress, group, on_step, delta, model, forward, train_loader, val_loader,
           noise, cache_seconds: float) -> TrainResult:
    """The epochs of :func:`train_delta`, once its delta, loaders and forward are built."""
    size = config.image_size or source.spec.image_size
    steps_per_epoch = len(train_loader)
    sgd = SGDSteps(delta_param_groups(delta, config.lr, config.score_lr_scale, config.weight_decay),
                   steps_per_epoch * config.epochs, max(1, round(config.warmup_epochs * steps_per_epoch)), device)

    history: list[dict] = []
    step_losses: list[float] = []
    train_seconds, seen, step = cache_seconds, 0, 0  # the source pass that filled a cache is training time
    val = None
    for epoch in range(1, config.epochs + 1):
        delta.train()
        if group is not None:
            group.set_epoch(train_loader, epoch)
        progress.start(f"epoch {epoch}/{config.epochs}", steps_per_epoch)
        epoch_loss, epoch_n, losses = 0.0, 0, []
        start = time.perf_counter()
        for images, labels in iterate(train_loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if noise is not None:
                noise.reseed(step)
            value = sgd.step(forward, images, labels)
            epoch_loss += value * len(labels)
            epoch_n += len(labels)
            losses.append(value)
            step += 1
            progress.advance(1, loss=value)
            if on_step is not None:
                on_step(step, delta)
            crash_point("train-step")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if group is not None:  # the global batch's losses; rank 0's BatchNorm statistics everywhere
            losses = group.mean_losses(losses)
            epoch_n *= group.world_size
            epoch_loss = sum(losses) / max(1, len(losses)) * epoch_n
            group.broadcast_buffers(delta)
            group.verify_in_sync(delta, f"after epoch {epoch}")
        step_losses += losses
        train_seconds += seconds
        seen += epoch_n
        progress.finish()
        progress.start("validating", len(val_loader))
        val = (evaluate(source, delta, val_loader, device, progress) if group is None
               else group.evaluate(source, delta, val_loader, device, progress))
        progress.finish(f"epoch {epoch}: val top-1 {val.top1:.2f} %")
        history.append({"epoch": epoch, "train_loss": epoch_loss / max(1, epoch_n), "val_top1": val.top1,
                        "val_top5": val.top5, "val_loss": val.loss, "seconds": seconds})

    if group is not None:
        noise.detach()
        delta = group.unwrap(delta)
    delta.eval()
    cp_indices = delta.freeze_channel_pooling()
    # Frozen indices equal the deterministic top-K used by the last evaluation, so `val` still holds.
    return TrainResult(delta=delta.cpu(), cp_indices=cp_indices, val=val, train_seconds=train_seconds,
                       images_per_s=seen / train_seconds if train_seconds else 0.0, image_size=size,
                       device=str(device), history=history, step_losses=step_losses,
                       processes=1 if group is None else group.world_size, cache_seconds=cache_seconds)
