"""Training a task's delta and channel pooling scores against the frozen source (SNOW, section 3.1).

Only the delta and its channel pooling scores receive gradients; the source runs forward only. SGD with
momentum 0.9 and weight decay 1e-4 as in the paper, with a short linear warm-up and a cosine decay so a
few epochs reach good accuracy (the paper's 90-epoch step schedule is for ImageNet-scale budgets).

- :mod:`snowhub.training.config`: :class:`TrainConfig` with :class:`DeltaConfig` and :class:`RunOptions`;
- :mod:`snowhub.training.optim`: :func:`delta_param_groups` and :class:`SGDSteps`, the update rule;
- :mod:`snowhub.training.calibration`: :func:`calibrate_channel_pooling`, the source's channel statistics;
- :mod:`snowhub.training.loop`: :func:`train_delta` → :class:`TrainResult`, and :func:`seed_everything`.
"""

from snowhub.training.calibration import calibrate_channel_pooling
from snowhub.training.config import DeltaConfig, RunOptions, TrainConfig
from snowhub.training.loop import TrainResult, seed_everything, train_delta
from snowhub.training.optim import SGDSteps, delta_param_groups

__all__ = [
    "DeltaConfig",
    "RunOptions",
    "SGDSteps",
    "TrainConfig",
    "TrainResult",
    "calibrate_channel_pooling",
    "delta_param_groups",
    "seed_everything",
    "train_delta",
]
