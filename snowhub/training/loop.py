"""The training loop (SNOW, section 3.1): :func:`run_epochs` trains any module with the product's update rule
and validates it after every epoch, on one process or as one rank of many (its strategy says which);
:func:`train_delta` builds one task's delta, its loaders and its forward, and runs them through it.

One loop for every caller: ``add-task`` (one process or each rank of ``--nproc-per-node``), and the
benchmarks' FO/FE/FT/MP/PN baselines and SNOW variants, which read its hooks
(:class:`~snowhub.training.hooks.EpochHooks`) for their timings and accuracy curves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from snowhub.data import DatasetSplit, eval_transform, iterate, train_transform
from snowhub.device import default_num_workers
from snowhub.evaluation import EvalResult
from snowhub.faults import crash_point
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.progress import Progress, SilentProgress
from snowhub.training.config import TrainConfig
from snowhub.training.forwards import (
    LowMemoryChoice,
    TrainingInputs,
    cached_inputs,
    choose_low_memory,
    eval_forward,
    live_forward,
    outside_the_steps,
    source_dtype,
)
from snowhub.training.hooks import EpochHooks, EvalPoint, StepEvent, TrainingClock
from snowhub.training.optim import SGDSteps, delta_param_groups
from snowhub.training.strategy import (
    EpochLosses,
    GlobalRngNoise,
    PoolingNoiseSource,
    SingleProcess,
    TrainingStrategy,
)


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
        low_memory: whether the low-memory forward ran, as asked and why (recorded with the task).
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
    low_memory: LowMemoryChoice | None = None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CPU and every CUDA device) with `seed`: data order,
    augmentation, initialisation and channel pooling noise all draw from them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the epochs ---------------------------------------------------------------------------------------


@dataclass
class EpochRun:
    """Everything :func:`run_epochs` needs: what trains, on what, for how long, on how many processes.

    Attributes:
        module: what trains (unwrapped): put in train mode every epoch, in eval mode while validating.
        train_forward: a batch's inputs → logits ``(B, classes)``, gradients flowing into `module`.
        eval_forward: uint8 images ``(B, 3, S, S)`` → logits, for validation.
        param_groups: SGD groups of `module`'s trainable parameters, each with its peak ``lr`` and
            ``weight_decay`` (:func:`delta_param_groups` for a delta).
        train_batches: an epoch of ``(inputs, labels (B,))``; ``len`` is the steps per epoch.
        val_loader: the validation batches ``(uint8 images, labels)``.
        epochs, warmup_epochs: the schedule's length and its linear warm-up, epochs.
        device: where `module` runs (AMP on CUDA).
        strategy: how many processes train (:class:`~snowhub.training.strategy.SingleProcess` or a
            ``ProcessGroup``).
        progress: one phase per epoch (steps = batches) and one per end-of-epoch validation.
        noise: the channel pooling noise, reseeded before every step (a DDP training's; else a no-op).
        evals_per_epoch: validations per epoch, evenly spaced, the last at the end of the epoch.
        seconds: training time already spent (a feature cache's source pass), s.
    """

    module: nn.Module
    train_forward: Callable[[torch.Tensor], torch.Tensor]
    eval_forward: Callable[[torch.Tensor], torch.Tensor]
    param_groups: list[dict]
    train_batches: Iterable
    val_loader: Iterable
    epochs: int
    warmup_epochs: float
    device: torch.device
    strategy: TrainingStrategy
    progress: Progress = field(default_factory=SilentProgress)
    noise: PoolingNoiseSource = field(default_factory=GlobalRngNoise)
    evals_per_epoch: int = 1
    seconds: float = 0.0


@dataclass
class EpochsResult:
    """What :func:`run_epochs` measured.

    Attributes:
        val: the last validation. history: per-epoch dicts (epoch, train_loss, val_top1, val_top5, val_loss,
            seconds). step_losses: each step's mean cross-entropy over the (global) batch, nats.
        train_seconds, cpu_seconds: wall-clock and CPU seconds of training, validations excluded (the
            wall-clock includes `EpochRun.seconds`).
        images: training images processed by every process together.
    """

    val: EvalResult
    history: list[dict]
    step_losses: list[float]
    train_seconds: float
    cpu_seconds: float
    images: int


@dataclass
class _Totals:
    """The running state of :func:`run_epochs` across epochs."""

    clock: TrainingClock
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    images: int = 0
    step: int = 0
    val: EvalResult | None = None


def run_epochs(run: EpochRun, hooks: EpochHooks | None = None) -> EpochsResult:
    """Train `run.module` for `run.epochs` epochs with :class:`SGDSteps` (SGD, momentum 0.9, linear warm-up
    then cosine decay per step) and validate it after every epoch (and `run.evals_per_epoch` - 1 more times
    within each).

    Raises:
        DataError: an image cannot be read. DistributedError: the ranks' models differ after an epoch.
    """
    hooks = hooks or EpochHooks()
    steps = len(run.train_batches)
    sgd = SGDSteps(run.param_groups, steps * run.epochs, max(1, round(run.warmup_epochs * steps)), run.device)
    eval_at = {round(steps * (k + 1) / run.evals_per_epoch) for k in range(run.evals_per_epoch - 1)} - {steps}
    totals = _Totals(TrainingClock(run.device, run.seconds))
    for epoch in range(1, run.epochs + 1):
        _run_epoch(run, hooks, sgd, totals, epoch, eval_at)
    return EpochsResult(val=totals.val, history=totals.history, step_losses=totals.step_losses,
                        train_seconds=totals.clock.seconds, cpu_seconds=totals.clock.cpu_seconds,
                        images=totals.images)


def _run_epoch(run: EpochRun, hooks: EpochHooks, sgd: SGDSteps, totals: _Totals, epoch: int,
               eval_at: set[int]) -> None:
    """One epoch of :func:`run_epochs`: the steps (validating mid-way at the steps in `eval_at`), the
    strategy's end of epoch, and the end-of-epoch validation."""
    run.module.train()
    run.strategy.set_epoch(run.train_batches, epoch)
    steps = len(run.train_batches)
    run.progress.start(f"epoch {epoch}/{run.epochs}", steps)
    losses = EpochLosses()
    before = totals.clock.seconds
    totals.clock.start()
    for i, (inputs, labels) in enumerate(iterate(run.train_batches), start=1):
        inputs, labels = inputs.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        run.noise.reseed(totals.step)
        value = sgd.step(run.train_forward, inputs, labels)
        losses.add(value, len(labels))
        totals.step += 1
        run.progress.advance(1, loss=value)
        images = totals.images + losses.images * run.strategy.world_size
        hooks.on_step(StepEvent(totals.step, epoch, value, images, totals.clock))
        crash_point("train-step")
        if i in eval_at:
            _validate_mid_epoch(run, hooks, totals, epoch - 1 + i / steps, images)
    totals.clock.stop()
    seconds = totals.clock.seconds - before
    losses = run.strategy.end_epoch(run.module, losses, epoch)  # the global batches' losses
    totals.step_losses += losses.steps
    totals.images += losses.images
    run.progress.finish()
    run.progress.start("validating", len(run.val_loader))
    val = run.strategy.evaluate(run.eval_forward, run.module, run.val_loader, run.device, run.progress)
    run.progress.finish(f"epoch {epoch}: val top-1 {val.top1:.2f} %")
    totals.val = val
    totals.history.append({"epoch": epoch, "train_loss": losses.mean, "val_top1": val.top1, "val_top5": val.top5,
                           "val_loss": val.loss, "seconds": seconds})
    hooks.on_eval(EvalPoint(float(epoch), totals.images, totals.clock.seconds, val))


def _validate_mid_epoch(run: EpochRun, hooks: EpochHooks, totals: _Totals, epoch: float, images: int) -> None:
    """A validation within an epoch (the benchmarks' accuracy curves), its time left out of the training's."""
    totals.clock.stop()
    val = run.strategy.evaluate(run.eval_forward, run.module, run.val_loader, run.device, SilentProgress())
    run.progress.advance(0, val_top1=f"{val.top1:.2f} %")
    hooks.on_eval(EvalPoint(epoch, images, totals.clock.seconds, val))
    totals.clock.start()


# -- one task's delta ---------------------------------------------------------------------------------


def train_delta(source: FrozenSource, split: DatasetSplit, config: TrainConfig, device: torch.device,
                progress: Progress | None = None, strategy: TrainingStrategy | None = None,
                on_step: Callable[[int, Delta], None] | None = None, cache_dir: Path | None = None) -> TrainResult:
    """Train a new delta for the classes of `split` on `device`.

    With a `strategy` from :func:`snowhub.training.join_process_group` this process is one rank of a
    DistributedDataParallel training: it trains on its shard with batch ``config.batch_size / world size``,
    the gradients averaged over the ranks, so every rank ends with the same delta (see
    :mod:`snowhub.training._distributed`); every rank must call this with the same arguments.

    Args:
        source: the frozen source (moved to `device` by the caller).
        split: training and validation images.
        config: hyper-parameters; validated here.
        device: where to train (``config.run.device`` resolved by the caller); AMP is used on CUDA.
        progress: receives one phase per epoch (steps = batches) and one per evaluation.
        strategy: how many processes train (default: :class:`SingleProcess`, this one alone).
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
    strategy = strategy or SingleProcess(device)
    strategy.check(config, cache_dir)
    progress = progress or SilentProgress()
    seed_everything(config.seed)
    delta = _new_delta(source, split, config).to(device)
    data = _loaders(strategy, source, split, config, device)
    low_memory, chunk = outside_the_steps(choose_low_memory(config, source, data.size, strategy.world_size == 1),
                                          device)
    progress.start("measuring source statistics", None)
    strategy.calibrate(source, delta, data.calibration, device, chunk)
    progress.finish()
    model = strategy.wrap(delta)  # DDP: the delta only, never the source
    noise = strategy.pooling_noise(delta, config.seed, device)
    progress.start("choosing the training forward", None)
    progress.finish(low_memory.describe())
    with _training_inputs(source, delta, model, split, config, device, data, cache_dir, progress,
                          low_memory.on) as inputs:
        run = EpochRun(module=delta, train_forward=inputs.forward, eval_forward=eval_forward(source, delta, chunk),
                       param_groups=delta_param_groups(delta, config.lr, config.score_lr_scale, config.weight_decay),
                       train_batches=inputs.batches, val_loader=data.val, epochs=config.epochs,
                       warmup_epochs=config.warmup_epochs, device=device, strategy=strategy, progress=progress,
                       noise=noise, seconds=inputs.cache_seconds)
        epochs = run_epochs(run, EpochHooks(on_step=lambda event: on_step(event.step, delta)) if on_step else None)
    noise.detach()
    delta = strategy.unwrap(delta)
    delta.eval()
    cp_indices = delta.freeze_channel_pooling()
    # Frozen indices equal the deterministic top-K used by the last evaluation, so `val` still holds.
    return TrainResult(delta=delta.cpu(), cp_indices=cp_indices, val=epochs.val, train_seconds=epochs.train_seconds,
                       images_per_s=epochs.images / epochs.train_seconds if epochs.train_seconds else 0.0,
                       image_size=data.size, device=str(device), history=epochs.history,
                       step_losses=epochs.step_losses, processes=strategy.world_size,
                       cache_seconds=inputs.cache_seconds, low_memory=low_memory)


@dataclass
class _Loaders:
    """A delta training's data: resolution, loader workers, the evaluation transform and this process's loaders
    (no training loader when a feature cache makes the batches)."""

    size: int
    workers: int
    evaluation: Callable
    train: Iterable | None
    val: Iterable
    calibration: Iterable


def _loaders(strategy: TrainingStrategy, source: FrozenSource, split: DatasetSplit, config: TrainConfig,
             device: torch.device) -> _Loaders:
    size = config.image_size or source.spec.image_size
    workers = default_num_workers(device) if config.run.num_workers is None else config.run.num_workers
    evaluation = eval_transform(size, source.spec.eval_resize_ratio)  # the recipe the hub serves with
    batch = strategy.per_rank_batch(config.batch_size)
    train = None if config.feature_cache else strategy.train_loader(
        split.train, train_transform(size, config.hflip), batch, config.seed, workers)
    return _Loaders(size, workers, evaluation, train,
                    strategy.val_loader(split.val, evaluation, batch, config.seed, workers),
                    strategy.calibration_loader(split.train, evaluation, batch, config.seed + 1, workers))


def _training_inputs(source: FrozenSource, delta: Delta, model: nn.Module, split: DatasetSplit, config: TrainConfig,
                     device: torch.device, data: _Loaders, cache_dir: Path | None,
                     progress: Progress, low_memory: bool) -> AbstractContextManager[TrainingInputs]:
    """The training's batches and forward (:mod:`snowhub.training.forwards`): the source's taps from a feature
    cache, or images through the source every step (staged for `low_memory` and a bfloat16 source)."""
    dtype = source_dtype(config.source_precision, device)
    if config.feature_cache:
        return cached_inputs(source, delta, split.train, data.evaluation, config, device, data.workers, cache_dir,
                             progress)
    return nullcontext(TrainingInputs(data.train, live_forward(source, delta, model, dtype, low_memory)))


def _new_delta(source: FrozenSource, split: DatasetSplit, config: TrainConfig) -> Delta:
    """A new delta for `split`'s classes, shaped by ``config.delta`` against `source`'s taps."""
    arch = config.delta
    return Delta(DeltaShape.from_ratios(source.spec.block, source.taps, arch.width_divisor, arch.k_ratio,
                                        len(split.class_names), arch.noise_var, arch.head_k_ratio))
