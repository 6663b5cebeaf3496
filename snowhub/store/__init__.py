"""snowhub's store: the hub registry (SQLite + Alembic, as records) and its files (safetensors, hashes, lock).

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

__all__ = [
    "HubLayout",
    "HubReadOnlyError",
    "HubWriteError",
    "Registry",
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
