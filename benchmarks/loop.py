"""The one training loop every method goes through, so they differ only in their model.

It is the product's ``snowhub.training.train_delta`` loop (same loaders, the same update rule
:class:`snowhub.training.SGDSteps`, one ``loss.item()`` per step) with the benchmark's measurements added:
training time excluding evaluation, steady-state images/s, and validation accuracy at regular points
(the accuracy-vs-time curve behind "time to accuracy").
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from benchmarks.memory import reset_cuda_peak
from snowhub.data import iterate
from snowhub.evaluation import evaluate_forward
from snowhub.progress import Progress
from snowhub.training import SGDSteps


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
    """What the loop measured.

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


def evaluate_model(model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, float, float]:
    """(top-1 %, top-5 %, mean cross-entropy) of `model` in eval mode on every batch of `loader`."""
    result = evaluate_forward(model, model, loader, device)
    return result.top1, result.top5, result.loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_loop(model: nn.Module, param_groups: list[dict], train_loader, val_loader, *, epochs: int,
               warmup_epochs: float, device: torch.device, progress: Progress, evals_per_epoch: int = 1,
               skip_steps: int = 2) -> LoopResult:
    """Train `model` (its trainable parameters are in `param_groups`) and validate along the way.

    Args:
        model: uint8 images ``(B, 3, H, W)`` → logits; already on `device`.
        param_groups: SGD parameter groups, each with its own ``lr`` (peak) and ``weight_decay``.
        train_loader, val_loader: ``snowhub.data.make_loader`` loaders.
        epochs, warmup_epochs: schedule length and linear warm-up length (epochs).
        device: where to train; AMP on CUDA as in the product.
        progress: one phase per epoch (steps = batches).
        evals_per_epoch: validation passes per epoch, evenly spaced.
        skip_steps: steps left out of the steady-state images/s; on CUDA the peak-memory counter is reset
            after them (the autotuner's workspace of the first steps is not the method's memory).
    """
    steps_per_epoch = len(train_loader)
    sgd = SGDSteps(param_groups, steps_per_epoch * epochs, max(1, round(warmup_epochs * steps_per_epoch)), device)
    eval_at = {round(steps_per_epoch * (k + 1) / evals_per_epoch) for k in range(evals_per_epoch)}

    curve: list[CurvePoint] = []
    epoch_losses: list[float] = []
    step_losses: list[float] = []
    seconds, cpu_seconds, images, step = 0.0, 0.0, 0, 0
    skip_seconds, skip_cpu, skip_images = None, 0.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        progress.start(f"epoch {epoch}/{epochs}", steps_per_epoch)
        loss_sum, n = 0.0, 0
        start, start_cpu = time.perf_counter(), time.process_time()
        for i, (images_b, labels) in enumerate(iterate(train_loader), start=1):
            images_b, labels = images_b.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            value = sgd.step(model, images_b, labels)
            loss_sum, n, images, step = loss_sum + value * len(labels), n + len(labels), images + len(labels), step + 1
            if len(step_losses) < 20:
                step_losses.append(value)
            progress.advance(1, loss=value)
            if step == skip_steps:
                _sync(device)
                skip_seconds, skip_images = seconds + time.perf_counter() - start, images
                skip_cpu = cpu_seconds + time.process_time() - start_cpu
                reset_cuda_peak(device)  # the warm-up steps ran cuDNN's autotuner, whose workspace is no model's
            if i in eval_at:
                _sync(device)
                seconds += time.perf_counter() - start
                cpu_seconds += time.process_time() - start_cpu
                top1, top5, val_loss = evaluate_model(model, val_loader, device)
                curve.append(CurvePoint(epoch - 1 + i / steps_per_epoch, images, seconds, top1, top5, val_loss))
                progress.advance(0, loss=value, val_top1=f"{top1:.2f} %")
                start, start_cpu = time.perf_counter(), time.process_time()
        progress.finish(f"epoch {epoch}: train loss {loss_sum / max(1, n):.4f}, val top-1 {curve[-1].top1:.2f} %")
        epoch_losses.append(loss_sum / max(1, n))
    if skip_seconds is None or seconds <= skip_seconds or cpu_seconds <= skip_cpu:
        skip_seconds, skip_cpu, skip_images = 0.0, 0.0, 0
    return LoopResult(curve=curve, train_seconds=seconds, images=images,
                      images_per_s=(images - skip_images) / (seconds - skip_seconds),
                      images_per_s_all=images / seconds, cpu_seconds=cpu_seconds,
                      images_per_cpu_s=(images - skip_images) / (cpu_seconds - skip_cpu),
                      epoch_losses=epoch_losses, step_losses=step_losses)
