"""snowhub's store: the hub registry (SQLAlchemy + Alembic on SQLite or PostgreSQL, as records) and its files.

What the layers above need, and nothing more: the ORM rows, engines, migrations, seals and the recovery of a
crashed writer's files stay in here (registration imports the recovery steps it runs from
:mod:`snowhub.store.recovery`). The store's errors are in :mod:`snowhub.errors`.
"""

from snowhub.errors import HubReadOnlyError, HubWriteError  # noqa: F401 -- their import path before snowhub.errors
from snowhub.store.database import head_revision
from snowhub.store.files import (
    HubLayout,
    atomic_save_safetensors,
    atomic_write,
    file_stamp,
    load_safetensors_verified,
    sha256_file,
    tensor_digest,
    write_error,
)
from snowhub.store.interface import RegistryStore
from snowhub.store.lock import lock_holder, writer_lock
from snowhub.store.records import RecordAudit, RegistryAudit, SourceRecord, TaskRecord
from snowhub.store.recovery import clean_if_idle, find_leftovers
from snowhub.store.registry import Registry
from snowhub.store.url import ENV as REGISTRY_URL_ENV

__all__ = [
    "HubLayout",
    "REGISTRY_URL_ENV",
    "RecordAudit",
    "Registry",
    "RegistryAudit",
    "RegistryStore",
    "SourceRecord",
    "TaskRecord",
    "atomic_save_safetensors",
    "atomic_write",
    "clean_if_idle",
    "file_stamp",
    "find_leftovers",
    "head_revision",
    "load_safetensors_verified",
    "lock_holder",
    "sha256_file",
    "tensor_digest",
    "write_error",
    "writer_lock",
]
