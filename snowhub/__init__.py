"""snowhub: a lifelong-learning task manager with a model store, implementing SNOW
(Yoo et al., "SNOW: Subscribing to Knowledge via Channel Pooling for Transfer & Lifelong Learning").

One frozen, pretrained source model; an append-only sequence of small task deltas that subscribe to its
feature maps through channel pooling. Start with :class:`snowhub.Hub`.

Everything a notebook needs is importable from here: the :class:`Hub` facade and its options, the types its
methods return, and every error it raises on purpose (all :class:`SnowhubError`; see ``docs/architecture.md``,
"The public API", for what each name is for). Subpackages are internals that may change.
"""

from snowhub._version import __version__
from snowhub.checks import DoctorReport, ForgettingReport, TaskCheck
from snowhub.errors import (
    BundleError,
    ConfigError,
    DataError,
    DistributedError,
    ExportError,
    HubExistsError,
    HubFilesError,
    HubLockedError,
    HubNotFoundError,
    HubReadOnlyError,
    HubVersionError,
    HubWriteError,
    ImageBudgetError,
    IntegrityError,
    InvalidNameError,
    NotARegistryError,
    RegistryUnreachableError,
    RegistryURLError,
    SnowhubError,
    SourceError,
    TaskExistsError,
    TaskNotFoundError,
)
from snowhub.export import BundleInfo, OnnxExport
from snowhub.hub import Hub, ImageInput
from snowhub.info import TaskInfo
from snowhub.models.sources import available_sources
from snowhub.names import SOURCE_TASK, default_hub_path
from snowhub.progress import Progress
from snowhub.serving import ImagePrediction, Predictor
from snowhub.store import HubLayout, SourceRecord, TaskRecord
from snowhub.store.copy import CopyReport
from snowhub.training import DeltaConfig, RunOptions, TrainConfig

__all__ = [
    # the facade and its options
    "DeltaConfig", "Hub", "ImageInput", "Progress", "RunOptions", "SOURCE_TASK", "TrainConfig",
    "available_sources", "default_hub_path", "__version__",
    # what Hub's methods return
    "BundleInfo", "CopyReport", "DoctorReport", "ForgettingReport", "HubLayout", "ImagePrediction", "OnnxExport",
    "Predictor", "SourceRecord", "TaskCheck", "TaskInfo", "TaskRecord",
    # errors (all SnowhubError)
    "BundleError", "ConfigError", "DataError", "DistributedError", "ExportError", "HubExistsError", "HubFilesError",
    "HubLockedError", "HubNotFoundError", "HubReadOnlyError", "HubVersionError", "HubWriteError", "ImageBudgetError",
    "IntegrityError", "InvalidNameError", "NotARegistryError", "RegistryURLError", "RegistryUnreachableError",
    "SnowhubError", "SourceError", "TaskExistsError", "TaskNotFoundError",
]
