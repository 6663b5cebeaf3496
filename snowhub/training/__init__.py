"""Training a task's delta and channel pooling scores against the frozen source (SNOW, section 3.1).

Only the delta and its channel pooling scores receive gradients; the source runs forward only. SGD with
momentum 0.9 and weight decay 1e-4 as in the paper, with a short linear warm-up and a cosine decay so a
few epochs reach good accuracy (the paper's 90-epoch step schedule is for ImageNet-scale budgets).

- :mod:`snowhub.training.config`: :class:`TrainConfig` with :class:`DeltaConfig` and :class:`RunOptions`;
- :mod:`snowhub.training.optim`: :func:`delta_param_groups` and :class:`SGDSteps`, the update rule;
- :mod:`snowhub.training.calibration`: :func:`calibrate_channel_pooling`, the source's channel statistics;
- :mod:`snowhub.training.loop`: :func:`train_delta` → :class:`TrainResult`, and :func:`run_epochs`, the one
  epoch loop (any module, :class:`EpochRun` in, :class:`EpochsResult` out), with :func:`seed_everything`;
- :mod:`snowhub.training.hooks`: :class:`EpochHooks` (:class:`StepEvent`, :class:`EvalPoint`), what the loop
  tells its caller while it runs;
- :mod:`snowhub.training.strategy`: :class:`TrainingStrategy`, how many processes train, and
  :class:`SingleProcess`; :mod:`snowhub.training.forwards`: the delta's training forward (live, staged,
  feature-cached); :mod:`snowhub.training.feature_cache`: the cache;
- :mod:`snowhub.training._distributed`: :func:`join_process_group`, this process as one rank of a
  DistributedDataParallel training (the other strategy); :mod:`snowhub.training._launch`: :func:`run_workers`,
  the launcher, and :func:`this_worker` → :class:`Worker`, a launched worker's rank and failure reporting.
"""

from snowhub.errors import DistributedError
from snowhub.training._distributed import check_processes, join_process_group
from snowhub.training._launch import Worker, WorkerFailure, run_workers, this_worker, worker_device_type
from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training.config import DeltaConfig, RunOptions, TrainConfig
from snowhub.training.hooks import EpochHooks, EvalPoint, StepEvent
from snowhub.training.loop import EpochRun, EpochsResult, TrainResult, run_epochs, seed_everything, train_delta
from snowhub.training.optim import SGDSteps, delta_param_groups
from snowhub.training.strategy import SingleProcess, TrainingStrategy

__all__ = [
    # configuration and the delta's training (the Hub, the benchmarks)
    "DeltaConfig",
    "RunOptions",
    "TrainConfig",
    "TrainResult",
    "train_delta",
    "seed_everything",
    # the loop, for any module (the benchmarks' baselines and SNOW variants)
    "EpochHooks",
    "EpochRun",
    "EpochsResult",
    "EvalPoint",
    "SGDSteps",
    "SingleProcess",
    "StepEvent",
    "TrainingStrategy",
    "calibrate_channel_pooling",
    "delta_param_groups",
    "run_epochs",
    # several processes (registration's add-task, the CLI's workers)
    "DistributedError",
    "Worker",
    "WorkerFailure",
    "check_processes",
    "join_process_group",
    "run_workers",
    "this_worker",
    "worker_device_type",
]
