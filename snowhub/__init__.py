"""snowhub: a lifelong-learning task manager with a model store, implementing SNOW
(Yoo et al., "SNOW: Subscribing to Knowledge via Channel Pooling for Transfer & Lifelong Learning").

One frozen, pretrained source model; an append-only sequence of small task deltas that subscribe to its
feature maps through channel pooling. Start with :class:`snowhub.Hub`.
"""

from snowhub._version import __version__
from snowhub.errors import SnowhubError
from snowhub.hub import Hub
from snowhub.info import TaskInfo
from snowhub.models.sources import available_sources
from snowhub.names import SOURCE_TASK, default_hub_path
from snowhub.training import DeltaConfig, RunOptions, TrainConfig


__all__ = ["DeltaConfig", "Hub", "RunOptions", "SOURCE_TASK", "SnowhubError", "TaskInfo", "TrainConfig",
           "available_sources", "default_hub_path", "__version__"]
