"""A ``train`` job: one method (FO, FE, FT, MP, PN or a SNOW variant) trained on one dataset.

Every method trains through the product's own epoch loop, :func:`snowhub.training.run_epochs` (the same
loaders, update rule and evaluation as ``add-task``), on its own model; the benchmark's measurements come from
the loop's hooks (:class:`LoopMeasurements`): training time without evaluation, steady-state images/s, and
validation accuracy at regular points (the accuracy-vs-time curve behind "time to accuracy"). The order of
operations for SNOW is the product's ``train_delta`` (seed, build the delta, loaders, measure the source
statistics, optimizer), so with the same seed it draws the same random numbers and follows the same loss
trajectory (checked by ``benchmarks/tests``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from benchmarks.backbones import Pretrained, parameter_count
from benchmarks.baselines import build_baseline, set_bn_momentum
from benchmarks.configs import BenchConfig, DatasetSpec, Job
from benchmarks.memory import current_rss_mib, reset_cuda_peak
from benchmarks.snow import SnowModel, build_delta, subscription_parameters
from snowhub.data import DatasetSplit, discover, eval_transform, train_transform
from snowhub.device import default_num_workers
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.progress import Progress
from snowhub.training import (
    EpochHooks,
    EpochRun,
    EpochsResult,
    EvalPoint,
    SingleProcess,
    StepEvent,
    calibrate_channel_pooling,
    delta_param_groups,
    run_epochs,
    seed_everything,
)


@dataclass
class CurvePoint:
    """Validation accuracy after `images` training images (`train_seconds` s of training, evaluation excluded)."""

    epoch: float
    images: int
    train_seconds: float
    top1: float
    top5: float
    loss: float


@dataclass
class LoopResult:
    """What the benchmark measured of a training.

    Attributes:
        curve: validation points, in training order; the last one is the final accuracy.
        train_seconds: wall time of the SGD steps, s.
        images: training images processed.
        images_per_s: steady-state training images/s (first ``skip_steps`` steps left out).
        images_per_s_all: images / train_seconds.
        cpu_seconds: CPU time this process spent in the SGD steps, s (all its threads; loader processes
            excluded). On a shared CPU it grows only with the work done, not with the waiting.
        images_per_cpu_s: steady-state training images per CPU-second.
        epoch_losses: mean training loss of each epoch (nats).
        step_losses: loss of each of the first 20 steps (reproducibility checks).
    """

    curve: list[CurvePoint]
    train_seconds: float
    images: int
    images_per_s: float
    images_per_s_all: float
    cpu_seconds: float
    images_per_cpu_s: float
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class LoopMeasurements:
    """The benchmark's measurements, read from the product loop's hooks (:meth:`hooks`): every validation as a
    :class:`CurvePoint`, and the training clock after the first `skip_steps` steps, so the steady-state rates
    leave out their one-time costs (allocation, cuDNN's autotuner, whose workspace is no model's memory: the
    CUDA peak-memory counter is reset there)."""

    def __init__(self, skip_steps: int, device: torch.device):
        self.skip_steps, self.device = skip_steps, device
        self.curve: list[CurvePoint] = []
        self.warmup = (0.0, 0.0, 0)  # wall s, CPU s and images of the first skip_steps steps

    def hooks(self) -> EpochHooks:
        return EpochHooks(on_step=self._step, on_eval=self._eval)

    def _step(self, event: StepEvent) -> None:
        if event.step == self.skip_steps:
            wall, cpu = event.clock.elapsed()
            self.warmup = (wall, cpu, event.images)
            reset_cuda_peak(self.device)

    def _eval(self, point: EvalPoint) -> None:
        r = point.result
        self.curve.append(CurvePoint(point.epoch, point.images, point.train_seconds, r.top1, r.top5, r.loss))

    def result(self, epochs: EpochsResult) -> LoopResult:
        """The measurements of the finished training `epochs`."""
        seconds, cpu, images = epochs.train_seconds, epochs.cpu_seconds, epochs.images
        skip_seconds, skip_cpu, skip_images = self.warmup
        if seconds <= skip_seconds or cpu <= skip_cpu:  # too short to leave the warm-up out
            skip_seconds, skip_cpu, skip_images = 0.0, 0.0, 0
        return LoopResult(curve=self.curve, train_seconds=seconds, images=images,
                          images_per_s=(images - skip_images) / (seconds - skip_seconds),
                          images_per_s_all=images / seconds, cpu_seconds=cpu,
                          images_per_cpu_s=(images - skip_images) / (cpu - skip_cpu),
                          epoch_losses=[h["train_loss"] for h in epochs.history], step_losses=epochs.step_losses[:20])


def first_per_class(samples: Sequence[tuple[Path, int]], n: int | None) -> list[tuple[Path, int]]:
    """The first `n` samples of each label, in the given order (all of them when `n` is None)."""
    if n is None:
        return list(samples)
    seen: Counter = Counter()
    kept = []
    for path, label in samples:
        if seen[label] < n:
            kept.append((path, label))
            seen[label] += 1
    return kept


def load_split(dataset: DatasetSpec, data_dir: Path, config: BenchConfig) -> DatasetSplit:
    """The dataset's train/validation split as the product discovers it, optionally cut per class."""
    path = Path(dataset.path)
    split = discover(path if path.is_absolute() else data_dir / path, seed=config.seed)
    return dataclasses.replace(split, train=first_per_class(split.train, config.max_train_per_class),
                               val=first_per_class(split.val, config.max_val_per_class))


