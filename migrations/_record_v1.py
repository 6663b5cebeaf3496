"""Frozen copy of the record seal format ``snowhub.record.v1`` for the migrations that (re-)seal rows.

Migrations are history and must not change when the library does, so they do not import
:mod:`snowhub.store.integrity`; ``tests/test_migrations.py`` checks that rows sealed here pass the library's
check after an upgrade.
"""

import hashlib
import json

TAG = "snowhub.record.v1"
KEYS = {"source": "id", "task": "seq"}


def _encode(value):
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float):
        return {"real": value.hex()}
    return value


def record_digest(table, columns):
    """sha256 over the table name and every column except ``record_sha256``, by name (as SQLite stores them)."""
    fields = sorted((name, _encode(value)) for name, value in columns.items() if name != "record_sha256")
    blob = json.dumps([TAG, table, fields], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()
