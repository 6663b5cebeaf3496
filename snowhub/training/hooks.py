"""What :func:`snowhub.training.run_epochs` tells its caller while it trains: :class:`EpochHooks` called with a
:class:`StepEvent` after every optimiser step and an :class:`EvalPoint` after every validation, and the
:class:`TrainingClock` that times the training with the validations left out.

The product uses ``on_step`` for tests (every rank's delta after every step); the benchmarks use both hooks
for their accuracy-against-time curves and steady-state throughput.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from snowhub.evaluation import EvalResult


class TrainingClock:
    """Wall-clock and CPU seconds spent training, paused while validating.

    Args:
        device: waited for (CUDA) before every reading, so queued kernels count where they ran.
        seconds: training time already spent before the first epoch (a feature cache's source pass), s.

    Attributes:
        seconds: wall-clock seconds counted so far. cpu_seconds: CPU seconds of this process (all its
            threads; DataLoader worker processes excluded), so on a shared CPU it grows with the work only.
    """

    def __init__(self, device: torch.device, seconds: float = 0.0):
        self.device = device
        self.seconds, self.cpu_seconds = seconds, 0.0
        self._since: tuple[float, float] | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """Count from now."""
        self._since = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        """Wait for the device, then add the time since :meth:`start` and stop counting."""
        self.seconds, self.cpu_seconds = self.elapsed()
        self._since = None

    def elapsed(self) -> tuple[float, float]:
        """(wall s, CPU s) of training so far, the running interval included; waits for the device first."""
        self._sync()
        if self._since is None:
            return self.seconds, self.cpu_seconds
        wall, cpu = self._since
        return self.seconds + time.perf_counter() - wall, self.cpu_seconds + time.process_time() - cpu


@dataclass(frozen=True)
class StepEvent:
    """One optimiser step.

    Attributes:
        step: the global step number, from 1. epoch: the epoch it belongs to, from 1.
        loss: the step's mean cross-entropy over this process's batch, nats.
        images: training images seen so far by every process together, this step's included.
        clock: the training's clock (:meth:`TrainingClock.elapsed` reads it without stopping it).
    """

    step: int
    epoch: int
    loss: float
    images: int
    clock: TrainingClock


@dataclass(frozen=True)
class EvalPoint:
    """One validation pass.

    Attributes:
        epoch: epochs trained when it ran (``1.5``: half-way through the second epoch).
        images: training images seen by then, every process together.
        train_seconds: training wall-clock seconds by then, validations excluded, s.
        result: accuracy and loss on the validation images.
    """

    epoch: float
    images: int
    train_seconds: float
    result: EvalResult


def _ignore(_event: object) -> None:
    pass


@dataclass
class EpochHooks:
    """Callbacks of :func:`snowhub.training.run_epochs` (each runs in the training's time: keep them short,
    or read the clock before doing anything slow).

    Attributes:
        on_step: after every optimiser step (:class:`StepEvent`).
        on_eval: after every validation (:class:`EvalPoint`): each end of epoch, and the mid-epoch points
            of ``EpochRun.evals_per_epoch``.
    """

    on_step: Callable[[StepEvent], None] = _ignore
    on_eval: Callable[[EvalPoint], None] = _ignore