def run_training(config: BenchConfig, job: Job, dataset: DatasetSpec, data_dir: Path, pretrained: Pretrained,
                 device: torch.device, progress: Progress) -> dict:
    """Train `job.method` on `dataset`; return accuracy curve, throughput, memory and parameter counts."""
    split = load_split(dataset, data_dir, config)
    num_classes = len(split.class_names)
    size, batch = config.image_size, config.batch_size
    workers = default_num_workers(device) if config.num_workers is None else config.num_workers
    source = pretrained.frozen_source().to(device) if job.method in ("SNOW", "PN", "FE-paper") else None

    seed_everything(config.seed)
    delta = None
    if job.method == "SNOW":
        delta = build_delta(pretrained.spec, num_classes, job.variant, config.noise_var,
                            config.attention_reduction).to(device)
        model = SnowModel(source, delta, job.variant.source_precision, job.variant.source_chunk)
    else:
        model = build_baseline(job.method, pretrained, num_classes, config.fe_tap, source).to(device)
    set_bn_momentum(model, config.bn_momentum)
    strategy = SingleProcess(device)
    train_loader = strategy.train_loader(split.train, train_transform(size, dataset.hflip), batch, config.seed, workers)
    val_loader = strategy.val_loader(split.val, eval_transform(size), batch, config.seed, workers)
    if delta is not None:
        calib_loader = strategy.calibration_loader(split.train, eval_transform(size), batch, config.seed + 1, workers)
        progress.start("measuring source statistics", None)
        chunk = model.eval_chunk  # as add-task calibrates with low memory on; None: products without `chunk`
        calibrate_channel_pooling(source, delta, calib_loader, device, **({"chunk": chunk} if chunk else {}))
        progress.finish()
        groups = delta_param_groups(delta, config.snow_lr, config.score_lr_scale, config.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": config.weight_decay, "lr": config.lr}]

    rss_ready = current_rss_mib()
    reset_cuda_peak(device)
    measured = LoopMeasurements(config.skip_steps, device)
    run = EpochRun(module=model, train_forward=model, eval_forward=model, param_groups=groups,
                   train_batches=train_loader, val_loader=val_loader, epochs=config.epochs,
                   warmup_epochs=config.warmup_epochs, device=device, strategy=strategy, progress=progress,
                   evals_per_epoch=config.evals_per_epoch)
    loop = measured.result(run_epochs(run, measured.hooks()))

    trainable = parameter_count(p for p in model.parameters() if p.requires_grad)
    params = {"trainable": trainable, "task": trainable, "source": parameter_count(pretrained.model.parameters())}
    if delta is not None:
        unselected = sum(m.channels - m.k for m in delta.pools if isinstance(m, ChannelPooling))
        params |= {"task": trainable - unselected, "subscription": subscription_parameters(delta),
                   "delta_widths": list(delta.shape.widths), "ks": list(delta.shape.ks)}
    final = loop.curve[-1]
    return {"dataset": {"name": dataset.name, "root": str(split.root), "layout": split.layout,
                        "classes": num_classes, "train_images": len(split.train), "val_images": len(split.val),
                        "val_source": split.val_source, "hflip": dataset.hflip},
            "top1": final.top1, "top5": final.top5, "loop": loop.to_dict(), "params": params,
            "memory": {"rss_ready_mib": rss_ready}, "lr": groups[0]["lr"]}
