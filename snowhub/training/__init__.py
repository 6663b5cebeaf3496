"""Training a task's delta and channel pooling scores against the frozen source (SNOW, section 3.1).

Only the delta and its channel pooling scores receive gradients; the source runs forward only. SGD with
momentum 0.9 and weight decay 1e-4 as in the paper, with a short linear warm-up and a cosine decay so a
few epochs reach good accuracy (the paper's 90-epoch step schedule is for ImageNet-scale budgets).

- :mod:`snowhub.training.config`: :class:`TrainConfig` with :class:`DeltaConfig` and :class:`RunOptions`;
- :mod:`snowhub.training.optim`: :func:`delta_param_groups` and :class:`SGDSteps`, the update rule;
- :mod:`snowhub.training.calibration`: :func:`calibrate_channel_pooling`, the source's channel statistics;
- :mod:`snowhub.training.loop`: :func:`train_delta` → :class:`TrainResult`, and :func:`seed_everything`;
- :mod:`snowhub.training._distributed`: :func:`join_process_group` → :class:`ProcessGroup`, one rank of a
  DistributedDataParallel training; :mod:`snowhub.training._launch`: :func:`run_workers`, the launcher.
"""

from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training._distributed import (
    DistributedError,
    ProcessGroup,
    check_processes,
    join_process_group,
    launch_rank,
    launched,
)
from snowhub.training._launch import run_workers, worker_device_type
from snowhub.training.config import DeltaConfig, RunOptions, TrainConfig
from snowhub.training.loop import TrainResult, seed_everything, train_delta
from snowhub.training.optim import SGDSteps, delta_param_groups

__all__ = [
    "DeltaConfig",
    "DistributedError",
    "ProcessGroup",
    "RunOptions",
    "SGDSteps",
    "TrainConfig",
    "TrainResult",
    "calibrate_channel_pooling",
    "check_processes",
    "delta_param_groups",
    "join_process_group",
    "launch_rank",
    "launched",
    "run_workers",
    "seed_everything",
    "train_delta",
    "worker_device_type",
]
