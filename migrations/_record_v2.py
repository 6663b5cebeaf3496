"""Frozen copy of the record seal format ``snowhub.record.v2`` for the migrations that (re-)seal rows.

v2 hashes the *typed* values, so a seal means the same on every database: JSON columns canonicalised
(parsed, keys sorted, no whitespace), timestamps as UTC ISO strings (microseconds), floats by their exact
hex form. SQLite hands JSON and timestamps back as text, PostgreSQL as Python objects; both end up the same.
``COLUMN_KINDS`` lists the JSON and timestamp columns of schema 0005; every other column is hashed as the
int, str or float it is. Migrations are history and must not import :mod:`snowhub.store.integrity`;
``tests/test_migrations.py`` checks that the two agree.
"""

import hashlib
import json
from datetime import datetime, timezone

TAG = "snowhub.record.v2"
KEYS = {"source": "id", "task": "seq"}
COLUMN_KINDS = {
    "source": {"taps": "json", "preprocessing": "json", "head_classes": "json", "library_versions": "json",
               "created_at": "time"},
    "task": {"class_names": "json", "hyperparams": "json", "cp_indices": "json", "metrics": "json",
             "dataset_summary": "json", "probe_environment": "json", "lineage": "json", "created_at": "time"},
}


def typed_value(kind, value):
    """One column's value in the form that is hashed (raises ValueError for JSON or a time that does not parse)."""
    if value is None:
        return None
    if kind == "json":
        if isinstance(value, (str, bytes)):
            value = json.loads(value)
        if value is None:  # JSON null and SQL NULL read the same on PostgreSQL: hash them the same
            return None
        return {"json": json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)}
    if kind == "time":
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise ValueError(f"not a timestamp: {value!r}")
        if value.tzinfo is None:  # SQLite stores naive UTC
            value = value.replace(tzinfo=timezone.utc)
        return {"utc": value.astimezone(timezone.utc).isoformat(timespec="microseconds")}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float):
        return {"real": value.hex()}
    return value


def record_digest(table, columns):
    """sha256 over the table name and every column's typed value except ``record_sha256``, by name."""
    kinds = COLUMN_KINDS[table]
    fields = sorted((name, typed_value(kinds.get(name), value)) for name, value in columns.items()
                    if name != "record_sha256")
    blob = json.dumps([TAG, table, fields], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()
