"""snowhub's store: the hub registry (SQLAlchemy + Alembic on SQLite or PostgreSQL, as records) and its files.

What the layers above need, and nothing more: the ORM rows, engines and migrations stay in here.
"""

from snowhub.store.database import head_revision
from snowhub.store.files import (
    HubLayout,
    HubReadOnlyError,
    HubWriteError,
    atomic_save_safetensors,
    load_safetensors_verified,
    sha256_file,
    tensor_digest,
)
from snowhub.store.integrity import record_problem
from snowhub.store.interface import RegistryStore
from snowhub.store.lock import lock_holder, writer_lock
from snowhub.store.records import SourceRecord, TaskRecord
from snowhub.store.recovery import (
    clean_if_idle,
    clear_intent,
    find_leftovers,
    remove_leftovers,
    remove_new_hub,
    write_intent,
)
from snowhub.store.registry import Registry
from snowhub.store.url import ENV as REGISTRY_URL_ENV
from snowhub.store.url import HubFilesError, NotARegistryError, RegistryUnreachableError, RegistryURLError

__all__ = [
    "HubFilesError",
    "HubLayout",
    "HubReadOnlyError",
    "HubWriteError",
    "NotARegistryError",
    "REGISTRY_URL_ENV",
    "Registry",
    "RegistryStore",
    "RegistryURLError",
    "RegistryUnreachableError",
    "SourceRecord",
    "TaskRecord",
    "atomic_save_safetensors",
    "clean_if_idle",
    "clear_intent",
    "find_leftovers",
    "head_revision",
    "load_safetensors_verified",
    "lock_holder",
    "record_problem",
    "remove_leftovers",
    "remove_new_hub",
    "sha256_file",
    "tensor_digest",
    "write_intent",
    "writer_lock",
]
