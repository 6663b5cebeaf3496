"""The one epoch loop (snowhub.training.run_epochs) drives any module, and its hooks report every step and
every validation with a clock that leaves validation out (what the benchmarks' curves and throughput read)."""

from __future__ import annotations

import time

import torch
from torch import nn

from snowhub.data import discover, eval_transform
from snowhub.training import EpochHooks, EpochRun, SingleProcess, run_epochs, seed_everything

CPU = torch.device("cpu")
BATCH = 16


class _Tiny(nn.Module):
    """uint8 images (B, 3, 28, 28) → logits (B, 3): one strided convolution, BatchNorm, a linear head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(8, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() / 255)


def _run(fashion_dir, evals_per_epoch: int = 1, eval_pause: float = 0.0):
    """Two epochs of `_Tiny` on `fashion_dir` (seed 0); each validation batch waits `eval_pause` s first."""
    seed_everything(0)
    split = discover(fashion_dir)  # 120 training images of 3 classes, 36 validation images
    model = _Tiny()

    def eval_forward(images: torch.Tensor) -> torch.Tensor:
        time.sleep(eval_pause)
        return model(images)

    strategy = SingleProcess(CPU)
    steps, points = [], []
    run = EpochRun(module=model, train_forward=model, eval_forward=eval_forward,
                   param_groups=[{"params": list(model.parameters()), "lr": 0.05, "weight_decay": 1e-4}],
                   train_batches=strategy.train_loader(split.train, eval_transform(28), BATCH, 0, 0),
                   val_loader=strategy.val_loader(split.val, eval_transform(28), BATCH, 0, 0), epochs=2,
                   warmup_epochs=0.5, device=CPU, strategy=strategy, evals_per_epoch=evals_per_epoch)
    hooks = EpochHooks(on_step=lambda e: steps.append((e.step, e.epoch, e.images, e.loss, e.clock.elapsed()[0])),
                       on_eval=points.append)
    return run_epochs(run, hooks), steps, points


def test_hooks_see_every_step_and_every_validation_point(fashion_dir):
    result, steps, points = _run(fashion_dir, evals_per_epoch=2)
    per_epoch = 120 // BATCH  # 7: the last partial batch is dropped
    assert [s[:3] for s in steps] == [(k, 1 + (k - 1) // per_epoch, BATCH * k) for k in range(1, 2 * per_epoch + 1)]
    assert [s[3] for s in steps] == result.step_losses
    assert all(a[4] <= b[4] for a, b in zip(steps, steps[1:]))  # the clock only moves forward
    # Two validations per epoch: after step 4 of 7 (round(3.5)) and at the end of the epoch.
    assert [p.epoch for p in points] == [4 / 7, 1.0, 1 + 4 / 7, 2.0]
    assert [p.images for p in points] == [64, 112, 176, 224] and result.images == 224
    assert all(p.result.images == 36 for p in points)
    ends = [p for p in points if p.epoch == int(p.epoch)]
    assert [h["val_top1"] for h in result.history] == [p.result.top1 for p in ends]
    assert result.val == ends[-1].result
    assert [h["train_loss"] for h in result.history] == [
        sum(s[3] for s in steps if s[1] == e) / per_epoch for e in (1, 2)]


def test_the_mid_epoch_validations_change_nothing_the_model_learns(fashion_dir):
    once, _, _ = _run(fashion_dir, evals_per_epoch=1)
    twice, _, _ = _run(fashion_dir, evals_per_epoch=2)
    assert once.step_losses == twice.step_losses and once.val == twice.val


def test_the_training_clock_leaves_validation_out(fashion_dir):
    pause = 0.2  # s per validation batch: 3 batches, 2 validations
    start = time.perf_counter()
    result, _, points = _run(fashion_dir, eval_pause=pause)
    wall = time.perf_counter() - start
    assert result.train_seconds <= wall - pause * 3 * 2  # counting a validation would put it above
    assert [p.train_seconds for p in points] == sorted(p.train_seconds for p in points)
    assert points[-1].train_seconds == result.train_seconds
