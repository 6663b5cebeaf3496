"""Evaluation metrics: top-1/top-5 accuracy and loss of a delta on labelled images (loaders: snowhub.data)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from snowhub.data import iterate
from snowhub.device import autocast
from snowhub.faults import crash_point
from snowhub.errors import DataError
from snowhub.models.delta import Delta
from snowhub.models.frozen import FrozenSource
from snowhub.models.network import task_logits
from snowhub.progress import Progress, SilentProgress


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one task on one set of images.

    Attributes:
        top1, top5: accuracy in % (top-5 is top-min(5, classes)).
        loss: mean cross-entropy (nats).
        images: number of images evaluated.
    """

    top1: float
    top5: float
    loss: float
    images: int


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(top-1 hits, top-5 hits) of `logits` ``(B, C)`` against `labels` ``(B,)``."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == labels.view(-1, 1)
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


@torch.no_grad()
def evaluate_forward(forward: Callable[[torch.Tensor], torch.Tensor], module: nn.Module, loader: Iterable,
                     device: torch.device, progress: Progress | None = None) -> EvalResult:
    """Accuracy of `forward` (uint8 images ``(B, 3, H, W)`` → logits ``(B, C)``) on every batch of `loader`,
    with `module` (what `forward` trains) in eval mode meanwhile and its mode restored after.

    Raises:
        DataError: an image in the loader cannot be read, or the loader is empty.
    """
    progress = progress or SilentProgress()
    was_training = module.training
    module.eval()
    top1 = top5 = n = 0
    loss = 0.0
    try:
        for images, labels in iterate(loader):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device):
                logits = forward(images).float()
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            h1, h5 = accuracy_counts(logits, labels)
            top1, top5, n = top1 + h1, top5 + h5, n + len(labels)
            progress.advance(1)
            crash_point("train-step")  # validation steps count too
    finally:
        module.train(was_training)
    if n == 0:
        raise DataError("no images to evaluate")
    return EvalResult(100.0 * top1 / n, 100.0 * top5 / n, loss / n, n)


def evaluate(source: FrozenSource, delta: Delta, loader: Iterable, device: torch.device,
             progress: Progress | None = None) -> EvalResult:
    """Evaluate `delta` (in eval mode: deterministic top-K) on every batch of `loader`.

    Raises:
        DataError: an image in the loader cannot be read, or the loader is empty.
    """
    return evaluate_forward(lambda images: task_logits(source, delta, images), delta, loader, device, progress)
