"""snowhub's store: the hub registry (SQLite + Alembic) and its files (safetensors, hashes, lock)."""

from snowhub.store.database import current_revision, head_revision, open_engine, session_factory, upgrade
from snowhub.store.files import (
    HubLayout,
    HubReadOnlyError,
    HubWriteError,
    atomic_save_safetensors,
    load_safetensors_verified,
    sha256_file,
    tensor_digest,
)
from snowhub.store.integrity import record_digest
from snowhub.store.lock import writer_lock
from snowhub.store.models import Base, SourceRow, TaskRow, utcnow
from snowhub.store.recovery import (
    Leftovers,
    clean_if_idle,
    clear_intent,
    find_leftovers,
    remove_leftovers,
    write_intent,
)
from snowhub.store.registry import Registry

__all__ = [
    "Base",
    "HubLayout",
    "HubReadOnlyError",
    "HubWriteError",
    "Leftovers",
    "Registry",
    "SourceRow",
    "TaskRow",
    "atomic_save_safetensors",
    "clean_if_idle",
    "clear_intent",
    "current_revision",
    "find_leftovers",
    "head_revision",
    "load_safetensors_verified",
    "open_engine",
    "record_digest",
    "remove_leftovers",
    "session_factory",
    "sha256_file",
    "tensor_digest",
    "upgrade",
    "utcnow",
    "write_intent",
    "writer_lock",
]
