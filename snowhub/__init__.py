"""snowhub: a lifelong-learning task manager with a model store, implementing SNOW
(Yoo et al., "SNOW: Subscribing to Knowledge via Channel Pooling for Transfer & Lifelong Learning").

One frozen, pretrained source model; an append-only sequence of small task deltas that subscribe to its
feature maps through channel pooling. Start with :class:`snowhub.Hub`.
"""

__version__ = "0.1.0"

from snowhub.errors import SnowhubError  # noqa: E402
from snowhub.hub import Hub, TaskInfo, default_hub_path  # noqa: E402
from snowhub.training import TrainConfig  # noqa: E402

__all__ = ["Hub", "SnowhubError", "TaskInfo", "TrainConfig", "default_hub_path", "__version__"]
