"""Errors snowhub raises on purpose.

Every error a user can cause derives from :class:`SnowhubError`; its message is one line that says what
went wrong and what to do. The CLI prints that line and exits non-zero; anything else is a bug.

Every public error class is defined here (and exported from :mod:`snowhub`); the modules that raise them
import them from here. Messages name Python parameters (``lr``, ``image_size``), never CLI flags: the CLI
translates them when it prints (``cli/flags.py``).
"""


class SnowhubError(Exception):
    """Base class: a user-facing failure with a one-line, actionable message."""


class HubNotFoundError(SnowhubError):
    """The hub directory does not exist or holds no registry."""


class HubExistsError(SnowhubError):
    """`init` was asked to create a hub where one already exists."""


class HubLockedError(SnowhubError):
    """Another process holds the hub's writer lock."""


class HubVersionError(SnowhubError):
    """The hub was written by a newer snowhub (unknown schema revision)."""


class TaskNotFoundError(SnowhubError):
    """No registered task has the requested name."""


class TaskExistsError(SnowhubError):
    """A task with this name is already registered (tasks are append-only)."""


class InvalidNameError(SnowhubError):
    """A task name is empty, too long, or contains characters that are not allowed."""


class DataError(SnowhubError):
    """The dataset is missing, empty, has a single class, or holds an unreadable image."""


class ImageBudgetError(DataError):
    """An image whose decoded pixels are over the budget it was read under (HTTP: 413)."""


class SourceError(SnowhubError):
    """The source model is unknown, or its weights cannot be found or do not fit its architecture."""


class ConfigError(SnowhubError):
    """A training or serving option is out of range."""


class IntegrityError(SnowhubError):
    """A stored file does not match the hash recorded for it."""


class HubWriteError(SnowhubError):
    """The hub could not be written: disk full, quota, I/O error or permissions."""


class HubReadOnlyError(HubWriteError):
    """The hub directory (or its file system) is read-only."""


class RegistryURLError(SnowhubError):
    """The registry URL is malformed or names a database snowhub cannot use."""


class RegistryUnreachableError(SnowhubError):
    """The registry's database server cannot be reached, or refused the login."""


class NotARegistryError(SnowhubError):
    """The database exists but does not hold a snowhub registry (or is not empty for ``init``)."""


class HubFilesError(SnowhubError):
    """The registry's files are not in the hub directory it was given."""


class ExportError(SnowhubError):
    """An export could not be written or did not verify (ONNX Runtime disagrees with PyTorch); nothing was left."""


class BundleError(SnowhubError):
    """A task bundle is unreadable, damaged, unsafe, or does not fit this hub; the hub was not changed."""


class DistributedError(SnowhubError):
    """A multi-process training cannot run as asked (a worker failed, the hub is not shared, ranks differ)."""
