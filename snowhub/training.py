"""Training a task's delta and channel pooling scores against the frozen source (SNOW, section 3.1).

Only the delta and its channel pooling scores receive gradients; the source runs forward only. SGD with
momentum 0.9 and weight decay 1e-4 as in the paper, with a short linear warm-up and a cosine decay so a
few epochs reach good accuracy (the paper's 90-epoch step schedule is for ImageNet-scale budgets).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from snowhub.data import DatasetSplit, eval_transform, train_transform
from snowhub.device import amp_dtype, autocast, default_num_workers
from snowhub.errors import ConfigError, DataError
from snowhub.evaluation import EvalResult, evaluate, iterate, make_loader
from snowhub.models.channel_pooling import ChannelPooling
from snowhub.models.delta import Delta, DeltaShape
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.progress import Progress, SilentProgress


@dataclass
class TrainConfig:
    """Hyper-parameters of one ``add-task``; every field is recorded with the task.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per SGD step.
        lr: peak learning rate of the delta (SGD, momentum 0.9); scaled for `batch_size` by the caller.
        score_lr_scale: the channel pooling scores learn `score_lr_scale` × faster: they start from
            scratch and must separate by more than the selection noise σ (the paper uses lr 1.0 for SNOW).
        weight_decay: L2 on delta weights (not on the scores, so unselected channels keep their score).
        warmup_epochs: linear warm-up length (fraction of an epoch allowed).
        k_ratio: K/N, fraction of each tap's channels subscribed by the delta's stages (paper: 1/8).
        head_k_ratio: K/N of the last tap, which feeds only the classifier (paper: 1/8; default all of
            it, see :meth:`DeltaShape.from_ratios`).
        width_divisor: the delta is the source narrowed by this factor (paper: 8).
        noise_var: σ² of the channel pooling noise (paper: 1e-3).
        image_size: training/serving resolution in pixels; None = the source's native size.
        hflip: random horizontal flips in training (turn off for digits and text).
        val_fraction: share of each class held out for validation when the data has no split.
        seed: seeds data order, augmentation, init and noise; same seed + data on CPU → same weights.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        num_workers: DataLoader workers; None picks a default for the device.
        probe_per_class, probe_max: size of the probe set kept for the forgetting checker.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.1
    score_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    k_ratio: float = 1 / 8
    head_k_ratio: float = 1.0
    width_divisor: float = 8.0
    noise_var: float = 1e-3
    image_size: int | None = None
    hflip: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None
    probe_per_class: int = 20
    probe_max: int = 500

    def validate(self) -> None:
        """Raises ConfigError naming the first option that is out of range."""
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.lr > 0 and math.isfinite(self.lr), "--lr must be a positive number"),
            (0 < self.k_ratio <= 1, "--k-ratio must be in (0, 1]"),
            (0 < self.head_k_ratio <= 1, "--head-k-ratio must be in (0, 1]"),
            (1 <= self.width_divisor <= 64, "--width-divisor must be in [1, 64]"),
            (self.noise_var >= 0, "--noise-var must be >= 0"),
            (self.image_size is None or 32 <= self.image_size <= 1024, "--image-size must be in [32, 1024]"),
            (0 < self.val_fraction < 1, "--val-fraction must be in (0, 1)"),
            (self.num_workers is None or self.num_workers >= 0, "--workers must be >= 0"),
            (self.probe_per_class >= 1 and self.probe_max >= 1, "probe set size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict:
        return asdict(self)


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
    """

    delta: Delta
    cp_indices: dict[str, list[int]]
    val: EvalResult
    train_seconds: float
    images_per_s: float
    image_size: int
    device: str
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def calibrate_channel_pooling(source: FrozenSource, delta: Delta, loader, device: torch.device,
                              max_images: int = 512) -> None:
    """Measure each tap's per-channel mean/std on up to `max_images` training images and store them in
    `delta`'s channel pooling modules (:meth:`ChannelPooling.calibrate`: mean and std ``(N_i,)`` per tap).

    `loader` yields ``(uint8 images (B, 3, S, S), labels (B,))``; whole batches are used, so slightly more
    than `max_images` may be measured. The source is frozen, so these are constants of (source, data); see
    :class:`ChannelPooling`.

    Raises:
        DataError: the loader yields no images, or an image cannot be read.
    """
    sums = sq = None
    n = 0
    for images, _ in iterate(loader):
        x = source.normalizer(images.to(device))
        taps, _ = source(x)
        stats = [(t.float().mean(dim=(0, 2, 3)) * len(t), t.float().pow(2).mean(dim=(0, 2, 3)) * len(t)) for t in taps]
        sums = [s for s, _ in stats] if sums is None else [a + s for a, (s, _) in zip(sums, stats)]
        sq = [q for _, q in stats] if sq is None else [a + q for a, (_, q) in zip(sq, stats)]
        n += len(images)
        if n >= max_images:
            break
    if n == 0:
        raise DataError("there are no training images to measure the source's channel statistics on")
    for pool, s, q in zip(delta.pools, sums, sq):
        mean = s / n
        pool.calibrate(mean.cpu(), (q / n - mean.pow(2)).clamp_min(0).sqrt().cpu())


def delta_param_groups(delta: Delta, lr: float, score_lr_scale: float, weight_decay: float) -> list[dict]:
    """SGD parameter groups of a delta: every weight at `lr` with `weight_decay`; the channel pooling
    scores at ``lr × score_lr_scale`` without decay (they start from scratch and must separate by more
    than the noise σ; decay would move unselected scores). Subscription modules that are not
    :class:`ChannelPooling` (the benchmarks' alternatives) train with the weights."""
    scores = [pool.scores for pool in delta.pools if isinstance(pool, ChannelPooling)]
    score_ids = {id(p) for p in scores}
    groups = [{"params": [p for p in delta.parameters() if id(p) not in score_ids], "weight_decay": weight_decay,
               "lr": lr}]
    if scores:
        groups.append({"params": scores, "weight_decay": 0.0, "lr": lr * score_lr_scale})
    return groups


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class SGDSteps:
    """The product's update rule: SGD with momentum 0.9, linear warm-up then cosine decay per step, AMP
    (with loss scaling for float16) on CUDA. The benchmark harness trains every method with it.

    Args:
        param_groups: SGD groups, each with its peak ``lr`` and ``weight_decay``.
        total_steps: steps of the whole schedule; warmup_steps: steps of the linear warm-up (>= 1).
        device: where the model runs.
    """

    def __init__(self, param_groups: list[dict], total_steps: int, warmup_steps: int, device: torch.device):
        self.device = device
        self.optimizer = torch.optim.SGD(param_groups, lr=param_groups[0]["lr"], momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(total_steps, warmup_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)

    def step(self, forward, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One step on a batch: `forward` maps images ``(B, 3, H, W)`` to logits ``(B, C)``; returns the
        batch's mean cross-entropy (nats) as a float."""
        with autocast(self.device):
            loss = F.cross_entropy(forward(images).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.detach().item()


def train_delta(source: FrozenSource, split: DatasetSplit, config: TrainConfig, device: torch.device,
                progress: Progress | None = None) -> TrainResult:
    """Train a new delta for the classes of `split` on `device`.

    Args:
        source: the frozen source (moved to `device` by the caller).
        split: training and validation images.
        config: hyper-parameters; validated here.
        device: where to train; AMP is used on CUDA.
        progress: receives one phase per epoch (steps = batches) and one per evaluation.

    Returns:
        TrainResult with the delta on the CPU, channel pooling frozen.

    Raises:
        ConfigError: an option is out of range.
        DataError: an image cannot be read.
    """
    config.validate()
    progress = progress or SilentProgress()
    seed_everything(config.seed)
    size = config.image_size or source.spec.image_size
    workers = default_num_workers(device) if config.num_workers is None else config.num_workers
    shape = DeltaShape.from_ratios(source.spec.block, source.taps, config.width_divisor, config.k_ratio,
                                   len(split.class_names), config.noise_var, config.head_k_ratio)
    delta = Delta(shape).to(device)
    train_loader = make_loader(split.train, train_transform(size, config.hflip), config.batch_size,
                               shuffle=True, seed=config.seed, num_workers=workers, device=device,
                               drop_last=True)
    evaluation = eval_transform(size, source.spec.eval_resize_ratio)  # the recipe the hub serves with
    val_loader = make_loader(split.val, evaluation, config.batch_size, shuffle=False,
                             seed=config.seed, num_workers=workers, device=device)
    calib_loader = make_loader(split.train, evaluation, config.batch_size, shuffle=True,
                               seed=config.seed + 1, num_workers=workers, device=device)
    progress.start("measuring source statistics", None)
    calibrate_channel_pooling(source, delta, calib_loader, device)
    progress.finish()

    steps_per_epoch = len(train_loader)
    sgd = SGDSteps(delta_param_groups(delta, config.lr, config.score_lr_scale, config.weight_decay),
                   steps_per_epoch * config.epochs, max(1, round(config.warmup_epochs * steps_per_epoch)), device)

    history: list[dict] = []
    train_seconds, seen = 0.0, 0
    val = None
    for epoch in range(1, config.epochs + 1):
        delta.train()
        progress.start(f"epoch {epoch}/{config.epochs}", steps_per_epoch)
        epoch_loss, epoch_n = 0.0, 0
        start = time.perf_counter()
        for images, labels in iterate(train_loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            value = sgd.step(lambda x: task_logits(source, delta, x), images, labels)
            epoch_loss += value * len(labels)
            epoch_n += len(labels)
            progress.advance(1, loss=value)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        seen += epoch_n
        progress.finish()
        progress.start("validating", len(val_loader))
        val = evaluate(source, delta, val_loader, device, progress)
        progress.finish(f"epoch {epoch}: val top-1 {val.top1:.2f} %")
        history.append({"epoch": epoch, "train_loss": epoch_loss / max(1, epoch_n), "val_top1": val.top1,
                        "val_top5": val.top5, "val_loss": val.loss, "seconds": seconds})

    delta.eval()
    cp_indices = delta.freeze_channel_pooling()
    # Frozen indices equal the deterministic top-K used by the last evaluation, so `val` still holds.
    return TrainResult(delta=delta.cpu(), cp_indices=cp_indices, val=val, train_seconds=train_seconds,
                       images_per_s=seen / train_seconds if train_seconds else 0.0, image_size=size,
                       device=str(device), history=history)
