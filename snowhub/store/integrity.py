"""Seals on registry rows: a sha256 over everything recorded about the source and each task.

Files carry their own sha256 in the registry, but the registry itself could be edited (``sqlite3
hub.db "UPDATE task SET val_top1 = 99"``, ``psql -c "UPDATE task ..."``) or rot. So every row also stores
``record_sha256``, a digest of all its other columns, computed right after the row is inserted, in the same
transaction, from the row as the database hands it back. Any later change to any column, a ``NULL``-ed seal
included, is then detected by :func:`record_problem`.

The digest hashes *typed* values (format ``snowhub.record.v2``, schema 0005 on): JSON columns canonicalised
(parsed, keys sorted, no whitespace), timestamps as UTC ISO strings to the microsecond, floats by their exact
hex form, so one record has one seal whichever database holds it (SQLite returns JSON and timestamps as text,
PostgreSQL as Python objects). An edit that changes no typed value (re-spacing a JSON text) changes nothing
snowhub reads, and is not reported.

What this protects against: bit rot, careless edits, and tools that rewrite the database. It is not a
signature: whoever can write the registry and knows this scheme can recompute a seal (see
``docs/reliability.md``). The format is frozen; migration ``0005`` carries its own copy
(``migrations/_record_v2.py``). A future migration that adds a column must re-seal existing rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import cache

from sqlalchemy import JSON, Connection, text

RECORD_COLUMN = "record_sha256"
_TAG = "snowhub.record.v2"
# The primary key of each sealed table.
KEYS = {"source": "id", "task": "seq", "trusted_key": "seq", "task_event": "id"}


@cache
def column_kinds(table: str) -> dict[str, str]:
    """``{column: "json" | "time"}`` for the JSON and timestamp columns of a sealed table (from the ORM)."""
    from snowhub.store.models import Base, UTCDateTime

    if table not in KEYS:
        raise ValueError(f"unknown sealed table {table!r}")
    kinds = {}
    for column in Base.metadata.tables[table].columns:
        if isinstance(column.type, JSON):
            kinds[column.key] = "json"
        elif isinstance(column.type, UTCDateTime):
            kinds[column.key] = "time"
    return kinds


def typed_value(kind: str | None, value: object) -> object:
    """One column's value as it is hashed. Raises ``ValueError`` for JSON or a timestamp that does not parse."""
    if value is None:
        return None
    if kind == "json":
        if isinstance(value, (str, bytes)):
            value = json.loads(value)
        if value is None:  # JSON null and SQL NULL read the same on PostgreSQL: hash them the same
            return None
        return {"json": json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)}
    if kind == "time":
        return {"utc": utc_time(value).isoformat(timespec="microseconds")}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, float):
        return {"real": value.hex()}  # exact, and distinct from an integer of the same value
    return value


def utc_time(value: object) -> datetime:
    """A stored timestamp (SQLite's naive-UTC text, or a datetime) as an aware UTC datetime (``ValueError`` if not one)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value).astimezone(timezone.utc)


def decoded(table: str, row: Mapping[str, object]) -> dict[str, object]:
    """A raw row with its JSON parsed and its timestamps as aware UTC datetimes (``ValueError`` if malformed)."""
    kinds = column_kinds(table)
    out = {}
    for name, value in row.items():
        kind = kinds.get(name)
        if value is None or kind is None:
            out[name] = value
        elif kind == "json":
            out[name] = json.loads(value) if isinstance(value, (str, bytes)) else value
        else:
            out[name] = utc_time(value)
    return out


def record_digest(table: str, columns: Mapping[str, object]) -> str:
    """The seal of one row: sha256 over the table name and every column's typed value except the seal, by name.

    `columns` may be raw (as SQLite or PostgreSQL return them) or :func:`decoded`: both give the same seal.
    Raises ``ValueError`` if a JSON or timestamp column does not parse.
    """
    kinds = column_kinds(table) if table in KEYS else {}
    fields = sorted((name, typed_value(kinds.get(name), value)) for name, value in columns.items()
                    if name != RECORD_COLUMN)
    blob = json.dumps([_TAG, table, fields], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def raw_row(conn: Connection, table: str, key: int) -> dict[str, object] | None:
    """One row as the database returns it (no type conversion by SQLAlchemy), or None."""
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
    """None if the raw (or decoded) `row` matches its seal, else what is wrong (one line, no advice)."""
    if row is None:
        return "the record is gone"
    stored = row.get(RECORD_COLUMN)
    if not stored:
        return "the record has no seal (record_sha256 was removed)"
    try:
        digest = record_digest(table, row)
    except ValueError as error:
        return f"the record holds a malformed value ({' '.join(str(error).split())[:100]})"
    if stored != digest:
        return "the record was changed after it was written (its record_sha256 does not match)"
    return None
