"""snowhub's store: the hub registry (SQLite + Alembic) and its files (safetensors, hashes, lock)."""

from snowhub.store.database import current_revision, head_revision, open_engine, session_factory, upgrade
from snowhub.store.files import (
    HubLayout,
    atomic_save_safetensors,
    load_safetensors_verified,
    sha256_file,
    tensor_digest,
)
from snowhub.store.lock import writer_lock
from snowhub.store.models import Base, SourceRow, TaskRow, utcnow
from snowhub.store.registry import Registry

__all__ = [
    "Base",
    "HubLayout",
    "Registry",
    "SourceRow",
    "TaskRow",
    "atomic_save_safetensors",
    "current_revision",
    "head_revision",
    "load_safetensors_verified",
    "open_engine",
    "session_factory",
    "sha256_file",
    "tensor_digest",
    "upgrade",
    "utcnow",
    "writer_lock",
]
