"""Seals on registry rows: a sha256 over everything recorded about the source and each task.

Files carry their own sha256 in the registry, but the registry itself could be edited (``sqlite3
hub.db "UPDATE task SET val_top1 = 99"``) or rot. So every row also stores ``record_sha256``, a digest of
all its other columns, computed from the values *exactly as SQLite stores them* (the JSON text, the REAL,
the datetime string) right after the row is inserted, in the same transaction. Any later change to any
column, a ``NULL``-ed seal included, is then detected by :func:`record_problem`.

What this protects against: bit rot, careless edits, and tools that rewrite the database. It is not a
signature: whoever can write ``hub.db`` and knows this scheme can recompute a seal (see
``docs/reliability.md``).

The digest format is frozen (``snowhub.record.v1``); migration ``0002`` carries its own copy of it. A
future migration that adds a column must re-seal existing rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from sqlalchemy import Connection, text

RECORD_COLUMN = "record_sha256"
_TAG = "snowhub.record.v1"
# The primary key of each sealed table.
KEYS = {"source": "id", "task": "seq"}


def _encode(value: object) -> object:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float):
        return {"real": value.hex()}  # exact, and distinct from an integer of the same value
    return value


def record_digest(table: str, columns: Mapping[str, object]) -> str:
    """The seal of one row: sha256 over the table name and every column except the seal, by name."""
    fields = sorted((name, _encode(value)) for name, value in columns.items() if name != RECORD_COLUMN)
    blob = json.dumps([_TAG, table, fields], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def raw_row(conn: Connection, table: str, key: int) -> dict[str, object] | None:
    """One row as SQLite stores it (no type conversion), or None."""
    if table not in KEYS:
        raise ValueError(f"unknown sealed table {table!r}")
    result = conn.execute(text(f'SELECT * FROM "{table}" WHERE "{KEYS[table]}" = :key'), {"key": key})
    row = result.mappings().one_or_none()
    return dict(row) if row is not None else None


def seal(conn: Connection, table: str, key: int) -> str:
    """Compute and store the seal of a row just written in the open transaction of `conn`."""
    row = raw_row(conn, table, key)
    if row is None:
        raise ValueError(f"no {table} row {key} to seal")
    digest = record_digest(table, row)
    conn.execute(text(f'UPDATE "{table}" SET {RECORD_COLUMN} = :digest WHERE "{KEYS[table]}" = :key'),
                 {"digest": digest, "key": key})
    return digest


def record_problem(row: Mapping[str, object] | None, table: str) -> str | None:
    """None if the raw `row` matches its seal, else what is wrong (one line, no advice)."""
    if row is None:
        return "the record is gone"
    stored = row.get(RECORD_COLUMN)
    if not stored:
        return "the record has no seal (record_sha256 was removed)"
    if stored != record_digest(table, row):
        return "the record was changed after it was written (its record_sha256 does not match)"
    return None
